"""The command line ``nexuslims-db`` (package ``nexusLIMS.db.cli``): every subcommand.

Most tests call ``main(argv)`` in-process and read stdout and stderr with
``capsys``; subprocesses only for the console script, ``python -m`` and
Ctrl-C (marked slow). Backend-neutral commands run on SQLite and PostgreSQL
(``nexuslims_database``, passed as ``--db <target>``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import ESC, JEOL, QUANTA, TITAN, Run, insert_raw, row, rows, sql, with_ctrl_c
from legacy_schema import make_legacy_db

from nexusLIMS.db import SCHEMA_VERSION
from nexusLIMS.db.config import (
    ENV_DB_PATH,
    ENV_DB_PATH_2X,
    ENV_TIMEOUT,
    DatabaseLocation,
    locate_database,
)
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.instruments import load_instruments
from nexusLIMS.db.logs import log_end, log_start
from nexusLIMS.db.samples import populate_demo, sample_instruments
from nexusLIMS.db.schema import INSTRUMENTS
from nexusLIMS.db.sessions import find_session_problems, get_sessions_to_build

SCRIPT = Path(sys.executable).with_name("nexuslims-db")
DEMO_FIRST = "8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d"
DEMO_WAITING = "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"
REV_2X = "v2_5_0b"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DB_PATH, raising=False)
    monkeypatch.delenv(ENV_DB_PATH_2X, raising=False)


@pytest.fixture
def demo(nexuslims_db: Path) -> Path:
    """A SQLite demo database (``populate_demo``) that the environment names."""
    populate_demo(nexuslims_db)
    return nexuslims_db


@pytest.fixture
def demo_db(nexuslims_database: DatabaseLocation) -> DatabaseLocation:
    """A demo database on SQLite, then on PostgreSQL; the environment names it."""
    populate_demo(nexuslims_database)
    return nexuslims_database


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM session_log ORDER BY id_session_log").fetchall()


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nexuslims-db: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def locked(demo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The demo database, held by another connection's exclusive lock."""
    monkeypatch.setenv(ENV_TIMEOUT, "0.5")
    with closing(sqlite3.connect(demo, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        yield demo
        holder.execute("ROLLBACK")


def make_2x_file(path: Path) -> Path:
    """Build a file shaped like a NexusLIMS 2.x database (alembic revision v2_5_0b)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(
            """
            CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
            CREATE TABLE instruments (
                instrument_pid VARCHAR(100) NOT NULL PRIMARY KEY, api_url TEXT NOT NULL UNIQUE,
                calendar_url TEXT NOT NULL, location VARCHAR(100) NOT NULL,
                display_name TEXT NOT NULL, property_tag VARCHAR(20) NOT NULL,
                filestore_path TEXT NOT NULL, harvester TEXT,
                timezone TEXT NOT NULL DEFAULT 'America/New_York');
            CREATE TABLE session_log (
                id_session_log INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
                session_identifier VARCHAR(36) NOT NULL, instrument VARCHAR(100) NOT NULL,
                timestamp DATETIME NOT NULL, event_type TEXT NOT NULL,
                record_status TEXT NOT NULL DEFAULT 'WAITING_FOR_END', user VARCHAR(50));
            """
        )
        conn.execute("INSERT INTO alembic_version VALUES (?)", (REV_2X,))
        conn.execute("INSERT INTO instruments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (TITAN, "https://nemo.example.org/api/tools/?id=1", "https://cal/",
                      "Building 217", "FEI Titan TEM", "635816", "./Titan", "nemo",
                      "America/New_York"))
        conn.execute("INSERT INTO session_log (session_identifier, instrument, timestamp, "
                     "event_type, record_status, user) VALUES (?, ?, ?, ?, ?, ?)",
                     ("s-2x", TITAN, "2024-05-01T10:00:00-04:00", "START", "TO_BE_BUILT", "a"))
    return path


ADD = ["instruments", "add", "--pid", "FEI-Helios-DB-636663",
       "--api-url", "https://nemo.example.org/api/tools/?id=4", "--calendar-name", "FEI Helios",
       "--calendar-url", "https://nemo.example.org/calendar/helios/",
       "--location", "Building 217, Room D101", "--schema-name", "Helios NanoLab",
       "--property-tag", "636663", "--filestore-path", "./Helios"]

# Every subcommand that opens an existing database (all but init, schema, completion).
OPENING = [
    ["sessions"], ["sessions", "--json"], ["check"], ["check", "--json"],
    ["instruments"], ["instruments", "--json"], ADD,
    ["instruments", "edit", TITAN, "--location", "elsewhere"], ["instruments", "remove", TITAN],
    ["log", "start", "--instrument", TITAN, "--id", "s1"],
    ["log", "end", "--instrument", TITAN, "--id", "s1"],
    ["status", "s1", "COMPLETED"], ["migrate"], ["migrate", "--dry-run"],
    ["migrate", "--no-backup"], ["repair"], ["repair", "--dry-run"], ["repair", "--yes"],
    ["info"], ["info", "--json"],
]


# ---------------------------------------------------------------- init


def test_init_creates_an_empty_current_database(
    tmp_path: Path, run: Run, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("--db", "sub/new.sqlite", "init")
    path = tmp_path / "sub" / "new.sqlite"
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"Initialised NexusLIMS database {path} (schema version {SCHEMA_VERSION}).",
        "Next, add an instrument:",
        "  nexuslims-db --db sub/new.sqlite instruments add --help",
    ]
    assert _rows(path) == []
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_init_again_keeps_the_rows(demo: Path, run: Run) -> None:
    before = _rows(demo)
    code, out, err = run("--db", demo, "init")
    assert (code, err) == (0, "")
    assert out.startswith(f"Initialised NexusLIMS database {demo} ")
    assert _rows(demo) == before


def test_init_demo_prints_a_summary_ending_with_the_next_command(
    tmp_path: Path, run: Run, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("--db", "demo.sqlite", "init", "--demo")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"Initialised NexusLIMS database {tmp_path / 'demo.sqlite'} with demo data:",
        "  instruments  3, in 2 time zones (America/Denver, America/New_York)",
        "  sessions     5: 3 TO_BE_BUILT, 1 WAITING_FOR_END, 1 COMPLETED",
        "  log rows     10",
        "List the sessions ready to build:",
        "  nexuslims-db --db demo.sqlite sessions",
    ]
    assert len(_rows(tmp_path / "demo.sqlite")) == 10


def test_init_demo_on_both_backends(nexuslims_database: DatabaseLocation, run: Run) -> None:
    code, out, err = run("--db", nexuslims_database.target, "init", "--demo")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Initialised NexusLIMS database {nexuslims_database} with demo data:"
    assert lines[1:4] == [
        "  instruments  3, in 2 time zones (America/Denver, America/New_York)",
        "  sessions     5: 3 TO_BE_BUILT, 1 WAITING_FOR_END, 1 COMPLETED",
        "  log rows     10",
    ]
    assert len(rows(nexuslims_database)) == 10


def test_demo_data_is_consistent_and_in_several_states(demo_db: DatabaseLocation) -> None:
    assert find_session_problems() == []
    sessions = get_sessions_to_build()
    assert len(sessions) == 3
    zones = {str(instrument.timezone) for instrument in load_instruments().values()}
    assert zones == {"America/New_York", "America/Denver"}
    assert {str(s.instrument.timezone) for s in sessions} == zones
    assert all(s.dt_from.utcoffset() is not None and s.dt_from < s.dt_to for s in sessions)
    by_status: dict[str, list[Any]] = {}
    for stored in rows():
        by_status.setdefault(stored.record_status, []).append(stored)
    assert [r.event_type for r in by_status["WAITING_FOR_END"]] == ["START"]
    completed = by_status["COMPLETED"]
    assert sorted(r.event_type for r in completed) == ["END", "RECORD_GENERATION", "START"]
    assert len({r.session_identifier for r in completed}) == 1
    assert len(by_status["TO_BE_BUILT"]) == 6


def test_init_demo_on_a_database_with_data_is_refused(demo_db: DatabaseLocation, run: Run) -> None:
    before = rows(demo_db)
    code, out, err = run("--db", demo_db.target, "init", "--demo")
    assert (code, out) == (1, "")
    assert "The demo needs an empty database" in _one_error_line(err)
    assert rows(demo_db) == before


def test_init_without_a_configured_path_is_an_error(
    run: Run, no_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("init")
    assert code == 1
    assert "No NexusLIMS database configured" in _one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_another_applications_database_unless_forced(
    tmp_path: Path, run: Run, no_env: None
) -> None:
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    before = _files(tmp_path)

    code, out, err = run("--db", path, "init")
    assert (code, out) == (1, "")
    line = _one_error_line(err)
    assert str(path) in line
    assert "holds tables of another application (invoices)" in line
    assert "--force" in line
    assert _files(tmp_path) == before

    code, out, err = run("--db", path, "init", "--force")
    assert (code, err) == (0, "")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT * FROM invoices").fetchall() == [(1, 9.5)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert run("--db", path, "sessions")[:2] == (0, "No sessions to build.\n")


def test_init_refuses_a_file_that_is_not_a_database(
    tmp_path: Path, run: Run, no_env: None
) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database\n" * 100)
    before = _files(tmp_path)
    code, out, err = run("--db", path, "init")
    assert (code, out) == (1, "")
    assert f"{path} is not a SQLite database" in _one_error_line(err)
    assert _files(tmp_path) == before


# ------------------------------------------------------------ no creation


@pytest.mark.parametrize("argv", OPENING, ids=[" ".join(a[:2]) for a in OPENING])
def test_no_subcommand_but_init_creates_a_missing_database(
    tmp_path: Path, run: Run, no_env: None, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("--db", "missing.sqlite", *argv)
    assert code == (2 if argv[0] == "check" else 1)
    assert out == ""
    line = _one_error_line(err)
    missing = tmp_path / "missing.sqlite"
    assert f"NexusLIMS database {str(missing)!r} (from the path given) does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_missing_database_named_by_the_environment(
    tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> None:
    missing = tmp_path / "missing.sqlite"
    monkeypatch.setenv(ENV_DB_PATH, str(missing))
    code, _, err = run("sessions")
    assert code == 1
    assert f"(from {ENV_DB_PATH}) does not exist" in _one_error_line(err)
    assert not missing.exists()


# ------------------------------------------------------------ paths


def test_a_tilde_path_is_the_home_folder(
    tmp_path: Path, run: Run, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(cwd)
    code, out, err = run("--db", "~/x.sqlite", "init")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith(f"Initialised NexusLIMS database {home / 'x.sqlite'} ")
    assert (home / "x.sqlite").is_file()
    assert list(cwd.iterdir()) == []  # no ./~ folder
    assert run("--db", "~/x.sqlite", "sessions")[:2] == (0, "No sessions to build.\n")
    code, _, err = run("--db", "~/y.sqlite", "sessions")
    assert code == 1
    assert repr(str(home / "y.sqlite")) in _one_error_line(err)


# --------------------------------------------------------------- check


def test_check_exits_0_without_problems(demo_db: DatabaseLocation, run: Run) -> None:
    code, out, err = run("--db", demo_db.target, "check")
    assert (code, err) == (0, "")
    assert out == "No problems: every TO_BE_BUILT log belongs to a session that can be built.\n"
    assert run("--db", demo_db.target, "check", "--json")[:3] == (0, "[]\n", "")


def test_check_exits_1_and_names_each_problem(demo_db: DatabaseLocation, run: Run) -> None:
    insert_raw([
        row("no-end", "START", "2024-05-08T10:00:00-04:00", user="u"),
        row("backwards", "START", "2024-05-08T10:00:00-04:00", QUANTA, user=None),
        row("backwards", "END", "2024-05-08T09:00:00-04:00", QUANTA, user=None),
    ])
    before = rows()

    code, out, err = run("--db", demo_db.target, "check")

    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith("no-end: end_count: There was not exactly one 'END' log")
    assert lines[1] == ("backwards: end_before_start: session 'backwards' ends "
                        "(2024-05-08T09:00:00-04:00) before it starts (2024-05-08T10:00:00-04:00)")
    assert lines[2] == "2 problems in 2 sessions."

    code, out, _ = run("--db", demo_db.target, "check", "--json")
    assert code == 1
    problems = json.loads(out)
    assert [(p["session_identifier"], p["kind"]) for p in problems] == [
        ("no-end", "end_count"), ("backwards", "end_before_start"),
    ]
    assert all(set(p) == {"session_identifier", "kind", "detail", "log_ids"} for p in problems)
    assert rows() == before  # check changes nothing


def test_check_exits_2_when_it_could_not_check(
    tmp_path: Path, run: Run, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("--db", "missing.sqlite", "check")
    assert (code, out) == (2, "")
    assert f"{str(tmp_path / 'missing.sqlite')!r} (from the path given) does not exist" in (
        _one_error_line(err))

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00garbage" * 512)
    code, out, err = run("--db", "garbage.sqlite", "check", "--json")
    assert (code, out) == (2, "")
    assert f"{garbage} is not a SQLite database" in _one_error_line(err)

    assert run("check", "--no-such-option")[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.sqlite"]


def test_check_exits_2_on_a_locked_database(locked: Path, run: Run) -> None:
    code, out, err = run("--db", locked, "check")
    assert (code, out) == (2, "")
    line = _one_error_line(err)
    assert "database is locked" in line
    assert str(locked) in line
    assert ENV_TIMEOUT in line


def test_a_locked_database_is_an_error_of_other_commands(locked: Path, run: Run) -> None:
    code, out, err = run("--db", locked, "log", "start", "--instrument", TITAN, "--id", "x")
    assert (code, out) == (1, "")
    line = _one_error_line(err)
    assert f"another program kept {locked} locked" in line
    assert f"raise {ENV_TIMEOUT}" in line


def test_check_help_documents_its_exit_codes(run: Run) -> None:
    code, out, _ = run("check", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "Exit status: 0 no problem, 1 problems found, 2 could not check" in text


# ------------------------------------------------------------ sessions


def test_sessions_lists_the_sessions_to_build_in_columns(
    demo_db: DatabaseLocation, run: Run
) -> None:
    code, out, err = run("--db", demo_db.target, "sessions")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["SESSION", "INSTRUMENT", "START", "END", "DURATION", "USER"]
    assert lines[1].split() == [
        DEMO_FIRST, TITAN, "2024-05-06T09:00:00-04:00", "2024-05-06T11:30:00-04:00", "2:30:00",
        "alice",
    ]
    assert lines[2].split()[-2:] == ["0:50:30", "-"]  # no user
    assert lines[3].split()[3] == "2024-05-06T16:15:00-06:00"
    assert lines[-1] == "3 sessions to build."
    assert len(lines) == 5
    column = lines[0].index("START")
    assert all(line[column - 2:column + 4] == "  2024" for line in lines[1:4])  # aligned


def test_sessions_limit_shows_fewer_rows_and_says_so(demo: Path, run: Run) -> None:
    code, out, err = run("--db", demo, "sessions", "--limit", "1")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[0] == DEMO_FIRST
    assert lines[2] == "3 sessions to build; 2 not shown (--limit 1)."
    assert run("--db", demo, "sessions", "--limit", "3")[1].splitlines()[-1] == (
        "3 sessions to build.")


def test_sessions_limit_must_be_a_non_negative_number(demo: Path, run: Run) -> None:
    for bad in ("-1", "x"):
        code, out, err = run("sessions", "--limit", bad)
        assert (code, out) == (2, "")
        assert "argument --limit" in err


def test_sessions_json_is_complete_or_limited(demo_db: DatabaseLocation, run: Run) -> None:
    code, out, err = run("--db", demo_db.target, "sessions", "--json")
    assert (code, err) == (0, "")
    sessions = json.loads(out)
    assert [s["instrument"] for s in sessions] == [TITAN, QUANTA, JEOL]
    assert sessions[0] == {
        "session_identifier": DEMO_FIRST,
        "instrument": TITAN,
        "start": "2024-05-06T09:00:00-04:00",
        "end": "2024-05-06T11:30:00-04:00",
        "duration_seconds": 9000.0,
        "user": "alice",
    }
    assert sessions[1]["user"] is None
    code, out, _ = run("--db", demo_db.target, "sessions", "--json", "--limit", "1")
    assert code == 0
    assert json.loads(out) == sessions[:1]


def test_sessions_on_an_empty_database(nexuslims_database: DatabaseLocation, run: Run) -> None:
    assert run("--db", nexuslims_database.target, "sessions") == (
        0, "No sessions to build.\n", "")
    code, out, _ = run("--db", nexuslims_database.target, "sessions", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_sessions_skips_inconsistent_sessions_with_one_warning_line_each(
    demo_db: DatabaseLocation, run: Run
) -> None:
    # one problem: an END without a START; two problems: two STARTs and no END
    insert_raw([
        row("lonely-end", "END", "2024-05-08T10:00:00-04:00", user=None),
        row("twice", "START", "2024-05-08T10:00:00-04:00", QUANTA, user=None),
        row("twice", "START", "2024-05-08T11:00:00-04:00", QUANTA, user=None),
    ])

    code, out, err = run("--db", demo_db.target, "sessions")

    assert code == 0
    assert out.splitlines()[-1] == "3 sessions to build."
    warnings = err.splitlines()
    assert len(warnings) == 2, err
    assert warnings[0].startswith("nexuslims-db: warning: Skipping session 'lonely-end': "
                                  "end_without_start: ")
    assert warnings[1].startswith("nexuslims-db: warning: Skipping session 'twice': end_count: "
                                  "There was not exactly one 'END' log for this 'START' log; ")
    assert "; multiple_starts: session 'twice' has 2 'START' logs" in warnings[1]
    assert "Traceback" not in err


# ----------------------------------------------------------------- log


def test_log_start_then_end_makes_a_session_to_build(demo_db: DatabaseLocation, run: Run) -> None:
    db = ("--db", demo_db.target)
    code, out, err = run(*db, "log", "start", "--instrument", TITAN, "--id", "s-42",
                         "--user", "erin", "--at", "2024-06-01T09:00:00-04:00")
    assert (code, err) == (0, "")
    assert out == ("Logged START of session s-42 on FEI-Titan-TEM-635816 at "
                   "2024-06-01T09:00:00-04:00; the session is now WAITING_FOR_END.\n")
    assert rows()[-1][1:] == ("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START",
                              "WAITING_FOR_END", "erin")
    assert "s-42" not in run(*db, "sessions")[1]

    code, out, err = run(*db, "log", "end", "--instrument", TITAN, "--id", "s-42",
                         "--at", "2024-06-01T10:15:00-04:00")
    assert (code, err) == (0, "")
    assert out == ("Logged END of session s-42 on FEI-Titan-TEM-635816 at "
                   "2024-06-01T10:15:00-04:00; the session is now TO_BE_BUILT.\n")
    start, end = rows()[-2:]
    assert start[1:] == ("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START", "TO_BE_BUILT",
                         "erin")
    assert end[1:] == ("s-42", TITAN, "2024-06-01T10:15:00-04:00", "END", "TO_BE_BUILT", "erin")
    listed = {s["session_identifier"]: s for s in json.loads(run(*db, "sessions", "--json")[1])}
    assert listed["s-42"]["duration_seconds"] == 4500.0


def test_log_time_defaults_to_now_with_an_offset(demo: Path, run: Run) -> None:
    before = datetime.now().astimezone()
    assert run("log", "start", "--instrument", TITAN, "--id", "now")[0] == 0
    assert run("log", "end", "--instrument", TITAN, "--id", "now")[0] == 0
    after = datetime.now().astimezone()
    for stored in _rows(demo)[-2:]:
        stamp = datetime.fromisoformat(stored[3])
        assert stamp.utcoffset() is not None
        assert before <= stamp <= after


def test_log_end_without_a_start_writes_nothing(demo_db: DatabaseLocation, run: Run) -> None:
    before = rows()
    code, out, err = run("--db", demo_db.target, "log", "end", "--instrument", TITAN, "--id",
                         "never-started")
    assert (code, out) == (1, "")
    assert _one_error_line(err) == (
        "nexuslims-db: error: Cannot end session 'never-started': it has no open START log "
        "(status WAITING_FOR_END); expected exactly one"
    )
    assert rows() == before


def test_log_end_of_a_session_already_ended_writes_nothing(demo: Path, run: Run) -> None:
    before = _rows(demo)
    code, _, err = run("log", "end", "--instrument", TITAN, "--id", DEMO_FIRST)
    assert code == 1
    assert "it already has an END log (id 2, status TO_BE_BUILT)" in _one_error_line(err)
    assert _rows(demo) == before


def test_a_second_start_for_the_same_id_writes_nothing(demo: Path, run: Run) -> None:
    assert run("log", "start", "--instrument", TITAN, "--id", "dup")[0] == 0
    before = _rows(demo)
    code, _, err = run("log", "start", "--instrument", QUANTA, "--id", "dup")
    assert code == 1
    line = _one_error_line(err)
    assert line.startswith("nexuslims-db: error: Session 'dup' already has a START log (id ")
    assert line.endswith(", status WAITING_FOR_END); not writing another")
    assert _rows(demo) == before


@pytest.mark.parametrize("event", ["start", "end"])
def test_an_unknown_instrument_writes_nothing(demo: Path, run: Run, event: str) -> None:
    if event == "end":
        assert run("log", "start", "--instrument", TITAN, "--id", "s-1")[0] == 0
    before = _rows(demo)
    code, _, err = run("log", event, "--instrument", "NO-SUCH-SCOPE", "--id", "s-1")
    assert code == 1
    assert "instrument 'NO-SUCH-SCOPE' is not in the instruments table" in _one_error_line(err)
    assert _rows(demo) == before


@pytest.mark.parametrize(
    ("instrument", "at", "message"),
    [
        (TITAN, "yesterday", "Invalid timestamp 'yesterday'"),
        (TITAN, "2024-06-01T08:00:00-04:00", "it started later, at 2024-06-01T09:00:00-04:00"),
        (QUANTA, "2024-06-01T10:00:00-04:00", "it started on 'FEI-Titan-TEM-635816'"),
    ],
)
def test_log_end_refuses_bad_input_and_writes_nothing(
    demo: Path, run: Run, instrument: str, at: str, message: str
) -> None:
    assert run("log", "start", "--instrument", TITAN, "--id", "s-1",
               "--at", "2024-06-01T09:00:00-04:00")[0] == 0
    before = _rows(demo)
    code, _, err = run("log", "end", "--instrument", instrument, "--id", "s-1", "--at", at)
    assert code == 1
    assert message in _one_error_line(err)
    assert _rows(demo) == before


@pytest.mark.parametrize("identifier", ["a\nb", f"a{ESC}b", " "])
def test_log_start_refuses_an_unprintable_identifier(
    demo_db: DatabaseLocation, run: Run, identifier: str
) -> None:
    before = rows()
    code, out, err = run("--db", demo_db.target, "log", "start", "--instrument", TITAN,
                         "--id", identifier)
    assert (code, out) == (1, "")
    line = _one_error_line(err)
    assert "\x1b" not in line
    assert "Invalid session_identifier" in line
    assert rows() == before


def test_log_requires_instrument_and_id(demo: Path, run: Run) -> None:
    code, _, err = run("log", "start", "--id", "s-1")
    assert code == 2
    assert "the following arguments are required: --instrument" in err
    assert run("log")[0] == 2  # no event


def test_a_traceback_only_with_debug(demo: Path, run: Run) -> None:
    code, _, err = run("--debug", "log", "end", "--instrument", TITAN, "--id", "nope")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("nexuslims-db: error: Cannot end session 'nope'")


# -------------------------------------------------------------- status


def test_status_sets_every_log_of_the_session(demo_db: DatabaseLocation, run: Run) -> None:
    code, out, err = run("--db", demo_db.target, "status", DEMO_FIRST, "NO_CONSENT")
    assert (code, err) == (0, "")
    assert out == f"Set 2 logs of session {DEMO_FIRST} to NO_CONSENT.\n"
    assert {r.record_status for r in rows() if r.session_identifier == DEMO_FIRST} == {
        "NO_CONSENT"}


def test_status_of_an_unknown_session_is_an_error(demo: Path, run: Run) -> None:
    before = rows()
    code, _, err = run("status", "no-such-session", "COMPLETED")
    assert code == 1
    assert _one_error_line(err) == ("nexuslims-db: error: no session_log rows have session "
                                    "identifier 'no-such-session'; nothing changed")
    assert rows() == before


def test_status_with_a_bad_choice_exits_2_from_argparse(demo: Path, run: Run) -> None:
    before = _rows(demo)
    code, out, err = run("status", DEMO_FIRST, "DONE")
    assert (code, out) == (2, "")
    assert "argument STATUS: invalid choice: 'DONE'" in err
    assert _rows(demo) == before


def test_status_choices_are_the_enum(run: Run) -> None:
    code, out, _ = run("status", "--help")
    assert code == 0
    assert f"one of: {', '.join(RecordStatus.values())}" in " ".join(out.split())


# --------------------------------------------------------- instruments


def test_instruments_lists_in_columns(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any], run: Run
) -> None:
    code, out, err = run("--db", nexuslims_database.target, "instruments")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["INSTRUMENT", "TIMEZONE", "LOCATION", "HARVESTER", "API", "URL"]
    assert lines[1].split()[:2] == [TITAN, "America/New_York"]
    assert [line.split()[0] for line in lines[1:]] == list(nexuslims_instruments)
    assert len({line.index("America/") for line in lines[1:]}) == 1


def test_instruments_json_parses(nexuslims_instruments: dict[str, Any], run: Run) -> None:
    code, out, _ = run("instruments", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [r["instrument_pid"] for r in listed] == list(nexuslims_instruments)
    assert all(list(r) == list(INSTRUMENTS.column_names) for r in listed)
    assert listed == [instrument.to_row() for instrument in sample_instruments()]


def test_instruments_on_an_empty_database(nexuslims_db: Path, run: Run) -> None:
    code, out, _ = run("instruments")
    assert code == 0
    assert out == "No instruments; add one with: nexuslims-db instruments add --help\n"
    assert json.loads(run("instruments", "--json")[1]) == []


def test_instruments_add(nexuslims_database: DatabaseLocation, run: Run) -> None:
    code, out, err = run("--db", nexuslims_database.target, *ADD, "--timezone",
                         "America/Chicago", "--computer-ip", "192.0.2.44")
    assert (code, err) == (0, "")
    assert out == "Added instrument FEI-Helios-DB-636663 (America/Chicago).\n"
    added = load_instruments()["FEI-Helios-DB-636663"]
    assert added.to_row() == {
        "instrument_pid": "FEI-Helios-DB-636663",
        "api_url": "https://nemo.example.org/api/tools/?id=4",
        "calendar_name": "FEI Helios",
        "calendar_url": "https://nemo.example.org/calendar/helios/",
        "location": "Building 217, Room D101",
        "schema_name": "Helios NanoLab",
        "property_tag": "636663",
        "filestore_path": "./Helios",
        "computer_name": None,
        "computer_ip": "192.0.2.44",
        "computer_mount": None,
        "harvester": None,
        "timezone": "America/Chicago",
    }


def test_instruments_add_defaults_to_new_york(nexuslims_db: Path, run: Run) -> None:
    assert run(*ADD)[0] == 0
    assert str(load_instruments()["FEI-Helios-DB-636663"].timezone) == "America/New_York"


def test_instruments_add_an_empty_optional_value_stores_null(
    nexuslims_database: DatabaseLocation, run: Run
) -> None:
    code, _, err = run("--db", nexuslims_database.target, *ADD, "--computer-ip", "",
                       "--harvester", "")
    assert (code, err) == (0, "")
    assert sql("SELECT computer_ip, harvester FROM instruments") == [(None, None)]


def test_instruments_add_with_a_bad_timezone(nexuslims_db: Path, run: Run) -> None:
    code, out, err = run(*ADD, "--timezone", "Mars/Olympus_Mons")
    assert (code, out) == (2, "")
    assert "argument --timezone: unknown timezone 'Mars/Olympus_Mons'" in err
    assert load_instruments() == {}


def test_instruments_add_requires_the_required_columns(nexuslims_db: Path, run: Run) -> None:
    code, _, err = run(*ADD[:-2])
    assert code == 2
    assert "the following arguments are required: --filestore-path" in err
    assert load_instruments() == {}


def test_instruments_add_refuses_control_characters(nexuslims_db: Path, run: Run) -> None:
    argv = [f"X{ESC}\nY" if arg == "FEI-Helios-DB-636663" else arg for arg in ADD]
    code, _, err = run(*argv)
    assert code == 1
    assert "\x1b" not in _one_error_line(err)
    assert load_instruments() == {}


def test_instruments_add_an_existing_pid_already_exists(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any], run: Run
) -> None:
    argv = [TITAN if arg == "FEI-Helios-DB-636663" else arg for arg in ADD]
    code, _, err = run("--db", nexuslims_database.target, *argv)
    assert code == 1
    assert _one_error_line(err) == (
        "nexuslims-db: error: Cannot add instrument 'FEI-Titan-TEM-635816': it already exists")
    assert [i.to_row() for i in load_instruments().values()] == [
        i.to_row() for i in sample_instruments()]


def _log_counts() -> dict[str, int]:
    return {pid: count for pid, count in sql(
        "SELECT instrument, count(*) FROM session_log GROUP BY instrument")}


def test_instruments_edit_changes_a_column(demo_db: DatabaseLocation, run: Run) -> None:
    code, out, err = run("--db", demo_db.target, "instruments", "edit", TITAN,
                         "--location", "Building 215, Room A1")
    assert (code, err) == (0, "")
    assert out == "Edited instrument FEI-Titan-TEM-635816: location.\n"
    edited = load_instruments()[TITAN].to_row()
    expected = sample_instruments()[0].to_row()
    assert edited == {**expected, "location": "Building 215, Room A1"}


def test_instruments_edit_new_pid_renames_and_the_logs_follow(
    demo_db: DatabaseLocation, run: Run
) -> None:
    counts = _log_counts()
    assert counts[TITAN] == 5
    code, out, err = run("--db", demo_db.target, "instruments", "edit", TITAN,
                         "--new-pid", "FEI-Titan-TEM-999999")
    assert (code, err) == (0, "")
    assert out == ("Edited instrument FEI-Titan-TEM-635816 (renamed to FEI-Titan-TEM-999999): "
                   "instrument_pid.\n")
    after = _log_counts()
    assert TITAN not in after
    assert after["FEI-Titan-TEM-999999"] == 5
    assert set(load_instruments()) == {"FEI-Titan-TEM-999999", QUANTA, JEOL}
    assert len(get_sessions_to_build()) == 3


def test_instruments_edit_errors_change_nothing(demo_db: DatabaseLocation, run: Run) -> None:
    db = ("--db", demo_db.target)
    before = [i.to_row() for i in load_instruments().values()]
    code, out, err = run(*db, "instruments", "edit", TITAN, "--timezone", "Mars/Olympus_Mons")
    assert (code, out) == (2, "")
    assert "unknown timezone 'Mars/Olympus_Mons'" in err
    code, _, err = run(*db, "instruments", "edit", TITAN)
    assert code == 2
    assert "nothing to change" in _one_error_line(err)
    code, _, err = run(*db, "instruments", "edit", "NO-SUCH", "--location", "x")
    assert code == 1
    assert "Cannot edit instrument 'NO-SUCH': no such instrument" in _one_error_line(err)
    code, _, err = run(*db, "instruments", "edit", TITAN, "--new-pid", QUANTA)
    assert code == 1
    assert f"{QUANTA!r} already exists" in _one_error_line(err)
    code, _, err = run(*db, "instruments", "edit", TITAN, "--location", "")
    assert code == 1
    assert "missing location" in _one_error_line(err)
    assert [i.to_row() for i in load_instruments().values()] == before


def test_instruments_remove_is_refused_while_logs_exist(
    demo_db: DatabaseLocation, run: Run
) -> None:
    before = rows()
    code, out, err = run("--db", demo_db.target, "instruments", "remove", TITAN)
    assert (code, out) == (1, "")
    assert "Cannot remove instrument 'FEI-Titan-TEM-635816': it has 5 session logs" in (
        _one_error_line(err))
    assert rows() == before
    assert TITAN in load_instruments()


def test_instruments_remove_an_unused_instrument(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any], run: Run
) -> None:
    code, out, err = run("--db", nexuslims_database.target, "instruments", "remove", JEOL)
    assert (code, err) == (0, "")
    assert out == f"Removed instrument {JEOL}.\n"
    assert list(load_instruments()) == [TITAN, QUANTA]
    code, _, err = run("--db", nexuslims_database.target, "instruments", "remove", JEOL)
    assert code == 1
    assert f"Cannot remove instrument {JEOL!r}: no such instrument" in _one_error_line(err)


# ------------------------------------------------------------- migrate


def _legacy(path: Path) -> Path:
    """A 1.4 database with one instrument and one session."""
    make_legacy_db(path)
    instrument = sample_instruments()[0].to_row()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"INSERT INTO instruments ({', '.join(instrument)}) "
                     f"VALUES ({', '.join('?' * len(instrument))})", tuple(instrument.values()))
        conn.executemany(
            'INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, '
            'record_status, "user") VALUES (?, ?, ?, ?, ?, ?)',
            [("old", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", "u"),
             ("old", TITAN, "2021-05-01T11:00:00", "END", "TO_BE_BUILT", "u")])
    return path


def test_migrate_a_1_4_database(tmp_path: Path, run: Run, no_env: None) -> None:
    path = _legacy(tmp_path / "nexuslims_db.sqlite")
    before = _rows(path)
    # 1.4's CHECK lacks NO_CONSENT: the record builder's update fails until migrated.
    code, _, err = run("--db", path, "status", "old", "NO_CONSENT")
    assert code == 1
    assert "CHECK constraint failed" in _one_error_line(err)
    assert _rows(path) == before

    code, out, err = run("--db", path, "migrate")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Migrated {path} from schema version 0 to {SCHEMA_VERSION}:"
    assert [line.split(":")[0] for line in lines[1:5]] == [
        "  1. session_log_constraints", "  2. keep_logs_of_deleted_instruments",
        "  3. session_claims", "  4. session_revisions"]
    assert "Kept all 2 session_log rows with their ids." in lines
    backups = sorted(tmp_path.glob("nexuslims_db.sqlite.bak-*"))
    assert len(backups) == 1
    assert lines[-1] == f"Backup: {backups[0]}"
    assert _rows(path) == before
    assert run("--db", path, "status", "old", "NO_CONSENT")[0] == 0

    code, out, err = run("--db", path, "migrate")
    assert (code, err) == (0, "")
    assert out == (f"{path} is already at schema version {SCHEMA_VERSION}; "
                   f"nothing to do, nothing changed.\n")
    assert sorted(tmp_path.glob("*.bak-*")) == backups


def test_migrate_dry_run_changes_nothing(tmp_path: Path, run: Run, no_env: None) -> None:
    path = _legacy(tmp_path / "nexuslims_db.sqlite")
    before = _files(tmp_path)
    code, out, err = run("--db", path, "migrate", "--dry-run")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (f"{path} is at schema version 0; migrating it would run "
                        f"{SCHEMA_VERSION} steps:")
    assert lines[-1] == "Nothing was changed (--dry-run)."
    assert len(lines) == SCHEMA_VERSION + 2
    assert _files(tmp_path) == before


def test_migrate_no_backup(tmp_path: Path, run: Run, no_env: None) -> None:
    path = _legacy(tmp_path / "nexuslims_db.sqlite")
    code, out, _ = run("--db", path, "migrate", "--no-backup")
    assert code == 0
    assert out.splitlines()[-1] == "No backup made (--no-backup)."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nexuslims_db.sqlite"]


def test_migrate_a_current_database_does_nothing(
    nexuslims_database: DatabaseLocation, run: Run
) -> None:
    for extra in ([], ["--dry-run"]):
        code, out, err = run("--db", nexuslims_database.target, "migrate", *extra)
        assert (code, err) == (0, "")
        assert out == (f"{nexuslims_database} is already at schema version {SCHEMA_VERSION}; "
                       f"nothing to do, nothing changed.\n")


# -------------------------------------------------------------- schema


def test_schema_prints_sql_for_each_dialect(
    run: Run, no_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("schema")
    assert (code, err) == (0, "")
    assert out.startswith(f"-- The NexusLIMS session database, schema version {SCHEMA_VERSION} "
                          f"(sqlite)")
    for table in ("instruments", "session_log", "session_claims", "session_revisions"):
        assert f"CREATE TABLE IF NOT EXISTS {table} (" in out
    assert "AUTOINCREMENT" in out
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.executescript(out)  # it runs
    code, out, err = run("schema", "--dialect", "postgresql")
    assert (code, err) == (0, "")
    assert "(postgresql)" in out.splitlines()[0]
    assert "GENERATED BY DEFAULT AS IDENTITY" in out
    assert "AUTOINCREMENT" not in out
    assert run("schema", "--dialect", "oracle")[0] == 2
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------- repair


def _two_ends(location: DatabaseLocation) -> tuple[DatabaseLocation, list[int]]:
    """Add a session with two TO_BE_BUILT ENDs (as older versions wrote)."""
    ids = insert_raw([
        row("dup", "START", "2024-05-08T09:00:00-04:00"),
        row("dup", "END", "2024-05-08T10:00:00-04:00"),
        row("dup", "END", "2024-05-08T10:30:00-04:00"),
    ])
    return location, ids


@pytest.fixture
def two_ends(demo: Path) -> tuple[DatabaseLocation, list[int]]:
    """The SQLite demo plus a session with two TO_BE_BUILT ENDs."""
    return _two_ends(locate_database(demo))


def test_repair_dry_run_changes_nothing(
    two_ends: tuple[DatabaseLocation, list[int]], run: Run
) -> None:
    location, (_, first, second) = two_ends
    before = rows()
    code, out, err = run("--db", location.target, "repair", "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"dup: keep END {second}, mark superseded END(s) {first} ERROR",
        "Nothing was changed (--dry-run).",
    ]
    assert rows() == before


def test_repair_without_yes_and_no_terminal_is_refused(
    two_ends: tuple[DatabaseLocation, list[int]], run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    location, _ = two_ends
    before = rows()
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a tty, even if it says yes
    code, out, err = run("--db", location.target, "repair")
    assert code == 1
    assert out.startswith("dup: keep END ")
    assert _one_error_line(err) == ("nexuslims-db: error: not confirmed; run again with --yes "
                                    "to repair 1 session")
    assert rows() == before


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_repair_asks_on_a_terminal(
    two_ends: tuple[DatabaseLocation, list[int]], run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    location, _ = two_ends
    before = rows()
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    code, out, _ = run("--db", location.target, "repair")
    assert code == 1
    assert "Repair 1 session? [y/N] " in out
    assert out.splitlines()[-1].endswith("Nothing was changed.")
    assert rows() == before
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    code, out, _ = run("--db", location.target, "repair")
    assert code == 0
    assert out.splitlines()[-1].endswith("Repaired 1 session: marked 1 END ERROR.")


def test_repair_yes_marks_the_superseded_end(demo_db: DatabaseLocation, run: Run) -> None:
    location, (start, first, second) = _two_ends(demo_db)
    assert run("--db", location.target, "check")[0] == 1
    code, out, err = run("--db", location.target, "repair", "--yes")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "Repaired 1 session: marked 1 END ERROR."
    status = {r.id_session_log: r.record_status for r in rows()}
    assert (status[start], status[first], status[second]) == ("TO_BE_BUILT", "ERROR",
                                                              "TO_BE_BUILT")
    assert run("--db", location.target, "check")[0] == 0
    assert run("--db", location.target, "repair", "--yes")[1] == (
        "Nothing to repair: no session has more than one TO_BE_BUILT END.\n")


# ---------------------------------------------------------------- info


def test_info_on_an_empty_database(nexuslims_database: DatabaseLocation, run: Run) -> None:
    db = ("--db", nexuslims_database.target)
    code, out, err = run(*db, "info")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (f"database                {nexuslims_database} "
                        f"({nexuslims_database.backend})")
    assert lines[1] == f"schema version          {SCHEMA_VERSION}"
    assert re.fullmatch(r"size                    \d+\.\d MB", lines[2])
    assert re.fullmatch(r"server                  (SQLite 3\.\d+\.\d+ \(a library: no server\)|"
                        r"PostgreSQL \d+\.\d+)", lines[3])
    assert re.fullmatch(r"connections             (one per call \(a file\)|"
                        r"1 open, 0 idle, at most 8 \(\$nexusLIMS_db_pool_size\))", lines[4])
    assert lines[5:] == [
        "instruments             0",
        "sessions to build       0",
        "oldest WAITING_FOR_END  none",
        "problems                0",
        "logs by event and status:",
        "  EVENT  STATUS  COUNT",
    ]
    code, out, _ = run(*db, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["size_bytes"] > 0
    del info["size_bytes"]
    assert info.pop("server") == lines[3].split(None, 1)[1]
    assert info.pop("connections") in ({}, {"open": 1, "idle": 0, "most": 8})
    assert info == {
        "database": str(nexuslims_database), "backend": nexuslims_database.backend,
        "schema_version": SCHEMA_VERSION, "current_schema_version": SCHEMA_VERSION,
        "instruments": 0, "logs": [], "sessions_to_build": 0,
        "oldest_waiting_for_end": None, "problems": [],
    }


def test_info_on_the_demo_database(demo_db: DatabaseLocation, run: Run) -> None:
    db = ("--db", demo_db.target)
    insert_raw([row("no-end", "START", "2024-05-08T10:00:00-04:00")])
    started = datetime.fromisoformat("2024-05-07T08:30:00-04:00")
    code, out, err = run(*db, "info")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[5:7] == ["instruments             3", "sessions to build       3"]
    assert lines[7].startswith(f"oldest WAITING_FOR_END  {DEMO_WAITING} on {QUANTA}, "
                               f"started 2024-05-07T08:30:00-04:00 (")
    assert lines[7].endswith(" ago)")
    assert lines[8] == (f"problems                1 "
                        f"(see 'nexuslims-db --db {shlex.quote(demo_db.target)} check')")
    assert [line.split() for line in lines[10:]] == [
        ["EVENT", "STATUS", "COUNT"],
        ["END", "COMPLETED", "1"],
        ["END", "TO_BE_BUILT", "3"],
        ["RECORD_GENERATION", "COMPLETED", "1"],
        ["START", "COMPLETED", "1"],
        ["START", "TO_BE_BUILT", "4"],
        ["START", "WAITING_FOR_END", "1"],
    ]

    before = datetime.now(timezone.utc)
    code, out, _ = run(*db, "info", "--json")
    after = datetime.now(timezone.utc)
    assert code == 0
    info = json.loads(out)
    assert info["instruments"] == 3
    assert info["sessions_to_build"] == 3
    assert {(c["event_type"], c["record_status"]): c["count"] for c in info["logs"]} == {
        ("END", "COMPLETED"): 1, ("END", "TO_BE_BUILT"): 3,
        ("RECORD_GENERATION", "COMPLETED"): 1, ("START", "COMPLETED"): 1,
        ("START", "TO_BE_BUILT"): 4, ("START", "WAITING_FOR_END"): 1,
    }
    oldest = info["oldest_waiting_for_end"]
    assert {k: oldest[k] for k in ("session_identifier", "instrument", "start")} == {
        "session_identifier": DEMO_WAITING, "instrument": QUANTA,
        "start": "2024-05-07T08:30:00-04:00"}
    assert (before - started).total_seconds() <= oldest["age_seconds"]
    assert oldest["age_seconds"] <= (after - started).total_seconds()
    assert [(p["session_identifier"], p["kind"]) for p in info["problems"]] == [
        ("no-end", "end_count")]
    assert info["size_bytes"] > 0


def test_info_never_shows_a_password(nexuslims_postgres_db: DatabaseLocation, run: Run) -> None:
    # The test server trusts every local connection: any password is accepted.
    url = nexuslims_postgres_db.target.replace("postgres@", "postgres:s3cret-pw@", 1)
    assert url != nexuslims_postgres_db.target
    populate_demo(nexuslims_postgres_db)
    insert_raw([row("no-end", "START", "2024-05-08T10:00:00-04:00")])
    for argv in (["info"], ["info", "--json"]):
        code, out, err = run("--db", url, *argv)
        assert code == 0, err
        assert "s3cret-pw" not in out + err


def test_info_on_a_1_4_database_suggests_migrate(tmp_path: Path, run: Run, no_env: None) -> None:
    path = _legacy(tmp_path / "old.sqlite")
    before = _files(tmp_path)
    code, out, _ = run("--db", path, "info")
    assert code == 0
    assert out.splitlines()[1] == (f"schema version          0 (current is {SCHEMA_VERSION}: "
                                   f"run 'nexuslims-db migrate')")
    assert _files(tmp_path) == before


# ---------------------------------------------------------- completion


@pytest.mark.extra("completion")
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script(run: Run, shell: str) -> None:
    code, out, err = run("completion", shell)
    assert (code, err) == (0, "")
    assert "nexuslims-db" in out
    assert len(out.splitlines()) > 5


def test_completion_without_argcomplete_names_the_extra(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "argcomplete.shell_integration", None)
    code, out, err = run("completion", "bash")
    assert (code, out) == (1, "")
    line = _one_error_line(err)
    assert "argcomplete" in line
    assert 'pip install "nexuslims-db[completion]"' in line


def test_completion_of_an_unknown_shell_is_a_usage_error(run: Run) -> None:
    assert run("completion", "cmd.exe")[0] == 2


# --------------------------------------------- terminal-safe output


def test_stored_control_characters_are_printed_escaped(
    nexuslims_database: DatabaseLocation, run: Run
) -> None:
    evil_pid = f"EVIL{ESC}\nPID"
    sql("INSERT INTO instruments (instrument_pid, api_url, calendar_name, calendar_url, "
        "location, schema_name, property_tag, filestore_path, timezone) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (evil_pid, "https://x/", "c", "https://c/", f"Room{ESC}\n2", "s", "1", "./e",
         "America/New_York"))
    insert_raw([
        row(f"ok{ESC}\nA", "START", "2024-05-06T09:00:00-04:00", evil_pid, user=f"u{ESC}\nx"),
        row(f"ok{ESC}\nA", "END", "2024-05-06T10:00:00-04:00", evil_pid, user=f"u{ESC}\nx"),
        row(f"bad{ESC}\nB", "START", "2024-05-06T10:00:00-04:00", evil_pid),
        row(f"wait{ESC}\nC", "START", "2000-05-06T10:00:00-04:00", evil_pid,
            status="WAITING_FOR_END"),
    ])
    db = ("--db", nexuslims_database.target)
    shown_pid = "EVIL\\x1b[2J\\nPID"

    code, out, err = run(*db, "sessions")
    assert code == 0
    assert "\x1b" not in out + err
    assert len(out.splitlines()) == 3
    assert out.splitlines()[1].split()[:2] == ["ok\\x1b[2J\\nA", shown_pid]
    assert len(err.splitlines()) == 1  # the warning about bad...B, on one line

    code, out, err = run(*db, "check")
    assert (code, err) == (1, "")
    assert "\x1b" not in out
    assert len(out.splitlines()) == 2
    assert out.startswith("bad\\x1b[2J\\nB: end_count: ")

    code, out, _ = run(*db, "instruments")
    assert code == 0
    assert "\x1b" not in out
    assert len(out.splitlines()) == 2
    assert out.splitlines()[1].split()[0] == shown_pid
    assert "Room\\x1b[2J\\n2" in out

    code, out, err = run(*db, "info")
    assert (code, err) == (0, "")
    assert "\x1b" not in out
    assert f"oldest WAITING_FOR_END  wait\\x1b[2J\\nC on {shown_pid}, started" in out
    assert all(line.startswith(("  ", "database ", "schema version ", "size ", "server ",
                                "connections ", "instruments ",
                                "sessions to build       ", "oldest WAITING_FOR_END ", "problems ",
                                "logs by event and status:")) for line in out.splitlines())

    for argv in (["sessions", "--json"], ["check", "--json"], ["instruments", "--json"],
                 ["info", "--json"]):
        out = run(*db, *argv)[1]
        assert "\x1b" not in out
        assert any(evil_pid in text for text in _strings(json.loads(out)))  # round-tripped
    assert json.loads(run(*db, "sessions", "--json")[1])[0]["user"] == f"u{ESC}\nx"


def test_info_escapes_a_raw_timestamp_of_the_oldest_waiting_start(
    nexuslims_instruments: dict[str, Any], run: Run
) -> None:
    insert_raw([row("w", "START", f"2000-01-01{ESC}\nT10:00:00", status="WAITING_FOR_END")])
    code, out, _ = run("info")
    assert code == 0
    assert "\x1b" not in out


def test_status_output_escapes_the_identifier(demo: Path, run: Run) -> None:
    insert_raw([row(f"s{ESC}\n1", "START", "2024-05-08T10:00:00-04:00")])
    code, out, _ = run("status", f"s{ESC}\n1", "ERROR")
    assert code == 0
    assert out == "Set 1 log of session s\\x1b[2J\\n1 to ERROR.\n"
    code, _, err = run("status", f"t{ESC}\n1", "ERROR")
    assert code == 1
    assert "\x1b" not in _one_error_line(err)


# ------------------------------------------------------- help and global


HELP = [[], ["init"], ["sessions"], ["check"], ["log"], ["log", "start"], ["log", "end"],
        ["status"], ["instruments"], ["instruments", "add"], ["instruments", "edit"],
        ["instruments", "remove"], ["migrate"], ["schema"], ["repair"], ["info"],
        ["completion"]]


@pytest.mark.parametrize("argv", HELP, ids=[" ".join(a) or "top" for a in HELP])
def test_every_subcommand_has_help_with_an_example(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv, "--help")
    assert (code, err) == (0, "")
    assert "example:\n  " in out
    example = out.split("example:\n  ", 1)[1].splitlines()[0]
    assert example.startswith(("nexuslims-db ", 'eval "$(nexuslims-db '))
    assert " ".join(argv) in example


def test_instruments_help_shows_the_action_as_optional(run: Run) -> None:
    code, out, _ = run("instruments", "--help")
    assert code == 0
    usage = " ".join(out.split("\n\n")[0].split())
    assert usage.endswith("[--json] [ACTION] ...")
    for action in ("add", "edit", "remove"):
        assert re.search(rf"^\s+{action}\s+\w", out, re.MULTILINE), action


def test_only_log_end_defaults_to_the_user_of_the_start(run: Run) -> None:
    start = run("log", "start", "--help")[1]
    end = run("log", "end", "--help")[1]
    assert "the user of the START log" not in " ".join(start.split())
    assert "default" not in start.split("--user USER", 1)[1].split("--at")[0]
    assert "(default: the user of the START log)" in " ".join(end.split())


@pytest.mark.parametrize("action", ["add", "edit"])
def test_instrument_options_have_readable_metavars(run: Run, action: str) -> None:
    out = run("instruments", action, "--help")[1]
    assert "COLUMNS." not in out


def test_no_subcommand_is_a_usage_error(run: Run) -> None:
    code, _, err = run()
    assert code == 2
    assert "the following arguments are required: COMMAND" in err


def test_db_may_follow_the_subcommand_and_the_environment_is_restored(
    demo: Path, tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere.sqlite"
    monkeypatch.setenv(ENV_DB_PATH, str(other))
    code, out, _ = run("sessions", "--db", demo)
    assert code == 0
    assert out.splitlines()[-1] == "3 sessions to build."
    assert os.environ[ENV_DB_PATH] == str(other)
    assert not other.exists()


def test_nx_db_path_is_used_when_nexuslims_db_path_is_unset(
    demo: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_DB_PATH)
    monkeypatch.setenv(ENV_DB_PATH_2X, str(demo))
    assert run("sessions")[1].splitlines()[-1] == "3 sessions to build."


# ------------------------------------------------- NexusLIMS 2.x files


@pytest.fixture(scope="module")
def two_x_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a NexusLIMS 2.x file (made once)."""
    return make_2x_file(tmp_path_factory.mktemp("2x") / "made.sqlite").read_bytes()


TWO_X = [
    ["sessions"], ["check"], ["log", "start", "--instrument", TITAN, "--id", "s2"],
    ["log", "end", "--instrument", TITAN, "--id", "s-2x"], ["status", "s-2x", "COMPLETED"],
    ["instruments"], ADD, ["instruments", "edit", TITAN, "--location", "x"],
    ["instruments", "remove", TITAN], ["migrate"], ["migrate", "--dry-run"], ["repair"],
    ["repair", "--yes"], ["info"], ["info", "--json"], ["init"], ["init", "--force"],
    ["init", "--demo"],
]


@pytest.mark.parametrize("argv", TWO_X, ids=[" ".join(a[:2]) for a in TWO_X])
def test_a_nexuslims_2x_file_is_refused_and_left_alone(
    tmp_path: Path, run: Run, no_env: None, argv: list[str], two_x_bytes: bytes
) -> None:
    path = tmp_path / "nexuslims_2x.sqlite"
    path.write_bytes(two_x_bytes)
    before = _files(tmp_path)
    code, out, err = run("--db", path, *argv)
    assert code != 0
    assert out == ""
    line = _one_error_line(err)
    assert "NexusLIMS 2.x" in line
    assert REV_2X in line
    assert str(path) in line
    assert _files(tmp_path) == before


# ---------------------------------------------------------- subprocess


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_DB_PATH, ENV_DB_PATH_2X)}
    env.update(extra)
    return env


@pytest.mark.slow
def test_python_dash_m_and_the_installed_script(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "nexusLIMS.db", "--db", "demo.sqlite", "init", "--demo"],
        capture_output=True, text=True, env=_env(), check=False, timeout=120, cwd=tmp_path,
    )
    assert (made.returncode, made.stderr) == (0, "")
    path = tmp_path / "demo.sqlite"
    assert made.stdout.splitlines()[0] == (
        f"Initialised NexusLIMS database {path} with demo data:")
    assert made.stdout.splitlines()[-1] == "  nexuslims-db --db demo.sqlite sessions"

    assert SCRIPT.is_file(), f"the console script {SCRIPT} is not installed"
    listed = subprocess.run(
        [str(SCRIPT), "sessions", "--json"],
        capture_output=True, text=True, env=_env(nexusLIMS_db_path=str(path)), check=False,
        timeout=120,
    )
    assert (listed.returncode, listed.stderr) == (0, "")
    assert len(json.loads(listed.stdout)) == 3

    checked = subprocess.run([str(SCRIPT), "--db", str(path), "check"], capture_output=True,
                             text=True, env=_env(), check=False, timeout=120)
    assert (checked.returncode, checked.stderr) == (0, "")


@pytest.mark.slow
def test_errors_in_a_subprocess_are_one_line_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    for command, subcommand, code in (([sys.executable, "-m", "nexusLIMS.db"], "sessions", 1),
                                      ([str(SCRIPT)], "check", 2)):
        done = subprocess.run([*command, "--db", str(missing), subcommand],
                              capture_output=True, text=True, env=_env(), check=False,
                              timeout=120)
        assert done.returncode == code
        assert done.stdout == ""
        assert "does not exist" in _one_error_line(done.stderr)
    bad = subprocess.run([str(SCRIPT), "--db", str(missing), "status", "x", "DONE"],
                         capture_output=True, text=True, env=_env(), check=False, timeout=120)
    assert bad.returncode == 2
    assert list(tmp_path.iterdir()) == []


def _wait_until_open(pid: int, path: Path) -> None:
    """Wait until process ``pid`` has ``path`` open (Linux), else a moment."""
    fds = Path(f"/proc/{pid}/fd")
    if not fds.is_dir():
        time.sleep(2)
        return
    target = os.path.realpath(path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(fd) == target for fd in fds.iterdir()):
                time.sleep(0.3)  # now in its lock wait
                return
        except OSError:
            pass
        time.sleep(0.02)
    pytest.fail(f"process {pid} never opened {path}")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX only")
def test_ctrl_c_while_waiting_for_a_lock_exits_promptly(demo: Path) -> None:
    before = _rows(demo)
    with closing(sqlite3.connect(demo, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        # It would wait a day for the lock: only the Ctrl-C can end its wait,
        # so the bound on communicate() below only catches a hang.
        child = subprocess.Popen(
            with_ctrl_c([str(SCRIPT), "--db", str(demo), "log", "start", "--instrument", TITAN,
                         "--id", "ctrl-c"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(**{ENV_TIMEOUT: "1d"}),
        )
        try:
            _wait_until_open(child.pid, demo)
            assert child.poll() is None  # still waiting for the lock
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        holder.execute("ROLLBACK")
    assert child.returncode == 130
    assert out == ""
    assert err == "nexuslims-db: interrupted\n"
    assert _rows(demo) == before


# ------------------------------------------- the library behind `log`


def test_log_functions_take_a_database_and_datetimes(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any], no_env: None
) -> None:
    begin = nexuslims_instruments[TITAN].localize_datetime(datetime(2024, 6, 1, 9, 0))
    started = log_start(TITAN, "lib-1", "zoe", begin, database=nexuslims_database)
    ended = log_end(TITAN, "lib-1", "yan", begin.replace(hour=10), database=nexuslims_database)
    assert (started.record_status, ended.record_status) == ("WAITING_FOR_END", "TO_BE_BUILT")
    assert [r[1:] for r in rows(nexuslims_database)] == [
        ("lib-1", TITAN, "2024-06-01T09:00:00-04:00", "START", "TO_BE_BUILT", "zoe"),
        ("lib-1", TITAN, "2024-06-01T10:00:00-04:00", "END", "TO_BE_BUILT", "yan"),
    ]


@pytest.mark.parametrize("identifier", ["", None])
def test_log_start_needs_an_identifier(
    nexuslims_instruments: dict[str, Any], nexuslims_db: Path, identifier: Any
) -> None:
    with pytest.raises(ValueError, match="Invalid session_identifier"):
        log_start(TITAN, identifier)
    assert _rows(nexuslims_db) == []
