"""pytest fixtures for code that uses the NexusLIMS database.

Installing the package registers this plugin (entry point ``pytest11``), so
any test suite can ask for:

``nexuslims_db``
    A new, empty database in the test's temporary folder; the environment
    points ``nexusLIMS_db_path`` at it for the test. Returns its path.
``nexuslims_instruments``
    The same database with the :func:`~nexusLIMS.db.samples.sample_instruments`
    added. Returns them as a dict of PID to ``Instrument``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nexusLIMS.db.connection import ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.instruments import Instrument

__all__ = ["nexuslims_db", "nexuslims_instruments"]


@pytest.fixture
def nexuslims_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return the path of a new NexusLIMS database that the environment names."""
    path = init_db(tmp_path / "nexuslims.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    monkeypatch.delenv(ENV_DB_PATH_2X, raising=False)
    return path


@pytest.fixture
def nexuslims_instruments(nexuslims_db: Path) -> dict[str, Instrument]:
    """Add the sample instruments to ``nexuslims_db`` and return them by PID."""
    return add_sample_instruments(nexuslims_db)
