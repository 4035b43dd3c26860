"""Shared test configuration.

The fixtures ``nexuslims_db``, ``nexuslims_instruments``,
``nexuslims_postgres_db`` and ``nexuslims_database`` (both backends) come from
the package's own pytest plugin (``nexusLIMS.db.pytest_plugin``), registered
by the ``pytest11`` entry point when the package is installed. Shared helpers
are in ``helpers.py``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from datetime import timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

import pytest
from helpers import Run
from legacy_schema import make_legacy_db

from nexusLIMS import DISTRIBUTION
from nexusLIMS.db.config import test_postgres_url
from nexusLIMS.db.pytest_plugin import missing_postgres_extra
from nexusLIMS.db.samples import add_sample_instruments

#: The modules of each extra the tests may need (pyproject.toml's optional dependencies).
EXTRAS = {"postgres": ("psycopg", "sqlglot"), "completion": ("argcomplete",)}


def missing_extra(extra: str) -> Optional[str]:
    """Return why the tests marked ``extra(name)`` cannot run (a skip reason), or None."""
    if extra == "postgres":
        return missing_postgres_extra()
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    return (f'needs the {extra} extra ({" and ".join(missing)} not installed): '
            f'pip install "{DISTRIBUTION}[{extra}]"') if missing else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``extra(name)`` when that extra is not installed.

    Tests that use the PostgreSQL fixtures are skipped by the fixtures
    themselves (the package's plugin), with the same reason. With
    ``NEXUSLIMS_TEST_POSTGRES`` set, PostgreSQL tests are not skipped: they fail.
    """
    for item in items:
        for marker in item.iter_markers("extra"):
            extra = marker.args[0]
            why = missing_extra(extra)
            if why and not (extra == "postgres" and test_postgres_url()):
                item.add_marker(pytest.mark.skip(reason=why))


#: The local zone ``local_zone_ist`` sets: UTC+05:30, no daylight saving time.
IST = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture
def local_zone_ist() -> Iterator[timezone]:
    """Make the system's local zone UTC+05:30 (no DST) for the test."""
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset to set the local zone")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XST-05:30"
    time.tzset()
    try:
        yield IST
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An untouched NexusLIMS 1.4 file with the sample instruments, which the environment names."""
    path = make_legacy_db(tmp_path / "nexuslims_1_4.sqlite")
    monkeypatch.setenv("nexusLIMS_db_path", str(path))
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    add_sample_instruments()
    return path


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """The command line's ``main``, called with arguments: exit code, stdout, stderr."""
    return Run(capsys)
