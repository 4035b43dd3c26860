"""Issue 2, points 6 and 7: the packaged schema, the enums and ``init_db``."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from nexusLIMS.db import SCHEMA_VERSION, init_db, make_db_query
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.session_handler import SessionLog, db_query
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
CONTRACT_STATUSES = {
    "COMPLETED", "WAITING_FOR_END", "TO_BE_BUILT", "ERROR", "NO_FILES_FOUND",
    "NO_CONSENT", "NO_RESERVATION", "BUILT_NOT_EXPORTED",
}
CONTRACT_EVENTS = {"START", "END", "RECORD_GENERATION"}


def _query(path: Path, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, args).fetchall()


def _execute(path: Path, script: str) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(script)


def _index_columns(path: Path, table: str, origin: str = "c") -> set[tuple[str, ...]]:
    """The column lists of the indexes of ``table`` ("c": made by CREATE INDEX)."""
    with closing(sqlite3.connect(path)) as conn:
        found = set()
        for _, name, _, index_origin, _ in conn.execute(f"PRAGMA index_list('{table}')"):
            if index_origin == origin:
                info = conn.execute(f"PRAGMA index_info('{name}')").fetchall()
                found.add(tuple(column for _, _, column in sorted(info)))
    return found


def _snapshot(path: Path) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        _query(path, "SELECT * FROM instruments ORDER BY instrument_pid"),
        _query(path, "SELECT * FROM session_log ORDER BY id_session_log"),
        _query(path, "SELECT * FROM sqlite_sequence ORDER BY name"),
        _query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"),
        _query(path, "PRAGMA user_version"),
    )


# --- the packaged schema.sql and the enums ------------------------------------


def _schema_sql() -> str:
    return resources.files("nexusLIMS.db").joinpath("schema.sql").read_text("utf-8")


def _check_list(sql: str, column: str) -> list[str]:
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    matches = re.findall(
        rf"CHECK\s*\(\s*[`\"]?{column}[`\"]?\s+IN\s*\(([^)]*)\)\s*\)", code, re.IGNORECASE
    )
    assert len(matches) == 1, f"expected one CHECK on {column}, found {len(matches)}"
    return re.findall(r"'([^']*)'", matches[0])


def test_enums_hold_exactly_the_contract_values() -> None:
    assert set(RecordStatus.values()) == CONTRACT_STATUSES
    assert len(RecordStatus.values()) == 8
    assert set(EventType.values()) == CONTRACT_EVENTS
    assert all(isinstance(member, str) for member in [*RecordStatus, *EventType])
    assert RecordStatus.NO_CONSENT == "NO_CONSENT"
    assert f"{RecordStatus.ERROR}" == str(RecordStatus.ERROR) == "ERROR"


@pytest.mark.parametrize(("column", "enum"), [("event_type", EventType),
                                              ("record_status", RecordStatus)])
def test_packaged_schema_checks_equal_the_enums(column: str, enum: Any) -> None:
    parsed = _check_list(_schema_sql(), column)
    assert sorted(parsed) == sorted(enum.values())


@pytest.mark.parametrize(("column", "enum"), [("event_type", EventType),
                                              ("record_status", RecordStatus)])
def test_created_database_checks_equal_the_enums(
    column: str, enum: Any, nexuslims_db: Path
) -> None:
    [(sql,)] = _query(nexuslims_db, "SELECT sql FROM sqlite_master WHERE name = 'session_log'")
    assert sorted(_check_list(sql, column)) == sorted(enum.values())


def test_every_enum_value_passes_the_checks_and_others_fail(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert = (
        "INSERT INTO session_log (session_identifier, instrument, event_type, record_status) "
        "VALUES (?, ?, ?, ?)"
    )
    for event in EventType:
        for status in RecordStatus:
            db_query(insert, (f"{event}-{status}", TITAN, event.value, status.value))
    assert _query(nexuslims_db, "SELECT count(*) FROM session_log") == [(3 * 8,)]
    for event, status in [("STOP", "COMPLETED"), ("START", "DONE"), ("start", "COMPLETED"),
                          ("START", "completed")]:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db_query(insert, ("bad", TITAN, event, status))
    assert _query(nexuslims_db, "SELECT count(*) FROM session_log") == [(3 * 8,)]


# --- columns, defaults and constraints ----------------------------------------

SESSION_LOG_COLUMNS = [
    # name, declared type, NOT NULL, default
    ("id_session_log", "INTEGER", None, None),
    ("session_identifier", "VARCHAR(36)", 1, None),
    ("instrument", "VARCHAR(100)", 1, None),
    ("timestamp", "DATETIME", 1, ...),
    ("event_type", "TEXT", 1, None),
    ("record_status", "TEXT", 1, "'WAITING_FOR_END'"),
    ("user", "VARCHAR(50)", 0, None),
]
INSTRUMENTS_COLUMNS = [
    ("instrument_pid", "VARCHAR(100)", None, None),
    ("api_url", "TEXT", 1, None),
    ("calendar_name", "TEXT", 1, None),
    ("calendar_url", "TEXT", 1, None),
    ("location", "VARCHAR(100)", 1, None),
    ("schema_name", "TEXT", 1, None),
    ("property_tag", "VARCHAR(20)", 1, None),
    ("filestore_path", "TEXT", 1, None),
    ("computer_name", "TEXT", 0, None),
    ("computer_ip", "VARCHAR(15)", 0, None),
    ("computer_mount", "TEXT", 0, None),
    ("harvester", "TEXT", 0, None),
    ("timezone", "TEXT", 1, "'America/New_York'"),
]


@pytest.mark.parametrize(
    ("table", "columns", "primary_key"),
    [("session_log", SESSION_LOG_COLUMNS, "id_session_log"),
     ("instruments", INSTRUMENTS_COLUMNS, "instrument_pid")],
)
def test_columns_match_the_contract(
    table: str, columns: list[tuple[Any, ...]], primary_key: str, nexuslims_db: Path
) -> None:
    info = _query(nexuslims_db, f"PRAGMA table_info('{table}')")
    assert [row[1] for row in info] == [column[0] for column in columns]
    for (_, name, declared, notnull, default, pk), (_, want_type, want_notnull, want_default) in (
        zip(info, columns)
    ):
        assert declared.upper() == want_type, name
        if want_notnull is not None:
            assert notnull == want_notnull, name
        if want_default is not ...:
            assert default == want_default, name
        assert pk == (1 if name == primary_key else 0), name


def test_session_log_id_is_autoincrement(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    [(sql,)] = _query(nexuslims_db, "SELECT sql FROM sqlite_master WHERE name = 'session_log'")
    assert "AUTOINCREMENT" in sql.upper()
    SessionLog("a", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    SessionLog("b", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    make_db_query("DELETE FROM session_log WHERE session_identifier = 'b'")
    SessionLog("c", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    # An id is never reused, even after the newest row is deleted.
    assert make_db_query("SELECT session_identifier, id_session_log FROM session_log") == [
        ("a", 1), ("c", 3),
    ]


def test_instruments_unique_columns(nexuslims_db: Path) -> None:
    assert _index_columns(nexuslims_db, "instruments", origin="u") == {
        ("api_url",), ("computer_name",), ("computer_ip",),
    }


def test_session_log_foreign_key(nexuslims_db: Path) -> None:
    keys = _query(nexuslims_db, "PRAGMA foreign_key_list('session_log')")
    assert [row[2:7] for row in keys] == [
        ("instruments", "instrument", "instrument_pid", "CASCADE", "CASCADE")
    ]


def test_default_timestamp_is_local_time_with_milliseconds(
    local_zone_ist: timezone, nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    db_query(
        "INSERT INTO session_log (session_identifier, instrument, event_type) VALUES (?, ?, ?)",
        ("s1", TITAN, "START"),
    )
    [(stamp, status, user)] = _query(
        nexuslims_db, "SELECT timestamp, record_status, user FROM session_log"
    )
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}", stamp), stamp
    # Local wall-clock time (UTC+05:30 here), not UTC.
    assert abs(datetime.fromisoformat(stamp) - datetime.now()) < timedelta(hours=1)
    assert status == "WAITING_FOR_END"
    assert user is None


def test_foreign_keys_are_enforced(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        db_query(
            "INSERT INTO session_log (session_identifier, instrument, event_type) "
            "VALUES (?, ?, ?)",
            ("s1", "No-Such-Instrument", "START"),
        )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        make_db_query(
            "INSERT INTO session_log (session_identifier, instrument, event_type) "
            "VALUES ('s1', 'No-Such-Instrument', 'START')"
        )
    assert make_db_query("SELECT count(*) FROM session_log") == [(0,)]
    assert make_db_query("PRAGMA foreign_keys") == [(1,)]


def test_foreign_key_cascades(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    SessionLog("s2", "JEOL-JEM3010-TEM-565989", "2021-05-01T10:00:00", "START", None).insert_log()
    make_db_query(
        f"UPDATE instruments SET instrument_pid = 'Renamed' WHERE instrument_pid = '{TITAN}'"
    )
    assert make_db_query("SELECT session_identifier, instrument FROM session_log") == [
        ("s1", "Renamed"), ("s2", "JEOL-JEM3010-TEM-565989"),
    ]
    make_db_query("DELETE FROM instruments WHERE instrument_pid = 'Renamed'")
    assert make_db_query("SELECT session_identifier FROM session_log") == [("s2",)]


# --- init_db ------------------------------------------------------------------


def test_init_db_creates_tables_and_indexes(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "nexuslims.sqlite"
    result = init_db(target)
    assert isinstance(result, Path)
    assert result == target
    assert target.is_file()
    tables = {name for (name,) in _query(target, "SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")}
    assert {"instruments", "session_log"} <= tables
    indexes = _index_columns(target, "session_log")
    assert ("instrument",) in indexes
    assert ("session_identifier",) in indexes
    assert _query(target, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _query(target, "SELECT count(*) FROM session_log") == [(0,)]
    assert _query(target, "SELECT count(*) FROM instruments") == [(0,)]


def test_init_db_accepts_a_string_and_returns_a_path(tmp_path: Path) -> None:
    result = init_db(str(tmp_path / "db.sqlite"))
    assert result == tmp_path / "db.sqlite"
    assert isinstance(result, Path)


def test_init_db_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "from_env.sqlite"
    monkeypatch.setenv("nexusLIMS_db_path", str(target))
    assert init_db() == target
    assert ("session_identifier",) in _index_columns(target, "session_log")


def test_init_db_on_existing_database_changes_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _fill_logs()
    before = _snapshot(nexuslims_db)
    assert init_db(nexuslims_db) == nexuslims_db
    assert init_db() == nexuslims_db
    assert _snapshot(nexuslims_db) == before
    assert len(before[1]) == 2


def _fill_logs() -> None:
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe").insert_log()
    SessionLog("s1", TITAN, "2021-05-01T11:00:00", "END", None).insert_log()


def test_init_db_adds_missing_indexes_keeping_rows(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _fill_logs()
    rows = _snapshot(nexuslims_db)[:3]
    names = [name for (name,) in _query(
        nexuslims_db, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]
    assert names
    _execute(nexuslims_db, "".join(f"DROP INDEX {name};" for name in names))
    assert _index_columns(nexuslims_db, "session_log") == set()

    init_db(nexuslims_db)
    indexes = _index_columns(nexuslims_db, "session_log")
    assert {("instrument",), ("session_identifier",)} <= indexes
    assert _snapshot(nexuslims_db)[:3] == rows


def test_init_db_adds_a_missing_table_keeping_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "partial.sqlite"
    full = init_db(tmp_path / "full.sqlite")
    [(instruments_sql,)] = _query(full, "SELECT sql FROM sqlite_master WHERE name = 'instruments'")
    _execute(target, instruments_sql + ";")
    add_sample_instruments(target)
    before = _query(target, "SELECT * FROM instruments ORDER BY instrument_pid")

    init_db(target)
    assert _query(target, "SELECT * FROM instruments ORDER BY instrument_pid") == before
    monkeypatch.setenv("nexusLIMS_db_path", str(target))
    _fill_logs()
    assert make_db_query("SELECT count(*) FROM session_log") == [(2,)]


def test_init_db_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    target = tmp_path / "notes.sqlite"
    content = b"these are not the tables you are looking for\n" * 40
    target.write_bytes(content)
    with pytest.raises(sqlite3.DatabaseError):
        init_db(target)
    assert target.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]
