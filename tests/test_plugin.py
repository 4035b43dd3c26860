"""Issue 2, point 9: the pytest plugin registered by the ``pytest11`` entry point."""

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

from nexusLIMS.db import samples
from nexusLIMS.instruments import Instrument, instrument_db

PLUGIN_MODULE = "nexusLIMS.db.pytest_plugin"
ENV = "nexusLIMS_db_path"


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_entry_point_is_registered() -> None:
    points = [
        point for point in metadata.distribution("nexusLIMS").entry_points
        if point.group == "pytest11"
    ]
    assert [(point.name, point.value) for point in points] == [("nexuslims_db", PLUGIN_MODULE)]
    module = points[0].load()
    assert module.__name__ == PLUGIN_MODULE
    assert callable(module.nexuslims_db)
    assert callable(module.nexuslims_instruments)


def test_pytest_loaded_the_plugin_from_the_entry_point(request: pytest.FixtureRequest) -> None:
    plugin = request.config.pluginmanager.get_plugin("nexuslims_db")
    assert plugin is not None
    assert plugin.__name__ == PLUGIN_MODULE


def test_nexuslims_db_names_a_new_database(
    nexuslims_db: Path, tmp_path: Path
) -> None:
    assert isinstance(nexuslims_db, Path)
    assert nexuslims_db.is_file()
    assert nexuslims_db.parent == tmp_path
    assert os.environ[ENV] == str(nexuslims_db)
    assert "NX_DB_PATH" not in os.environ
    assert {"instruments", "session_log"} <= _tables(nexuslims_db)
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

    def test_variable_restored_after_each_test():
        assert os.environ.get("nexusLIMS_db_path") == "before-the-tests"
        assert os.environ.get("NX_DB_PATH") == "2x-before-the-tests"

    def test_instruments(nexuslims_instruments):
        from nexusLIMS.db.session_handler import SessionLog, get_sessions_to_build
        pid = "FEI-Titan-TEM-635816"
        assert pid in nexuslims_instruments
        SessionLog("s", pid, "2021-05-01T10:00:00", "START", None).insert_log()
        SessionLog("s", pid, "2021-05-01T11:00:00", "END", None).insert_log()
        [session] = get_sessions_to_build()
        assert session.instrument.name == pid
    """
)


def _run_downstream(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "downstream"
    project.mkdir()
    (project / "test_downstream.py").write_text(DOWNSTREAM_TESTS)
    (project / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env["nexusLIMS_db_path"] = "before-the-tests"
    env["NX_DB_PATH"] = "2x-before-the-tests"
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "--basetemp", str(tmp_path / "basetemp"), *extra,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_fixtures_work_in_a_downstream_suite(tmp_path: Path) -> None:
    result = _run_downstream(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_fixtures_come_from_the_entry_point(tmp_path: Path) -> None:
    result = _run_downstream(tmp_path, "-p", "no:nexuslims_db")
    assert result.returncode != 0
    assert "fixture 'nexuslims_db' not found" in result.stdout
