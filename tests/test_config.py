"""Issue 2, point 2: the database path comes from the environment at every call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from nexusLIMS.db import DatabaseConfigError, DatabaseNotFoundError, init_db, make_db_query
from nexusLIMS.db.session_handler import SessionLog, db_query, get_sessions_to_build
from nexusLIMS.instruments import (
    Instrument,
    add_instrument,
    get_instr_from_api_url,
    instrument_db,
    load_instruments,
)

ENV = "nexusLIMS_db_path"
ENV_2X = "NX_DB_PATH"


def _instrument(pid: str) -> Instrument:
    return Instrument(
        name=pid,
        api_url=f"https://nemo.example.org/api/tools/?id={pid}",
        calendar_name=pid,
        calendar_url=f"https://nemo.example.org/calendar/{pid}/",
        location="Building 1",
        schema_name=pid,
        property_tag="000001",
        filestore_path=f"./{pid}",
        timezone="America/New_York",
    )


def _db_with_instrument(path: Path, pid: str) -> Path:
    init_db(path)
    add_instrument(_instrument(pid), path)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Every public entry point that reads the configured database.
CALLS: dict[str, Callable[[], Any]] = {
    "make_db_query": lambda: make_db_query("SELECT 1"),
    "db_query": lambda: db_query("SELECT 1"),
    "get_sessions_to_build": get_sessions_to_build,
    "insert_log": lambda: SessionLog(
        "s1", "PID-A", "2021-05-01T10:00:00", "START", None
    ).insert_log(),
    "instrument_db[]": lambda: instrument_db["PID-A"],
    "instrument_db len": lambda: len(instrument_db),
    "load_instruments": load_instruments,
    "get_instr_from_api_url": lambda: get_instr_from_api_url("https://x"),
}


@pytest.fixture
def no_db_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(ENV_2X, raising=False)
    return monkeypatch


def test_reads_nexuslims_db_path(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    path = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    no_db_env.setenv(ENV, str(path))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]


def test_falls_back_to_nx_db_path(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    path = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    no_db_env.setenv(ENV_2X, str(path))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]
    assert list(instrument_db) == ["PID-A"]


def test_nexuslims_db_path_wins_over_nx_db_path(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    first = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    second = _db_with_instrument(tmp_path / "b.sqlite", "PID-B")
    no_db_env.setenv(ENV, str(first))
    no_db_env.setenv(ENV_2X, str(second))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_unset_variable_is_an_error_naming_it(
    call: Callable[[], Any], tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    no_db_env.chdir(tmp_path)
    with pytest.raises(DatabaseConfigError, match=ENV):
        call()
    assert _tree(tmp_path) == []


def test_init_db_without_path_or_variable_is_an_error(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    no_db_env.chdir(tmp_path)
    with pytest.raises(DatabaseConfigError, match=ENV):
        init_db()
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize(
    "relative", ["nexuslims_db.sqlite", "missing_dir/nexuslims_db.sqlite"]
)
@pytest.mark.parametrize("variable", [ENV, ENV_2X])
def test_missing_file_is_an_error_naming_it_and_nothing_is_created(
    call: Callable[[], Any],
    relative: str,
    variable: str,
    tmp_path: Path,
    no_db_env: pytest.MonkeyPatch,
) -> None:
    # A real database beside the misspelt path, so the folder is not empty.
    _db_with_instrument(tmp_path / "real.sqlite", "PID-A")
    before = _tree(tmp_path)
    missing = tmp_path / relative
    no_db_env.setenv(variable, str(missing))
    with pytest.raises(DatabaseNotFoundError) as info:
        call()
    assert str(missing) in str(info.value)
    assert isinstance(info.value, DatabaseConfigError)
    assert not missing.exists()
    assert _tree(tmp_path) == before


def test_a_directory_is_not_a_database(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    no_db_env.setenv(ENV, str(folder))
    with pytest.raises(DatabaseNotFoundError, match="is not a file") as info:
        make_db_query("SELECT 1")
    assert str(folder) in str(info.value)
    assert _tree(tmp_path) == ["folder.sqlite"]


def test_switching_databases_between_calls(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    first = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    second = _db_with_instrument(tmp_path / "b.sqlite", "PID-B")
    for path, pid in [(first, "PID-A"), (second, "PID-B"), (first, "PID-A")]:
        no_db_env.setenv(ENV, str(path))
        assert make_db_query("SELECT instrument_pid FROM instruments") == [(pid,)]
        assert db_query("SELECT instrument_pid FROM instruments") == (True, [(pid,)])
        assert list(instrument_db) == [pid]
        assert sorted(load_instruments()) == [pid]


def test_writes_go_to_the_file_named_at_call_time(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    first = _db_with_instrument(tmp_path / "a.sqlite", "PID")
    second = _db_with_instrument(tmp_path / "b.sqlite", "PID")
    no_db_env.setenv(ENV, str(first))
    SessionLog("in-a", "PID", "2021-05-01T10:00:00", "START", None).insert_log()
    no_db_env.setenv(ENV, str(second))
    SessionLog("in-b", "PID", "2021-05-01T10:00:00", "START", None).insert_log()

    query = "SELECT session_identifier FROM session_log"
    assert make_db_query(query) == [("in-b",)]
    no_db_env.setenv(ENV, str(first))
    assert make_db_query(query) == [("in-a",)]


def test_environment_is_not_modified(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    path = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    no_db_env.setenv(ENV_2X, str(path))
    make_db_query("SELECT 1")
    assert ENV not in os.environ
    assert os.environ[ENV_2X] == str(path)
