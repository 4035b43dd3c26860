"""A database made by NexusLIMS 1.4's creation script works with this package unchanged."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import pytz
from legacy_schema import LEGACY_1_4_SCHEMA, LEGACY_1_4_STATUSES, make_legacy_db

from nexusLIMS.db import init_db, make_db_query
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.session_handler import SessionLog, db_query, get_sessions_to_build
from nexusLIMS.instruments import (
    get_instr_from_api_url,
    instrument_db,
    load_instruments,
)

TITAN = "FEI-Titan-TEM-635816"
JEOL = "JEOL-JEM3010-TEM-565989"
EDT = timezone(timedelta(hours=-4))

# Rows as 1.4's record builder, harvester and Session Logger left them.
INSTRUMENT_ROWS = [
    (TITAN, "https://nemo.example.org/api/tools/?id=1", "FEI Titan TEM",
     "https://nemo.example.org/calendar/titan-tem/", "Building 217, Room F131", "Titan TEM",
     "635816", "./Titan", "TITAN-PC-01", "192.0.2.11", "M:/", "nemo", "America/New_York"),
    (JEOL, "https://nemo.example.org/api/tools/?id=3", "JEOL JEM-3010 TEM",
     "https://nemo.example.org/calendar/jeol-3010/", "Building 1, Room 1201", "JEOL JEM-3010",
     "565989", "./JEOL3010", None, None, None, "nemo", "America/Denver"),
]
LOG_ROWS = [
    # session_identifier, instrument, timestamp, event_type, record_status, user
    ("old-1", TITAN, "2020-11-02T09:00:00.000", "START", "COMPLETED", "alice"),
    ("old-1", TITAN, "2020-11-02T10:00:00.000", "END", "COMPLETED", "alice"),
    ("old-1", TITAN, "2020-11-03T01:00:00.123456-05:00", "RECORD_GENERATION", "COMPLETED",
     "builder"),
    ("todo-1", TITAN, "2021-05-01T10:00:00.000", "START", "TO_BE_BUILT", "bob"),
    ("todo-1", TITAN, "2021-05-01T12:15:30.500", "END", "TO_BE_BUILT", None),
    ("https://nemo.example.org/api/usage_events/?id=987654", JEOL,
     "2021-05-02T08:00:00-06:00", "START", "TO_BE_BUILT", "carol"),
    ("https://nemo.example.org/api/usage_events/?id=987654", JEOL,
     "2021-05-02T09:30:00-06:00", "END", "TO_BE_BUILT", "carol"),
    ("waiting-1", TITAN, "2021-05-03T10:00:00.000", "START", "WAITING_FOR_END", "dave"),
]


def _all_logs(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT id_session_log, session_identifier, instrument, timestamp, event_type, "
            "record_status, user FROM session_log ORDER BY id_session_log"
        ).fetchall()


def _schema(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()


@pytest.fixture
def legacy_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            f"INSERT INTO instruments VALUES ({', '.join('?' * 13)})", INSTRUMENT_ROWS
        )
        conn.executemany(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status, user) VALUES (?, ?, ?, ?, ?, ?)",
            LOG_ROWS,
        )
    monkeypatch.setenv("nexusLIMS_db_path", str(path))
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    return path


# --- the fixture itself -------------------------------------------------------


def test_make_legacy_db_makes_the_1_4_tables(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    assert path == tmp_path / "legacy.sqlite"
    assert [(t, n) for t, n, _ in _schema(path)] == [
        ("table", "instruments"), ("table", "session_log"), ("table", "sqlite_sequence"),
    ]
    with closing(sqlite3.connect(path)) as conn:
        explicit = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()
    assert explicit == []
    assert version == (0,)
    assert "`record_status`" in LEGACY_1_4_SCHEMA
    assert "NO_CONSENT" not in LEGACY_1_4_SCHEMA
    assert "NO_RESERVATION" not in LEGACY_1_4_SCHEMA
    assert set(LEGACY_1_4_STATUSES) < set(RecordStatus.values())


def test_legacy_check_accepts_only_the_five_statuses(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO instruments (instrument_pid, api_url, calendar_name, "
                     "calendar_url, location, schema_name, property_tag, filestore_path) "
                     "VALUES ('I', 'u', 'c', 'cu', 'l', 's', 'p', 'f')")
        for status in RecordStatus.values():
            insert = ("INSERT INTO session_log (session_identifier, instrument, event_type, "
                      "record_status) VALUES (?, 'I', 'START', ?)")
            if status in LEGACY_1_4_STATUSES:
                conn.execute(insert, (status, status))
            else:
                with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                    conn.execute(insert, (status, status))


# --- reading ------------------------------------------------------------------


def test_reads_instruments(legacy_db: Path) -> None:
    assert set(instrument_db) == {TITAN, JEOL}
    assert instrument_db[JEOL].timezone is pytz.timezone("America/Denver")
    assert instrument_db[JEOL].computer_name is None
    assert set(load_instruments()) == {TITAN, JEOL}
    found = get_instr_from_api_url("https://nemo.example.org/api/tools/?id=1")
    assert found is not None
    assert found.name == TITAN


def test_reads_logs(legacy_db: Path) -> None:
    assert make_db_query("SELECT count(*) FROM session_log") == [(len(LOG_ROWS),)]
    assert db_query(
        "SELECT user FROM session_log WHERE session_identifier = ? AND event_type = ?",
        ("old-1", "RECORD_GENERATION"),
    ) == (True, [("builder",)])


def test_pairs_legacy_logs(legacy_db: Path) -> None:
    sessions = get_sessions_to_build()
    assert [s.session_identifier for s in sessions] == [
        "todo-1", "https://nemo.example.org/api/usage_events/?id=987654",
    ]
    todo, url = sessions
    assert (todo.dt_from, todo.dt_to) == (
        datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 12, 15, 30, 500000),
    )
    assert todo.user == "bob"
    assert todo.instrument.name == TITAN
    assert url.dt_from.utcoffset() == timedelta(hours=-6)
    assert url.instrument.name == JEOL
    assert repr(url) == "2021-05-02T08:00:00-06:00 to 2021-05-02T09:30:00-06:00 on " + JEOL


# --- writing ------------------------------------------------------------------


def test_insert_log_and_duplicate_detection(
    legacy_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _all_logs(legacy_db)
    log = SessionLog("new-1", JEOL, "2021-06-01T10:00:00.000", "START", None, "WAITING_FOR_END")
    assert log.insert_log() is True
    with caplog.at_level(logging.WARNING):
        assert SessionLog(*LOG_ROWS[4][:4], None, "TO_BE_BUILT").insert_log() is True
        assert log.insert_log() is True
    duplicates = [r for r in caplog.records if "SessionLog already existed in DB" in r.getMessage()]
    assert len(duplicates) == 2
    after = _all_logs(legacy_db)
    assert after[:-1] == before
    assert after[-1] == (len(LOG_ROWS) + 1, "new-1", JEOL, "2021-06-01T10:00:00.000", "START",
                         "WAITING_FOR_END", None)


def test_build_cycle_with_allowed_statuses(legacy_db: Path) -> None:
    todo = get_sessions_to_build()[0]
    result = todo.insert_record_generation_event()
    assert result["session_identifier"] == "todo-1"
    assert result["id_session_log"] == len(LOG_ROWS) + 1
    assert result["event_type"] == "RECORD_GENERATION"
    assert datetime.fromisoformat(result["timestamp"]).utcoffset() is not None
    for status in ("ERROR", RecordStatus.NO_FILES_FOUND, "COMPLETED"):
        assert todo.update_session_status(status) is True
    statuses = {
        row[5] for row in _all_logs(legacy_db) if row[1] == "todo-1"
    }
    assert statuses == {"COMPLETED"}
    assert [s.session_identifier for s in get_sessions_to_build()] == [
        "https://nemo.example.org/api/usage_events/?id=987654"
    ]


def test_record_generation_returns_own_row_despite_older_later_stamped_rows(
    legacy_db: Path,
) -> None:
    with closing(sqlite3.connect(legacy_db)) as conn, conn:
        conn.execute(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status) VALUES ('other', ?, '2999-01-01T00:00:00.000', "
            "'RECORD_GENERATION', 'COMPLETED')",
            (TITAN,),
        )
    todo = get_sessions_to_build()[0]
    result = todo.insert_record_generation_event()
    assert result["session_identifier"] == "todo-1"
    assert result["id_session_log"] == len(LOG_ROWS) + 2


@pytest.mark.parametrize("status", ["NO_CONSENT", RecordStatus.NO_RESERVATION,
                                    "BUILT_NOT_EXPORTED"])
def test_statuses_missing_from_the_1_4_check_are_rejected(
    status: Any, legacy_db: Path
) -> None:
    before = _all_logs(legacy_db)
    todo = get_sessions_to_build()[0]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        todo.update_session_status(status)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        SessionLog("n", TITAN, "2021-06-01T10:00:00", "START", None, status).insert_log()
    assert _all_logs(legacy_db) == before


def test_init_db_adds_indexes_but_keeps_the_1_4_tables_and_rows(legacy_db: Path) -> None:
    tables = _schema(legacy_db)
    logs = _all_logs(legacy_db)
    assert init_db() == legacy_db
    assert _schema(legacy_db) == tables
    assert _all_logs(legacy_db) == logs
    with closing(sqlite3.connect(legacy_db)) as conn:
        indexed = {
            conn.execute(f"PRAGMA index_info('{name}')").fetchone()[2]
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'session_log' AND sql IS NOT NULL"
            ).fetchall()
        }
    assert {"instrument", "session_identifier"} <= indexed
    # init_db never rewrites a table, so the 1.4 CHECK still applies.
    todo = get_sessions_to_build()[0]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        todo.update_session_status("NO_CONSENT")
