"""Issue 18.6: credentials and TLS the libpq way, on a server that asks for a password.

A facility's server is set up as the README says: a role made with
``createuser --pwprompt`` and a database it owns made with ``createdb -O``
(PostgreSQL 15 lets no other role create in schema ``public``), password
authentication (``scram-sha-256``) for that role, and TLS with a certificate
of the facility's own CA. The package then connects with the password in a
pgpass file (``PGPASSFILE``) or a service file (``PGSERVICEFILE``, named by
``?service=`` or ``PGSERVICE``), never in the URL, and with
``sslmode=verify-full``; a server it cannot verify, or a wrong password, is
refused with one clear ``DatabaseUnavailableError``. The password appears in
no error, traceback, log record or command output (``test_secrets.py``
covers the many shapes of a URL holding one; this file adds the files libpq
reads and a server that checks them).

The server is this module's own (``nexusLIMS.db.testing.PostgresServer``):
the suite's trusts every user. The certificates are made with the
``openssl`` command (Debian's PostgreSQL depends on it); without it, only the
TLS tests are skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import quote

import pytest
from helpers import TITAN, log, psycopg

from nexusLIMS.db import DatabaseUnavailableError, config, init_db
from nexusLIMS.db.cli import main
from nexusLIMS.db.connection import connect
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.session_handler import get_sessions_to_build
from nexusLIMS.db.testing import PostgresServer, postgres_bindir

pytestmark = [pytest.mark.slow, pytest.mark.extra("postgres")]

ROLE = "nexuslims"
#: The role's password: "#", "@" and "%" would need escaping in a URL, not in these files.
SECRET = "Jq8#vR2@wZ5%"
WRONG = "Lm3$tY6@pB9%"  # a wrong password, which must not show either
#: libpq's variables that would change what these tests connect with.
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD",
                   "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGSSLMODE",
                   "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGOPTIONS", "PGREQUIRESSL")
#: How long a call that cannot connect may try (nexusLIMS_db_timeout), in seconds.
TIMEOUT = "1"


# --- the facility's server ------------------------------------------------------------


def _run(command: list[Any], **kwargs: Any) -> None:
    env = {key: value for key, value in os.environ.items() if key not in LIBPQ_VARIABLES}
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            env=env, timeout=120, check=False, **kwargs)
    assert result.returncode == 0, f"{command[0]} failed: {result.stderr or result.stdout}"


def _create_role_and_database(bindir: Path, server: PostgresServer) -> None:
    """Make the role and the database it owns as the README says, as the server's admin."""
    admin = ["-h", "127.0.0.1", "-p", server.port, "-U", "postgres"]
    if os.name == "posix":
        # Without a terminal (a new session has none) the prompt reads standard input.
        _run([bindir / "createuser", *admin, "--pwprompt", ROLE],
             input=f"{SECRET}\n{SECRET}\n", start_new_session=True)
    else:  # the prompt reads the console, which a test cannot type at
        _run([bindir / "createuser", *admin, ROLE])
        _admin(server, "ALTER ROLE {} PASSWORD {}", ROLE, SECRET)
    _run([bindir / "createdb", *admin, "-O", ROLE, ROLE])


def _admin(server: PostgresServer, statement: str, name: str,
           value: Optional[str] = None) -> None:
    """Run ``statement`` as the server's admin, its ``{}`` being ``name`` (an identifier)
    and then ``value`` (a literal)."""
    sql = psycopg.sql
    parts = [sql.Identifier(name)] + ([] if value is None else [sql.Literal(value)])
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(*parts))


def _openssl(folder: Path, *args: str) -> None:
    _run(["openssl", *args], cwd=folder)


#: The openssl configuration of the CAs and of the server's certificate (no -subj, -addext:
#: LibreSSL and Git for Windows' openssl read these alike).
CA_CONFIG = """\
[req]
prompt = no
distinguished_name = dn
[dn]
CN = {name}
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
SERVER_CONFIG = """\
[req]
prompt = no
distinguished_name = dn
[dn]
CN = localhost
[server]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
"""


def _make_tls(server: PostgresServer) -> Optional[Path]:
    """Make a CA, a server certificate it signs and another CA; turn TLS on (at the next start).

    Return the folder of ``ca.crt`` and ``other-ca.crt``, or None without ``openssl``.
    """
    if shutil.which("openssl") is None:
        return None
    folder = server.folder / "tls"
    folder.mkdir()
    for name in ("ca", "other-ca"):
        (folder / f"{name}.cnf").write_text(CA_CONFIG.format(name=f"nexusLIMS test {name}"))
        _openssl(folder, "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", "-config", f"{name}.cnf",
                 "-extensions", "ca")
    (folder / "server.cnf").write_text(SERVER_CONFIG)
    _openssl(folder, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-config", "server.cnf")
    _openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", "2", "-days", "2", "-out", "server.crt", "-extfile", "server.cnf",
             "-extensions", "server")
    key = folder / "server.key"
    key.chmod(0o600)  # the server refuses a key others can read
    if server.as_root:  # the server runs as the postgres user
        shutil.chown(key, "postgres")
    _admin(server, "ALTER SYSTEM SET {} = {}", "ssl", "on")
    _admin(server, "ALTER SYSTEM SET {} = {}", "ssl_cert_file", (folder / "server.crt").as_posix())
    _admin(server, "ALTER SYSTEM SET {} = {}", "ssl_key_file", key.as_posix())
    return folder


def _require_passwords(server: PostgresServer) -> None:
    """The role must give its password over TCP (first lines of pg_hba.conf; at the next start)."""
    hba = server.data / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
                   f"host all {ROLE} ::1/128 scram-sha-256\n" + hba.read_text())


@dataclass
class Facility:
    """The module's server: the role ``nexuslims`` with its password, and TLS."""

    server: PostgresServer
    tls: Optional[Path]  # the folder of ca.crt and other-ca.crt; None without openssl

    @property
    def port(self) -> int:
        return self.server.port

    def ca(self, name: str = "ca") -> str:
        """The path of a CA's certificate, or skip the test without TLS."""
        if self.tls is None:
            pytest.skip("TLS needs the openssl command, to make the test's certificates "
                        "(Debian: apt-get install openssl)")
        return (self.tls / f"{name}.crt").as_posix()

    def new_database(self) -> str:
        """Return the name of a new database that the role owns."""
        name = f"nexuslims_{uuid.uuid4().hex[:12]}"
        _admin(self.server, f"CREATE DATABASE {{}} OWNER {ROLE}", name)
        return name

    def url(self, database: str, host: str = "127.0.0.1", **params: str) -> str:
        """A URL of ``database`` with no password in it."""
        query = "&".join(f"{key}={quote(value, safe='/:')}" for key, value in params.items())
        return f"postgresql://{ROLE}@{host}:{self.port}/{database}{'?' if query else ''}{query}"


@pytest.fixture(scope="module")
def facility() -> Iterator[Facility]:
    bindir = postgres_bindir()
    if bindir is None:
        why = ("a server of its own asking for passwords needs PostgreSQL's server programs "
               "(initdb, pg_ctl, createuser, createdb)")
        if config.test_postgres_url() == "require":
            pytest.fail(f"{config.ENV_TEST_POSTGRES}=require, but {why}")
        pytest.skip(why)
    with PostgresServer(bindir) as server:
        try:
            _create_role_and_database(bindir, server)
            tls = _make_tls(server)
            _require_passwords(server)
            server.restart()  # with TLS and the passwords required
            yield Facility(server, tls)
        finally:
            close_databases()  # before the server goes


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No libpq variable but those a test sets; a short timeout for what cannot connect."""
    for variable in LIBPQ_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("nexusLIMS_db_timeout", TIMEOUT)
    try:
        yield
    finally:
        close_databases()  # no pool outlives the test's files and variables


def _pgpass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int,
            password: str = SECRET) -> Path:
    """A pgpass file holding the role's password for both names of the host, named by PGPASSFILE."""
    path = tmp_path / "pgpass"
    path.write_text("# host:port:database:user:password\n"
                    f"localhost:{port}:*:{ROLE}:{password}\n"
                    f"127.0.0.1:{port}:*:{ROLE}:{password}\n")
    path.chmod(0o600)  # libpq ignores a pgpass file that others can read
    monkeypatch.setenv("PGPASSFILE", str(path))
    return path


def _services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **facility: Any) -> Path:
    """A service file defining the service ``facility``, named by PGSERVICEFILE."""
    path = tmp_path / "pg_service.conf"
    lines = "".join(f"{key}={value}\n" for key, value in facility.items())
    path.write_text(f"# the facility's NexusLIMS database\n[facility]\n{lines}")
    monkeypatch.setenv("PGSERVICEFILE", str(path))
    return path


# --- what the package shows -------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    """The message, repr and traceback of ``exc`` and of every exception chained to it."""
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    pending: list[Optional[BaseException]] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, current.args)]
        pending += [current.__cause__, current.__context__]
    return texts


class Shown:
    """Everything the package showed during a test: errors, command output, log records."""

    def __init__(self, capsys: pytest.CaptureFixture[str],
                 caplog: pytest.LogCaptureFixture) -> None:
        self.capsys, self.caplog = capsys, caplog
        self.texts: list[str] = []

    def command(self, *argv: str) -> int:
        code = main(list(argv))
        self.texts += list(self.capsys.readouterr())
        return code

    def refused(self, call: Callable[[], Any]) -> str:
        """Call ``call``, which must fail with one DatabaseUnavailableError; return its message."""
        with pytest.raises(DatabaseUnavailableError) as raised:
            call()
        self.texts += _exception_texts(raised.value)
        return str(raised.value)

    def assert_no_password(self) -> None:
        logged = [record.getMessage() for record in self.caplog.records]
        logged += [record.exc_text or "" for record in self.caplog.records]
        leaks = [text for text in [*self.texts, *logged, self.caplog.text]
                 if SECRET in text or WRONG in text]
        assert leaks == []


@pytest.fixture
def shown(capsys: pytest.CaptureFixture[str],
          caplog: pytest.LogCaptureFixture) -> Iterator[Shown]:
    caplog.set_level(logging.DEBUG)  # every logger, the driver's and the pool's included
    seen = Shown(capsys, caplog)
    yield seen
    seen.assert_no_password()


def _builds(url: str, shown: Shown, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bool]:
    """Work as a facility does on ``url``: init_db, a session's START and END logs,
    get_sessions_to_build, ``nexuslims-db info``. Return the server's user and whether
    the connection is encrypted."""
    init_db(url)
    monkeypatch.setenv("nexusLIMS_db_path", url)
    add_sample_instruments()
    assert log("s1", "START", "2024-05-07T08:30:00").insert_log()
    assert log("s1", "END", "2024-05-07T10:05:00").insert_log()
    sessions = get_sessions_to_build()
    assert [(s.session_identifier, s.instrument.name) for s in sessions] == [("s1", TITAN)]
    assert shown.command("--db", url, "info", "--json") == 0
    assert shown.command("--debug", "--db", url, "sessions") == 0
    with connect(url, begin=None) as conn:
        row = conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return row[0], row[1]


def _refused_everywhere(url: str, shown: Shown, monkeypatch: pytest.MonkeyPatch) -> str:
    """Try ``url`` as the API and the command line do; return the API's error message."""
    monkeypatch.setenv("nexusLIMS_db_path", url)
    message = shown.refused(get_sessions_to_build)
    assert shown.refused(lambda: init_db(url)) == message
    for debug in ([], ["--debug"]):
        assert shown.command(*debug, "--db", url, "info", "--json") != 0
    return message


# --- a password file ------------------------------------------------------------------------


def test_the_documented_set_up_with_the_password_in_a_pgpass_file(
        facility: Facility, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        shown: Shown) -> None:
    """``createuser --pwprompt`` and ``createdb -O`` made the role and its database (on
    PostgreSQL 15, the owner may create the tables); the password is in PGPASSFILE's file."""
    _pgpass(tmp_path, monkeypatch, facility.port)
    url = facility.url(ROLE)
    assert SECRET not in url
    assert _builds(url, shown, monkeypatch)[0] == ROLE


@pytest.mark.parametrize("password", ["none", "wrong"])
def test_without_the_right_password_the_server_refuses_clearly(
        facility: Facility, password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        shown: Shown) -> None:
    if password == "wrong":
        _pgpass(tmp_path, monkeypatch, facility.port, WRONG)
    else:  # PGPASSFILE names no file: libpq reads none (not ~/.pgpass either)
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))
    database = facility.new_database()
    message = _refused_everywhere(facility.url(database), shown, monkeypatch)
    assert f"database {database!r} on 127.0.0.1:{facility.port}" in message
    assert ("no password supplied" if password == "none"
            else f'password authentication failed for user "{ROLE}"') in message


# --- a service file -------------------------------------------------------------------------


@pytest.mark.parametrize("named_by", ["url", "PGSERVICE"])
@pytest.mark.parametrize("password_in", ["pgpass", "service file"])
def test_a_service_file_names_the_database(
        facility: Facility, named_by: str, password_in: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, shown: Shown) -> None:
    """``postgresql:///?service=facility``, or ``postgresql://`` with PGSERVICE=facility."""
    database = facility.new_database()
    password = {"password": SECRET} if password_in == "service file" else {}
    if password_in == "pgpass":
        _pgpass(tmp_path, monkeypatch, facility.port)
    _services(tmp_path, monkeypatch, host="127.0.0.1", port=facility.port, dbname=database,
              user=ROLE, **password)
    if named_by == "url":
        url = "postgresql:///?service=facility"
    else:
        url = "postgresql://"
        monkeypatch.setenv("PGSERVICE", "facility")
    assert _builds(url, shown, monkeypatch)[0] == ROLE
    with connect(url, begin=None) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (database,)


@pytest.mark.parametrize("options_in", ["service file", "PGOPTIONS", "url"])
def test_the_facilitys_server_options_stay_in_force(
        facility: Facility, options_in: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, shown: Shown) -> None:
    """Options given the libpq way (a service file's, PGOPTIONS', the URL's) are not
    replaced by the package's own limits, which hold as well."""
    _pgpass(tmp_path, monkeypatch, facility.port)
    options = "-c work_mem=7MB -c extra_float_digits=2"
    service = {"options": options} if options_in == "service file" else {}
    _services(tmp_path, monkeypatch, host="127.0.0.1", port=facility.port,
              dbname=facility.new_database(), user=ROLE, **service)
    url = "postgresql:///?service=facility"
    if options_in == "PGOPTIONS":
        monkeypatch.setenv("PGOPTIONS", options)
    elif options_in == "url":
        url += "&options=" + options.replace(" ", "%20").replace("=", "%3D")
    assert _builds(url, shown, monkeypatch)[0] == ROLE
    with connect(url, begin=None) as conn:
        row = conn.execute(
            "SELECT current_setting('work_mem'), current_setting('extra_float_digits'), "
            "current_setting('statement_timeout') <> '0', "
            "current_setting('idle_in_transaction_session_timeout') <> '0'").fetchone()
    assert row == ("7MB", "2", True, True)


@pytest.mark.parametrize("problem", ["wrong password", "no such service"])
def test_a_service_that_cannot_connect_is_named_in_the_error(
        facility: Facility, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        shown: Shown) -> None:
    """The error names the service (its host and database are in the service file, which
    libpq reads only to connect) and says why, with neither password."""
    _pgpass(tmp_path, monkeypatch, facility.port)  # the right one: the service file's wins
    _services(tmp_path, monkeypatch, host="127.0.0.1", port=facility.port,
              dbname=facility.new_database(), user=ROLE, password=WRONG)
    service = "facility" if problem == "wrong password" else "elsewhere"
    message = _refused_everywhere(f"postgresql:///?service={service}", shown, monkeypatch)
    assert f"PostgreSQL service {service!r}" in message
    assert "database '" not in message  # not libpq's default database, which is not used
    assert (f'password authentication failed for user "{ROLE}"' if service == "facility"
            else f'definition of service "{service}" not found') in message


# --- TLS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_verify_full_with_the_facility_ca(
        facility: Facility, host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        shown: Shown) -> None:
    """``sslmode=verify-full``: the server's certificate is signed by ``sslrootcert`` and
    names the host (its DNS name, or its IP address)."""
    url = facility.url(facility.new_database(), host, sslmode="verify-full",
                       sslrootcert=facility.ca())
    _pgpass(tmp_path, monkeypatch, facility.port)
    assert _builds(url, shown, monkeypatch) == (ROLE, True)


def test_tls_and_the_password_in_a_service_file(
        facility: Facility, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        shown: Shown) -> None:
    """A facility's whole set-up in one service file, the URL naming only the service."""
    _services(tmp_path, monkeypatch, host="localhost", port=facility.port,
              dbname=facility.new_database(), user=ROLE, sslmode="verify-full",
              sslrootcert=facility.ca())
    _pgpass(tmp_path, monkeypatch, facility.port)
    assert _builds("postgresql:///?service=facility", shown, monkeypatch) == (ROLE, True)


@pytest.mark.parametrize("given", ["url", "service file"])
@pytest.mark.parametrize("problem", ["another CA", "another host name"])
def test_tls_refuses_a_server_it_cannot_verify(
        facility: Facility, given: str, problem: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, shown: Shown) -> None:
    """A certificate not signed by ``sslrootcert``, or not naming the host, is refused
    before any password is sent: one clear error, naming neither password."""
    database = facility.new_database()
    settings = {"sslmode": "verify-full", "sslrootcert": facility.ca()}
    if problem == "another CA":
        settings["sslrootcert"] = facility.ca("other-ca")
    else:  # connect to 127.0.0.1, expecting a certificate for db.example
        settings.update(hostaddr="127.0.0.1")
    host = "localhost" if problem == "another CA" else "db.example"
    _pgpass(tmp_path, monkeypatch, facility.port)
    if given == "url":
        url = facility.url(database, host, **settings)
    else:
        _services(tmp_path, monkeypatch, host=host, port=facility.port, dbname=database,
                  user=ROLE, password=SECRET, **settings)
        url = "postgresql:///?service=facility"
    message = _refused_everywhere(url, shown, monkeypatch)
    assert message.startswith("Cannot connect to PostgreSQL ")
    assert (f"database {database!r} on {host}:{facility.port}" if given == "url"
            else "PostgreSQL service 'facility'") in message
    assert ("certificate verify failed" if problem == "another CA"
            else 'does not match host name "db.example"') in message
