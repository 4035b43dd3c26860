"""Issue 17.4: a server that speaks German is understood as well as one that speaks English.

The package classifies a server's errors by SQLSTATE, never by their words
(which follow the server's ``lc_messages``), and waits for a server that is
shutting down or starting up whatever language it says so in. Here the
server speaks German: a ``de_DE.UTF-8`` locale is made for it with
``localedef`` in a folder of the test's own (``LOCPATH``), so the machine
needs no installed locale. The waits are bounded only to catch a hang.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import log, psycopg, rows

from nexusLIMS.db import config, init_db
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.errors import DatabaseLockedError
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.session_handler import Session, get_sessions_to_build
from nexusLIMS.db.testing import PostgresServer, postgres_bindir

pytestmark = [pytest.mark.slow, pytest.mark.extra("postgres")]

GERMAN = "de_DE.UTF-8"
HANG = 90  # a call that takes longer than this hangs
WRITERS_LOCK = 1314409549  # the writers' advisory lock ("NXLM")


def _german_locales() -> Path:
    """Make the German locale in a folder of its own (readable by the server's user)."""
    folder = Path(tempfile.mkdtemp(prefix="nexuslims-locales-"))
    folder.chmod(0o755)
    made = None
    if shutil.which("localedef"):
        made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", str(folder / GERMAN)],
                              capture_output=True, text=True, check=False)
    if made is None or not (folder / GERMAN).is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip("no German locale can be made here (localedef, or glibc's locale sources, "
                    "missing); the SQLSTATE tests of test_backend_protocol.py stand")
    return folder


@pytest.fixture(scope="module")
def german() -> Iterator[PostgresServer]:
    """A server of its own speaking German, with the package's tables and sample instruments."""
    bindir = postgres_bindir()
    if bindir is None:
        if config.test_postgres_url() == "require":
            pytest.fail(f"{config.ENV_TEST_POSTGRES}=require, but PostgreSQL's server "
                        "programs were not found")
        pytest.skip("PostgreSQL's server programs were not found")
    locales = _german_locales()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCPATH", str(locales))  # for the server's processes (a restart too)
        try:
            with PostgresServer(bindir) as server:
                with psycopg.connect(server.url, autocommit=True) as admin:
                    admin.execute(f"ALTER SYSTEM SET lc_messages = '{GERMAN}'")
                    admin.execute("SELECT pg_reload_conf()")
                with psycopg.connect(server.url, autocommit=True) as check, \
                        pytest.raises(psycopg.Error) as raised:
                    check.execute("SELECT 1/0")
                assert str(raised.value) == "Division durch Null"  # it does speak German
                init_db(server.url)
                add_sample_instruments(server.url)
                yield server
        finally:
            close_databases()
            shutil.rmtree(locales, ignore_errors=True)


@pytest.fixture
def url(german: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The German server, named by the environment; its session logs removed afterwards."""
    monkeypatch.setenv("nexusLIMS_db_path", german.url)
    try:
        yield german.url
    finally:
        close_databases()
        with psycopg.connect(german.url, autocommit=True) as admin:
            admin.execute("DELETE FROM session_log")


def test_a_lock_held_too_long_is_a_locked_database(url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nexusLIMS_db_timeout", "1")
    with psycopg.connect(url) as holder:  # another writer, in a transaction
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITERS_LOCK,))
        with pytest.raises(DatabaseLockedError) as raised:
            log("s1", "START", "2021-05-01T10:00:00").insert_log()
    assert "Sperr" in str(raised.value.__cause__)  # the server's words: German
    assert rows() == []


def test_an_instrument_missing_from_the_table_is_named(url: str) -> None:
    stranger = Instrument(name="Nicht-Vorhanden", timezone="UTC")
    assert log("s1", "START", "2021-05-01T10:00:00").insert_log()
    session = Session("s1", stranger, (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11)),
                      None)
    with pytest.raises(ValueError, match="instrument 'Nicht-Vorhanden' is not in the "
                                         "instruments table"):
        session.insert_record_generation_event()
    assert [r.event_type for r in rows()] == ["START"]


def test_a_status_the_databases_check_forbids_names_the_remedy(url: str) -> None:
    """A CHECK violation (the CHECK of a database 1.4 made) is told as such."""
    assert log("s1", "START", "2021-05-01T10:00:00").insert_log()
    assert log("s1", "END", "2021-05-01T11:00:00").insert_log()
    [session] = get_sessions_to_build()
    with psycopg.connect(url, autocommit=True) as admin:
        [(name,)] = admin.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'session_log'::regclass "
            "AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%record_status%'").fetchall()
        admin.execute(f"ALTER TABLE session_log DROP CONSTRAINT {name}")
        admin.execute(f"ALTER TABLE session_log ADD CONSTRAINT {name} CHECK (record_status IN "
                      "('COMPLETED', 'WAITING_FOR_END', 'TO_BE_BUILT', 'ERROR', "
                      "'NO_FILES_FOUND'))")
        try:
            with pytest.raises(psycopg.IntegrityError, match="run 'nexuslims-db migrate'"):
                session.update_session_status("NO_CONSENT")
        finally:
            admin.execute(f"ALTER TABLE session_log DROP CONSTRAINT {name}")
            admin.execute("DELETE FROM session_log")
            close_databases()
            init_db(url)  # the package's CHECK again


def test_a_server_shutting_down_is_waited_for(german: PostgresServer, url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """While a smart shutdown waits for its last client, the server refuses new ones with
    "das Datenbanksystem fährt herunter": a call waits, and is served once it is back."""
    monkeypatch.setenv("nexusLIMS_db_timeout", "60")
    close_databases()  # the call must connect anew
    results: list[Any] = []
    with psycopg.connect(url, autocommit=True):  # the last client, holding the server
        german.pause("smart", wait=False)
        refused = _refusal(url)
        assert "fährt herunter" in refused
        caller = threading.Thread(target=lambda: results.append(_outcome(get_sessions_to_build)))
        caller.start()
        time.sleep(1)  # it is being refused, in German, and tries again
        assert results == []
    deadline = time.monotonic() + HANG
    while german.pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    german.resume()
    caller.join(HANG)
    assert results == [[]]


def _refusal(url: str) -> str:
    try:
        psycopg.connect(url).close()
    except psycopg.OperationalError as exc:
        return str(exc)
    raise AssertionError("the server took a new client while shutting down")


def _outcome(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # the test reports it
        return exc
