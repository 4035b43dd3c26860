"""SQL written for NexusLIMS 1.4: ``make_db_query`` and ``db_query``, on both backends.

On SQLite the SQL runs as written. On PostgreSQL the same 1.4 SQL (SQLite's
dialect: ``?`` and ``:name`` placeholders, double-quoted strings, ``==``,
``REPLACE()``, ``datetime('now')``, a column called ``user``) gives the same
results; what cannot be carried over is refused, naming the construct,
before anything runs.
"""

from __future__ import annotations

import sqlite3
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers import JEOL, TITAN, rows, sql

from nexusLIMS.db import make_db_query
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.errors import UnsupportedSQLError
from nexusLIMS.db.legacy_sql import to_postgres
from nexusLIMS.db.session_handler import db_query

INSERT_LOG = (
    "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
    "record_status, user) VALUES (?, ?, ?, ?, ?, ?)"
)


def _driver_error(location: DatabaseLocation, sqlite_name: str, postgres_name: str) -> Any:
    """The exception class a statement error raises on this backend."""
    if location.backend == "sqlite":
        return getattr(sqlite3, sqlite_name)
    import psycopg

    return getattr(psycopg.errors, postgres_name)


def test_make_db_query_returns_a_list_of_tuples(nexuslims_database: DatabaseLocation,
                                                nexuslims_instruments: Any) -> None:
    result = make_db_query(
        "SELECT instrument_pid, timezone FROM instruments ORDER BY instrument_pid")
    assert type(result) is list
    assert all(type(r) is tuple for r in result)
    assert result == [("FEI-Quanta-ESEM-633137", "America/New_York"),
                      (TITAN, "America/New_York"), (JEOL, "America/Denver")]


def test_make_db_query_without_rows_returns_an_empty_list(
    nexuslims_database: DatabaseLocation,
) -> None:
    assert make_db_query("SELECT * FROM session_log") == []


def test_make_db_query_commits_writes(nexuslims_database: DatabaseLocation,
                                      nexuslims_instruments: Any) -> None:
    assert make_db_query(
        "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
        f"record_status) VALUES ('s1', '{TITAN}', '2021-05-01T10:00:00', 'START', 'TO_BE_BUILT')"
    ) == []
    assert [(r.session_identifier, r.record_status) for r in rows()] == [("s1", "TO_BE_BUILT")]
    make_db_query("UPDATE session_log SET record_status = 'COMPLETED'")
    assert [r.record_status for r in rows()] == ["COMPLETED"]
    make_db_query("DELETE FROM session_log")
    assert rows() == []


def test_select_star_keeps_1_4s_column_order_and_types(nexuslims_database: DatabaseLocation,
                                                       nexuslims_instruments: Any) -> None:
    db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", "u"))
    db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T11:00:00", "END", "TO_BE_BUILT", "u"))
    _, results = db_query("SELECT * FROM session_log ORDER BY id_session_log DESC LIMIT 2;")
    assert results[0][1] == results[1][1] == "s1"
    assert (results[0][4], results[1][4]) == ("END", "START")
    assert results[0][5] == results[1][5] == "TO_BE_BUILT"
    assert type(results[0][0]) is int
    assert results[0][3] == "2021-05-01T11:00:00"
    assert datetime.fromisoformat(results[0][3]) == datetime(2021, 5, 1, 11)


def test_make_db_query_returning_clause(nexuslims_database: DatabaseLocation,
                                        nexuslims_instruments: Any) -> None:
    if nexuslims_database.backend == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        pytest.skip("RETURNING needs SQLite 3.35")
    result = make_db_query(
        "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type) "
        f"VALUES ('s1', '{TITAN}', '2021-05-01T10:00:00', 'START') "
        "RETURNING id_session_log, record_status")
    assert result == [(1, "WAITING_FOR_END")]


def test_errors_propagate_and_write_nothing(nexuslims_database: DatabaseLocation,
                                            nexuslims_instruments: Any) -> None:
    with pytest.raises(_driver_error(nexuslims_database, "OperationalError", "UndefinedTable")):
        make_db_query("SELECT * FROM no_such_table")
    with pytest.raises(_driver_error(nexuslims_database, "IntegrityError", "CheckViolation")):
        make_db_query(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type) "
            f"VALUES ('s1', '{TITAN}', '2021-05-01T10:00:00', 'STOP')")
    with pytest.raises(_driver_error(nexuslims_database, "IntegrityError", "CheckViolation")):
        db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T10:00:00", "START", "BOGUS", None))
    assert rows() == []
    # No transaction was left open: a writer gets the lock at once.
    assert sql("SELECT count(*) FROM session_log") == [(0,)]


def test_sqlite_reports_its_own_errors(nexuslims_db: Any, nexuslims_instruments: Any) -> None:
    with pytest.raises(sqlite3.OperationalError):
        db_query("SELEC 1")
    with pytest.raises(sqlite3.ProgrammingError):
        db_query("SELECT ?", (1, 2))
    with pytest.raises(sqlite3.ProgrammingError, match="one statement at a time"):
        make_db_query("SELECT 1; SELECT 2")


def test_db_query_returns_success_and_rows(nexuslims_database: DatabaseLocation,
                                           nexuslims_instruments: Any) -> None:
    result = db_query("SELECT instrument_pid FROM instruments WHERE api_url = ?",
                      ("https://nemo.example.org/api/tools/?id=1",))
    assert result == (True, [(TITAN,)])
    assert type(result) is tuple
    assert type(result[1]) is list


def test_db_query_without_args(nexuslims_database: DatabaseLocation,
                               nexuslims_instruments: Any) -> None:
    assert db_query("SELECT count(*) FROM instruments") == (True, [(3,)])
    assert db_query("SELECT count(*) FROM instruments", None) == (True, [(3,)])
    assert db_query("SELECT count(*) FROM instruments", ()) == (True, [(3,)])
    assert db_query(query="SELECT count(*) FROM instruments", args=None) == (True, [(3,)])


def test_db_query_args_as_a_list_with_a_like_pattern(nexuslims_database: DatabaseLocation,
                                                     nexuslims_instruments: Any) -> None:
    assert db_query(
        "SELECT instrument_pid FROM instruments WHERE timezone = ? AND location LIKE ?",
        ["America/Denver", "Building 1,%"],
    ) == (True, [(JEOL,)])
    assert make_db_query(
        "SELECT instrument_pid FROM instruments WHERE location LIKE 'Building 1,%'"
    ) == [(JEOL,)]


def test_db_query_named_parameters_from_a_mapping(nexuslims_database: DatabaseLocation,
                                                  nexuslims_instruments: Any) -> None:
    assert db_query("SELECT :b, :a", {"a": 1, "b": "two"}) == (True, [("two", 1)])
    stamp = datetime(2021, 5, 1, 10, 0, 0, 250000)
    db_query("INSERT INTO session_log (session_identifier, instrument, timestamp, event_type) "
             "VALUES (:id, :instrument, :when, 'START')",
             {"id": "s1", "instrument": TITAN, "when": stamp})
    assert [(r.session_identifier, r.timestamp) for r in rows()] == [
        ("s1", "2021-05-01T10:00:00.250000")]


def test_db_query_parameters_are_not_interpolated(nexuslims_database: DatabaseLocation,
                                                  nexuslims_instruments: Any) -> None:
    hostile = "x'); DROP TABLE session_log; -- 100% ?"
    assert db_query(INSERT_LOG, (hostile, TITAN, "2021-05-01T10:00:00", "START",
                                 "TO_BE_BUILT", None)) == (True, [])
    assert [r.session_identifier for r in rows()] == [hostile]


def test_db_query_commits(nexuslims_database: DatabaseLocation,
                          nexuslims_instruments: Any) -> None:
    db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", "u"))
    assert [(r.session_identifier, r.user) for r in rows()] == [("s1", "u")]
    assert db_query("UPDATE session_log SET record_status = ? WHERE session_identifier = ?",
                    ("ERROR", "s1")) == (True, [])
    assert [r.record_status for r in rows()] == ["ERROR"]


@pytest.mark.parametrize(("value", "text"), [
    (datetime(2021, 5, 1, 10, 0, 0, 500000), "2021-05-01T10:00:00.500000"),
    (datetime(2021, 5, 1, 10, 0), "2021-05-01T10:00:00"),
    (datetime(2021, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-4))),
     "2021-05-01T10:00:00-04:00"),
])
def test_datetime_args_are_stored_as_iso_text(value: datetime, text: str,
                                              nexuslims_database: DatabaseLocation,
                                              nexuslims_instruments: Any) -> None:
    # sqlite3's default adapter (deprecated since 3.12) would write a space.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        db_query(INSERT_LOG, ("s1", TITAN, value, "START", "TO_BE_BUILT", None))
        found = db_query("SELECT session_identifier FROM session_log WHERE timestamp = ?",
                         (value,))
    assert found == (True, [("s1",)])
    assert [r.timestamp for r in rows()] == [text]


# ---------------------------------------------------- 1.4's SQLite idioms, everywhere


def _logs_of_each_status(nexuslims_database: DatabaseLocation) -> None:
    for number, (event, status) in enumerate([("START", "COMPLETED"), ("END", "COMPLETED"),
                                              ("RECORD_GENERATION", "COMPLETED"),
                                              ("START", "NO_FILES_FOUND")]):
        db_query(INSERT_LOG, (f"s{number}", TITAN, "2021-05-01T10:00:00", event, status, "u"))


@pytest.mark.parametrize(("query", "expected"), [
    ('SELECT count(*) FROM session_log WHERE "event_type" = "RECORD_GENERATION"', 1),
    ('SELECT count(*) FROM session_log WHERE"record_status" = "NO_FILES_FOUND"', 1),
    ("SELECT count(*) FROM session_log WHERE record_status == 'COMPLETED'", 3),
    ("SELECT count(*) FROM session_log WHERE Record_Status = 'COMPLETED'", 3),
    ("SELECT count(*) FROM SESSION_LOG WHERE user = 'u' AND id_session_log % 2 = 0", 2),
])
def test_1_4_idioms_give_the_same_answer_on_both_backends(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: Any, query: str, expected: int
) -> None:
    _logs_of_each_status(nexuslims_database)
    assert make_db_query(query) == [(expected,)]


def test_a_column_called_user_is_the_column(nexuslims_database: DatabaseLocation,
                                            nexuslims_instruments: Any) -> None:
    db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", "jdoe"))
    assert make_db_query("SELECT user FROM session_log") == [("jdoe",)]
    assert db_query("SELECT session_identifier FROM session_log WHERE user = ?",
                    ("jdoe",)) == (True, [("s1",)])


def test_replace_updates_as_1_4s_conftest_did(nexuslims_database: DatabaseLocation,
                                              nexuslims_instruments: Any) -> None:
    make_db_query("UPDATE instruments SET api_url = "
                  "REPLACE(api_url, 'nemo.example.org', 'nemo-test.example.org');")
    assert make_db_query(f"SELECT api_url FROM instruments WHERE instrument_pid = '{TITAN}'") \
        == [("https://nemo-test.example.org/api/tools/?id=1",)]


def test_a_raw_insert_takes_the_schemas_defaults(nexuslims_database: DatabaseLocation,
                                                 nexuslims_instruments: Any) -> None:
    make_db_query("INSERT INTO session_log (instrument, event_type, session_identifier, "
                  f"record_status) VALUES ('{TITAN}', 'START', 'u1', 'TO_BE_BUILT');")
    (stored,) = rows()
    moment = datetime.fromisoformat(stored.timestamp)
    assert moment.tzinfo is None
    assert abs(moment - datetime.now()) < timedelta(minutes=5)  # local time, as SQLite's
    assert len(stored.timestamp) == len("2021-05-01T10:00:00.000")


def test_datetime_now_is_carried_over(nexuslims_database: DatabaseLocation,
                                      nexuslims_instruments: Any) -> None:
    make_db_query("INSERT INTO session_log (instrument, event_type, session_identifier, "
                  f"record_status, timestamp) VALUES ('{TITAN}', 'START', 'u1', 'TO_BE_BUILT', "
                  "datetime('now'));")
    (stored,) = rows()
    utc_now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(datetime.fromisoformat(stored.timestamp) - utc_now) < timedelta(minutes=5)


def test_insert_or_ignore_is_carried_over(nexuslims_database: DatabaseLocation,
                                          nexuslims_instruments: Any) -> None:
    make_db_query("INSERT OR IGNORE INTO instruments (instrument_pid, api_url, calendar_name, "
                  "calendar_url, location, schema_name, property_tag, filestore_path) VALUES "
                  f"('{TITAN}', 'https://x/api/tools/?id=9', 'c', 'u', 'l', 's', 'p', './T')")
    assert make_db_query(f"SELECT location FROM instruments WHERE instrument_pid = '{TITAN}'") \
        == [("Building 217, Room F131",)]


# ------------------------------------------------------ what PostgreSQL cannot take


@pytest.mark.parametrize(("query", "construct"), [
    ("PRAGMA user_version", "PRAGMA"),
    ("INSERT OR REPLACE INTO instruments (instrument_pid) VALUES ('x')", "INSERT OR REPLACE"),
    ("SELECT 1; SELECT 2", "one statement at a time"),
    ("SELECT datetime('now', '+1 day')", "datetime"),
    ("SELECT FROM WHERE", "translate"),
])
def test_sql_without_a_postgresql_equivalent_is_refused_naming_it(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: Any, query: str,
    construct: str,
) -> None:
    before = make_db_query("SELECT count(*) FROM instruments")
    with pytest.raises(UnsupportedSQLError, match=construct):
        make_db_query(query)
    with pytest.raises(ValueError, match=construct):  # UnsupportedSQLError is a ValueError
        db_query(query)
    assert make_db_query("SELECT count(*) FROM instruments") == before


@pytest.mark.extra("postgres")
def test_the_translation_quotes_identifiers_and_keeps_placeholders() -> None:
    translated = to_postgres("SELECT user, timestamp FROM session_log WHERE id_session_log = ? "
                             "AND session_identifier LIKE 'a%' AND user = :who")
    assert '"user"' in translated
    assert '"session_log"' in translated
    assert "= ?" in translated
    assert ":who" in translated
    assert "'a%'" in translated
