"""nexusLIMS.db.migrations: numbered steps bring any older database up to date.

Issues 5, 9.3 and 13.4. The NexusLIMS 1.4 database is built from
``legacy_schema.make_legacy_db`` with a few hundred history rows (gaps in the
ids, an AUTOINCREMENT counter above the largest id left), and compared row
for row, id for id, before and after. Every refusal and every failure must
leave the file byte-identical.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import TITAN, describe, log, sql
from legacy_schema import (
    LEGACY_1_4_INDEX,
    LEGACY_1_4_STATUSES,
    NEXUSLIMS_2X_REVISION,
    make_2x_db,
    make_legacy_db,
)

from nexusLIMS.db import (
    SCHEMA_VERSION,
    MigrationError,
    MigrationResult,
    UnsupportedDatabaseError,
    init_db,
    migrate_db,
)
from nexusLIMS.db import migrations as migrations_module
from nexusLIMS.db.backends.sqlite import SQLITE
from nexusLIMS.db.cli import main as cli_main
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import connect
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.errors import DatabaseNotFoundError
from nexusLIMS.db.logs import LOG_COLUMNS, insert_logs
from nexusLIMS.db.migrations import STEPS, backup_path_for, pending_steps
from nexusLIMS.db.samples import add_sample_instruments, sample_instruments
from nexusLIMS.db.schema import INDEXES, SESSION_CLAIMS, SESSION_REVISIONS, TABLES
from nexusLIMS.db.session_handler import SessionLog, get_sessions_to_build
from nexusLIMS.db.sessions import set_session_status

COLUMNS = ", ".join(f'"{column}"' for column in LOG_COLUMNS)
SEQUENCE = 1_000  # the AUTOINCREMENT counter of the legacy file, above its largest id
BACKUP_NAME = re.compile(r"^legacy\.sqlite\.bak-\d{8}T\d{6}(-\d+)?$")

#: The schema of this package's previous release (schema version 1), whose
#: foreign key still cascaded deletes.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS instruments (
    instrument_pid  VARCHAR(100) NOT NULL PRIMARY KEY,
    api_url         TEXT NOT NULL UNIQUE,
    calendar_name   TEXT NOT NULL,
    calendar_url    TEXT NOT NULL,
    location        VARCHAR(100) NOT NULL,
    schema_name     TEXT NOT NULL,
    property_tag    VARCHAR(20) NOT NULL,
    filestore_path  TEXT NOT NULL,
    computer_name   TEXT UNIQUE,
    computer_ip     VARCHAR(15) UNIQUE,
    computer_mount  TEXT,
    harvester       TEXT,
    timezone        TEXT NOT NULL DEFAULT 'America/New_York'
);
CREATE TABLE IF NOT EXISTS session_log (
    id_session_log      INTEGER PRIMARY KEY AUTOINCREMENT,
    session_identifier  VARCHAR(36) NOT NULL,
    instrument          VARCHAR(100) NOT NULL
        REFERENCES instruments (instrument_pid) ON UPDATE CASCADE ON DELETE CASCADE,
    timestamp           DATETIME NOT NULL
        DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now', 'localtime')),
    event_type          TEXT NOT NULL CHECK (event_type IN ('START', 'END', 'RECORD_GENERATION')),
    record_status       TEXT NOT NULL DEFAULT 'WAITING_FOR_END'
        CHECK (record_status IN ('COMPLETED', 'WAITING_FOR_END', 'TO_BE_BUILT', 'ERROR',
                                 'NO_FILES_FOUND', 'NO_CONSENT', 'NO_RESERVATION',
                                 'BUILT_NOT_EXPORTED')),
    user                VARCHAR(50)
);
CREATE INDEX IF NOT EXISTS session_log_instrument_idx ON session_log (instrument);
CREATE INDEX IF NOT EXISTS session_log_session_identifier_idx ON session_log (session_identifier);
CREATE INDEX IF NOT EXISTS session_log_status_event_idx ON session_log (record_status, event_type);
CREATE INDEX IF NOT EXISTS session_log_to_be_built_idx
    ON session_log (event_type, session_identifier, instrument, timestamp, user, record_status)
    WHERE record_status = 'TO_BE_BUILT';
PRAGMA user_version = 1;
"""


def _query(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, args).fetchall()


def _rows(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, f"SELECT {COLUMNS} FROM session_log ORDER BY id_session_log")


def _instruments(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT * FROM instruments ORDER BY instrument_pid")


def _sequence(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT name, seq FROM sqlite_sequence ORDER BY name")


def _schema(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")


def _user_version(path: Path) -> int:
    return int(_query(path, "PRAGMA user_version")[0][0])


def _foreign_key(path: Path) -> list[tuple[Any, ...]]:
    """(table, from, to, on_update, on_delete) of session_log's foreign keys."""
    return [row[2:7] for row in _query(path, "PRAGMA foreign_key_list('session_log')")]


def _backups(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.bak-*"))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _index_names(path: Path) -> set[str]:
    return {name for (name,) in _query(
        path, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}


def _insert_instruments(conn: sqlite3.Connection) -> list[str]:
    pids = []
    for instrument in sample_instruments():
        row = instrument.to_row()
        pids.append(row["instrument_pid"])
        conn.execute(
            f"INSERT INTO instruments ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    return pids


def _fill_legacy(path: Path, sessions: int = 160) -> None:
    """Add the sample instruments and history rows (~2.5 a session) as 1.4 wrote them."""
    rng = random.Random(5)
    with closing(sqlite3.connect(path)) as conn:
        pids = _insert_instruments(conn)
        rows = []
        for i in range(sessions):
            identifier = (f"https://nemo.example.org/api/usage_events/?id={i}" if i % 3 == 0
                          else f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}")
            pid = rng.choice(pids)
            status = rng.choice(LEGACY_1_4_STATUSES)
            user = rng.choice(["alice", "bob", None])
            day = f"2021-{1 + i % 12:02d}-{1 + i % 28:02d}"
            offset = rng.choice(["", "-05:00", "-07:00"])
            events = [("START", f"{day}T09:00:00.000{offset}"),
                      ("END", f"{day}T11:30:00.000{offset}")]
            if status == "COMPLETED":
                events.append(("RECORD_GENERATION", f"{day}T12:00:00.123456-05:00"))
            rows += [(identifier, pid, timestamp, event, status, user)
                     for event, timestamp in events]
        conn.executemany(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status, user) VALUES (?, ?, ?, ?, ?, ?)", rows)
        # the record builder deleted some RECORD_GENERATION rows, an admin some others
        conn.execute("DELETE FROM session_log WHERE id_session_log % 17 = 0")
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'session_log'",
                     (max(SEQUENCE, len(rows) + 100),))
        conn.commit()


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    _fill_legacy(path)
    monkeypatch.setenv("nexusLIMS_db_path", str(path))
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    return path


# --- the steps ----------------------------------------------------------------


def test_steps_are_numbered_with_names_and_one_line_descriptions() -> None:
    assert [step.version for step in STEPS] == list(range(1, SCHEMA_VERSION + 1))
    assert len({step.name for step in STEPS}) == len(STEPS)
    for step in STEPS:
        assert re.fullmatch(r"[a-z][a-z0-9_]+", step.name), step.name
        assert step.description.strip() == step.description
        assert step.description
        assert "\n" not in step.description
        assert callable(step.apply)
    assert [step.rebuilds for step in STEPS] == [True, True, False, False]
    assert [step.name for step in STEPS[2:]] == [SESSION_CLAIMS.name, SESSION_REVISIONS.name]


@pytest.mark.parametrize("version", range(SCHEMA_VERSION + 1))
def test_pending_steps(version: int) -> None:
    assert [step.version for step in pending_steps(version)] == \
        list(range(version + 1, SCHEMA_VERSION + 1))
    assert all(step in STEPS for step in pending_steps(version))


def test_no_steps_pending_above_the_current_version() -> None:
    assert pending_steps(SCHEMA_VERSION) == ()
    assert pending_steps(SCHEMA_VERSION + 3) == ()


def test_backup_path_for_never_names_an_existing_file(tmp_path: Path) -> None:
    from datetime import datetime

    path = tmp_path / "legacy.sqlite"
    when = datetime(2024, 5, 1, 10, 0, 0)
    first = backup_path_for(path, when)
    assert first == tmp_path / "legacy.sqlite.bak-20240501T100000"
    first.write_bytes(b"")
    second = backup_path_for(path, when)
    assert second == tmp_path / "legacy.sqlite.bak-20240501T100000-2"
    second.with_name(second.name + ".partial").write_bytes(b"")
    assert backup_path_for(path, when) == tmp_path / "legacy.sqlite.bak-20240501T100000-3"


# --- a NexusLIMS 1.4 file -----------------------------------------------------


def test_the_legacy_fixture_is_a_1_4_database(legacy: Path) -> None:
    rows = _rows(legacy)
    assert 300 <= len(rows) <= 500
    assert max(row[0] for row in rows) < SEQUENCE
    assert len(rows) < max(row[0] for row in rows)  # ids have gaps
    assert _user_version(legacy) == 0
    assert _foreign_key(legacy) == [
        ("instruments", "instrument", "instrument_pid", "CASCADE", "CASCADE")]
    with closing(sqlite3.connect(legacy)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE session_log SET record_status = 'NO_CONSENT' WHERE rowid = 1")


def test_dry_run_lists_the_pending_steps_and_changes_nothing(legacy: Path) -> None:
    leftover = legacy.with_name(legacy.name + ".bak-20200101T000000.partial")
    leftover.write_bytes(b"half a backup")
    content, files = legacy.read_bytes(), _files(legacy.parent)

    result = migrate_db(legacy, dry_run=True)

    assert result.migrated is False
    assert result.steps == STEPS
    assert (result.from_version, result.to_version) == (0, 0)
    assert result.rows == len(_rows(legacy))
    assert result.backup is None
    assert result.vacuumed is False
    assert result.removed_partial_backups == ()
    assert legacy.read_bytes() == content
    assert _files(legacy.parent) == files


def test_migrate_keeps_every_row_id_instrument_and_the_counter(legacy: Path) -> None:
    rows, instruments, sequence = _rows(legacy), _instruments(legacy), _sequence(legacy)

    result = migrate_db(legacy)

    assert isinstance(result, MigrationResult)
    assert result.migrated is True
    assert (result.from_version, result.to_version) == (0, SCHEMA_VERSION)
    assert result.steps == STEPS
    assert result.rows == len(rows)
    assert result.orphans == 0
    assert result.vacuumed is True
    assert result.removed_partial_backups == ()
    assert result.path == legacy
    assert _rows(legacy) == rows
    assert _instruments(legacy) == instruments
    assert _sequence(legacy) == sequence == [("session_log", SEQUENCE)]
    assert _user_version(legacy) == SCHEMA_VERSION
    assert _query(legacy, "PRAGMA foreign_key_check") == []
    assert _query(legacy, "PRAGMA integrity_check") == [("ok",)]


def test_migrated_file_has_the_new_constraints_indexes_and_tables(legacy: Path) -> None:
    migrate_db(legacy)

    assert _foreign_key(legacy) == [
        ("instruments", "instrument", "instrument_pid", "CASCADE", "RESTRICT")]
    assert {index.name for index in INDEXES} <= _index_names(legacy)
    for table in (SESSION_CLAIMS, SESSION_REVISIONS):
        assert [row[1] for row in _query(legacy, f"PRAGMA table_info('{table.name}')")] == \
            list(table.column_names)
        assert _query(legacy, f"SELECT count(*) FROM {table.name}") == [(0,)]


def test_migrated_session_log_is_the_one_init_db_makes(legacy: Path, tmp_path: Path) -> None:
    fresh = init_db(tmp_path / "fresh.sqlite").path
    migrate_db(legacy)

    def tables(path: Path) -> list[tuple[Any, ...]]:
        return [row for row in _schema(path) if row[0] == "table"]

    assert [row for row in tables(legacy) if row[1] != "instruments"] == \
        [row for row in tables(fresh) if row[1] != "instruments"]
    # 1.4's index on session_log.instrument is replaced by ours (same column)
    assert _index_names(legacy) == _index_names(fresh)


@pytest.mark.parametrize("status", ["NO_CONSENT", RecordStatus.NO_RESERVATION,
                                    "BUILT_NOT_EXPORTED"])
def test_statuses_missing_from_1_4_are_accepted_after_migrating(legacy: Path, status: Any) -> None:
    first = _rows(legacy)[0][1]
    count = sum(1 for row in _rows(legacy) if row[1] == first)
    migrate_db(legacy)

    assert set_session_status(first, status) == count
    assert {row[5] for row in _rows(legacy) if row[1] == first} == {str(status)}


def test_new_rows_continue_after_the_kept_autoincrement_counter(legacy: Path) -> None:
    migrate_db(legacy)
    SessionLog("after-migration", TITAN, "2024-01-01T10:00:00", "START", None).insert_log()
    assert _rows(legacy)[-1][:2] == (SEQUENCE + 1, "after-migration")


def test_pairing_reads_the_same_sessions_before_and_after(legacy: Path) -> None:
    before = get_sessions_to_build(on_error="skip")
    migrate_db(legacy)
    after = get_sessions_to_build(on_error="skip")
    assert before  # the fixture has TO_BE_BUILT pairs
    assert [repr(s) for s in after] == [repr(s) for s in before]


def test_backup_is_a_readable_copy_of_the_original(legacy: Path) -> None:
    rows, schema, sequence = _rows(legacy), _schema(legacy), _sequence(legacy)

    result = migrate_db(legacy)

    assert result.backup is not None
    assert result.backup.parent == legacy.parent
    assert BACKUP_NAME.match(result.backup.name), result.backup.name
    assert _backups(legacy.parent) == [result.backup]
    assert _rows(result.backup) == rows
    assert _schema(result.backup) == schema
    assert _sequence(result.backup) == sequence
    assert _user_version(result.backup) == 0
    assert _query(result.backup, "PRAGMA integrity_check") == [("ok",)]


def test_no_backup_makes_none(legacy: Path) -> None:
    result = migrate_db(legacy, backup=False)
    assert result.migrated is True
    assert result.backup is None
    assert _backups(legacy.parent) == []


def test_second_run_changes_nothing_and_says_so(
    legacy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate_db(legacy)
    content, files = legacy.read_bytes(), _files(legacy.parent)

    again = migrate_db(legacy)

    assert again.migrated is False
    assert again.steps == ()
    assert again.backup is None
    assert again.vacuumed is False
    assert (again.from_version, again.to_version) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert legacy.read_bytes() == content
    assert _files(legacy.parent) == files

    assert cli_main(["migrate", "--db", str(legacy)]) == 0
    assert "nothing to do, nothing changed" in capsys.readouterr().out
    assert legacy.read_bytes() == content
    assert _files(legacy.parent) == files


def test_default_path_comes_from_the_environment(legacy: Path) -> None:
    result = migrate_db()
    assert result.path == legacy
    assert result.migrated is True


def test_the_freed_space_is_given_back(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    _fill_legacy(path, sessions=2_000)
    assert len(_rows(path)) > 4_000

    result = migrate_db(path, backup=False)

    assert result.vacuumed is True
    [(page_size,)] = _query(path, "PRAGMA page_size")
    [(page_count,)] = _query(path, "PRAGMA page_count")
    assert _query(path, "PRAGMA freelist_count") == [(0,)]
    assert path.stat().st_size == page_size * page_count
    # no copy of the table stays behind: as compact as the same rows (and
    # indexes) in a new database
    fresh = init_db(tmp_path / "fresh.sqlite").path
    with closing(sqlite3.connect(fresh)) as conn:
        conn.execute("ATTACH DATABASE ? AS old", (str(path),))
        with conn:
            conn.execute("INSERT INTO instruments SELECT * FROM old.instruments")
            conn.execute(f"INSERT INTO session_log ({COLUMNS}) SELECT {COLUMNS} "
                         f"FROM old.session_log")
            conn.execute(f"CREATE INDEX IF NOT EXISTS \"{LEGACY_1_4_INDEX}\" "
                         f"ON session_log (instrument)")
        conn.execute("DETACH DATABASE old")
        conn.execute("VACUUM")
    assert path.stat().st_size <= fresh.stat().st_size + 4 * page_size


# --- databases made by this package -------------------------------------------


def test_a_database_made_by_init_db_is_already_current(
    nexuslims_instruments: dict[str, Any], nexuslims_db: Path
) -> None:
    SessionLog("s1", TITAN, "2024-01-01T10:00:00", "START", None).insert_log()
    content = nexuslims_db.read_bytes()

    result = migrate_db(nexuslims_db)

    assert result.migrated is False
    assert result.steps == ()
    assert result.backup is None
    assert nexuslims_db.read_bytes() == content
    assert _backups(nexuslims_db.parent) == []


def test_a_file_of_our_previous_release_is_rebuilt_to_restrict_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v1.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA_V1)
    monkeypatch.setenv("nexusLIMS_db_path", str(path))
    add_sample_instruments()
    insert_logs([log("s1", "START", "2024-05-01T10:00:00"),
                 log("s1", "END", "2024-05-01T11:00:00"),
                 log("s2", "START", "2024-05-02T10:00:00", status="NO_CONSENT")])
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM session_log WHERE session_identifier = 's2'")
    rows, sequence = _rows(path), _sequence(path)
    assert _user_version(path) == 1
    assert _foreign_key(path)[0][4] == "CASCADE"

    result = migrate_db(path)

    assert (result.from_version, result.to_version) == (1, SCHEMA_VERSION)
    assert [step.version for step in result.steps] == [2, 3, 4]
    assert result.vacuumed is True
    assert result.backup is not None
    assert _user_version(result.backup) == 1
    assert _foreign_key(path) == [
        ("instruments", "instrument", "instrument_pid", "CASCADE", "RESTRICT")]
    assert _rows(path) == rows
    assert _sequence(path) == sequence == [("session_log", 3)]
    assert {index.name for index in INDEXES} == _index_names(path)
    assert {SESSION_CLAIMS.name, SESSION_REVISIONS.name} <= {
        name for (name,) in _query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_version_2_file_only_gets_the_new_tables(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Any]
) -> None:
    insert_logs([log("s1", "START", "2024-05-01T10:00:00")])
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        conn.executescript("DROP TABLE session_claims; DROP TABLE session_revisions; "
                           "PRAGMA user_version = 2;")
    rows, session_log = _rows(nexuslims_db), [r for r in _schema(nexuslims_db)
                                              if r[2] == "session_log"]

    result = migrate_db(nexuslims_db, backup=False)

    assert [step.version for step in result.steps] == [3, 4]
    assert result.vacuumed is False  # nothing was rebuilt
    assert _rows(nexuslims_db) == rows
    assert [r for r in _schema(nexuslims_db) if r[2] == "session_log"] == session_log
    assert _user_version(nexuslims_db) == SCHEMA_VERSION
    assert {index.name for index in INDEXES} == _index_names(nexuslims_db)


def test_a_database_of_ours_stamped_0_is_rebuilt_keeping_rows(
    nexuslims_instruments: dict[str, Any], nexuslims_db: Path
) -> None:
    SessionLog("s1", TITAN, "2024-01-01T10:00:00", "START", None).insert_log()
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        conn.execute("PRAGMA user_version = 0")
    rows = _rows(nexuslims_db)

    result = migrate_db(nexuslims_db, backup=False)

    assert result.migrated is True
    assert result.steps == STEPS
    assert _rows(nexuslims_db) == rows
    assert _user_version(nexuslims_db) == SCHEMA_VERSION


# --- backups: leftovers, failures ---------------------------------------------


def _leftovers(path: Path) -> list[Path]:
    partial = path.with_name(path.name + ".bak-20200101T000000.partial")
    journal = partial.with_name(partial.name + "-journal")
    partial.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    journal.write_bytes(b"\x00" * 512)
    return [partial, journal]


def test_leftover_partial_backups_are_removed_and_reported(legacy: Path) -> None:
    leftovers = _leftovers(legacy)
    complete = legacy.with_name(legacy.name + ".bak-20190101T000000")
    complete.write_bytes(b"an older, complete backup")

    result = migrate_db(legacy)

    assert result.removed_partial_backups == tuple(sorted(leftovers))
    assert not any(leftover.exists() for leftover in leftovers)
    assert complete.read_bytes() == b"an older, complete backup"
    assert result.backup is not None
    assert _backups(legacy.parent) == sorted([complete, result.backup])


def test_leftovers_are_removed_even_when_nothing_is_migrated(
    nexuslims_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = nexuslims_db.read_bytes()
    leftovers = _leftovers(nexuslims_db)

    result = migrate_db(nexuslims_db)

    assert result.migrated is False
    assert result.removed_partial_backups == tuple(sorted(leftovers))
    assert _files(nexuslims_db.parent) == [nexuslims_db.name]
    assert nexuslims_db.read_bytes() == content
    assert any("incomplete backup" in record.getMessage() for record in caplog.records)


def _fail_after_writing_a_partial(conn: Any, target: Path) -> Path:
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(b"SQLite format 3\x00")
    raise OSError(28, "No space left on device")


def test_a_failed_backup_leaves_no_backup_and_the_database_unchanged(
    legacy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content, files = legacy.read_bytes(), _files(legacy.parent)
    monkeypatch.setattr(SQLITE, "backup", _fail_after_writing_a_partial)

    with pytest.raises(MigrationError, match="No space left on device") as raised:
        migrate_db(legacy)

    assert "left unchanged" in str(raised.value)
    assert _backups(legacy.parent) == []
    assert _files(legacy.parent) == files
    assert legacy.read_bytes() == content


def test_a_backup_that_fails_to_complete_leaves_nothing(
    legacy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nexusLIMS.db.backends.sqlite as sqlite_backend

    content, files = legacy.read_bytes(), _files(legacy.parent)

    def fail_to_rename(source: Any, target: Any) -> None:
        assert Path(source).stat().st_size > 0  # the copy was written
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sqlite_backend.os, "replace", fail_to_rename)
    with pytest.raises(MigrationError, match="Input/output error"):
        migrate_db(legacy)
    monkeypatch.undo()

    assert _files(legacy.parent) == files
    assert legacy.read_bytes() == content


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_a_backup_into_a_read_only_folder_fails_leaving_nothing(legacy: Path) -> None:
    content, files = legacy.read_bytes(), _files(legacy.parent)
    legacy.parent.chmod(0o555)
    try:
        with pytest.raises(MigrationError, match="left unchanged"):
            migrate_db(legacy)
    finally:
        legacy.parent.chmod(0o755)
    assert _files(legacy.parent) == files
    assert legacy.read_bytes() == content


@pytest.mark.parametrize("error", [
    sqlite3.OperationalError("injected failure in step 3"),
    pytest.param(RuntimeError("injected failure in step 3")),
], ids=["database-error", "other-error"])
def test_a_failed_step_names_the_kept_backup_and_changes_nothing(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    content, rows, schema = legacy.read_bytes(), _rows(legacy), _schema(legacy)

    def fail(conn: Any) -> None:
        raise error

    steps = tuple(dataclasses.replace(step, apply=fail) if step.version == 3 else step
                  for step in STEPS)
    monkeypatch.setattr(migrations_module, "STEPS", steps)

    with pytest.raises(MigrationError, match="injected failure in step 3") as raised:
        migrate_db(legacy)

    [backup] = _backups(legacy.parent)
    assert f"the backup {backup} was kept" in str(raised.value)
    assert legacy.read_bytes() == content
    assert _rows(backup) == rows
    assert _schema(backup) == schema
    # a retry works
    monkeypatch.undo()
    assert migrate_db(legacy, backup=False).migrated is True
    assert _rows(legacy) == rows


# --- files that are refused, before anything is written ------------------------


def _assert_refused(path: Path, error: type[Exception], match: str) -> str:
    content, files = path.read_bytes(), _files(path.parent)
    version = _user_version(path)
    with pytest.raises(error, match=match) as raised:
        migrate_db(path)
    assert path.read_bytes() == content
    assert _files(path.parent) == files
    assert _user_version(path) == version
    return str(raised.value)


@pytest.mark.parametrize("revision", [NEXUSLIMS_2X_REVISION, "3f2a1c9e7b4d"])
def test_a_nexuslims_2x_file_is_refused(tmp_path: Path, revision: str) -> None:
    path = make_2x_db(tmp_path / "nexuslims2.sqlite", revision=revision)
    message = _assert_refused(path, UnsupportedDatabaseError, r"NexusLIMS 2\.x")
    assert f"alembic revision {revision}" in message
    with pytest.raises(UnsupportedDatabaseError, match=r"NexusLIMS 2\.x"):
        migrate_db(path, dry_run=True)


@pytest.mark.parametrize(("table", "extra"), [("session_log", "notes"),
                                              ("instruments", "room_phone")])
def test_a_table_with_an_extra_column_is_refused_naming_it(
    legacy: Path, table: str, extra: str
) -> None:
    with closing(sqlite3.connect(legacy)) as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {extra} TEXT")
    message = _assert_refused(legacy, MigrationError, f"extra: {extra}")
    assert f"its {table} table has unexpected columns" in message
    assert "nothing was changed" in message


@pytest.mark.parametrize(("column", "value"), [("record_status", "DONE"),
                                               ("event_type", "STOP")])
def test_values_the_new_check_forbids_are_refused_before_anything_is_written(
    legacy: Path, column: str, value: str
) -> None:
    with closing(sqlite3.connect(legacy)) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(f"UPDATE session_log SET {column} = ? WHERE id_session_log IN (1, 2)",
                     (value,))
        conn.commit()
    _assert_refused(legacy, MigrationError,
                    f"session_log.{column} holds values the current schema forbids: "
                    f"'{value}' \\(2 rows\\)")


def test_a_trigger_on_session_log_is_refused_before_any_backup(legacy: Path) -> None:
    with closing(sqlite3.connect(legacy)) as conn:
        conn.execute("CREATE TRIGGER t AFTER INSERT ON session_log BEGIN SELECT 1; END")
    _assert_refused(legacy, MigrationError, "trigger t")


def test_a_file_without_the_nexuslims_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
    _assert_refused(path, UnsupportedDatabaseError,
                    "is not a NexusLIMS database: it has no instruments or session_log table")


def test_a_newer_schema_version_is_refused_unchanged(nexuslims_db: Path) -> None:
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    _assert_refused(nexuslims_db, UnsupportedDatabaseError, "newer than this package")


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(DatabaseNotFoundError):
        migrate_db(missing)
    assert list(tmp_path.iterdir()) == []


# --- rows and objects kept as they were ---------------------------------------


def test_rows_whose_instrument_is_missing_are_kept(legacy: Path) -> None:
    with closing(sqlite3.connect(legacy)) as conn:  # 1.4 never turned foreign keys on
        conn.execute(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status, user) VALUES ('orphan', 'GONE-1', '2021-01-01T10:00:00', 'START', "
            "'ERROR', NULL)"
        )
        conn.commit()
    rows = _rows(legacy)

    result = migrate_db(legacy, backup=False)

    assert result.orphans == 1
    assert _rows(legacy) == rows
    assert [row[1] for row in _query(legacy, "PRAGMA foreign_key_check")] == [rows[-1][0]]


def test_an_emptied_table_keeps_its_counter(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    _fill_legacy(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM session_log")
        conn.commit()

    migrate_db(path, backup=False)

    assert _rows(path) == []
    assert _sequence(path) == [("session_log", SEQUENCE)]


def test_an_index_an_admin_added_is_kept(legacy: Path) -> None:
    with closing(sqlite3.connect(legacy)) as conn:
        conn.execute("CREATE INDEX admin_user_idx ON session_log (user)")
    migrate_db(legacy, backup=False)
    assert _index_names(legacy) == {index.name for index in INDEXES} | {"admin_user_idx"}
    assert LEGACY_1_4_INDEX not in _index_names(legacy)  # replaced by ours


# --- PostgreSQL ---------------------------------------------------------------


def _pg_state(location: DatabaseLocation) -> dict[str, Any]:
    return {**describe(location), "rows": sql(
        f"SELECT {COLUMNS} FROM session_log ORDER BY id_session_log", database=location)}


def _set_up_version(location: DatabaseLocation, version: int,
                    on_delete: Optional[str] = None) -> None:
    with connect(location, begin="IMMEDIATE") as conn:
        for table in TABLES:
            if table.since > version:
                conn.execute(f"DROP TABLE {table.name}")
        if on_delete:
            [(name,)] = conn.fetchall(
                "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass('session_log') "
                "AND contype = 'f'")
            conn.execute(f'ALTER TABLE session_log DROP CONSTRAINT "{name}"')
            conn.execute("ALTER TABLE session_log ADD CONSTRAINT session_log_instrument_fkey "
                         "FOREIGN KEY (instrument) REFERENCES instruments (instrument_pid) "
                         f"ON UPDATE CASCADE ON DELETE {on_delete}")
        conn.backend.set_schema_version(conn.raw, version)


def test_postgresql_migrates_from_version_2(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Any]
) -> None:
    current = _pg_state(nexuslims_postgres_db)
    insert_logs([log("s1", "START", "2024-05-01T10:00:00"),
                 log("s1", "END", "2024-05-01T11:00:00")])
    _set_up_version(nexuslims_postgres_db, 2)
    before = _pg_state(nexuslims_postgres_db)
    assert before["version"] == 2
    assert SESSION_CLAIMS.name not in before["tables"]
    assert SESSION_REVISIONS.name not in before["tables"]

    result = migrate_db()

    assert result.migrated is True
    assert (result.from_version, result.to_version) == (2, SCHEMA_VERSION)
    assert [step.version for step in result.steps] == [3, 4]
    assert result.backup is None
    assert result.vacuumed is False
    after = _pg_state(nexuslims_postgres_db)
    assert after == {**current, "rows": before["rows"]}
    assert len(after["rows"]) == 2
    again = migrate_db()
    assert again.migrated is False
    assert again.steps == ()


def test_postgresql_migrates_a_cascading_foreign_key_to_restrict(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Any]
) -> None:
    current = _pg_state(nexuslims_postgres_db)
    insert_logs([log("s1", "START", "2024-05-01T10:00:00")])
    _set_up_version(nexuslims_postgres_db, 1, on_delete="CASCADE")
    before = _pg_state(nexuslims_postgres_db)
    assert before["on_delete"] == "CASCADE"

    result = migrate_db()

    assert [step.version for step in result.steps] == [2, 3, 4]
    assert _pg_state(nexuslims_postgres_db) == {**current, "rows": before["rows"]}
