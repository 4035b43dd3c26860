"""Moving a facility: ``copy_database`` and ``nexuslims-db copy`` between any two backends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import TITAN, copied_state, insert_raw, log, row, rows, sql
from legacy_schema import make_legacy_db

from nexusLIMS.db.cli import main
from nexusLIMS.db.config import DatabaseLocation, locate_database
from nexusLIMS.db.connection import connect
from nexusLIMS.db.errors import UnsupportedDatabaseError
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.samples import add_sample_instruments, populate_demo
from nexusLIMS.db.schema import SCHEMA_VERSION, init_db, inspect
from nexusLIMS.db.sessions import get_sessions_to_build
from nexusLIMS.db.transfer import copy_database


def _fill(database: Any) -> None:
    """The demo, plus gaps in the ids and a counter above the largest id."""
    populate_demo(database)
    insert_logs([log("extra", "START", "2024-05-08T09:00:00", user=None)], database)
    sql("DELETE FROM session_log WHERE id_session_log IN (3, 11)", database=database)


@pytest.fixture
def source(tmp_path: Path) -> DatabaseLocation:
    location = init_db(tmp_path / "source.sqlite")
    _fill(location)
    return location


@pytest.mark.parametrize("target_backend", ["sqlite", "postgresql"])
def test_a_copy_keeps_every_row_id_and_counter(source: DatabaseLocation, target_backend: str,
                                               tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    target = (locate_database(tmp_path / "target.sqlite", must_exist=False)
              if target_backend == "sqlite" else request.getfixturevalue("nexuslims_postgres_db"))
    before = copied_state(source)
    result = copy_database(source, target)
    assert copied_state(target) == before
    assert copied_state(source) == before  # the source is only read
    assert [(t.table, t.rows) for t in result.tables] == [
        ("instruments", 3), ("session_log", 9), ("session_claims", 0),
        ("session_revisions", 0)]
    assert result.next_log_id == 12
    insert_logs([log("after-copy", "START", "2024-05-09T09:00:00")], target)
    assert rows(target)[-1].id_session_log == 12  # continues after the source's ids
    insert_logs([log("after-copy", "END", "2024-05-09T10:00:00")], target)
    assert [s.session_identifier for s in get_sessions_to_build(database=target)] == \
        [s.session_identifier for s in get_sessions_to_build(database=source)] + ["after-copy"]


def test_a_copy_from_postgresql_back_to_sqlite_is_identical(
    source: DatabaseLocation, nexuslims_postgres_db: DatabaseLocation, tmp_path: Path
) -> None:
    there = copy_database(source, nexuslims_postgres_db)
    back = copy_database(nexuslims_postgres_db, tmp_path / "back.sqlite")
    assert copied_state(tmp_path / "back.sqlite") == copied_state(source)
    assert [t.checksum for t in back.tables] == [t.checksum for t in there.tables]
    assert back.next_log_id == there.next_log_id


def test_a_1_4_file_is_migrated_on_the_way(tmp_path: Path) -> None:
    legacy = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    add_sample_instruments(legacy)
    insert_logs([log("s", "START", "2024-05-06T09:00:00"), log("s", "END", "2024-05-06T10:00:00")],
                legacy)
    before = legacy.read_bytes()
    result = copy_database(legacy, tmp_path / "new.sqlite")
    assert result.source_version == 0
    assert copied_state(tmp_path / "new.sqlite")["version"] == SCHEMA_VERSION
    assert copied_state(tmp_path / "new.sqlite")["logs"] == copied_state(legacy)["logs"]
    assert legacy.read_bytes() == before
    sql("UPDATE session_log SET record_status = 'NO_CONSENT'",
        database=tmp_path / "new.sqlite")  # the new CHECK allows it


def test_a_non_empty_target_is_refused_unless_forced(source: DatabaseLocation,
                                                     nexuslims_database: DatabaseLocation,
                                                     nexuslims_instruments: Any) -> None:
    before = copied_state(nexuslims_database)
    with pytest.raises(UnsupportedDatabaseError, match=r"not empty.*--force"):
        copy_database(source, nexuslims_database)
    assert copied_state(nexuslims_database) == before
    copy_database(source, nexuslims_database, force=True)
    assert copied_state(nexuslims_database) == copied_state(source)


def test_an_empty_current_database_is_a_fine_target(source: DatabaseLocation,
                                                    nexuslims_database: DatabaseLocation) -> None:
    copy_database(source, nexuslims_database)
    assert copied_state(nexuslims_database) == copied_state(source)


def test_a_failed_copy_leaves_the_target_as_it_was(
    source: DatabaseLocation, nexuslims_database: DatabaseLocation,
    nexuslims_instruments: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = copied_state(nexuslims_database)
    calls = []

    def fail_late(table: str, done: int, total: int) -> None:
        calls.append(table)
        if table == "session_log":
            raise RuntimeError("the network went away")

    with pytest.raises(RuntimeError, match="network"):
        copy_database(source, nexuslims_database, force=True, progress=fail_late)
    assert calls == ["instruments", "session_log"]
    assert copied_state(nexuslims_database) == before


def test_a_failed_copy_to_a_new_file_leaves_no_file(source: DatabaseLocation,
                                                    tmp_path: Path) -> None:
    def fail(table: str, done: int, total: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        copy_database(source, tmp_path / "new.sqlite", progress=fail)
    assert not (tmp_path / "new.sqlite").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.sqlite"]


def test_logs_of_missing_instruments_cannot_go_to_postgresql(
    source: DatabaseLocation, nexuslims_postgres_db: DatabaseLocation, tmp_path: Path
) -> None:
    insert_raw([row("orphan", "START", "2024-05-06T09:00:00", instrument="Gone-1")], source)
    before = copied_state(nexuslims_postgres_db)
    with pytest.raises(ValueError, match="1 session logs of instruments missing"):
        copy_database(source, nexuslims_postgres_db)
    assert copied_state(nexuslims_postgres_db) == before
    copy_database(source, tmp_path / "copy.sqlite")  # SQLite keeps them, as migrate does
    assert copied_state(tmp_path / "copy.sqlite") == copied_state(source)


def test_refusals(source: DatabaseLocation, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDatabaseError, match="onto itself"):
        copy_database(source, source.path)
    other = tmp_path / "other.sqlite"
    with connect(other, create=True) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(UnsupportedDatabaseError, match="another application"):
        copy_database(source, other)
    with connect(other) as conn:
        assert inspect(conn).tables == {"notes"}


def test_the_command_line_copies_shows_progress_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    big = init_db(tmp_path / "big.sqlite")
    add_sample_instruments(big)
    insert_logs([log(f"s{i}", "START", f"2024-01-01T10:{i // 60 % 60:02d}:{i % 60:02d}")
                 for i in range(12_000)], big)
    # Progress is shown on a terminal only (see test_cli for the quiet case).
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["copy", str(big.path), str(tmp_path / "copy.sqlite")]) == 0
    out, err = capsys.readouterr()
    assert "session_log        12000" in out
    assert "Row counts and checksums match. New session logs continue at id 12001." in out
    assert "copying session_log: 12000/12000 rows (100%)" in err
    assert main(["copy", str(big.path), str(tmp_path / "copy.sqlite")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["copy", str(tmp_path / "missing.sqlite"), str(tmp_path / "x.sqlite")]) == 1
    assert not (tmp_path / "x.sqlite").exists()


def test_ids_of_a_session_continue_in_postgresql(source: DatabaseLocation,
                                                 nexuslims_postgres_db: DatabaseLocation) -> None:
    copy_database(source, nexuslims_postgres_db)
    insert_logs([log("next", "START", "2024-06-01T09:00:00", instrument=TITAN)])
    assert rows()[-1].id_session_log == 12
