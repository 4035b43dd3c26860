"""pytest fixtures for code that uses the NexusLIMS database.

Installing the package registers this plugin (entry point ``pytest11``), so
any test suite can ask for:

``nexuslims_db``
    A new, empty SQLite database in the test's temporary folder; the
    environment points ``nexusLIMS_db_path`` at it for the test. Returns its
    path.
``nexuslims_instruments``
    The same database with the :func:`~nexusLIMS.db.samples.sample_instruments`
    added. Returns them as a dict of PID to ``Instrument``.
``nexuslims_postgres_db``
    The same on PostgreSQL: a new schema of its own on a throwaway server
    (or on the server ``NEXUSLIMS_TEST_POSTGRES`` names), with
    ``nexusLIMS_db_path`` pointing at it. Returns its
    :class:`~nexusLIMS.db.config.DatabaseLocation`.
``nexuslims_database``
    Either of the two: tests that ask for it run once on SQLite and once on
    PostgreSQL. Returns the ``DatabaseLocation``.

The PostgreSQL fixtures start one server per test session with PostgreSQL's
own ``initdb`` and ``pg_ctl`` (found through ``pg_config --bindir`` or the
``PATH``; as root, they run as the ``postgres`` user), in a temporary folder,
listening on a free loopback port, and stop it at the end: the server is
:class:`nexusLIMS.db.testing.PostgresServer`, which no run outlives, even one
ended by Ctrl-C, SIGTERM or SIGKILL. When no server can be started, or the
``postgres`` extra (psycopg, sqlglot) is not installed, they skip with the
reason, unless ``NEXUSLIMS_TEST_POSTGRES=require`` (then they fail);
``NEXUSLIMS_TEST_POSTGRES=postgresql://...`` uses that server instead.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest

from nexusLIMS.db.config import (
    ENV_DB_PATH,
    ENV_DB_PATH_2X,
    ENV_TEST_POSTGRES,
    DatabaseLocation,
    locate_database,
    test_postgres_url,
)
from nexusLIMS.db.connection import close_watches, connect
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.testing import PostgresServer, postgres_bindir

__all__ = [
    "PostgresServer",
    "missing_postgres_extra",
    "nexuslims_database",
    "nexuslims_db",
    "nexuslims_instruments",
    "nexuslims_postgres_db",
    "nexuslims_postgres_server",
    "postgres_bindir",
]

_REQUIRE = "require"


def missing_postgres_extra() -> Optional[str]:
    """Return why the ``postgres`` extra cannot be used (a skip reason), or None when it can."""
    missing = [name for name in ("psycopg", "psycopg_pool", "sqlglot")
               if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    from nexusLIMS import DISTRIBUTION

    return (f"PostgreSQL needs the postgres extra ({' and '.join(missing)} not installed): "
            f'pip install "{DISTRIBUTION}[postgres]"')


def _point_at(monkeypatch: pytest.MonkeyPatch, location: DatabaseLocation) -> None:
    monkeypatch.setenv(ENV_DB_PATH, location.target)
    monkeypatch.delenv(ENV_DB_PATH_2X, raising=False)


@pytest.fixture
def nexuslims_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Return the path of a new NexusLIMS database that the environment names."""
    location = init_db(tmp_path / "nexuslims.sqlite")
    _point_at(monkeypatch, location)
    try:
        yield location.path
    finally:
        close_watches()  # the file may be removed (and on Windows, only once closed)


@pytest.fixture
def nexuslims_instruments(request: pytest.FixtureRequest) -> dict[str, Instrument]:
    """Add the sample instruments to the test's database and return them by PID.

    The database is that of ``nexuslims_database`` or ``nexuslims_postgres_db``
    when the test uses one of them, else ``nexuslims_db``.
    """
    database = next((name for name in ("nexuslims_database", "nexuslims_postgres_db")
                     if name in request.fixturenames), "nexuslims_db")
    request.getfixturevalue(database)
    return add_sample_instruments()


@pytest.fixture(scope="session")
def nexuslims_postgres_server() -> Iterator[str]:
    """Return the URL of a PostgreSQL server for the tests (started for the session)."""
    setting = test_postgres_url()
    missing = missing_postgres_extra()
    if missing:
        if setting:  # PostgreSQL asked for by name
            pytest.fail(f"{ENV_TEST_POSTGRES} is set, but {missing}")
        pytest.skip(missing)
    if setting and setting != _REQUIRE:
        yield setting
        return
    bindir = postgres_bindir()
    why = "PostgreSQL's initdb was not found (install PostgreSQL, or set " \
          f"{ENV_TEST_POSTGRES} to a server URL)"
    server = None
    if bindir is not None:
        try:
            server = PostgresServer(bindir).start()
        except (OSError, RuntimeError) as exc:
            why = f"could not start a throwaway PostgreSQL server: {exc}"
    if server is None:
        if setting == _REQUIRE:
            pytest.fail(f"{ENV_TEST_POSTGRES}=require, but {why}")
        pytest.skip(why)
    try:
        yield server.url
    finally:
        try:
            close_databases()
        finally:
            server.stop()


def _on_server(server: str, statement: str) -> None:
    """Run one statement on the test server (outside any test's schema)."""
    with connect(server, begin=None) as conn:
        conn.execute(statement)


@pytest.fixture
def nexuslims_postgres_db(
    nexuslims_postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatabaseLocation]:
    """Return a new NexusLIMS database on PostgreSQL (its own schema) that the environment names."""
    schema = f"nexuslims_test_{uuid.uuid4().hex[:16]}"
    _on_server(nexuslims_postgres_server, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in nexuslims_postgres_server else "?"
    url = f"{nexuslims_postgres_server}{separator}options=-csearch_path%3D{schema}"
    location = init_db(locate_database(url, must_exist=False))
    _point_at(monkeypatch, location)
    try:
        yield location
    finally:
        close_databases()  # its pool and its watch
        _on_server(nexuslims_postgres_server, f"DROP SCHEMA {schema} CASCADE")


#: The fixture of each backend's database: ``nexuslims_database``'s parameters.
BACKEND_FIXTURES = {"sqlite": "nexuslims_db", "postgresql": "nexuslims_postgres_db"}


@pytest.fixture(params=list(BACKEND_FIXTURES))
def nexuslims_database(request: pytest.FixtureRequest) -> DatabaseLocation:
    """Return a new NexusLIMS database, on SQLite and then on PostgreSQL."""
    made = request.getfixturevalue(BACKEND_FIXTURES[request.param])
    return made if isinstance(made, DatabaseLocation) else locate_database(made)
