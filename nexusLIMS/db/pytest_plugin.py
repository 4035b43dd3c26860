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
listening on a free loopback port, and stop it at the end. When no server can
be started, or the ``postgres`` extra (psycopg, sqlglot) is not installed,
they skip with the reason, unless ``NEXUSLIMS_TEST_POSTGRES=require`` (then
they fail); ``NEXUSLIMS_TEST_POSTGRES=postgresql://...`` uses that server
instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
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
from nexusLIMS.db.databases import close_pools
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db

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
    missing = [name for name in ("psycopg", "sqlglot") if importlib.util.find_spec(name) is None]
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


class PostgresServer:
    """A throwaway PostgreSQL server in a temporary folder, on a free loopback port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="nexuslims-pg-"))
        self.port = _free_port()
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; return self."""
        if self.as_root:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        settings = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                    f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    f"-c max_connections=200")
        self._run("pg_ctl", "-D", str(data), "-o", settings, "-l", str(self.folder / "log"),
                  "-w", "start")
        return self

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_bindir() -> Optional[Path]:
    """Return the folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), if installed."""
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                               check=True).stdout.strip()
        if (Path(found) / "initdb").exists() or (Path(found) / "initdb.exe").exists():
            return Path(found)
    except (OSError, subprocess.CalledProcessError):
        pass
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


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
        close_pools()
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
        close_pools()
        _on_server(nexuslims_postgres_server, f"DROP SCHEMA {schema} CASCADE")


#: The fixture of each backend's database: ``nexuslims_database``'s parameters.
BACKEND_FIXTURES = {"sqlite": "nexuslims_db", "postgresql": "nexuslims_postgres_db"}


@pytest.fixture(params=list(BACKEND_FIXTURES))
def nexuslims_database(request: pytest.FixtureRequest) -> DatabaseLocation:
    """Return a new NexusLIMS database, on SQLite and then on PostgreSQL."""
    made = request.getfixturevalue(BACKEND_FIXTURES[request.param])
    return made if isinstance(made, DatabaseLocation) else locate_database(made)
