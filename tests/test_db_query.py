"""Issue 2, points 1 and 5: ``make_db_query`` and ``db_query``."""

from __future__ import annotations

import sqlite3
import warnings
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from nexusLIMS.db import make_db_query
from nexusLIMS.db.session_handler import db_query
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
INSERT_LOG = (
    "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
    "record_status, user) VALUES (?, ?, ?, ?, ?, ?)"
)


def _rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    # A separate connection: sees only what the package committed.
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query).fetchall()


# --- make_db_query ------------------------------------------------------------


def test_make_db_query_returns_a_list_of_tuples(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    result = make_db_query(
        "SELECT instrument_pid, timezone FROM instruments ORDER BY instrument_pid"
    )
    assert type(result) is list
    assert all(type(row) is tuple for row in result)
    assert result == [
        ("FEI-Quanta-ESEM-633137", "America/New_York"),
        ("FEI-Titan-TEM-635816", "America/New_York"),
        ("JEOL-JEM3010-TEM-565989", "America/Denver"),
    ]


def test_make_db_query_without_rows_returns_empty_list(nexuslims_db: Path) -> None:
    assert make_db_query("SELECT * FROM session_log") == []


def test_make_db_query_commits_writes(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert make_db_query(
        "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
        f"record_status) VALUES ('s1', '{TITAN}', '2021-05-01T10:00:00', 'START', 'TO_BE_BUILT')"
    ) == []
    assert _rows(nexuslims_db, "SELECT session_identifier, record_status FROM session_log") == [
        ("s1", "TO_BE_BUILT")
    ]
    make_db_query("UPDATE session_log SET record_status = 'COMPLETED'")
    assert _rows(nexuslims_db, "SELECT record_status FROM session_log") == [("COMPLETED",)]
    make_db_query("DELETE FROM session_log")
    assert _rows(nexuslims_db, "SELECT count(*) FROM session_log") == [(0,)]


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="RETURNING needs SQLite 3.35")
def test_make_db_query_returning_clause(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    result = make_db_query(
        "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type) "
        f"VALUES ('s1', '{TITAN}', '2021-05-01T10:00:00', 'START') "
        "RETURNING id_session_log, record_status"
    )
    assert result == [(1, "WAITING_FOR_END")]
    assert _rows(nexuslims_db, "SELECT count(*) FROM session_log") == [(1,)]


def test_make_db_query_errors_propagate_and_write_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        make_db_query("SELECT * FROM no_such_table")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        make_db_query(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type) "
            f"VALUES ('s1', '{TITAN}', '2021-05-01T10:00:00', 'STOP')"
        )
    assert _rows(nexuslims_db, "SELECT count(*) FROM session_log") == [(0,)]
    # No transaction was left open: the file is free for an exclusive writer.
    with closing(sqlite3.connect(nexuslims_db, timeout=0)) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")


# --- db_query -----------------------------------------------------------------


def test_db_query_returns_success_and_rows(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    result = db_query(
        "SELECT instrument_pid FROM instruments WHERE api_url = ?",
        ("https://nemo.example.org/api/tools/?id=1",),
    )
    assert result == (True, [(TITAN,)])
    assert type(result) is tuple
    assert type(result[1]) is list


def test_db_query_without_args(nexuslims_instruments: dict[str, Instrument]) -> None:
    assert db_query("SELECT count(*) FROM instruments") == (True, [(3,)])
    assert db_query("SELECT count(*) FROM instruments", None) == (True, [(3,)])
    assert db_query("SELECT count(*) FROM instruments", ()) == (True, [(3,)])


def test_db_query_args_as_list(nexuslims_instruments: dict[str, Instrument]) -> None:
    assert db_query(
        "SELECT instrument_pid FROM instruments WHERE timezone = ? AND location LIKE ?",
        ["America/Denver", "Building 1,%"],
    ) == (True, [("JEOL-JEM3010-TEM-565989",)])


def test_db_query_named_parameters_from_a_mapping(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # sqlite3 binds a mapping to :name placeholders; 1.4 passed args through.
    assert db_query("SELECT :b, :a", {"a": 1, "b": "two"}) == (True, [("two", 1)])
    stamp = datetime(2021, 5, 1, 10, 0, 0, 250000)
    db_query(
        "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type) "
        "VALUES (:id, :instrument, :when, 'START')",
        {"id": "s1", "instrument": TITAN, "when": stamp},
    )
    assert _rows(nexuslims_db, "SELECT session_identifier, timestamp FROM session_log") == [
        ("s1", "2021-05-01T10:00:00.250000")
    ]


def test_db_query_parameters_are_not_interpolated(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    hostile = "x'); DROP TABLE session_log; --"
    assert db_query(INSERT_LOG, (hostile, TITAN, "2021-05-01T10:00:00", "START",
                                 "TO_BE_BUILT", None)) == (True, [])
    assert _rows(nexuslims_db, "SELECT session_identifier FROM session_log") == [(hostile,)]


def test_db_query_commits(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", "u"))
    assert _rows(nexuslims_db, "SELECT session_identifier, user FROM session_log") == [
        ("s1", "u")
    ]
    assert db_query(
        "UPDATE session_log SET record_status = ? WHERE session_identifier = ?",
        ("ERROR", "s1"),
    ) == (True, [])
    assert _rows(nexuslims_db, "SELECT record_status FROM session_log") == [("ERROR",)]


def test_db_query_errors_propagate(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with pytest.raises(sqlite3.OperationalError):
        db_query("SELEC 1")
    with pytest.raises(sqlite3.IntegrityError):
        db_query(INSERT_LOG, ("s1", TITAN, "2021-05-01T10:00:00", "START", "BOGUS", None))
    with pytest.raises(sqlite3.ProgrammingError):
        db_query("SELECT ?", (1, 2))
    assert _rows(nexuslims_db, "SELECT count(*) FROM session_log") == [(0,)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2021, 5, 1, 10, 0, 0, 500000), "2021-05-01T10:00:00.500000"),
        (datetime(2021, 5, 1, 10, 0), "2021-05-01T10:00:00"),
        (
            datetime(2021, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-4))),
            "2021-05-01T10:00:00-04:00",
        ),
    ],
)
def test_datetime_args_are_stored_as_iso_text(
    value: datetime,
    text: str,
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    # sqlite3's default adapter (deprecated since 3.12) would write a space,
    # not a "T", between date and time.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        db_query(INSERT_LOG, ("s1", TITAN, value, "START", "TO_BE_BUILT", None))
        found = db_query(
            "SELECT session_identifier FROM session_log WHERE timestamp = ?", (value,)
        )
    assert found == (True, [("s1",)])
    assert _rows(nexuslims_db, "SELECT timestamp, typeof(timestamp) FROM session_log") == [
        (text, "text")
    ]
