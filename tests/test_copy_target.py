"""``copy`` knows its target and is all or nothing (issue 20.6).

The same database under another name (a symbolic or hard link, a relative
path; on PostgreSQL, another URL of the same database) is refused at once,
before any lock is asked for; a folder target is named in the error; a new
SQLite target is written as ``<target>.partial`` beside it and renamed when
complete, so that a copy killed at any moment leaves no target, or the whole
previous one.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from helpers import copied_state, log

from nexusLIMS.db.cli import main
from nexusLIMS.db.config import DatabaseLocation, locate_database
from nexusLIMS.db.connection import connect, tracing
from nexusLIMS.db.errors import DatabaseConfigError, DatabaseLockedError, UnsupportedDatabaseError
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.samples import add_sample_instruments, populate_demo
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.transfer import copy_database


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = init_db(tmp_path / "source.sqlite").path
    populate_demo(path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every statement run, on any database, while the test runs."""
    seen: list[str] = []
    with tracing(lambda event, text: seen.append(text) if event == "execute" else None):
        yield seen


def _names(source: Path) -> dict[str, Path]:
    folder = source.parent
    (folder / "sub").mkdir()
    links = {"symbolic link": folder / "link.sqlite", "hard link": folder / "hard.sqlite",
             "path through ..": folder / "sub" / ".." / source.name}
    links["symbolic link"].symlink_to(source)
    os.link(source, links["hard link"])
    return links


@pytest.mark.parametrize("force", [False, True])
def test_the_same_file_by_another_name_is_refused_at_once(
        source: Path, force: bool, statements: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "symlink"):
        pytest.skip("needs symbolic links")
    names = _names(source)
    before = _files(source.parent)
    for name in names.values():
        with pytest.raises(UnsupportedDatabaseError, match="the same database"):
            copy_database(source, name, force=force)
    monkeypatch.chdir(source.parent)
    with pytest.raises(UnsupportedDatabaseError, match="the same database"):
        copy_database(source, source.name, force=force)  # a relative path
    # Refused before any transaction began: no wait for the source's own lock.
    assert [s for s in statements if s.startswith(("BEGIN", "INSERT", "DROP", "CREATE"))] == []
    assert _files(source.parent) == before


def test_the_command_line_says_the_same_database(
        source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = source.with_name("link.sqlite")
    link.symlink_to(source)
    assert main(["copy", "--force", str(source), str(link)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "the same database" in err
    assert str(link) in err


def _same_database_urls(location: DatabaseLocation) -> list[str]:
    """Other URLs of the same server database (and schema)."""
    url = location.target
    urls = [f"{url}&application_name=another-name"]
    if "@127.0.0.1:" in url:
        urls.append(url.replace("@127.0.0.1:", "@localhost:"))
    return urls


def test_the_same_postgresql_database_by_another_url_is_refused(
        source: Path, nexuslims_postgres_db: DatabaseLocation,
        capsys: pytest.CaptureFixture[str]) -> None:
    copy_database(source, nexuslims_postgres_db)
    before = copied_state(nexuslims_postgres_db)
    for url in _same_database_urls(nexuslims_postgres_db):
        with pytest.raises(UnsupportedDatabaseError, match="the same database"):
            copy_database(nexuslims_postgres_db, url, force=True)
        assert main(["copy", "--force", nexuslims_postgres_db.target, url]) == 1
        assert "the same database" in capsys.readouterr().err
    assert copied_state(nexuslims_postgres_db) == before


@pytest.fixture
def other_schema(nexuslims_postgres_server: str) -> Iterator[DatabaseLocation]:
    """A second, empty NexusLIMS database on the same server (a schema of its own)."""
    schema = f"nexuslims_other_{uuid.uuid4().hex[:12]}"
    with connect(nexuslims_postgres_server, begin=None) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in nexuslims_postgres_server else "?"
    try:
        yield init_db(f"{nexuslims_postgres_server}{separator}options=-csearch_path%3D{schema}")
    finally:
        with connect(nexuslims_postgres_server, begin=None) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_another_schema_of_the_same_server_is_another_database(
        source: Path, nexuslims_postgres_db: DatabaseLocation,
        other_schema: DatabaseLocation) -> None:
    copy_database(source, nexuslims_postgres_db)
    copy_database(nexuslims_postgres_db, other_schema)
    assert copied_state(other_schema) == copied_state(source)


def test_a_folder_target_is_named(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = source.parent / "backups"
    folder.mkdir()
    with pytest.raises(DatabaseConfigError, match="is a folder"):
        copy_database(source, folder)
    assert main(["copy", str(source), str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{str(folder)!r}" in err
    assert "is a folder" in err
    assert list(folder.iterdir()) == []


def test_a_new_file_is_written_beside_the_target_and_renamed(source: Path) -> None:
    target = source.with_name("new.sqlite")
    partial = source.with_name("new.sqlite.partial")
    seen: list[tuple[bool, bool]] = []
    copy_database(source, target,
                  progress=lambda *_: seen.append((target.exists(), partial.exists())))
    assert seen
    assert set(seen) == {(False, True)}
    assert not partial.exists()
    assert copied_state(target) == copied_state(source)


def test_what_a_killed_copy_left_is_removed_by_the_next(
        source: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = source.with_name("new.sqlite")
    partial = source.with_name("new.sqlite.partial")
    partial.write_bytes(b"half a database")
    partial.with_name(partial.name + "-journal").write_bytes(b"its journal")
    with caplog.at_level(logging.WARNING, "nexusLIMS"):
        copy_database(source, target)
    assert f"Removed {partial}" in caplog.text
    assert sorted(p.name for p in source.parent.iterdir()) == ["new.sqlite", "source.sqlite"]
    assert copied_state(target) == copied_state(source)


def test_a_copy_being_written_is_not_removed(source: Path) -> None:
    target = source.with_name("new.sqlite")
    partial = source.with_name("new.sqlite.partial")
    with closing(sqlite3.connect(partial, isolation_level=None)) as running:
        running.execute("BEGIN IMMEDIATE")
        running.execute("CREATE TABLE t (x)")
        with pytest.raises(DatabaseLockedError, match=r"another copy to .* is running"):
            copy_database(source, target)
        assert partial.exists()
        running.execute("ROLLBACK")
    assert not target.exists()


# --- killed copies -------------------------------------------------------------------

_WORKER = """
import sys, time
from nexusLIMS.db.transfer import copy_database

source, target, pause, force = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"

def progress(table, done, total):
    print(table, done, total, flush=True)
    time.sleep(pause)

copy_database(source, target, force=force, progress=progress)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with 20,000 logs: four chunks of the copy's 5,000 rows."""
    path = init_db(tmp_path_factory.mktemp("big") / "big.sqlite").path
    add_sample_instruments(path)
    insert_logs([log(f"s{i}", "START", f"2024-01-01T10:{i // 60 % 60:02d}:{i % 60:02d}")
                 for i in range(20_000)], path)
    return path


def _copy_killed(source: Path, target: Path, *, after_line: int, pause: float,
                 force: bool = False) -> list[str]:
    """Copy in a subprocess and SIGKILL it after its ``after_line``-th progress line."""
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(source), str(target), str(pause), str(int(force))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            lines.append(line.strip())
            if len(lines) > after_line:
                break
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.communicate(timeout=60)
    return lines


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize(("after_line", "pause"),
                         [(0, 0.5), (2, 0.5), (4, 0.5), (0, 0.0), (2, 0.0), (4, 0.0), (5, 0.0)],
                         ids=["instruments", "mid session_log", "last chunk",
                              "racing 0", "racing 2", "racing 4", "racing 5"])
def test_a_new_target_killed_at_any_moment_is_absent_or_whole(
        big_source: Path, tmp_path: Path, after_line: int, pause: float) -> None:
    target = tmp_path / "copy.sqlite"
    lines = _copy_killed(big_source, target, after_line=after_line, pause=pause)
    assert lines[0] == "instruments 3 3"
    if target.exists():  # the kill came after the rename: the copy is whole
        assert copied_state(target) == copied_state(big_source)
        target.unlink()
    else:
        assert pause == 0 or lines[-1] != "done"
    copy_database(big_source, target)  # removes what the killed copy left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.sqlite"]
    assert copied_state(target) == copied_state(big_source)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("after_line", [0, 3])
def test_an_existing_target_killed_mid_copy_is_as_it_was(
        big_source: Path, tmp_path: Path, after_line: int) -> None:
    target = init_db(tmp_path / "previous.sqlite").path
    populate_demo(target)
    before = copied_state(target)
    _copy_killed(big_source, target, after_line=after_line, pause=0.5, force=True)
    assert copied_state(target) == before  # its journal rolled the copy back
    copy_database(big_source, target, force=True)
    assert copied_state(target) == copied_state(big_source)
    assert locate_database(target).path == target
