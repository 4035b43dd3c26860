"""No secret in any output (issue 20.5).

A password, wherever it is given (in the URL, as its ``password=``
parameter, in a service file or a pgpass file), never appears in what the
package shows: errors and their reprs, their causes and contexts, ``--debug``
tracebacks, log records at any level (the driver's included), ``info
--json``, or the trace hook. The URLs are broken in every way the issue
names (bad percent escapes, broken IPv6 brackets, bad ports, unknown
parameters, a bad ``sslmode``), and some work; every command runs on each,
with and without ``--debug``, and so do the API's calls.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from nexusLIMS.db import init_db, make_db_query, migrate_db
from nexusLIMS.db.claims import list_claims
from nexusLIMS.db.cli import main
from nexusLIMS.db.config import DatabaseLocation, locate_database
from nexusLIMS.db.connection import tracing
from nexusLIMS.db.samples import populate_demo
from nexusLIMS.db.session_handler import get_sessions_to_build
from nexusLIMS.db.summary import summarize
from nexusLIMS.db.transfer import copy_database
from nexusLIMS.instruments import instrument_db

SECRET = "Xk7pQ2vR9mWz"
CLOSED = "127.0.0.1:1"  # nothing listens there: refused at once

#: URLs that cannot work, each holding the password somewhere.
BROKEN = [
    f"postgresql://u:{SECRET}%zz@{CLOSED}/d",  # a bad percent escape in the password
    f"postgresql://u:{SECRET}%2@{CLOSED}/d",
    f"postgresql://u@{CLOSED}/d?password={SECRET}%zz",  # ... in its parameter
    f"postgresql://u@{CLOSED}/d?pass%77ord={SECRET}%G1",
    f"postgresql://u:{SECRET}@[::1/d",  # broken IPv6 brackets
    f"postgresql://u:{SECRET}@[::1",
    f"postgresql://u:{SECRET}@::1]/d",
    f"postgresql://u:{SECRET}@[::1]x/d",
    f"postgresql://u:{SECRET}@[zz::1]:5432/d",
    f"postgresql://u:{SECRET}@127.0.0.1:abc/d",  # bad ports
    f"postgresql://u:{SECRET}@127.0.0.1:99999/d",
    f"postgresql://u:{SECRET}@127.0.0.1:-1/d",
    f"postgresql://u:{SECRET}@127.0.0.1:/d",
    f"postgresql://u:{SECRET}@{CLOSED}/d?foo=bar",  # an unknown parameter
    f"postgresql://u@{CLOSED}/d?password={SECRET}&foo=bar",
    f"postgresql://u:{SECRET}@{CLOSED}/d?sslmode=bogus",  # a bad sslmode
    f"postgresql://u@{CLOSED}/d?password={SECRET}&sslmode=bogus",
    f"postgresql://u:{SECRET}@{CLOSED}/d?connect_timeout=soon",
    f"postgresql://u:{SECRET}@{CLOSED}/d",  # a server that is not there
    f"postgres://u:{SECRET}@{CLOSED}/d?sslpassword={SECRET}",
    f"postgresql://u:{SECRET}@x@{CLOSED}/d",  # "@" and "/" in the password, unencoded
    f"postgresql://u:{SECRET}/x@{CLOSED}/d",
    f"postgresql://u:{SECRET}%40x@{CLOSED}/d",
    f"host=127.0.0.1 port=1 password={SECRET}",  # a libpq string, not a URL
    "postgresql://u@127.0.0.1:1/d?service=broken",  # a service file holding it
    "postgresql://u@127.0.0.1:1/d?service=nowhere",
]

COMMANDS = [
    ["info", "--json"], ["check"], ["sessions", "--json"], ["claims"], ["migrate", "--dry-run"],
    ["log", "start", "--instrument", "FEI-Titan-TEM-635816", "--id", "s1"], ["init"],
]


@pytest.fixture
def secrets_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password in a service file and in a pgpass file too (libpq reads both)."""
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[broken]\nhost=127.0.0.1\nport=1\npassword={SECRET}\nsslmode=bogus\n"
                        f"[nowhere]\nhost=127.0.0.1\nport=1\npassword={SECRET}\n")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:*:{SECRET}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.setenv("nexusLIMS_db_timeout", "0.1")  # what cannot connect fails soon


def _exception_texts(exc: BaseException) -> Iterator[str]:
    """Every text of ``exc``: its message, repr and traceback, and those of every exception
    chained to it (causes and contexts, shown or suppressed)."""
    yield "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (str(arg) for arg in current.args)
        pending += [current.__cause__, current.__context__]


class Outputs:
    """Everything the package showed during a test."""

    def __init__(self, capsys: pytest.CaptureFixture[str],
                 caplog: pytest.LogCaptureFixture) -> None:
        self.capsys, self.caplog = capsys, caplog
        self.texts: list[str] = []

    def run(self, *argv: Any) -> int:
        code = main([str(arg) for arg in argv])
        out, err = self.capsys.readouterr()
        self.texts += [out, err]
        return code

    def call(self, function: Callable[[], Any]) -> None:
        try:
            result = function()
        except Exception as exc:  # what it raised is what a caller sees
            self.texts += list(_exception_texts(exc))
        else:
            self.texts += [str(result), repr(result)]

    def assert_no_secret(self) -> None:
        logged = [record.getMessage() for record in self.caplog.records]
        logged += [record.exc_text or "" for record in self.caplog.records]
        logged.append(self.caplog.text)
        leaks = [text for text in self.texts + logged if SECRET in text]
        assert leaks == []


@pytest.fixture
def outputs(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
            secrets_elsewhere: None) -> Iterator[Outputs]:
    caplog.set_level(logging.DEBUG)  # every logger, the driver's included
    shown = Outputs(capsys, caplog)
    traced: list[str] = []
    with tracing(lambda event, text: traced.append(f"{event} {text}")):
        yield shown
    shown.texts += traced
    shown.assert_no_secret()


@pytest.mark.parametrize("url", BROKEN)
def test_no_command_shows_the_password_of_a_broken_url(
        url: str, outputs: Outputs, tmp_path: Path) -> None:
    source = init_db(tmp_path / "source.sqlite")
    for debug in ([], ["--debug"]):
        for argv in COMMANDS:
            assert outputs.run(*debug, "--db", url, *argv) != 0
        assert outputs.run(*debug, "copy", url, tmp_path / "copy.sqlite") != 0
        assert outputs.run(*debug, "copy", "--force", source.path, url) != 0
    assert not (tmp_path / "copy.sqlite").exists()


@pytest.mark.parametrize("url", BROKEN)
def test_no_call_shows_the_password_of_a_broken_url(
        url: str, outputs: Outputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = init_db(tmp_path / "source.sqlite")
    outputs.call(lambda: locate_database(url))
    outputs.call(lambda: init_db(url))
    outputs.call(lambda: summarize(url))
    outputs.call(lambda: migrate_db(url))
    outputs.call(lambda: list_claims(url))
    outputs.call(lambda: copy_database(url, tmp_path / "copy.sqlite"))
    outputs.call(lambda: copy_database(source, url, force=True))
    monkeypatch.setenv("nexusLIMS_db_path", url)  # NexusLIMS 1.4's calls
    outputs.call(get_sessions_to_build)
    outputs.call(lambda: make_db_query("SELECT 1"))
    outputs.call(lambda: instrument_db.get("FEI-Titan-TEM-635816"))


def _with_password(url: str, how: str) -> str:
    """``url`` of the test server, with the password added ``how``: in the user
    information, or as the ``password`` parameter."""
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    if not at or ":" in userinfo:
        pytest.skip("the test server's URL names no user, or has a password already")
    if how == "userinfo":
        return f"{scheme}://{userinfo}:{SECRET}@{host}"
    return f"{url}{'&' if '?' in url else '?'}password={SECRET}"


@pytest.mark.parametrize("how", ["userinfo", "parameter", "pgpass"])
def test_a_working_url_with_a_password_shows_none(
        how: str, nexuslims_postgres_db: DatabaseLocation, outputs: Outputs,
        tmp_path: Path) -> None:
    """The test server trusts its users: a password given is accepted and ignored."""
    url = nexuslims_postgres_db.target if how == "pgpass" else \
        _with_password(nexuslims_postgres_db.target, how)
    populate_demo(url)
    for debug in ([], ["--debug"]):
        for argv in (["info", "--json"], ["info"], ["check"], ["sessions"], ["claims"],
                     ["instruments", "--json"], ["migrate", "--dry-run"]):
            assert outputs.run(*debug, "--db", url, *argv) in (0, 1)
    assert outputs.run("--db", url, "log", "start", "--instrument", "FEI-Titan-TEM-635816",
                       "--id", "new-session") == 0
    assert outputs.run("copy", url, tmp_path / "copy.sqlite") == 0
    assert outputs.run("--debug", "copy", "--force", tmp_path / "copy.sqlite", url) == 0
    outputs.call(lambda: summarize(url))
    outputs.call(lambda: locate_database(url))
    # Errors on a working connection: a database that is not there, a schema without tables.
    for broken in (url.replace("/postgres?", "/no_such_database?"),
                   url.replace("search_path%3D", "search_path%3Dno_such_schema_")):
        assert outputs.run("--debug", "--db", broken, "info", "--json") != 0
        outputs.call(lambda broken=broken: summarize(broken))
