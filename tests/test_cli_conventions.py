"""The conventions of ``nexuslims-db`` that admins expect from other command lines.

``--version``; ``--format table|json|ndjson|csv`` on every listing (``--json``
still works); progress with an ETA on a terminal and silence elsewhere; a
"did you mean" for mistyped commands and choices; argument errors in the
user's words; event types and statuses in any case.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import ESC, TITAN, Run, insert_raw, psycopg, row, rows
from legacy_schema import make_legacy_db

import nexusLIMS
from nexusLIMS.db.claims import claim_sessions
from nexusLIMS.db.cli.output import FORMATS, Progress, records
from nexusLIMS.db.migrations import migrate_db
from nexusLIMS.db.samples import add_sample_instruments, populate_demo


@pytest.fixture
def demo(nexuslims_db: Path) -> Path:
    populate_demo(nexuslims_db)
    return nexuslims_db


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Make the captured stderr say it is a terminal."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


# ------------------------------------------------------------------ --version


def test_version_names_the_package_python_sqlite_and_psycopg(run: Run) -> None:
    code, out, err = run("--version")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"nexuslims-db {nexusLIMS.__version__} (import package nexusLIMS "
                               f"from {nexusLIMS.__path__[0]})")
    assert lines[1].startswith(f"Python {platform.python_version()} ")
    assert lines[2] == f"SQLite {sqlite3.sqlite_version}"
    if psycopg is None:
        assert lines[3].startswith("psycopg not installed")
    else:
        assert lines[3].startswith(f"psycopg {psycopg.__version__} (")
        assert "libpq " in lines[3]


def test_version_without_psycopg_says_how_to_get_it(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    code, out, _ = run("--version")
    assert code == 0
    assert out.splitlines()[3] == ('psycopg not installed (PostgreSQL needs: '
                                   'pip install "nexuslims-db[postgres]")')


def test_version_needs_no_database_and_no_command(run: Run, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nexusLIMS_db_path", raising=False)
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run("--version")[0] == 0
    assert run("--db", "nowhere.sqlite", "--version")[0] == 0
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ --format

LISTINGS = [["sessions"], ["check"], ["instruments"], ["claims"]]


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _as_csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _stable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without what moves on between two runs (a claim's age, its lease left)."""
    return [{k: v for k, v in item.items() if not k.endswith(("age_seconds", "left_seconds"))}
            for item in items]


@pytest.mark.parametrize("argv", LISTINGS, ids=lambda argv: argv[0])
def test_every_listing_speaks_json_ndjson_and_csv_alike(
    demo: Path, run: Run, argv: list[str]
) -> None:
    insert_raw([row("lonely", "START", "2024-05-08T10:00:00-04:00")])  # a problem to check
    claim_sessions(limit=2, worker="builder-1", lease=timedelta(minutes=30))
    code, out, _ = run(*argv, "--json")
    assert code == (1 if argv == ["check"] else 0)
    listed = _stable(json.loads(out))
    assert listed  # something to compare
    assert _stable(json.loads(run(*argv, "--format", "json")[1])) == listed
    assert _stable(json.loads(run(*argv, "--format", "JSON")[1])) == listed  # in any case

    ndjson = run(*argv, "--format", "ndjson")[1]
    assert ndjson.endswith("}\n")
    assert _stable([json.loads(line) for line in ndjson.splitlines()]) == listed

    table = _csv(run(*argv, "--format", "csv")[1])
    assert len(table) == len(listed)
    assert list(table[0]) == list(json.loads(out)[0])  # the same fields, in the same order
    assert [{k: got[k] for k in item} for got, item in zip(table, listed)] == [
        {k: _as_csv(v) for k, v in item.items()} for item in listed]


def test_check_lists_problems_in_every_format(demo: Path, run: Run) -> None:
    insert_raw([row("lonely", "START", "2024-05-08T10:00:00-04:00")])
    listed = json.loads(run("check", "--json")[1])
    assert [p["session_identifier"] for p in listed] == ["lonely"]
    assert run("check", "--format", "csv")[0] == 1  # the exit status stays the check's
    got = _csv(run("check", "--format", "csv")[1])
    assert got[0]["session_identifier"] == "lonely"
    assert got[0]["log_ids"] == " ".join(map(str, listed[0]["log_ids"]))


@pytest.mark.parametrize("argv", LISTINGS, ids=lambda argv: argv[0])
def test_an_empty_listing_is_an_empty_array_no_lines_or_a_header(
    nexuslims_db: Path, run: Run, argv: list[str]
) -> None:
    assert run(*argv, "--format", "json")[1] == "[]\n"
    assert run(*argv, "--format", "ndjson")[1] == "\n"
    header = run(*argv, "--format", "csv")[1]
    assert header.count("\n") == 1
    assert header.startswith(("session_identifier,", "instrument_pid,"))


def test_info_is_one_object_in_json_and_one_line_in_ndjson(demo: Path, run: Run) -> None:
    pretty = json.loads(run("info", "--format", "json")[1])
    code, line, _ = run("info", "--format", "ndjson")
    assert code == 0
    assert line.count("\n") == 1
    one = json.loads(line)
    for info in (pretty, one):
        del info["oldest_waiting_for_end"]["age_seconds"]
    assert one == pretty
    code, _, err = run("info", "--format", "csv")
    assert code == 2
    assert "invalid choice: 'csv' (choose from table, json, ndjson)" in err


def test_csv_cells_show_control_characters_escaped(nexuslims_instruments: dict, run: Run) -> None:
    insert_raw([row(f"s{ESC}1", "START", "2024-01-01T10:00:00", user="a,\"b\"\nc"),
                row(f"s{ESC}1", "END", "2024-01-01T11:00:00")])
    out = run("sessions", "--format", "csv")[1]
    assert "\x1b" not in out
    got = _csv(out)
    assert got[0]["session_identifier"] == "s\\x1b[2J1"
    assert got[0]["user"] == 'a,"b"\\nc'
    assert len(out.splitlines()) == 2


def test_format_is_in_the_help_of_each_listing(run: Run) -> None:
    for argv in (*LISTINGS, ["info"]):
        out = " ".join(run(*argv, "--help")[1].split())
        assert "--format {table,json,ndjson" in out, argv
        assert "--json print JSON (the same as --format json)" in out, argv


def test_records_knows_its_formats() -> None:
    assert FORMATS == ("table", "json", "ndjson", "csv")
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        records([], "xml")


# ------------------------------------------------------------------ progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_with_an_eta_on_a_terminal() -> None:
    clock, stream = Clock(), Tty()
    with Progress("prog", "rows", stream=stream, clock=clock) as progress:
        progress("copying t", 0, 400)
        clock.now += 10
        progress("copying t", 100, 400)
        clock.now += 0.01
        progress("copying t", 150, 400)  # too soon after the last: not drawn
        clock.now += 10
        progress("copying t", 400, 400)
        progress("copying u", 5, 10)
    shown = stream.getvalue()
    assert shown.split("\r")[1:] == [
        "prog: copying t: 0/400 rows (0%), ETA ?",
        "prog: copying t: 100/400 rows (25%), ETA 0:00:30",
        "prog: copying t: 400/400 rows (100%), done in 0:00:20\n",
        "prog: copying u: 5/10 rows (50%), ETA ?\n",
    ]


def test_progress_on_one_line_keeps_one_clock_across_stages() -> None:
    clock, stream = Clock(), Tty()
    with Progress("prog", one_line=True, stream=stream, clock=clock) as progress:
        progress("stage a", 0, 10)
        clock.now += 5
        progress("stage b", 5, 10)
        clock.now += 5
        progress("done", 10, 10)
    shown = stream.getvalue().split("\r")[1:]
    assert shown[1].startswith("prog: stage b: 50%, ETA 0:00:05")
    assert shown[2] == "prog: done: 100%, done in 0:00:10\n"


def test_progress_writes_nothing_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("prog", "rows", stream=stream) as progress:
        progress("copying t", 5, 10)
        progress("copying t", 10, 10)
    assert stream.getvalue() == ""


def _legacy(tmp_path: Path, logs: int) -> Path:
    path = make_legacy_db(tmp_path / "old.sqlite")
    add_sample_instruments(path)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status, user) VALUES (?, ?, ?, 'START', 'COMPLETED', 'u')",
            [(f"s{i}", TITAN, f"2024-01-01T10:00:{i % 60:02d}") for i in range(logs)])
    conn.close()
    return path


def test_migrate_reports_each_stage_to_its_progress_callback(tmp_path: Path) -> None:
    path = _legacy(tmp_path, 50)
    seen: list[tuple[str, int, int]] = []
    migrate_db(path, progress=lambda *call: seen.append(call))
    assert [stage for stage, _, _ in seen] == [
        "backing up", "step 1/4 session_log_constraints",
        "step 2/4 keep_logs_of_deleted_instruments", "step 3/4 session_claims",
        "step 4/4 session_revisions", "compacting (VACUUM)", "done"]
    done = [done for _, done, _ in seen]
    assert done == sorted(done)
    assert done[0] == 0
    assert seen[-1][1] == seen[-1][2] == seen[0][2] > 0
    assert {total for _, _, total in seen} == {seen[0][2]}


def test_migrate_shows_progress_on_a_terminal_only(
    tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _legacy(tmp_path, 50)
    code, out, err = run("--db", path, "migrate", "--no-backup")
    assert (code, err) == (0, "")
    assert out.startswith("Migrated ")
    path.unlink()
    path = _legacy(tmp_path, 50)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run("--db", path, "migrate")
    assert code == 0
    assert out.startswith("Migrated ")
    lines = err.split("\r")[1:]
    assert lines[0].startswith("nexuslims-db: migrating, backing up: 0%, ETA ?")
    assert any("migrating, step 1/4 session_log_constraints: " in line for line in lines)
    assert lines[-1].startswith("nexuslims-db: migrated: 100%, done in ")
    assert err.endswith("\n")


def test_copy_is_quiet_when_not_on_a_terminal(tmp_path: Path, run: Run) -> None:
    path = _legacy(tmp_path, 1500)
    code, out, err = run("copy", path, tmp_path / "copy.sqlite")
    assert (code, err) == (0, "")
    assert "Row counts and checksums match." in out


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("argv", "wanted"), [
    (["sesions"], "argument COMMAND: invalid choice: 'sesions' (choose from init, sessions, "),
    (["sesions"], "; did you mean 'sessions'?"),
    (["instrument"], "did you mean 'instruments'?"),
    (["sessions", "--format", "tabel"], "did you mean 'table'?"),
    (["schema", "--dialect", "postgres"], "did you mean 'postgresql'?"),
    (["status", "s1", "no_consnt"],
     "argument STATUS: invalid choice: 'no_consnt' (choose from COMPLETED, "),
    (["status", "s1", "no_consnt"], "did you mean 'NO_CONSENT'?"),
    (["log", "stat", "--instrument", TITAN, "--id", "s1"], "did you mean 'start'?"),
    (["completion", "bsh"], "did you mean 'bash'"),
    (["sessions", "--limit", "abc"],
     "argument --limit: must be a whole number (0 or more), not 'abc'"),
    (["sessions", "--limit", "-1"], "argument --limit: must be 0 or more, not -1"),
])
def test_argument_errors_speak_the_users_words(
    nexuslims_db: Path, run: Run, argv: list[str], wanted: str
) -> None:
    code, out, err = run(*argv)
    assert (code, out) == (2, "")
    assert wanted in err
    assert "_non_negative" not in err
    assert "non_negative" not in err
    assert err.count("error:") == 1


def test_a_choice_far_from_any_suggests_nothing(nexuslims_db: Path, run: Run) -> None:
    err = run("status", "s1", "DONE")[2]
    assert "argument STATUS: invalid choice: 'DONE'" in err
    assert "did you mean" not in err


def test_events_and_statuses_in_any_case(nexuslims_instruments: dict, run: Run) -> None:
    at = "2024-05-07T08:30:00-04:00"
    code, out, _ = run("log", "START", "--instrument", TITAN, "--id", "s1", "--at", at)
    assert code == 0
    assert out.startswith("Logged START of session s1")
    code, out, _ = run("log", "End", "--instrument", TITAN, "--id", "s1",
                       "--at", "2024-05-07T09:30:00-04:00")
    assert code == 0
    assert out.startswith("Logged END of session s1")
    code, out, _ = run("status", "s1", "no_consent")
    assert code == 0
    assert out == "Set 2 logs of session s1 to NO_CONSENT.\n"
    assert {r.record_status for r in rows()} == {"NO_CONSENT"}
    assert run("status", "s1", "To_Be_Built")[1] == "Set 2 logs of session s1 to TO_BE_BUILT.\n"
