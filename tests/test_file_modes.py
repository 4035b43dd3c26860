"""Files the package makes are never more readable than their source (issue 20.4).

A migration's backup and a copy's new target (and the partial files they are
written as) get at most the source file's permissions, less the umask; a new
database, which has no source, follows the umask (SQLite alone would make it
0644 whatever the umask). POSIX permissions only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from legacy_schema import make_legacy_db

from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.migrations import migrate_db
from nexusLIMS.db.samples import add_sample_instruments, populate_demo
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.transfer import copy_database

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after the test (which sets its own)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# (mode of the source, umask): the result is the source's mode less the umask.
CASES = [(0o600, 0o022), (0o640, 0o022), (0o660, 0o002), (0o644, 0o077), (0o604, 0o000)]
IDS = [f"{source:o} umask {mask:03o}" for source, mask in CASES]


@pytest.mark.parametrize(("source_mode", "mask"), CASES, ids=IDS)
def test_a_migration_backup_is_no_more_readable_than_its_database(
        tmp_path: Path, umask: None, source_mode: int, mask: int) -> None:
    path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    add_sample_instruments(path)
    path.chmod(source_mode)
    os.umask(mask)
    result = migrate_db(path)
    assert result.backup is not None
    assert _mode(result.backup) == source_mode & ~mask
    assert _mode(path) == source_mode  # the database itself keeps its mode


@pytest.mark.parametrize(("source_mode", "mask"), CASES, ids=IDS)
def test_a_new_copy_and_its_partial_file_are_no_more_readable_than_the_source(
        tmp_path: Path, umask: None, source_mode: int, mask: int) -> None:
    source = init_db(tmp_path / "source.sqlite")
    populate_demo(source)
    source.path.chmod(source_mode)
    os.umask(mask)
    target = tmp_path / "copy" / "target.sqlite"
    partial_modes: list[int] = []

    def progress(table: str, done: int, total: int) -> None:
        partial = target.with_name(target.name + ".partial")
        partial_modes.append(_mode(partial))
        assert not target.exists()

    copy_database(source, target, progress=progress)
    assert partial_modes
    assert set(partial_modes) == {source_mode & ~mask}
    assert _mode(target) == source_mode & ~mask


@pytest.mark.parametrize("mask", [0o077, 0o027, 0o022, 0o002])
def test_a_new_database_follows_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    location = init_db(tmp_path / "new.sqlite")
    assert _mode(location.path) == 0o666 & ~mask
    populate_demo(location)  # its journal came and went
    assert _mode(location.path) == 0o666 & ~mask


def test_a_copy_from_a_server_follows_the_umask(
        nexuslims_postgres_db: DatabaseLocation, tmp_path: Path, umask: None) -> None:
    populate_demo(nexuslims_postgres_db)
    os.umask(0o077)
    copy_database(nexuslims_postgres_db, tmp_path / "private.sqlite")
    assert _mode(tmp_path / "private.sqlite") == 0o600
    os.umask(0o002)
    copy_database(nexuslims_postgres_db, tmp_path / "shared.sqlite")
    assert _mode(tmp_path / "shared.sqlite") == 0o664


def test_an_existing_target_keeps_its_mode(tmp_path: Path, umask: None) -> None:
    """An existing file is written in place: its owner chose its mode."""
    source = init_db(tmp_path / "source.sqlite")
    populate_demo(source)
    target = init_db(tmp_path / "target.sqlite").path
    target.chmod(0o600)
    copy_database(source, target)
    assert _mode(target) == 0o600
