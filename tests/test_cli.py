"""Issue 5, the command line: every ``nexuslims-db`` subcommand, happy and error paths.

Most tests call ``main(argv)`` and read stdout and stderr with ``capsys``; a
few run ``python -m nexusLIMS.db`` and the installed ``nexuslims-db`` script.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from legacy_schema import make_legacy_db

from nexusLIMS.db import SCHEMA_VERSION
from nexusLIMS.db.cli import main
from nexusLIMS.db.connection import ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.pairing import find_session_problems, get_sessions_to_build
from nexusLIMS.db.samples import sample_instruments
from nexusLIMS.db.session_log import SessionLog
from nexusLIMS.db.session_logger import log_end, log_start
from nexusLIMS.instruments import COLUMNS, load_instruments

TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
SCRIPT = Path(sys.executable).with_name("nexuslims-db")
SUBCOMMANDS = (["init"], ["sessions"], ["check"], ["log", "start"], ["log", "end"], ["status"],
               ["instruments"], ["instruments", "add"], ["migrate"])


class Run:
    """``main(argv)`` with its exit code and output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: Any) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(arg) for arg in argv])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DB_PATH, raising=False)
    monkeypatch.delenv(ENV_DB_PATH_2X, raising=False)


@pytest.fixture
def demo(tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch, no_env: None) -> Path:
    """A demo database made by ``init --demo``; the environment names it."""
    path = tmp_path / "demo.sqlite"
    assert run("--db", path, "init", "--demo")[0] == 0
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    return path


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM session_log ORDER BY id_session_log").fetchall()


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nexuslims-db: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- init


def test_init_creates_an_empty_current_database(tmp_path: Path, run: Run, no_env: None) -> None:
    path = tmp_path / "sub" / "new.sqlite"
    code, out, err = run("--db", path, "init")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        f"Initialised NexusLIMS database {path} (schema version {SCHEMA_VERSION})."
    )
    assert out.splitlines()[-1] == f"  nexuslims-db --db {path} instruments add --help"
    assert _rows(path) == []
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_init_demo_prints_a_summary_ending_with_the_next_command(
    tmp_path: Path, run: Run, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("--db", "demo.sqlite", "init", "--demo")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "Initialised NexusLIMS database demo.sqlite with demo data:",
        "  instruments  3, in 2 time zones (America/Denver, America/New_York)",
        "  sessions     5: 3 TO_BE_BUILT, 1 WAITING_FOR_END, 1 COMPLETED",
        "  log rows     10",
        "List the sessions ready to build:",
        "  nexuslims-db --db demo.sqlite sessions",
    ]


def test_demo_data_is_consistent_and_in_several_states(demo: Path) -> None:
    assert find_session_problems() == []
    sessions = get_sessions_to_build()
    assert len(sessions) == 3
    zones = {str(instrument.timezone) for instrument in load_instruments().values()}
    assert len(zones) >= 2
    assert {str(s.instrument.timezone) for s in sessions} == zones
    assert all(s.dt_from.utcoffset() is not None and s.dt_from < s.dt_to for s in sessions)
    by_status: dict[str, list[tuple[Any, ...]]] = {}
    for row in _rows(demo):
        by_status.setdefault(row[5], []).append(row)
    assert [row[4] for row in by_status["WAITING_FOR_END"]] == ["START"]
    completed = by_status["COMPLETED"]
    assert sorted(row[4] for row in completed) == ["END", "RECORD_GENERATION", "START"]
    assert len({row[1] for row in completed}) == 1
    assert len(by_status["TO_BE_BUILT"]) == 6


def test_init_demo_on_a_database_with_data_is_refused(demo: Path, run: Run) -> None:
    rows = _rows(demo)
    code, out, err = run("--db", demo, "init", "--demo")
    assert (code, out) == (1, "")
    assert "The demo needs an empty database" in _one_error_line(err)
    assert _rows(demo) == rows


def test_init_without_a_configured_path_is_an_error(run: Run, no_env: None) -> None:
    code, _, err = run("init")
    assert code == 1
    assert "No NexusLIMS database configured" in _one_error_line(err)


# ------------------------------------------------------------ no creation


@pytest.mark.parametrize(
    "argv",
    [
        ["sessions"],
        ["sessions", "--json"],
        ["check"],
        ["instruments"],
        ["instruments", "add", "--pid", "X", "--api-url", "u", "--calendar-name", "c",
         "--calendar-url", "cu", "--location", "l", "--schema-name", "s", "--property-tag",
         "1", "--filestore-path", "./x"],
        ["log", "start", "--instrument", TITAN, "--id", "s1"],
        ["log", "end", "--instrument", TITAN, "--id", "s1"],
        ["status", "s1", "COMPLETED"],
        ["migrate"],
    ],
)
def test_no_subcommand_but_init_creates_a_missing_database(
    tmp_path: Path, run: Run, no_env: None, argv: list[str]
) -> None:
    missing = tmp_path / "missing.sqlite"
    code, out, err = run("--db", missing, *argv)
    assert code == 1
    assert out == ""
    line = _one_error_line(err)
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


# ------------------------------------------------------------ sessions


def test_sessions_lists_the_sessions_to_build_in_columns(demo: Path, run: Run) -> None:
    code, out, err = run("--db", demo, "sessions")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["SESSION", "INSTRUMENT", "START", "END", "DURATION", "USER"]
    assert lines[1].split() == [
        "8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d", TITAN, "2024-05-06T09:00:00-04:00",
        "2024-05-06T11:30:00-04:00", "2:30:00", "alice",
    ]
    assert lines[2].split()[-2:] == ["0:50:30", "-"]  # no user
    assert lines[3].split()[3] == "2024-05-06T16:15:00-06:00"
    assert lines[-1] == "3 sessions to build."
    column = lines[0].index("START")
    assert all(line[column - 2:column + 4] == "  2024" for line in lines[1:4])  # aligned


def test_sessions_json_parses(demo: Path, run: Run) -> None:
    code, out, err = run("--db", demo, "sessions", "--json")
    assert (code, err) == (0, "")
    sessions = json.loads(out)
    assert [s["instrument"] for s in sessions] == [TITAN, QUANTA, "JEOL-JEM3010-TEM-565989"]
    assert sessions[0] == {
        "session_identifier": "8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d",
        "instrument": TITAN,
        "start": "2024-05-06T09:00:00-04:00",
        "end": "2024-05-06T11:30:00-04:00",
        "duration_seconds": 9000.0,
        "user": "alice",
    }
    assert sessions[1]["user"] is None


def test_sessions_on_an_empty_database(nexuslims_db: Path, run: Run) -> None:
    assert run("sessions") == (0, "No sessions to build.\n", "")
    code, out, _ = run("sessions", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_sessions_skips_inconsistent_sessions_with_one_warning_line_each(
    demo: Path, run: Run
) -> None:
    # one problem: an END without a START; two problems: two STARTs and no END
    SessionLog("lonely-end", TITAN, "2024-05-08T10:00:00-04:00", "END", None).insert_log()
    for hour in ("10", "11"):
        SessionLog("twice", QUANTA, f"2024-05-08T{hour}:00:00-04:00", "START", None).insert_log()

    code, out, err = run("sessions")

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


# --------------------------------------------------------------- check


def test_check_exits_0_without_problems(demo: Path, run: Run) -> None:
    code, out, err = run("check")
    assert (code, err) == (0, "")
    assert out == "No problems: every TO_BE_BUILT log belongs to a session that can be built.\n"


def test_check_exits_1_and_names_each_problem(demo: Path, run: Run) -> None:
    SessionLog("no-end", TITAN, "2024-05-08T10:00:00-04:00", "START", "u").insert_log()
    SessionLog("backwards", QUANTA, "2024-05-08T10:00:00-04:00", "START", None).insert_log()
    SessionLog("backwards", QUANTA, "2024-05-08T09:00:00-04:00", "END", None).insert_log()

    code, out, err = run("check")

    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith("no-end: end_count: There was not exactly one 'END' log")
    assert lines[1] == ("backwards: end_before_start: session 'backwards' ends "
                        "(2024-05-08T09:00:00-04:00) before it starts (2024-05-08T10:00:00-04:00)")
    assert lines[2] == "2 problems in 2 sessions."

    code, out, _ = run("check", "--json")
    assert code == 1
    assert [(p["session_identifier"], p["kind"]) for p in json.loads(out)] == [
        ("no-end", "end_count"), ("backwards", "end_before_start"),
    ]


# ----------------------------------------------------------------- log


def test_log_start_then_end_makes_a_session_to_build(demo: Path, run: Run) -> None:
    code, out, err = run("log", "start", "--instrument", TITAN, "--id", "s-42",
                         "--user", "erin", "--at", "2024-06-01T09:00:00-04:00")
    assert (code, err) == (0, "")
    assert out == ("Logged START of session s-42 on FEI-Titan-TEM-635816 at "
                   "2024-06-01T09:00:00-04:00; the session is now WAITING_FOR_END.\n")
    assert _rows(demo)[-1][1:] == ("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START",
                                   "WAITING_FOR_END", "erin")
    assert "s-42" not in run("sessions")[1]

    code, out, err = run("log", "end", "--instrument", TITAN, "--id", "s-42",
                         "--at", "2024-06-01T10:15:00-04:00")
    assert (code, err) == (0, "")
    assert out == ("Logged END of session s-42 on FEI-Titan-TEM-635816 at "
                   "2024-06-01T10:15:00-04:00; the session is now TO_BE_BUILT.\n")
    start, end = _rows(demo)[-2:]
    assert start[1:] == ("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START",
                         "TO_BE_BUILT", "erin")
    assert end[1:] == ("s-42", TITAN, "2024-06-01T10:15:00-04:00", "END", "TO_BE_BUILT", "erin")
    listed = {s["session_identifier"]: s for s in json.loads(run("sessions", "--json")[1])}
    assert listed["s-42"]["duration_seconds"] == 4500.0


def test_log_time_defaults_to_now_with_an_offset(demo: Path, run: Run) -> None:
    before = datetime.now().astimezone()
    assert run("log", "start", "--instrument", TITAN, "--id", "now")[0] == 0
    assert run("log", "end", "--instrument", TITAN, "--id", "now")[0] == 0
    after = datetime.now().astimezone()
    for row in _rows(demo)[-2:]:
        stamp = datetime.fromisoformat(row[3])
        assert stamp.utcoffset() is not None
        assert before <= stamp <= after


def test_log_end_without_a_start_writes_nothing(demo: Path, run: Run) -> None:
    rows = _rows(demo)
    code, out, err = run("log", "end", "--instrument", TITAN, "--id", "never-started")
    assert (code, out) == (1, "")
    assert _one_error_line(err) == (
        "nexuslims-db: error: Cannot end session 'never-started': it has no open START log "
        "(status WAITING_FOR_END); expected exactly one"
    )
    assert _rows(demo) == rows


def test_log_end_of_a_session_already_ended_writes_nothing(demo: Path, run: Run) -> None:
    rows = _rows(demo)
    code, _, err = run("log", "end", "--instrument", TITAN, "--id",
                       "8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d")
    assert code == 1
    assert "it already has an END log (id 2, status TO_BE_BUILT)" in _one_error_line(err)
    assert _rows(demo) == rows


def test_a_second_start_for_the_same_id_writes_nothing(demo: Path, run: Run) -> None:
    assert run("log", "start", "--instrument", TITAN, "--id", "dup")[0] == 0
    rows = _rows(demo)
    code, _, err = run("log", "start", "--instrument", QUANTA, "--id", "dup")
    assert code == 1
    line = _one_error_line(err)
    assert line.startswith("nexuslims-db: error: Session 'dup' already has a START log (id ")
    assert line.endswith(", status WAITING_FOR_END); not writing another")
    assert _rows(demo) == rows


@pytest.mark.parametrize("event", ["start", "end"])
def test_an_unknown_instrument_writes_nothing(demo: Path, run: Run, event: str) -> None:
    if event == "end":
        assert run("log", "start", "--instrument", TITAN, "--id", "s-1")[0] == 0
    rows = _rows(demo)
    code, _, err = run("log", event, "--instrument", "NO-SUCH-SCOPE", "--id", "s-1")
    assert code == 1
    assert "instrument 'NO-SUCH-SCOPE' is not in the instruments table" in _one_error_line(err)
    assert _rows(demo) == rows


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
    rows = _rows(demo)
    code, _, err = run("log", "end", "--instrument", instrument, "--id", "s-1", "--at", at)
    assert code == 1
    assert message in _one_error_line(err)
    assert _rows(demo) == rows


def test_log_requires_instrument_and_id(demo: Path, run: Run) -> None:
    code, _, err = run("log", "start", "--id", "s-1")
    assert code == 2
    assert "the following arguments are required: --instrument" in err


def test_a_traceback_only_with_debug(demo: Path, run: Run) -> None:
    code, _, err = run("--debug", "log", "end", "--instrument", TITAN, "--id", "nope")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("nexuslims-db: error: Cannot end session 'nope'")


# -------------------------------------------------------------- status


def test_status_sets_every_log_of_the_session(demo: Path, run: Run) -> None:
    identifier = "8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d"
    code, out, err = run("status", identifier, "NO_CONSENT")
    assert (code, err) == (0, "")
    assert out == f"Set 2 logs of session {identifier} to NO_CONSENT.\n"
    assert {row[5] for row in _rows(demo) if row[1] == identifier} == {"NO_CONSENT"}


def test_status_of_an_unknown_session_is_an_error(demo: Path, run: Run) -> None:
    rows = _rows(demo)
    code, _, err = run("status", "no-such-session", "COMPLETED")
    assert code == 1
    assert _one_error_line(err) == ("nexuslims-db: error: no session_log rows have session "
                                    "identifier 'no-such-session'; nothing changed")
    assert _rows(demo) == rows


def test_status_with_a_bad_choice_exits_2_from_argparse(demo: Path, run: Run) -> None:
    rows = _rows(demo)
    code, out, err = run("status", "8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d", "DONE")
    assert (code, out) == (2, "")
    assert "argument STATUS: invalid choice: 'DONE'" in err
    assert _rows(demo) == rows


def test_status_choices_are_the_enum(run: Run) -> None:
    code, out, _ = run("status", "--help")
    assert code == 0
    assert f"one of: {', '.join(RecordStatus.values())}" in " ".join(out.split())


# --------------------------------------------------------- instruments


def test_instruments_lists_in_columns(nexuslims_instruments: dict[str, Any], run: Run) -> None:
    code, out, err = run("instruments")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["INSTRUMENT", "TIMEZONE", "LOCATION", "HARVESTER", "API", "URL"]
    assert lines[1].split()[:2] == [TITAN, "America/New_York"]
    assert [line.split()[0] for line in lines[1:]] == list(nexuslims_instruments)
    assert len({line.index("America/") for line in lines[1:]}) == 1


def test_instruments_json_parses(nexuslims_instruments: dict[str, Any], run: Run) -> None:
    code, out, _ = run("instruments", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["instrument_pid"] for row in rows] == list(nexuslims_instruments)
    assert all(set(row) == set(COLUMNS) for row in rows)
    assert rows == [instrument.to_row() for instrument in sample_instruments()]


def test_instruments_on_an_empty_database(nexuslims_db: Path, run: Run) -> None:
    code, out, _ = run("instruments")
    assert code == 0
    assert out.startswith("No instruments; add one with: nexuslims-db instruments add --help")
    assert json.loads(run("instruments", "--json")[1]) == []


ADD = ["instruments", "add", "--pid", "FEI-Helios-DB-636663",
       "--api-url", "https://nemo.example.org/api/tools/?id=4", "--calendar-name", "FEI Helios",
       "--calendar-url", "https://nemo.example.org/calendar/helios/",
       "--location", "Building 217, Room D101", "--schema-name", "Helios NanoLab",
       "--property-tag", "636663", "--filestore-path", "./Helios"]


def test_instruments_add(nexuslims_db: Path, run: Run) -> None:
    code, out, err = run(*ADD, "--timezone", "America/Chicago", "--computer-ip", "192.0.2.44")
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


def test_instruments_add_a_duplicate_is_an_error(
    nexuslims_instruments: dict[str, Any], run: Run
) -> None:
    argv = [TITAN if arg == "FEI-Helios-DB-636663" else arg for arg in ADD]
    code, _, err = run(*argv)
    assert code == 1
    assert "Cannot add instrument 'FEI-Titan-TEM-635816'" in _one_error_line(err)
    assert len(load_instruments()) == 3


# ------------------------------------------------------------- migrate


def test_migrate_a_1_4_database(tmp_path: Path, run: Run, no_env: None) -> None:
    path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    code, out, err = run("--db", path, "migrate")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Migrated {path} from schema version 0 to {SCHEMA_VERSION}:"
    assert ("  - the CHECK of session_log.record_status lacks NO_CONSENT, NO_RESERVATION, "
            "BUILT_NOT_EXPORTED") in lines
    assert "Kept all 0 session_log rows with their ids." in lines
    backups = sorted(tmp_path.glob("nexuslims_db.sqlite.bak-*"))
    assert len(backups) == 1
    assert lines[-1] == f"Backup: {backups[0]}"

    code, out, err = run("--db", path, "migrate")
    assert (code, err) == (0, "")
    assert out == (f"{path} is already at schema version {SCHEMA_VERSION}; "
                   f"nothing to do, nothing changed.\n")
    assert sorted(tmp_path.glob("*.bak-*")) == backups


def test_migrate_no_backup(tmp_path: Path, run: Run, no_env: None) -> None:
    path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    code, out, _ = run("--db", path, "migrate", "--no-backup")
    assert code == 0
    assert out.splitlines()[-1] == "No backup made (--no-backup)."
    assert list(tmp_path.glob("*.bak-*")) == []


# ------------------------------------------------------- help and global


@pytest.mark.parametrize("argv", [[], *SUBCOMMANDS])
def test_every_subcommand_has_help_with_an_example(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv, "--help")
    assert (code, err) == (0, "")
    assert "example:\n  nexuslims-db " in out


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


# ---------------------------------------------------------- subprocess


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_DB_PATH, ENV_DB_PATH_2X)}
    env.update(extra)
    return env


def test_python_dash_m_and_the_installed_script(tmp_path: Path) -> None:
    path = tmp_path / "demo.sqlite"
    made = subprocess.run(
        [sys.executable, "-m", "nexusLIMS.db", "--db", str(path), "init", "--demo"],
        capture_output=True, text=True, env=_env(), check=False, timeout=120,
    )
    assert (made.returncode, made.stderr) == (0, "")
    assert made.stdout.splitlines()[-1] == f"  nexuslims-db --db {path} sessions"

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
    assert checked.returncode == 0


def test_errors_in_a_subprocess_are_one_line_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    for command in ([sys.executable, "-m", "nexusLIMS.db"], [str(SCRIPT)]):
        done = subprocess.run([*command, "--db", str(missing), "sessions"], capture_output=True,
                              text=True, env=_env(), check=False, timeout=120)
        assert done.returncode == 1
        assert done.stdout == ""
        assert "does not exist" in _one_error_line(done.stderr)
    assert list(tmp_path.iterdir()) == []
    bad = subprocess.run([str(SCRIPT), "--db", str(missing), "status", "x", "DONE"],
                         capture_output=True, text=True, env=_env(), check=False, timeout=120)
    assert bad.returncode == 2


# ------------------------------------------- the library behind `log`


def test_log_functions_take_a_path_and_datetimes(
    nexuslims_instruments: dict[str, Any], nexuslims_db: Path, no_env: None
) -> None:
    begin = nexuslims_instruments[TITAN].localize_datetime(datetime(2024, 6, 1, 9, 0))
    started = log_start(TITAN, "lib-1", "zoe", begin, path=nexuslims_db)
    ended = log_end(TITAN, "lib-1", "yan", begin.replace(hour=10), path=nexuslims_db)
    assert (started.record_status, ended.record_status) == ("WAITING_FOR_END", "TO_BE_BUILT")
    assert [row[1:] for row in _rows(nexuslims_db)] == [
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
