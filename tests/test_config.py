"""nexusLIMS.db.config: which database, read from the environment at every call.

Ported from the old test_config.py (issue 2, point 2) and the parsing half of
test_timeout.py, plus: ``~`` and relative paths made absolute, ``sqlite:///``
and PostgreSQL URLs, secrets kept out of ``describe()``, durations with units.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

from nexusLIMS.db import DatabaseConfigError, DatabaseNotFoundError, init_db, make_db_query
from nexusLIMS.db.cli import main
from nexusLIMS.db.config import (
    DEFAULT_MARK_AFTER,
    DEFAULT_TIMEOUT,
    DatabaseLocation,
    data_root,
    locate_database,
    lock_timeout,
    mark_after,
    record_user,
)
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
ENV_TIMEOUT = "nexusLIMS_db_timeout"
ENV_MARK_AFTER = "nexusLIMS_db_mark_after"


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


@pytest.fixture
def home(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> Path:
    """Make ``~`` the folder ``tmp_path/home`` and the working folder another one."""
    folder = tmp_path / "home"
    folder.mkdir()
    no_db_env.setenv("HOME", str(folder))
    no_db_env.setenv("USERPROFILE", str(folder))  # what expanduser reads on Windows
    work = tmp_path / "work"
    work.mkdir()
    no_db_env.chdir(work)
    return folder


# --- which variable -----------------------------------------------------------

def test_reads_nexuslims_db_path(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    path = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    no_db_env.setenv(ENV, str(path))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]
    location = locate_database()
    assert location == DatabaseLocation("sqlite", str(path), ENV)
    assert location.path == path


def test_falls_back_to_nx_db_path(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    path = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    no_db_env.setenv(ENV_2X, str(path))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]
    assert list(instrument_db) == ["PID-A"]
    assert locate_database().source == ENV_2X


def test_an_empty_nexuslims_db_path_falls_back_to_nx_db_path(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    path = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    no_db_env.setenv(ENV, "")
    no_db_env.setenv(ENV_2X, str(path))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]


def test_nexuslims_db_path_wins_over_nx_db_path(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    first = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    second = _db_with_instrument(tmp_path / "b.sqlite", "PID-B")
    no_db_env.setenv(ENV, str(first))
    no_db_env.setenv(ENV_2X, str(second))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]


def test_an_explicit_database_wins_over_the_environment(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    first = _db_with_instrument(tmp_path / "a.sqlite", "PID-A")
    second = _db_with_instrument(tmp_path / "b.sqlite", "PID-B")
    no_db_env.setenv(ENV, str(first))
    assert sorted(load_instruments(second)) == ["PID-B"]
    location = locate_database(second)
    assert (location.target, location.source) == (str(second), "the path given")
    assert locate_database(location) is location


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
    assert variable in str(info.value)  # says where the path came from
    assert isinstance(info.value, DatabaseConfigError)
    assert isinstance(info.value, FileNotFoundError)
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


def test_must_exist_false_locates_a_missing_file_without_creating_it(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "new" / "db.sqlite"
    location = locate_database(missing, must_exist=False)
    assert (location.backend, location.target) == ("sqlite", str(missing))
    assert _tree(tmp_path) == []


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


def test_switching_between_a_file_and_a_server_between_calls(
    nexuslims_postgres_db: DatabaseLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_instrument(_instrument("PID-PG"))
    file = _db_with_instrument(tmp_path / "a.sqlite", "PID-FILE")
    for target, pid in [(str(file), "PID-FILE"), (nexuslims_postgres_db.target, "PID-PG"),
                        (str(file), "PID-FILE")]:
        monkeypatch.setenv(ENV, target)
        assert make_db_query("SELECT instrument_pid FROM instruments") == [(pid,)]
        assert list(instrument_db) == [pid]


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


# --- paths: ~, relative, sqlite:/// -------------------------------------------

@pytest.mark.parametrize("variable", [ENV, ENV_2X])
def test_tilde_in_the_variable_is_the_home_folder(
    home: Path, no_db_env: pytest.MonkeyPatch, variable: str
) -> None:
    path = _db_with_instrument(home / "nexus.sqlite", "PID-A")
    no_db_env.setenv(variable, "~/nexus.sqlite")
    assert locate_database().target == str(path)
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]
    assert list(instrument_db) == ["PID-A"]
    assert not (Path.cwd() / "~").exists()


def test_a_missing_file_under_tilde_is_named_by_its_absolute_path(
    home: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    no_db_env.setenv(ENV, "~/missing.sqlite")
    with pytest.raises(DatabaseNotFoundError) as info:
        make_db_query("SELECT 1")
    assert str(home / "missing.sqlite") in str(info.value)
    assert "~" not in str(info.value)
    assert _tree(home) == []
    assert _tree(Path.cwd()) == []


def test_init_db_under_tilde_creates_the_file_in_the_home_folder(
    home: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    location = init_db("~/sub/nexus.sqlite")
    assert location.path == home / "sub" / "nexus.sqlite"
    assert location.path.is_file()
    assert _tree(Path.cwd()) == []  # no folder named "~"


def test_a_relative_path_is_made_absolute(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    path = _db_with_instrument(tmp_path / "data" / "nexus.sqlite", "PID-A")
    no_db_env.chdir(tmp_path)
    no_db_env.setenv(ENV, os.path.join("data", "nexus.sqlite"))
    location = locate_database()
    assert location.target == str(path)
    assert Path(location.target).is_absolute()
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]
    # A relative variable is resolved again at each call, against the working folder,
    # and a miss is reported by its absolute path.
    no_db_env.chdir(tmp_path / "data")
    with pytest.raises(DatabaseNotFoundError) as info:
        make_db_query("SELECT 1")
    assert str(tmp_path / "data" / "data" / "nexus.sqlite") in str(info.value)


def test_cli_db_option_expands_tilde(
    home: Path, no_db_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", "~/cli.sqlite", "init"]) == 0
    assert (home / "cli.sqlite").is_file()
    assert _tree(Path.cwd()) == []
    capsys.readouterr()
    assert main(["--db", "~/cli.sqlite", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["database"] == str(home / "cli.sqlite")


def test_cli_names_a_missing_tilde_path_absolutely(
    home: Path, no_db_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", "~/nope.sqlite", "sessions"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nexuslims-db: error: ")
    assert str(home / "nope.sqlite") in err
    assert "~" not in err
    assert _tree(home) == []


def test_sqlite_url_with_a_relative_path(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    no_db_env.chdir(tmp_path)
    location = init_db("sqlite:///relative/x.db")
    assert location.backend == "sqlite"
    assert location.path == tmp_path / "relative" / "x.db"
    assert location.path.is_file()
    no_db_env.setenv(ENV, "sqlite:///relative/x.db")
    assert locate_database().target == str(tmp_path / "relative" / "x.db")
    assert make_db_query("SELECT count(*) FROM session_log") == [(0,)]


def test_sqlite_url_with_an_absolute_path(tmp_path: Path, no_db_env: pytest.MonkeyPatch) -> None:
    path = _db_with_instrument(tmp_path / "abs.db", "PID-A")
    url = f"sqlite:///{path.as_posix()}"
    if os.name != "nt":
        assert url.startswith("sqlite:////")
    no_db_env.setenv(ENV, url)
    location = locate_database()
    assert (location.backend, location.target) == ("sqlite", str(path))
    assert make_db_query("SELECT instrument_pid FROM instruments") == [("PID-A",)]


def test_sqlite_url_of_a_missing_file_names_it_and_creates_nothing(
    tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    no_db_env.chdir(tmp_path)
    no_db_env.setenv(ENV, "sqlite:///relative/x.db")
    with pytest.raises(DatabaseNotFoundError) as info:
        make_db_query("SELECT 1")
    assert str(tmp_path / "relative" / "x.db") in str(info.value)
    assert _tree(tmp_path) == []


def test_sqlite_url_without_a_file_is_an_error(no_db_env: pytest.MonkeyPatch) -> None:
    no_db_env.setenv(ENV, "sqlite:///")
    with pytest.raises(DatabaseConfigError, match=ENV):
        locate_database(must_exist=False)


# --- server URLs ----------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgresql_urls(scheme: str, no_db_env: pytest.MonkeyPatch) -> None:
    url = f"{scheme}://nexus@db.example.org:5433/nexuslims"
    no_db_env.setenv(ENV, url)
    location = locate_database()
    assert (location.backend, location.target, location.source) == ("postgresql", url, ENV)
    assert location.describe() == url
    assert str(location) == url
    # A server database is not a file: no existence check, no .path.
    with pytest.raises(DatabaseConfigError, match="not a SQLite file"):
        _ = location.path


@pytest.mark.parametrize(
    "url", ["mysql://user@host/db", "mariadb+pymysql://host/db", "file:///tmp/x.db"]
)
@pytest.mark.parametrize("given", ["variable", "argument"])
def test_an_unknown_url_scheme_is_an_error_naming_it(
    url: str, given: str, tmp_path: Path, no_db_env: pytest.MonkeyPatch
) -> None:
    no_db_env.chdir(tmp_path)
    scheme = url.partition("://")[0]
    if given == "variable":
        no_db_env.setenv(ENV, url)
    call = (lambda: make_db_query("SELECT 1")) if given == "variable" else (lambda: init_db(url))
    with pytest.raises(DatabaseConfigError) as info:
        call()
    assert repr(scheme) in str(info.value)
    assert not isinstance(info.value, DatabaseNotFoundError)
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:s3cr3t@db.example.org:5432/nexus",
        "postgres://alice:s3cr3t@db.example.org/nexus?sslmode=require",
        "postgresql://alice:p%40ss:s3cr3t@db.example.org/nexus",
        "postgresql://alice:s3cr3t@db.example.org/nexus?password=s3cr3t&sslmode=require",
        "postgresql://alice@db.example.org/nexus?password=s3cr3t",
        "postgresql://db.example.org/nexus?user=alice&password=s3cr3t&application_name=x",
        "postgresql://alice@db.example.org/nexus?sslpassword=s3cr3t&passfile=s3cr3t.pgpass",
    ],
)
def test_describe_never_shows_a_password(url: str) -> None:
    location = locate_database(url)
    assert location.target == url  # kept for the driver
    for shown in (location.describe(), str(location)):
        assert "s3cr3t" not in shown
        assert "db.example.org" in shown
        assert "nexus" in shown
        assert "alice" in shown
    if "sslmode=require" in url:
        assert "sslmode=require" in location.describe()


# --- durations --------------------------------------------------------------------

DURATIONS = [
    ("30", 30.0), ("1.5", 1.5), ("90m", 5400.0), ("12h", 43200.0), ("3d", 259200.0),
    (" 45 ", 45.0), ("0", 0.0), ("30s", 30.0), (".5", 0.5),
]
BAD_DURATIONS = ["abc", "thirty", "-1", "-0.5", "nan", "inf", "1e999", "1e400", "9" * 400,
                 "3w", "1 2"]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    monkeypatch.delenv(ENV_MARK_AFTER, raising=False)
    assert DEFAULT_TIMEOUT == 30
    assert lock_timeout() == 30
    assert timedelta(days=3) == DEFAULT_MARK_AFTER
    assert mark_after() == timedelta(days=3)
    for blank in ("", "  "):
        monkeypatch.setenv(ENV_TIMEOUT, blank)
        monkeypatch.setenv(ENV_MARK_AFTER, blank)
        assert lock_timeout() == 30
        assert mark_after() == timedelta(days=3)


@pytest.mark.parametrize(("raw", "seconds"), DURATIONS)
def test_lock_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, raw)
    assert lock_timeout() == seconds


@pytest.mark.parametrize(("raw", "seconds"), DURATIONS)
def test_mark_after_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float
) -> None:
    monkeypatch.setenv(ENV_MARK_AFTER, raw)
    assert mark_after() == timedelta(seconds=seconds)


@pytest.mark.parametrize("raw", BAD_DURATIONS)
@pytest.mark.parametrize(
    ("variable", "read"), [(ENV_TIMEOUT, lock_timeout), (ENV_MARK_AFTER, mark_after)],
    ids=[ENV_TIMEOUT, ENV_MARK_AFTER],
)
def test_a_bad_duration_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, read: Callable[[], Any], raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(DatabaseConfigError) as info:
        read()
    assert variable in str(info.value)
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf", "1e999"])
def test_a_bad_timeout_refuses_a_write_and_writes_nothing(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
    raw: str,
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, raw)
    log = SessionLog("bad-timeout", "FEI-Titan-TEM-635816", "2021-05-01T10:00:00", "START", None)
    with pytest.raises(DatabaseConfigError) as info:
        log.insert_log()
    assert ENV_TIMEOUT in str(info.value)
    assert repr(raw) in str(info.value)
    monkeypatch.delenv(ENV_TIMEOUT)
    assert make_db_query("SELECT count(*) FROM session_log") == [(0,)]


# --- the other variables ------------------------------------------------------------

def test_record_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nexusLIMS_user", raising=False)
    assert record_user() is None
    monkeypatch.setenv("nexusLIMS_user", "builder")
    assert record_user() == "builder"


def test_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("mmfnexus_path", raising=False)
    with pytest.raises(DatabaseConfigError, match="mmfnexus_path"):
        data_root()
    monkeypatch.setenv("mmfnexus_path", str(tmp_path))
    assert data_root() == str(tmp_path)
