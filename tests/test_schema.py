"""nexusLIMS.db.schema: the one schema definition, init_db, and opening a database.

Issue 2 (points 6, 7): the schema's CHECK lists equal the enums, its columns
are the contract's, init_db creates it and never changes what exists.
Issue 8.6: no delete (or REPLACE) of an instrument takes its history along,
on any database. Issue 13.5: init refuses other applications' files and
leaves no file behind when it fails. Issue 14.3: NexusLIMS 2.x files are
refused. And a NexusLIMS 1.4 file, untouched, works with the package.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import pytz
from helpers import JEOL, QUANTA, TITAN, describe, log, psycopg, sql
from legacy_schema import (
    LEGACY_1_4_INDEX,
    LEGACY_1_4_SCHEMA,
    LEGACY_1_4_STATUSES,
    NEXUSLIMS_2X_REVISION,
    make_2x_db,
    make_legacy_db,
)

from nexusLIMS.db import (
    SCHEMA_VERSION,
    UnsupportedDatabaseError,
    init_db,
    make_db_query,
    migrate_db,
)
from nexusLIMS.db.cli import main as cli_main
from nexusLIMS.db.config import DatabaseLocation, locate_database
from nexusLIMS.db.connection import connect
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.errors import UnsupportedSQLError
from nexusLIMS.db.instruments import Instrument, load_instruments
from nexusLIMS.db.logs import LOG_COLUMNS, StoredLog, insert_logs
from nexusLIMS.db.samples import add_sample_instruments, sample_instruments
from nexusLIMS.db.schema import (
    INDEXES,
    INSTRUMENTS,
    SESSION_LOG,
    TABLES,
    render,
    transaction,
)
from nexusLIMS.db.session_handler import SessionLog, db_query, get_sessions_to_build
from nexusLIMS.instruments import get_instr_from_api_url, instrument_db

CONTRACT_STATUSES = {
    "COMPLETED", "WAITING_FOR_END", "TO_BE_BUILT", "ERROR", "NO_FILES_FOUND",
    "NO_CONSENT", "NO_RESERVATION", "BUILT_NOT_EXPORTED",
}
CONTRACT_EVENTS = {"START", "END", "RECORD_GENERATION"}
# (event_type, record_status) pairs a CHECK must refuse
FORBIDDEN = [("STOP", "COMPLETED"), ("start", "COMPLETED"), ("START", "DONE"),
             ("START", "completed"), ("START", "")]
HISTORY_MESSAGE = re.compile(
    r"its history would be lost.*UPDATE instruments SET instrument_pid.*"
    r"first delete its session_log rows", re.DOTALL)


def _query(path: Path, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, args).fetchall()


def _execute(path: Path, script: str) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(script)


def _count(table: str = "session_log", database: Any = None) -> int:
    return int(sql(f"SELECT count(*) FROM {table}", database=database)[0][0])


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


def expected_description() -> dict[str, Any]:
    tables = sorted(table.name for table in TABLES)
    return {
        "tables": tables,
        "columns": {table.name: list(table.column_names) for table in TABLES},
        "indexes": {name: sorted(index.name for index in INDEXES if index.table == name)
                    for name in tables},
        "on_delete": "RESTRICT",
        "version": SCHEMA_VERSION,
    }


def _contents(database: Any = None) -> tuple[list[tuple[Any, ...]], ...]:
    return (sql("SELECT * FROM instruments ORDER BY instrument_pid", database=database),
            sql("SELECT * FROM session_log ORDER BY id_session_log", database=database))


def _literal(value: Any) -> str:
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def _instrument_values(instrument: Instrument, **changes: Any) -> tuple[str, str]:
    row = {**instrument.to_row(), **changes}
    return ", ".join(row), ", ".join(_literal(value) for value in row.values())


SAMPLES = {instrument.name: instrument for instrument in sample_instruments()}

# --- the enums and the schema's CHECK lists -----------------------------------

INSERT_INSTRUMENT = (
    "INSERT INTO instruments (instrument_pid, api_url, calendar_name, calendar_url, location, "
    "schema_name, property_tag, filestore_path) VALUES ('I-1', 'u', 'c', 'cu', 'l', 's', 'p', 'f')"
)
INSERT_LOG = ("INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
              "record_status) VALUES (?, 'I-1', '2024-05-01T10:00:00', ?, ?)")


def assert_checks_equal_the_enums(
    run: Callable[[str, tuple[Any, ...]], None], errors: tuple[type[BaseException], ...],
    count: Callable[[], int],
) -> None:
    """Every enum value is accepted, anything else refused, through the database itself."""
    run(INSERT_INSTRUMENT, ())
    for event in EventType.values():
        run(INSERT_LOG, (f"event-{event}", event, "TO_BE_BUILT"))
    for status in RecordStatus.values():
        run(INSERT_LOG, (f"status-{status}", "START", status))
    stored = len(EventType.values()) + len(RecordStatus.values())
    assert count() == stored
    for event, status in FORBIDDEN:
        with pytest.raises(errors):
            run(INSERT_LOG, ("bad", event, status))
    assert count() == stored


def test_enums_hold_exactly_the_contract_values() -> None:
    assert set(RecordStatus.values()) == CONTRACT_STATUSES
    assert len(RecordStatus.values()) == 8
    assert set(EventType.values()) == CONTRACT_EVENTS
    assert all(isinstance(member, str) for member in [*RecordStatus, *EventType])
    assert RecordStatus.NO_CONSENT == "NO_CONSENT"
    assert f"{RecordStatus.ERROR}" == str(RecordStatus.ERROR) == "ERROR"
    assert SESSION_LOG.column("event_type").allowed == EventType.values()
    assert SESSION_LOG.column("record_status").allowed == RecordStatus.values()


def test_created_database_checks_equal_the_enums(
    nexuslims_database: DatabaseLocation,
) -> None:
    def run(query: str, params: tuple[Any, ...]) -> None:
        sql(query, params)

    with connect(begin=None) as conn:
        errors = conn.backend.integrity_errors
    assert_checks_equal_the_enums(run, errors, _count)


def test_rendered_sqlite_checks_equal_the_enums(tmp_path: Path) -> None:
    path = tmp_path / "rendered.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(render("sqlite"))
        conn.execute("PRAGMA foreign_keys = ON")

        def run(query: str, params: tuple[Any, ...]) -> None:
            with conn:
                conn.execute(query, params)

        assert_checks_equal_the_enums(
            run, (sqlite3.IntegrityError,),
            lambda: conn.execute("SELECT count(*) FROM session_log").fetchone()[0])


@pytest.fixture
def postgres_schema(nexuslims_postgres_server: str) -> Iterator[tuple[psycopg.Connection[Any],
                                                                      DatabaseLocation]]:
    """A new, empty PostgreSQL schema: an autocommit connection in it, and its location."""
    from nexusLIMS.db.databases import close_pools

    schema = f"nexuslims_render_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in nexuslims_postgres_server else "?"
    location = locate_database(
        f"{nexuslims_postgres_server}{separator}options=-csearch_path%3D{schema}",
        must_exist=False)
    with psycopg.connect(nexuslims_postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        try:
            yield conn, location
        finally:
            close_pools()
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_rendered_postgresql_checks_equal_the_enums(
    postgres_schema: tuple[psycopg.Connection[Any], DatabaseLocation],
) -> None:
    conn, _ = postgres_schema
    conn.execute(render("postgresql"))

    def run(query: str, params: tuple[Any, ...]) -> None:
        conn.execute(query.replace("?", "%s"), params)

    def count() -> int:
        row = conn.execute("SELECT count(*) FROM session_log").fetchone()
        assert row is not None
        return int(row[0])

    assert_checks_equal_the_enums(run, (psycopg.IntegrityError,), count)


# --- render() is the schema init_db creates -----------------------------------


def test_rendered_sqlite_script_makes_the_database_init_db_makes(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.sqlite"
    _execute(rendered, render("sqlite"))
    made = init_db(tmp_path / "made.sqlite").path

    def schema(path: Path) -> list[tuple[Any, ...]]:
        return _query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")

    assert schema(rendered) == schema(made)
    for table in TABLES:
        assert _query(rendered, f"PRAGMA table_info('{table.name}')") == \
            _query(made, f"PRAGMA table_info('{table.name}')")
    assert {**describe(rendered), "version": SCHEMA_VERSION} == expected_description()
    # and it works with the package
    add_sample_instruments(rendered)
    insert_logs([log("s1", "START", "2024-05-01T10:00:00"),
                 log("s1", "END", "2024-05-01T11:00:00")], rendered)
    assert [s.session_identifier for s in get_sessions_to_build(database=rendered)] == ["s1"]


def test_rendered_postgresql_script_makes_the_database_init_db_makes(
    postgres_schema: tuple[psycopg.Connection[Any], DatabaseLocation],
    nexuslims_postgres_db: DatabaseLocation,
) -> None:
    conn, location = postgres_schema
    conn.execute(render("postgresql"))
    rendered, made = describe(location), describe(nexuslims_postgres_db)
    assert made == expected_description()
    assert rendered == made  # the script ends by storing the schema version


def test_render_lists_every_table_and_index_once() -> None:
    for dialect in ("sqlite", "postgresql"):
        script = render(dialect)
        assert script.startswith(f"-- The NexusLIMS session database, schema version "
                                 f"{SCHEMA_VERSION} ({dialect})")
        for table in TABLES:
            assert script.count(f"CREATE TABLE IF NOT EXISTS {table.name} (") == 1
        for index in INDEXES:
            assert script.count(f"CREATE INDEX IF NOT EXISTS {index.name} ON") == 1
    assert "AUTOINCREMENT" in render("sqlite")
    assert "GENERATED BY DEFAULT AS IDENTITY" in render("postgresql")


@pytest.mark.parametrize("argv", [["schema"], ["schema", "--dialect", "sqlite"],
                                  ["schema", "--dialect", "postgresql"]])
def test_cli_schema_prints_render(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("nexusLIMS_db_path", raising=False)
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    assert cli_main(argv) == 0
    out, err = capsys.readouterr()
    assert out == render(argv[-1] if len(argv) == 3 else "sqlite")
    assert err == ""


def test_no_column_list_is_written_twice() -> None:
    assert tuple(SAMPLES[TITAN].to_row()) == INSTRUMENTS.column_names
    assert tuple(Instrument().to_row()) == INSTRUMENTS.column_names
    assert StoredLog._fields == SESSION_LOG.column_names
    assert SESSION_LOG.column_names == LOG_COLUMNS


def test_select_star_returns_the_columns_in_schema_order(
    nexuslims_database: DatabaseLocation,
) -> None:
    with connect() as conn:
        for table in TABLES:
            cursor = conn.execute(f"SELECT * FROM {table.name}")
            assert tuple(column[0] for column in cursor.description) == table.column_names


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
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    SessionLog("a", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    SessionLog("b", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    make_db_query("DELETE FROM session_log WHERE session_identifier = 'b'")
    SessionLog("c", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    # An id is never reused, even after the newest row is deleted.
    assert make_db_query(
        "SELECT session_identifier, id_session_log FROM session_log ORDER BY id_session_log"
    ) == [("a", 1), ("c", 3)]


def test_instruments_unique_columns(nexuslims_db: Path) -> None:
    assert _index_columns(nexuslims_db, "instruments", origin="u") == {
        ("api_url",), ("computer_name",), ("computer_ip",),
    }


def test_session_log_foreign_key_cascades_renames_and_restricts_deletes(
    nexuslims_db: Path,
) -> None:
    keys = _query(nexuslims_db, "PRAGMA foreign_key_list('session_log')")
    # (table, from, to, on_update, on_delete)
    assert [row[2:7] for row in keys] == [
        ("instruments", "instrument", "instrument_pid", "CASCADE", "RESTRICT")
    ]


def test_default_timestamp_is_local_time_with_milliseconds(
    local_zone_ist: timezone, nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    db_query(
        "INSERT INTO session_log (session_identifier, instrument, event_type) VALUES (?, ?, ?)",
        ("s1", TITAN, "START"),
    )
    [(stamp, status, user)] = make_db_query(
        "SELECT timestamp, record_status, user FROM session_log")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}", stamp), stamp
    # Local wall-clock time (UTC+05:30 here), not UTC.
    assert abs(datetime.fromisoformat(stamp) - datetime.now()) < timedelta(hours=1)
    assert status == "WAITING_FOR_END"
    assert user is None


def _default_timestamp_after_the_offset_changes() -> str:
    """Open a connection at UTC+05:30, move the local zone to UTC-05:00, insert a default."""
    make_db_query("SELECT count(*) FROM session_log")
    os.environ["TZ"] = "YST+05:00"  # local_zone_ist restores the zone afterwards
    time.tzset()
    db_query("INSERT INTO session_log (session_identifier, instrument, event_type) "
             "VALUES (?, ?, ?)", ("s1", TITAN, "START"))
    [(stamp,)] = make_db_query("SELECT timestamp FROM session_log")
    return str(stamp)


def test_default_timestamp_follows_the_local_offset_as_it_changes(
    local_zone_ist: timezone, nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    stamp = _default_timestamp_after_the_offset_changes()
    assert abs(datetime.fromisoformat(stamp) - datetime.now()) < timedelta(hours=1)


def test_default_timestamp_follows_the_local_offset_as_it_changes_on_postgresql(
    local_zone_ist: timezone, nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    stamp = _default_timestamp_after_the_offset_changes()
    assert abs(datetime.fromisoformat(stamp) - datetime.now()) < timedelta(hours=1)


def test_foreign_keys_are_enforced(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with connect(begin=None) as conn:
        errors = conn.backend.integrity_errors
    with pytest.raises(errors, match=r"(?i)foreign key"):
        db_query(
            "INSERT INTO session_log (session_identifier, instrument, event_type) "
            "VALUES (?, ?, ?)",
            ("s1", "No-Such-Instrument", "START"),
        )
    with pytest.raises(errors, match=r"(?i)foreign key"):
        make_db_query(
            "INSERT INTO session_log (session_identifier, instrument, event_type) "
            "VALUES ('s1', 'No-Such-Instrument', 'START')"
        )
    assert make_db_query("SELECT count(*) FROM session_log") == [(0,)]
    if nexuslims_database.backend == "sqlite":
        assert make_db_query("PRAGMA foreign_keys") == [(1,)]


# --- init_db ------------------------------------------------------------------


def test_init_db_makes_every_table_column_index_and_the_version(
    nexuslims_database: DatabaseLocation,
) -> None:
    assert describe(nexuslims_database) == expected_description()


def test_init_db_creates_the_file_and_its_folders(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "nexuslims.sqlite"
    result = init_db(target)
    assert isinstance(result, DatabaseLocation)
    assert result.backend == "sqlite"
    assert result.path == target
    assert target.is_file()
    assert describe(target) == expected_description()
    assert _query(target, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _query(target, "SELECT count(*) FROM session_log") == [(0,)]
    assert _query(target, "SELECT count(*) FROM instruments") == [(0,)]


def test_init_db_accepts_a_string(tmp_path: Path) -> None:
    assert init_db(str(tmp_path / "db.sqlite")).path == tmp_path / "db.sqlite"


def test_init_db_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "from_env.sqlite"
    monkeypatch.setenv("nexusLIMS_db_path", str(target))
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    assert init_db().path == target
    assert ("session_identifier",) in _index_columns(target, "session_log")


def _fill_logs() -> None:
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe").insert_log()
    SessionLog("s1", TITAN, "2021-05-01T11:00:00", "END", None).insert_log()


def test_init_db_is_idempotent_on_a_database_with_rows(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _fill_logs()
    before = (_contents(), describe(nexuslims_database))
    content = nexuslims_database.path.read_bytes() if nexuslims_database.backend == "sqlite" \
        else None
    assert init_db(nexuslims_database).target == nexuslims_database.target
    assert init_db().target == nexuslims_database.target
    assert (_contents(), describe(nexuslims_database)) == before
    assert len(before[0][1]) == 2
    if content is not None:
        assert nexuslims_database.path.read_bytes() == content


def test_init_db_adds_missing_indexes_keeping_rows(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _fill_logs()
    rows = _snapshot(nexuslims_db)[:3]
    names = [name for (name,) in _query(
        nexuslims_db, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]
    assert sorted(names) == sorted(index.name for index in INDEXES)
    _execute(nexuslims_db, "".join(f"DROP INDEX {name};" for name in names))
    assert _index_columns(nexuslims_db, "session_log") == set()

    init_db(nexuslims_db)
    assert describe(nexuslims_db) == expected_description()
    assert _snapshot(nexuslims_db)[:3] == rows


def test_init_db_adds_a_missing_table_keeping_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "partial.sqlite"
    full = init_db(tmp_path / "full.sqlite").path
    [(instruments_sql,)] = _query(full, "SELECT sql FROM sqlite_master WHERE name = 'instruments'")
    _execute(target, instruments_sql + ";")
    with closing(sqlite3.connect(target)) as conn, conn:
        columns, values = _instrument_values(SAMPLES[TITAN])
        conn.execute(f"INSERT INTO instruments ({columns}) VALUES ({values})")
    before = _query(target, "SELECT * FROM instruments ORDER BY instrument_pid")

    init_db(target)
    assert _query(target, "SELECT * FROM instruments ORDER BY instrument_pid") == before
    assert describe(target) == expected_description()
    monkeypatch.setenv("nexusLIMS_db_path", str(target))
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    _fill_logs()
    assert make_db_query("SELECT count(*) FROM session_log") == [(2,)]


def test_init_db_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    target = tmp_path / "notes.sqlite"
    content = b"these are not the tables you are looking for\n" * 40
    target.write_bytes(content)
    with pytest.raises(sqlite3.DatabaseError, match="is not a SQLite database"):
        init_db(target)
    assert target.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]


def test_init_on_a_1_4_file_adds_nothing_and_does_not_stamp_it(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    add_sample_instruments(path)
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00")], path)
    content, snapshot = path.read_bytes(), _snapshot(path)
    assert init_db(path).path == path
    assert _snapshot(path) == snapshot
    assert path.read_bytes() == content
    assert _query(path, "PRAGMA user_version") == [(0,)]


# --- init refuses files that are not ours (issue 13.5) ------------------------


def _other_application(path: Path, user_version: int) -> Path:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE photo_albums (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute("INSERT INTO photo_albums (title) VALUES ('holidays')")
        conn.execute(f"PRAGMA user_version = {user_version}")
    return path


def _refuses_other_application(path: Path) -> None:
    content = path.read_bytes()
    with pytest.raises(UnsupportedDatabaseError, match="photo_albums") as raised:
        init_db(path)
    assert "another application" in str(raised.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _force_adds_our_tables(path: Path) -> None:
    assert init_db(path, force=True).path == path
    assert _query(path, "SELECT title FROM photo_albums") == [("holidays",)]
    found = describe(path)
    assert found["columns"].pop("photo_albums") == ["id", "title"]
    assert found["indexes"].pop("photo_albums") == []
    found["tables"].remove("photo_albums")
    assert found == expected_description()


def test_init_refuses_another_applications_file(tmp_path: Path) -> None:
    path = _other_application(tmp_path / "photos.sqlite", 0)
    _refuses_other_application(path)
    _force_adds_our_tables(path)


def test_init_refuses_another_applications_file_with_its_own_user_version(
    tmp_path: Path,
) -> None:
    path = _other_application(tmp_path / "photos.sqlite", 7)
    _refuses_other_application(path)
    _force_adds_our_tables(path)


@pytest.mark.parametrize("force", [False, True])
def test_init_refuses_a_nexuslims_2x_file(tmp_path: Path, force: bool) -> None:
    path = make_2x_db(tmp_path / "nexuslims2.sqlite")
    content = path.read_bytes()
    with pytest.raises(UnsupportedDatabaseError, match=r"NexusLIMS 2\.x") as raised:
        init_db(path, force=force)
    assert NEXUSLIMS_2X_REVISION in str(raised.value)
    assert path.read_bytes() == content


def test_a_failed_init_of_a_new_file_leaves_no_file(tmp_path: Path) -> None:
    from nexusLIMS.db.connection import tracing

    target = tmp_path / "new.sqlite"

    def fail_on_indexes(event: str, text: str) -> None:
        if event == "execute" and text.startswith("CREATE INDEX"):
            raise OSError("injected failure while creating the indexes")

    with tracing(fail_on_indexes), pytest.raises(OSError, match="injected failure"):
        init_db(target)
    assert list(tmp_path.iterdir()) == []


def test_init_under_a_regular_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    parent = tmp_path / "not-a-folder"
    parent.write_text("a file\n")
    with pytest.raises(OSError):  # noqa: PT011 (the OS says which)
        init_db(parent / "nexuslims.sqlite")
    assert parent.read_text() == "a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_init_in_a_read_only_folder_fails_and_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
            init_db(folder / "nexuslims.sqlite")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_init_on_an_existing_file_that_fails_keeps_the_file(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    from nexusLIMS.db.connection import tracing

    _execute(nexuslims_db, "DROP INDEX session_log_instrument_idx;")
    content = nexuslims_db.read_bytes()

    def fail_on_indexes(event: str, text: str) -> None:
        if event == "execute" and text.startswith("CREATE INDEX"):
            raise OSError("injected failure")

    with tracing(fail_on_indexes), pytest.raises(OSError, match="injected failure"):
        init_db(nexuslims_db)
    assert nexuslims_db.read_bytes() == content


# --- no delete of an instrument takes its history along (issue 8.6) -----------


@pytest.fixture(params=["sqlite", "postgresql", "migrated-1.4", "untouched-1.4"])
def history_db(request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> DatabaseLocation:
    """A database whose TITAN has 3 logs and QUANTA 1; JEOL has none."""
    if request.param == "sqlite":
        location = locate_database(request.getfixturevalue("nexuslims_db"))
    elif request.param == "postgresql":
        location = request.getfixturevalue("nexuslims_postgres_db")
    else:
        path = make_legacy_db(tmp_path / "legacy.sqlite")
        monkeypatch.setenv("nexusLIMS_db_path", str(path))
        monkeypatch.delenv("NX_DB_PATH", raising=False)
        location = locate_database(path)
    add_sample_instruments()
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00"),
                 log("s2", "START", "2021-05-02T10:00:00", status="WAITING_FOR_END"),
                 log("q1", "START", "2021-05-01T10:00:00", instrument=QUANTA)])
    if request.param == "migrated-1.4":
        migrate_db(backup=False)
    if request.param.endswith("1.4"):
        expected = "RESTRICT" if request.param.startswith("migrated") else "CASCADE"
        assert describe(location)["on_delete"] == expected
    return location


def _history_errors(location: DatabaseLocation) -> tuple[type[BaseException], ...]:
    return (sqlite3.IntegrityError,) if location.backend == "sqlite" else (psycopg.IntegrityError,)


def test_deleting_an_instrument_that_has_logs_is_refused(history_db: DatabaseLocation) -> None:
    before = _contents()
    assert _count() == 4
    with pytest.raises(_history_errors(history_db), match=HISTORY_MESSAGE):
        make_db_query(f"DELETE FROM instruments WHERE instrument_pid = '{TITAN}'")
    with pytest.raises(_history_errors(history_db), match=HISTORY_MESSAGE):
        db_query("DELETE FROM instruments WHERE instrument_pid IN (?, ?)", (QUANTA, JEOL))
    assert _contents() == before
    assert _count() == 4


def test_replacing_an_instrument_that_has_logs_is_refused(history_db: DatabaseLocation) -> None:
    before = _contents()
    columns, values = _instrument_values(SAMPLES[TITAN], location="Building 1, Room 1")
    replace = f"INSERT OR REPLACE INTO instruments ({columns}) VALUES ({values})"
    # a new PID whose api_url is TITAN's: REPLACE would delete TITAN's row
    columns, clash = _instrument_values(SAMPLES[TITAN], instrument_pid="NEW-PID",
                                        computer_name=None, computer_ip=None)
    replace_by_unique = f"INSERT OR REPLACE INTO instruments ({columns}) VALUES ({clash})"
    for statement in (replace, replace_by_unique):
        if history_db.backend == "sqlite":
            with pytest.raises(sqlite3.IntegrityError, match=HISTORY_MESSAGE):
                make_db_query(statement)
        else:  # PostgreSQL has no REPLACE: refused before anything runs
            with pytest.raises(UnsupportedSQLError, match="INSERT OR REPLACE"):
                make_db_query(statement)
    assert _contents() == before
    assert _count() == 4


def test_renaming_an_instrument_carries_its_logs_along(history_db: DatabaseLocation) -> None:
    count = _count()
    old = make_db_query(f"SELECT count(*) FROM session_log WHERE instrument = '{TITAN}'")
    assert old == [(3,)]
    make_db_query(f"UPDATE instruments SET instrument_pid = 'NEW' WHERE instrument_pid = '{TITAN}'")
    assert make_db_query("SELECT count(*) FROM session_log WHERE instrument = 'NEW'") == old
    assert make_db_query(
        f"SELECT count(*) FROM session_log WHERE instrument = '{TITAN}'") == [(0,)]
    assert _count() == count
    assert "NEW" in load_instruments()


def test_deleting_an_instrument_without_logs_works(history_db: DatabaseLocation) -> None:
    before = _contents()
    make_db_query(f"DELETE FROM instruments WHERE instrument_pid = '{JEOL}'")
    assert sorted(load_instruments()) == sorted([TITAN, QUANTA])
    assert _count("instruments") == 2
    assert _contents()[1] == before[1]
    assert _count() == 4


# --- NexusLIMS 2.x files are refused (issue 14.3) -----------------------------


@pytest.fixture(params=["nexusLIMS_db_path", "NX_DB_PATH"])
def nexuslims_2x(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_2x_db(tmp_path / "nexuslims2.sqlite", revision="3f2a1c9e7b4d")
    monkeypatch.delenv("nexusLIMS_db_path", raising=False)
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    monkeypatch.setenv(request.param, str(path))
    return path


def _open_transaction() -> None:
    with transaction():
        pass


def _iterate_instrument_db() -> None:
    list(instrument_db)


CALLS: dict[str, Callable[[], Any]] = {
    "transaction": _open_transaction,
    "make_db_query": lambda: make_db_query("SELECT count(*) FROM session_log"),
    "db_query": lambda: db_query("SELECT * FROM session_log WHERE user = ?", ("alice",)),
    "load_instruments": load_instruments,
    "instrument_db": _iterate_instrument_db,
    "get_sessions_to_build": get_sessions_to_build,
    "insert_log": lambda: SessionLog("s", TITAN, "2024-05-01T10:00:00", "START",
                                     None).insert_log(),
    "add_sample_instruments": add_sample_instruments,
    "init_db": init_db,
    "migrate_db": migrate_db,
}


@pytest.mark.parametrize("call", CALLS.values(), ids=list(CALLS))
def test_a_nexuslims_2x_file_is_refused(nexuslims_2x: Path, call: Callable[[], Any]) -> None:
    content = nexuslims_2x.read_bytes()
    with pytest.raises(UnsupportedDatabaseError, match=r"NexusLIMS 2\.x") as raised:
        call()
    assert "alembic revision 3f2a1c9e7b4d" in str(raised.value)
    assert str(nexuslims_2x) in str(raised.value)
    assert nexuslims_2x.read_bytes() == content
    assert _query(nexuslims_2x, "PRAGMA user_version") == [(0,)]


def test_a_file_without_our_tables_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = _other_application(tmp_path / "photos.sqlite", 0)
    monkeypatch.setenv("nexusLIMS_db_path", str(path))
    content = path.read_bytes()
    with pytest.raises(UnsupportedDatabaseError,
                       match="is not a NexusLIMS database: it has no instruments or session_log "
                             "table"):
        _open_transaction()
    assert path.read_bytes() == content


def test_a_newer_schema_is_refused(nexuslims_db: Path) -> None:
    _execute(nexuslims_db, f"PRAGMA user_version = {SCHEMA_VERSION + 1};")
    content = nexuslims_db.read_bytes()
    with pytest.raises(UnsupportedDatabaseError, match="newer than this package"):
        make_db_query("SELECT count(*) FROM session_log")
    assert nexuslims_db.read_bytes() == content


# --- a NexusLIMS 1.4 file, untouched, works with the package ------------------

# Rows as 1.4's record builder, harvester and Session Logger left them.
INSTRUMENT_ROWS = [
    (TITAN, "https://nemo.example.org/api/tools/?id=1", "FEI Titan TEM",
     "https://nemo.example.org/calendar/titan-tem/", "Building 217, Room F131", "Titan TEM",
     "635816", "./Titan", "TITAN-PC-01", "192.0.2.11", "M:/", "nemo", "America/New_York"),
    (JEOL, "https://nemo.example.org/api/tools/?id=3", "JEOL JEM-3010 TEM",
     "https://nemo.example.org/calendar/jeol-3010/", "Building 1, Room 1201", "JEOL JEM-3010",
     "565989", "./JEOL3010", None, None, None, "nemo", "America/Denver"),
]
NEMO_EVENT = "https://nemo.example.org/api/usage_events/?id=987654"
LOG_ROWS = [
    # session_identifier, instrument, timestamp, event_type, record_status, user
    ("old-1", TITAN, "2020-11-02T09:00:00.000", "START", "COMPLETED", "alice"),
    ("old-1", TITAN, "2020-11-02T10:00:00.000", "END", "COMPLETED", "alice"),
    ("old-1", TITAN, "2020-11-03T01:00:00.123456-05:00", "RECORD_GENERATION", "COMPLETED",
     "builder"),
    ("todo-1", TITAN, "2021-05-01T10:00:00.000", "START", "TO_BE_BUILT", "bob"),
    ("todo-1", TITAN, "2021-05-01T12:15:30.500", "END", "TO_BE_BUILT", None),
    (NEMO_EVENT, JEOL, "2021-05-02T08:00:00-06:00", "START", "TO_BE_BUILT", "carol"),
    (NEMO_EVENT, JEOL, "2021-05-02T09:30:00-06:00", "END", "TO_BE_BUILT", "carol"),
    ("waiting-1", TITAN, "2021-05-03T10:00:00.000", "START", "WAITING_FOR_END", "dave"),
]


def _all_logs(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT id_session_log, session_identifier, instrument, timestamp, "
                        "event_type, record_status, user FROM session_log "
                        "ORDER BY id_session_log")


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


def test_make_legacy_db_makes_the_1_4_tables(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    assert path == tmp_path / "legacy.sqlite"
    assert _query(path, "SELECT type, name FROM sqlite_master WHERE sql IS NOT NULL "
                        "ORDER BY name") == [
        ("table", "instruments"), ("table", "session_log"),
        ("index", LEGACY_1_4_INDEX), ("table", "sqlite_sequence"),
    ]
    assert _query(path, "PRAGMA user_version") == [(0,)]
    assert [row[2:7] for row in _query(path, "PRAGMA foreign_key_list('session_log')")] == [
        ("instruments", "instrument", "instrument_pid", "CASCADE", "CASCADE")
    ]
    assert [row[1] for row in _query(path, "PRAGMA table_info('session_log')")] == \
        list(SESSION_LOG.column_names)
    assert [row[1] for row in _query(path, "PRAGMA table_info('instruments')")] == \
        list(INSTRUMENTS.column_names)
    assert _index_columns(path, "instruments", origin="u") | _index_columns(
        path, "instruments", origin="pk") == {
        ("instrument_pid",), ("api_url",), ("computer_name",), ("computer_ip",),
    }
    assert '"record_status"' in LEGACY_1_4_SCHEMA
    assert "NO_CONSENT" not in LEGACY_1_4_SCHEMA
    assert "NO_RESERVATION" not in LEGACY_1_4_SCHEMA
    assert set(LEGACY_1_4_STATUSES) < set(RecordStatus.values())


def test_legacy_check_accepts_only_the_five_statuses(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(INSERT_INSTRUMENT)
        for status in RecordStatus.values():
            insert = ("INSERT INTO session_log (session_identifier, instrument, event_type, "
                      "record_status) VALUES (?, 'I-1', 'START', ?)")
            if status in LEGACY_1_4_STATUSES:
                conn.execute(insert, (status, status))
            else:
                with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                    conn.execute(insert, (status, status))


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
    assert [s.session_identifier for s in sessions] == ["todo-1", NEMO_EVENT]
    todo, url = sessions
    assert (todo.dt_from, todo.dt_to) == (
        datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 12, 15, 30, 500000),
    )
    assert todo.user == "bob"
    assert todo.instrument.name == TITAN
    assert url.dt_from.utcoffset() == timedelta(hours=-6)
    assert url.instrument.name == JEOL
    assert repr(url) == "2021-05-02T08:00:00-06:00 to 2021-05-02T09:30:00-06:00 on " + JEOL


def test_insert_log_and_duplicate_detection(
    legacy_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _all_logs(legacy_db)
    new = SessionLog("new-1", JEOL, "2021-06-01T10:00:00.000", "START", None, "WAITING_FOR_END")
    assert new.insert_log() is True
    with caplog.at_level(logging.WARNING):
        assert SessionLog(*LOG_ROWS[4][:4], None, "TO_BE_BUILT").insert_log() is True
        assert new.insert_log() is True
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
    assert {row[5] for row in _all_logs(legacy_db) if row[1] == "todo-1"} == {"COMPLETED"}
    assert [s.session_identifier for s in get_sessions_to_build()] == [NEMO_EVENT]


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
def test_statuses_missing_from_the_1_4_check_are_rejected(status: Any, legacy_db: Path) -> None:
    before = _all_logs(legacy_db)
    todo = get_sessions_to_build()[0]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        todo.update_session_status(status)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        SessionLog("n", TITAN, "2021-06-01T10:00:00", "START", None, status).insert_log()
    assert _all_logs(legacy_db) == before


def test_init_db_keeps_the_1_4_file_as_it_is(legacy_db: Path) -> None:
    content = legacy_db.read_bytes()
    assert init_db().path == legacy_db
    assert legacy_db.read_bytes() == content
    # init_db never rewrites a table, so the 1.4 CHECK still applies.
    todo = get_sessions_to_build()[0]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        todo.update_session_status("NO_CONSENT")
