"""Issue 5, migration: ``migrate_db`` brings a NexusLIMS 1.4 database up to date.

The 1.4 database is built here from ``legacy_schema.make_legacy_db`` with a
few hundred history rows (gaps in the ids, an AUTOINCREMENT counter above the
largest id left), and compared row for row, id for id, before and after.
"""

from __future__ import annotations

import random
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from legacy_schema import LEGACY_1_4_STATUSES, make_legacy_db

from nexusLIMS.db import SCHEMA_VERSION, MigrationError, MigrationResult, init_db, migrate_db
from nexusLIMS.db import migration as migration_module
from nexusLIMS.db.connection import ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.errors import DatabaseNotFoundError
from nexusLIMS.db.samples import sample_instruments
from nexusLIMS.db.schema import run_statements
from nexusLIMS.db.session import set_session_status
from nexusLIMS.db.session_handler import SessionLog, get_sessions_to_build

COLUMNS = ("id_session_log", "session_identifier", "instrument", "timestamp",
           "event_type", "record_status", "user")
SEQUENCE = 1_000  # the AUTOINCREMENT counter of the legacy file, above its largest id
BACKUP_NAME = re.compile(r"^legacy\.sqlite\.bak-\d{8}T\d{6}$")


def _query(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, args).fetchall()


def _rows(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, f"SELECT {', '.join(COLUMNS)} FROM session_log ORDER BY id_session_log")


def _instruments(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT * FROM instruments ORDER BY instrument_pid")


def _sequence(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT name, seq FROM sqlite_sequence ORDER BY name")


def _schema(path: Path) -> list[tuple[Any, ...]]:
    return _query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")


def _user_version(path: Path) -> int:
    return int(_query(path, "PRAGMA user_version")[0][0])


def _backups(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.bak-*"))


def _fill_legacy(path: Path) -> None:
    """Add the sample instruments and ~400 history rows as 1.4 would have written them."""
    rng = random.Random(5)
    pids = []
    with closing(sqlite3.connect(path)) as conn:
        for instrument in sample_instruments():
            row = instrument.to_row()
            pids.append(row["instrument_pid"])
            conn.execute(
                f"INSERT INTO instruments ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
        for i in range(160):
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
            for event, timestamp in events:
                conn.execute(
                    "INSERT INTO session_log (session_identifier, instrument, timestamp, "
                    "event_type, record_status, user) VALUES (?, ?, ?, ?, ?, ?)",
                    (identifier, pid, timestamp, event, status, user),
                )
        # the record builder deleted some RECORD_GENERATION rows, an admin some others
        conn.execute("DELETE FROM session_log WHERE id_session_log % 17 = 0")
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'session_log'", (SEQUENCE,))
        conn.commit()


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_legacy_db(tmp_path / "legacy.sqlite")
    _fill_legacy(path)
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    monkeypatch.delenv(ENV_DB_PATH_2X, raising=False)
    return path


def test_the_legacy_fixture_is_a_1_4_database(legacy: Path) -> None:
    rows = _rows(legacy)
    assert 300 <= len(rows) <= 500
    assert max(row[0] for row in rows) < SEQUENCE
    assert _user_version(legacy) == 0
    with closing(sqlite3.connect(legacy)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE session_log SET record_status = 'NO_CONSENT' WHERE rowid = 1")


def test_migrate_keeps_every_row_id_instrument_and_the_counter(legacy: Path) -> None:
    rows, instruments, sequence = _rows(legacy), _instruments(legacy), _sequence(legacy)

    result = migrate_db(legacy)

    assert isinstance(result, MigrationResult)
    assert result.migrated is True
    assert (result.from_version, result.to_version) == (0, SCHEMA_VERSION)
    assert result.rows == len(rows)
    assert result.orphans == 0
    assert any("NO_CONSENT, NO_RESERVATION" in reason for reason in result.reasons)
    assert _rows(legacy) == rows
    assert _instruments(legacy) == instruments
    assert _sequence(legacy) == sequence == [("session_log", SEQUENCE)]
    assert _user_version(legacy) == SCHEMA_VERSION
    assert _query(legacy, "PRAGMA foreign_key_check") == []
    assert _query(legacy, "PRAGMA integrity_check") == [("ok",)]


def test_migrated_session_log_is_the_one_init_db_makes(legacy: Path, tmp_path: Path) -> None:
    fresh = init_db(tmp_path / "fresh.sqlite")
    migrate_db(legacy)

    def session_log_schema(path: Path) -> list[tuple[Any, ...]]:
        return [row for row in _schema(path) if row[2] == "session_log"]

    assert session_log_schema(legacy) == session_log_schema(fresh)


def test_no_consent_and_no_reservation_are_accepted_after_migrating(legacy: Path) -> None:
    first, second = list(dict.fromkeys(row[1] for row in _rows(legacy)))[:2]
    migrate_db(legacy)

    assert set_session_status(first, RecordStatus.NO_CONSENT) >= 1
    assert set_session_status(second, "NO_RESERVATION") >= 1
    statuses = dict(_query(legacy, "SELECT session_identifier, record_status FROM session_log"))
    assert statuses[first] == "NO_CONSENT"
    assert statuses[second] == "NO_RESERVATION"


def test_new_rows_continue_after_the_kept_autoincrement_counter(legacy: Path) -> None:
    migrate_db(legacy)
    SessionLog("after-migration", "FEI-Titan-TEM-635816", "2024-01-01T10:00:00",
               "START", None).insert_log()
    assert _rows(legacy)[-1][:2] == (SEQUENCE + 1, "after-migration")


def test_pairing_reads_the_same_sessions_before_and_after(legacy: Path) -> None:
    before = get_sessions_to_build(on_error="skip")
    migrate_db(legacy)
    after = get_sessions_to_build(on_error="skip")
    assert before  # the fixture has TO_BE_BUILT pairs
    assert [repr(s) for s in after] == [repr(s) for s in before]


def test_backup_is_a_readable_copy_of_the_original(legacy: Path) -> None:
    rows, schema = _rows(legacy), _schema(legacy)

    result = migrate_db(legacy)

    assert result.backup is not None
    assert result.backup.parent == legacy.parent
    assert BACKUP_NAME.match(result.backup.name), result.backup.name
    assert _backups(legacy.parent) == [result.backup]
    assert _rows(result.backup) == rows
    assert _schema(result.backup) == schema
    assert _user_version(result.backup) == 0


def test_no_backup_makes_none(legacy: Path) -> None:
    result = migrate_db(legacy, backup=False)
    assert result.migrated is True
    assert result.backup is None
    assert _backups(legacy.parent) == []


def test_second_run_changes_nothing_and_says_so(legacy: Path) -> None:
    migrate_db(legacy)
    content = legacy.read_bytes()
    backups = _backups(legacy.parent)

    again = migrate_db(legacy)

    assert again.migrated is False
    assert again.reasons == ()
    assert again.backup is None
    assert (again.from_version, again.to_version) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert legacy.read_bytes() == content
    assert _backups(legacy.parent) == backups


def test_default_path_comes_from_the_environment(legacy: Path) -> None:
    result = migrate_db()
    assert result.path == legacy
    assert result.migrated is True


def test_a_database_made_by_init_db_is_already_current(
    nexuslims_instruments: dict[str, Any], nexuslims_db: Path
) -> None:
    SessionLog("s1", "FEI-Titan-TEM-635816", "2024-01-01T10:00:00", "START", None).insert_log()
    content = nexuslims_db.read_bytes()

    result = migrate_db(nexuslims_db)

    assert result.migrated is False
    assert result.backup is None
    assert nexuslims_db.read_bytes() == content
    assert _backups(nexuslims_db.parent) == []


def test_a_database_of_an_earlier_version_of_ours_is_rebuilt(
    nexuslims_instruments: dict[str, Any], nexuslims_db: Path
) -> None:
    SessionLog("s1", "FEI-Titan-TEM-635816", "2024-01-01T10:00:00", "START", None).insert_log()
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        conn.execute("PRAGMA user_version = 0")
    rows = _rows(nexuslims_db)

    result = migrate_db(nexuslims_db, backup=False)

    assert result.migrated is True
    assert result.reasons == (f"schema version 0 is older than {SCHEMA_VERSION}",)
    assert _rows(nexuslims_db) == rows
    assert _user_version(nexuslims_db) == SCHEMA_VERSION


class InjectedError(RuntimeError):
    pass


def _fail_on_indexes(conn: sqlite3.Connection, kind: str) -> None:
    if kind == "CREATE INDEX":
        raise sqlite3.OperationalError("injected failure while creating the indexes")
    run_statements(conn, kind)


def _fail_restoring_sequence(*args: Any) -> None:
    raise InjectedError("injected failure while restoring the counter")


@pytest.mark.parametrize(
    ("step", "replacement", "error"),
    [
        ("run_statements", _fail_on_indexes, MigrationError),
        ("_restore_sequence", _fail_restoring_sequence, InjectedError),
    ],
)
def test_a_failure_mid_migration_leaves_the_original_unchanged(
    legacy: Path, monkeypatch: pytest.MonkeyPatch, step: str, replacement: Any, error: type
) -> None:
    content, rows, schema = legacy.read_bytes(), _rows(legacy), _schema(legacy)
    monkeypatch.setattr(migration_module, step, replacement)

    with pytest.raises(error, match="injected failure"):
        migrate_db(legacy)

    assert legacy.read_bytes() == content
    assert _rows(legacy) == rows
    assert _schema(legacy) == schema
    assert _user_version(legacy) == 0
    # the backup made before the failure is a good copy, and a retry works
    assert [_rows(backup) for backup in _backups(legacy.parent)] == [rows]
    monkeypatch.undo()
    assert migrate_db(legacy, backup=False).migrated is True
    assert _rows(legacy) == rows


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
    names = {row[1] for row in _schema(legacy) if row[0] == "index"}
    assert {"admin_user_idx", "session_log_instrument_idx",
            "session_log_session_identifier_idx", "session_log_status_event_idx"} <= names


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(DatabaseNotFoundError):
        migrate_db(missing)
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_file_without_the_nexuslims_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(MigrationError, match="Not a NexusLIMS database: it has no instruments "
                                             "or session_log table"):
        migrate_db(path)
    assert _backups(tmp_path) == []


def test_a_newer_schema_version_is_refused_unchanged(nexuslims_db: Path) -> None:
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    content = nexuslims_db.read_bytes()
    with pytest.raises(MigrationError, match="newer than this package"):
        migrate_db(nexuslims_db)
    assert nexuslims_db.read_bytes() == content


def test_a_trigger_on_session_log_is_refused_before_any_backup(legacy: Path) -> None:
    with closing(sqlite3.connect(legacy)) as conn:
        conn.execute("CREATE TRIGGER t AFTER INSERT ON session_log BEGIN SELECT 1; END")
    content = legacy.read_bytes()
    with pytest.raises(MigrationError, match="trigger t"):
        migrate_db(legacy)
    assert legacy.read_bytes() == content
    assert _backups(legacy.parent) == []
