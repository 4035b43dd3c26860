"""The pytest plugin registered by the ``pytest11`` entry point (``nexusLIMS.db.pytest_plugin``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from importlib import metadata
from pathlib import Path

import pytest
from helpers import TITAN, sql

from nexusLIMS.db import samples
from nexusLIMS.db.config import ENV_DB_PATH, ENV_DB_PATH_2X, ENV_TEST_POSTGRES, DatabaseLocation
from nexusLIMS.db.connection import connect
from nexusLIMS.db.schema import SCHEMA_VERSION, inspect
from nexusLIMS.instruments import Instrument, instrument_db

PLUGIN_MODULE = "nexusLIMS.db.pytest_plugin"
FIXTURES = ("nexuslims_db", "nexuslims_instruments", "nexuslims_postgres_db",
            "nexuslims_database")


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_entry_point_is_registered() -> None:
    points = [
        point for point in metadata.distribution("nexuslims-db").entry_points
        if point.group == "pytest11"
    ]
    assert [(point.name, point.value) for point in points] == [("nexuslims_db", PLUGIN_MODULE)]
    module = points[0].load()
    assert module.__name__ == PLUGIN_MODULE
    for name in FIXTURES:
        assert callable(getattr(module, name)), name


def test_pytest_loaded_the_plugin_from_the_entry_point(request: pytest.FixtureRequest) -> None:
    plugin = request.config.pluginmanager.get_plugin("nexuslims_db")
    assert plugin is not None
    assert plugin.__name__ == PLUGIN_MODULE


def test_nexuslims_db_names_a_new_database(nexuslims_db: Path, tmp_path: Path) -> None:
    assert isinstance(nexuslims_db, Path)
    assert nexuslims_db.is_file()
    assert nexuslims_db.parent == tmp_path
    assert os.environ[ENV_DB_PATH] == str(nexuslims_db)
    assert ENV_DB_PATH_2X not in os.environ
    assert {"instruments", "session_log"} <= _tables(nexuslims_db)
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert dict(instrument_db) == {}


def test_nexuslims_instruments_adds_the_samples(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    expected = {instrument.name: instrument for instrument in samples.sample_instruments()}
    assert set(nexuslims_instruments) == set(expected)
    assert len(expected) == 3
    for pid, instrument in nexuslims_instruments.items():
        assert isinstance(instrument, Instrument)
        assert repr(instrument) == repr(expected[pid])
    assert set(instrument_db) == set(expected)
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        assert conn.execute("SELECT count(*) FROM instruments").fetchone() == (3,)


def test_nexuslims_database_runs_on_both_backends(
    nexuslims_database: DatabaseLocation, request: pytest.FixtureRequest
) -> None:
    assert isinstance(nexuslims_database, DatabaseLocation)
    assert request.node.callspec.params["nexuslims_database"] == nexuslims_database.backend
    assert os.environ[ENV_DB_PATH] == nexuslims_database.target
    assert ENV_DB_PATH_2X not in os.environ
    with connect() as conn:
        info = inspect(conn)
        assert info.is_nexuslims
        assert info.version == SCHEMA_VERSION
        assert conn.location.target == nexuslims_database.target
    assert sql("SELECT count(*) FROM session_log") == [(0,)]


def test_nexuslims_instruments_uses_the_database_of_the_test(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert TITAN in nexuslims_instruments
    assert sql("SELECT count(*) FROM instruments", database=nexuslims_database) == [(3,)]
    assert set(instrument_db) == set(nexuslims_instruments)


def test_nexuslims_postgres_db_is_a_schema_of_its_own(
    nexuslims_postgres_db: DatabaseLocation,
) -> None:
    assert nexuslims_postgres_db.backend == "postgresql"
    assert os.environ[ENV_DB_PATH] == nexuslims_postgres_db.target
    assert "search_path" in nexuslims_postgres_db.target
    with connect() as conn:
        schema = conn.scalar("SELECT current_schema()")
        assert str(schema).startswith("nexuslims_test_")
        assert inspect(conn).is_nexuslims


# A downstream project's test suite: no conftest, only the installed package.
DOWNSTREAM_TESTS = textwrap.dedent(
    """
    import os
    from pathlib import Path

    SEEN = []

    def test_first(nexuslims_db):
        assert os.environ["nexusLIMS_db_path"] == str(nexuslims_db)
        assert Path(nexuslims_db).is_file()
        SEEN.append(nexuslims_db)

    def test_second_gets_another_file(nexuslims_db):
        assert SEEN and nexuslims_db != SEEN[0]
        assert os.environ["nexusLIMS_db_path"] == str(nexuslims_db)

    def test_instruments(nexuslims_instruments):
        from nexusLIMS.db.session_handler import SessionLog, get_sessions_to_build
        pid = "FEI-Titan-TEM-635816"
        assert pid in nexuslims_instruments
        SessionLog("s", pid, "2021-05-01T10:00:00", "START", None).insert_log()
        SessionLog("s", pid, "2021-05-01T11:00:00", "END", None).insert_log()
        [session] = get_sessions_to_build()
        assert session.instrument.name == pid

    def test_both(nexuslims_database, nexuslims_instruments):
        from nexusLIMS.db.session_handler import SessionLog, get_sessions_to_build
        assert os.environ["nexusLIMS_db_path"] == nexuslims_database.target
        pid = "FEI-Quanta-ESEM-633137"
        SessionLog("b", pid, "2021-05-01T10:00:00", "START", "u").insert_log()
        SessionLog("b", pid, "2021-05-01T11:00:00", "END", "u").insert_log()
        [session] = get_sessions_to_build()
        assert (session.session_identifier, session.user) == ("b", "u")

    def test_variable_restored_after_each_test():
        assert os.environ.get("nexusLIMS_db_path") == "before-the-tests"
        assert os.environ.get("NX_DB_PATH") == "2x-before-the-tests"
    """
)


def _run_downstream(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "downstream"
    project.mkdir()
    (project / "test_downstream.py").write_text(DOWNSTREAM_TESTS)
    (project / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = dict(os.environ)  # NEXUSLIMS_TEST_POSTGRES as for this run
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    env[ENV_DB_PATH] = "before-the-tests"
    env[ENV_DB_PATH_2X] = "2x-before-the-tests"
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs",
            "--basetemp", str(tmp_path / "basetemp"), *extra,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.slow
def test_fixtures_work_in_a_downstream_suite(tmp_path: Path) -> None:
    result = _run_downstream(tmp_path)
    output = result.stdout + result.stderr
    assert "test_downstream.py::test_both[sqlite] PASSED" in result.stdout, output
    postgres = "test_downstream.py::test_both[postgresql] "
    if os.environ.get(ENV_TEST_POSTGRES):  # require, or a server URL: it must run
        assert result.returncode == 0, output
        assert postgres + "PASSED" in result.stdout, output
        assert "6 passed" in result.stdout
    else:  # no server may be available: skipped then
        assert result.returncode == 0, output
        assert postgres + "PASSED" in result.stdout or postgres + "SKIPPED" in result.stdout


@pytest.mark.slow
def test_fixtures_come_from_the_entry_point(tmp_path: Path) -> None:
    result = _run_downstream(tmp_path, "-p", "no:nexuslims_db")
    assert result.returncode != 0
    assert "fixture 'nexuslims_db' not found" in result.stdout
    assert "fixture 'nexuslims_database' not found" in result.stdout
    assert "test_variable_restored_after_each_test PASSED" in result.stdout
