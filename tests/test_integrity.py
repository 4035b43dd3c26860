"""Damaged databases are found (issue 20.2).

``check`` and ``info`` run SQLite's ``PRAGMA quick_check`` (``check --full``:
``integrity_check``) and exit 2 naming the file, the first problem and what
to do; ``migrate`` and ``copy`` refuse a damaged source with the same message.
On PostgreSQL, ``check`` reports what the catalogue tells at once: invalid
indexes. The damage here is real: a b-tree page in the middle of a file is
overwritten, and the file still opens.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import TITAN, insert_raw, log, row
from legacy_schema import make_legacy_db

from nexusLIMS.db.cli import main
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import connect
from nexusLIMS.db.errors import ConstraintError, DatabaseDamagedError, NexusLIMSDBError
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.integrity import check_integrity
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.migrations import migrate_db
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.summary import summarize
from nexusLIMS.db.transfer import copy_database


def _fill(path: Path) -> None:
    add_sample_instruments(path)
    insert_logs([log(f"session-{i:05d}", "START", f"2024-01-01T10:{i // 60 % 60:02d}:{i % 60:02d}")
                 for i in range(3000)], path)


def _damage(path: Path, page: Optional[int] = None) -> str:
    """Overwrite the header of a b-tree page (by default the one in the middle of ``path``);
    return SQLite's first complaint. The file still opens: its first page (the schema's)
    is intact."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    pages = len(data) // size
    assert pages > 20
    start = ((page or pages // 2) - 1) * size
    data[start:start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    found: list[str] = []
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM instruments").fetchone() == (3,)
        try:  # SQLite may stop at once on a page it cannot read
            for (text,) in conn.execute("PRAGMA quick_check"):
                found += [line for line in str(text).splitlines()
                          if line and not line.startswith("***")]
        except sqlite3.DatabaseError as exc:
            found.append(str(exc))
    assert found
    assert found != ["ok"]
    return found[0]


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, str]:
    """A current database with 3000 logs, damaged in the middle; and its first problem."""
    path = init_db(tmp_path / "damaged.sqlite").path
    _fill(path)
    return path, _damage(path)


@pytest.fixture
def damaged_legacy(tmp_path: Path) -> tuple[Path, str]:
    """The same as a NexusLIMS 1.4 file (one that migrate would change)."""
    path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    _fill(path)
    return path, _damage(path)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_damage_reported(err: str, path: Path, problem: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nexuslims-db: error: "), err
    assert f"{path} is damaged: {problem}" in lines[0]
    assert "restore it from a backup" in lines[0]
    assert f"sqlite3 {path} .recover" in lines[0]


@pytest.mark.parametrize("argv", [["check"], ["check", "--json"], ["check", "--full"],
                                  ["info"], ["info", "--json"]])
def test_check_and_info_find_a_damaged_file(
        damaged: tuple[Path, str], argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path, problem = damaged
    before = _files(path.parent)
    code, out, err = _run(capsys, "--db", path, *argv)
    assert (code, out) == (2, "")
    _assert_damage_reported(err, path, problem)
    assert _files(path.parent) == before


@pytest.mark.parametrize("argv", [["migrate"], ["migrate", "--dry-run"],
                                  ["migrate", "--no-backup"]])
def test_migrate_refuses_a_damaged_file(
        damaged_legacy: tuple[Path, str], argv: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    path, problem = damaged_legacy
    before = _files(path.parent)
    code, out, err = _run(capsys, "--db", path, *argv)
    assert (code, out) == (2, "")
    _assert_damage_reported(err, path, problem)
    assert _files(path.parent) == before  # no backup either


@pytest.mark.parametrize("force", [False, True])
def test_copy_refuses_a_damaged_source(
        damaged: tuple[Path, str], force: bool, capsys: pytest.CaptureFixture[str]) -> None:
    path, problem = damaged
    target = path.with_name("copy.sqlite")
    if force:
        init_db(target)
    before = _files(path.parent)
    code, out, err = _run(capsys, "copy", path, target, *(["--force"] if force else []))
    assert (code, out) == (2, "")
    _assert_damage_reported(err, path, problem)
    assert _files(path.parent) == before  # no new target, no partial file


def test_the_library_raises_one_error_with_every_problem(
        damaged_legacy: tuple[Path, str], tmp_path: Path) -> None:
    path, problem = damaged_legacy
    for call in (lambda: check_integrity(path), lambda: check_integrity(path, full=True),
                 lambda: summarize(path), lambda: migrate_db(path),
                 lambda: migrate_db(path, dry_run=True),
                 lambda: copy_database(path, tmp_path / "copy.sqlite")):
        with pytest.raises(DatabaseDamagedError) as raised:
            call()
        assert isinstance(raised.value, NexusLIMSDBError)
        assert raised.value.problems[0] == problem
        assert str(path) in str(raised.value)
    assert not (tmp_path / "copy.sqlite").exists()


def test_a_damaged_page_read_by_a_query_is_the_same_error(damaged: tuple[Path, str]) -> None:
    """SQLite's own SQLITE_CORRUPT, met by any query, is a DatabaseDamagedError too (and
    still the sqlite3.DatabaseError NexusLIMS 1.4 raised)."""
    path, _ = damaged
    with closing(sqlite3.connect(path)) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'session_log'"
                               ).fetchone()
    _damage(path, root)
    with pytest.raises(DatabaseDamagedError) as raised, connect(path) as conn:
        conn.fetchall("SELECT * FROM session_log")
    assert isinstance(raised.value, sqlite3.DatabaseError)
    assert "malformed" in str(raised.value)
    assert ".recover" in str(raised.value)


def test_a_healthy_database_passes(nexuslims_database: DatabaseLocation,
                                   nexuslims_instruments: dict[str, Instrument],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    check_integrity()
    check_integrity(full=True)
    for argv in (["check"], ["check", "--full"], ["info"]):
        code, _, err = _run(capsys, *argv)
        assert (code, err) == (0, "")


def test_rows_a_check_forbids_are_not_damage(legacy: Path) -> None:
    """1.4's CHECK lacks statuses it wrote: migrate refuses such rows, naming them."""
    with closing(sqlite3.connect(legacy)) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("INSERT INTO session_log (session_identifier, instrument, timestamp, "
                     "event_type, record_status) VALUES ('s', ?, '2024-01-01T10:00:00', "
                     "'START', 'NO_CONSENT')", (TITAN,))
        conn.commit()
    check_integrity(legacy, full=True)


def test_an_invalid_index_on_postgresql(nexuslims_postgres_db: DatabaseLocation,
                                        nexuslims_instruments: dict[str, Instrument],
                                        capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    insert_raw([row("twice", "START", "2024-01-01T10:00:00"),
                row("twice", "END", "2024-01-01T11:00:00")])
    with connect(begin=None) as conn, pytest.raises(ConstraintError):
        # Fails on the duplicate, and leaves the index behind, invalid.
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY one_log_each "
                     "ON session_log (session_identifier)")
    for argv in (["check"], ["info", "--json"],
                 ["copy", nexuslims_postgres_db.target, tmp_path / "copy.sqlite"]):
        code, out, err = _run(capsys, *argv)
        assert (code, out) == (2, "")
        assert "index one_log_each of table session_log is invalid" in err
        assert "REINDEX INDEX one_log_each" in err
        assert str(nexuslims_postgres_db) in err
    assert not (tmp_path / "copy.sqlite").exists()
    with pytest.raises(DatabaseDamagedError) as raised:
        check_integrity()
    assert len(raised.value.problems) == 1
    with connect(begin=None) as conn:
        conn.execute("DROP INDEX one_log_each")
    check_integrity()
    assert _run(capsys, "check")[0] == 0
