"""Issue 18.3 and 18.4: a server that stops answering, and one that restarts.

Every wait for the server is bounded: when it (or the network) stops
answering, a call ends with one ``DatabaseUnavailableError`` naming the host,
the database and ``nexusLIMS_db_timeout``, and a client that vanished while
holding a lock loses it to the server's own timeout. A restart is ridden
through: a broken connection is never used again, and a call whose
connection broke is made again where that cannot write twice. The waits
here are bounded only to catch a hang, never timed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from helpers import TITAN, log, psycopg, rows
from roundtrips import RoundTripCounter

from nexusLIMS.db import DatabaseUnavailableError, init_db, make_db_query
from nexusLIMS.db.claims import claim_sessions
from nexusLIMS.db.config import DatabaseLocation, locate_database
from nexusLIMS.db.connection import connect
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.session_handler import get_sessions_to_build
from nexusLIMS.db.testing import PostgresServer, postgres_bindir
from nexusLIMS.instruments import instrument_db

pytestmark = [pytest.mark.slow, pytest.mark.extra("postgres")]

TIMEOUT = 2  # nexusLIMS_db_timeout for these tests, in seconds
HANG = 90  # a call that takes longer than this hangs


@pytest.fixture
def proxy(nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTripCounter]:
    """The test server behind a proxy that can stall, with a short timeout."""
    with RoundTripCounter(nexuslims_postgres_db.target) as counter:
        monkeypatch.setenv("nexusLIMS_db_path", counter.url)
        monkeypatch.setenv("nexusLIMS_db_timeout", str(TIMEOUT))
        insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                     log("s1", "END", "2021-05-01T11:00:00")])
        assert instrument_db[TITAN]
        try:
            yield counter
        finally:
            counter.resume()
            close_databases()


def _ends_with_one_clear_error(call: Callable[[], Any]) -> tuple[DatabaseUnavailableError, float]:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as raised:
        call()
    return raised.value, time.monotonic() - started


CALLS: dict[str, Callable[[], Any]] = {
    "get_sessions_to_build": get_sessions_to_build,
    "insert_logs": lambda: insert_logs([log("s2", "START", "2021-05-01T12:00:00")]),
    "insert_log": lambda: log("s3", "START", "2021-05-01T12:00:00").insert_log(),
    "make_db_query": lambda: make_db_query("SELECT count(*) FROM session_log"),
}


@pytest.mark.parametrize("name", CALLS)
def test_a_stalled_network_ends_a_call_with_one_clear_error(
        proxy: RoundTripCounter, name: str) -> None:
    proxy.stall()
    error, took = _ends_with_one_clear_error(CALLS[name])
    message = str(error)
    assert "127.0.0.1" in message
    assert "'postgres'" in message  # the database
    assert "nexusLIMS_db_timeout" in message
    assert took < HANG  # (the watchdog ends it after the timeout and a few seconds)


def test_a_connection_through_a_stalled_network_is_refused_in_time(
        proxy: RoundTripCounter) -> None:
    close_databases()  # no connection kept: the next call connects
    proxy.stall()
    error, took = _ends_with_one_clear_error(get_sessions_to_build)
    assert "nexusLIMS_db_timeout" in str(error) or "timeout" in str(error)
    assert took < HANG


def test_a_vanished_client_loses_the_writers_lock_to_the_servers_timeout(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("nexusLIMS_db_timeout", str(TIMEOUT))
    holding, failed = threading.Event(), []

    def stalled_writer() -> None:
        # Takes the writers' lock, then stops talking (a client frozen or cut off).
        try:
            with connect(begin="IMMEDIATE") as conn:
                conn.execute("SELECT 1")
                holding.set()
                time.sleep(3 * TIMEOUT)
        except DatabaseUnavailableError as exc:  # the server ended its session
            failed.append(exc)

    thread = threading.Thread(target=stalled_writer)
    thread.start()
    assert holding.wait(HANG)
    # Another writer, willing to wait longer than the server lets the first idle.
    monkeypatch.setenv("nexusLIMS_db_timeout", str(5 * TIMEOUT))
    assert insert_logs([log("after", "START", "2021-05-01T12:00:00")]) == 1
    thread.join(HANG)
    assert len(failed) == 1  # the frozen client learns it lost its transaction
    assert [r.session_identifier for r in rows()] == ["after"]


# --- restarts --------------------------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    """A server of this test's own (the suite's must not restart), with the sample instruments."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL's server programs are needed")
    with PostgresServer(bindir, durable=True) as server:  # (a crash keeps what was committed)
        location = init_db(locate_database(server.url, must_exist=False))
        monkeypatch.setenv("nexusLIMS_db_path", location.target)
        add_sample_instruments()
        try:
            yield server
        finally:
            close_databases()


class _Loop:
    """Runs ``step(n)`` for n = 0, 1, ... in a thread until stopped; keeps every error."""

    def __init__(self, step: Callable[[int], None]) -> None:
        self.step, self.errors, self.done = step, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(self.done)
            except Exception as exc:  # reported by the test
                self.errors.append(exc)
            self.done += 1

    def __enter__(self) -> _Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HANG)


def test_restarts_are_ridden_through(restartable: PostgresServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nexusLIMS_db_timeout", "30")
    run = uuid.uuid4().hex[:6]
    built: list[str] = []

    def build(n: int) -> None:
        for session in get_sessions_to_build(on_error="skip"):
            session.insert_record_generation_event()
            assert session.update_session_status("COMPLETED")
            built.append(session.session_identifier)
        time.sleep(0.01)

    with _Loop(_harvester(run)) as harvester, _Loop(build) as builder:
        _restart_three_times(restartable)
    assert harvester.errors == []
    assert builder.errors == []
    _assert_nothing_lost_or_doubled(run, harvester.done, built)


def test_claiming_builders_ride_restarts_through(restartable: PostgresServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Four builders claim, build and finish while the server restarts: a claim whose
    answer was lost is given back, a finish whose answer was lost is settled by reading."""
    monkeypatch.setenv("nexusLIMS_db_timeout", "30")
    run = uuid.uuid4().hex[:6]
    built: list[str] = []

    def claimer(number: int) -> Callable[[int], None]:
        def build(n: int) -> None:
            for claimed in claim_sessions(2, worker=f"builder-{number}"):
                claimed.insert_record_generation_event()
                claimed.finish("COMPLETED")
                built.append(claimed.session_identifier)
            time.sleep(0.01)
        return build

    builders = [_Loop(claimer(number)) for number in range(4)]
    with _Loop(_harvester(run)) as harvester, builders[0], builders[1], builders[2], builders[3]:
        _restart_three_times(restartable)
    assert harvester.errors == []
    assert [builder.errors for builder in builders] == [[]] * 4
    assert all(builder.done > 0 for builder in builders)
    _assert_nothing_lost_or_doubled(run, harvester.done, built)


def _harvester(run: str) -> Callable[[int], None]:
    """A harvester's step n: the START and END of session ``run-n``, one log at a time."""
    def harvest(n: int) -> None:
        log(f"{run}-{n}", "START", "2021-05-01T10:00:00").insert_log()
        log(f"{run}-{n}", "END", "2021-05-01T11:00:00").insert_log()
    return harvest


def _restart_three_times(server: PostgresServer) -> None:
    for mode in ("fast", "immediate", "fast"):
        time.sleep(0.5)
        server.restart(mode)
    time.sleep(0.5)


def _assert_nothing_lost_or_doubled(run: str, harvested: int, built: list[str]) -> None:
    assert harvested > 0
    stored = rows()
    for n in range(harvested):
        events = [r.event_type for r in stored if r.session_identifier == f"{run}-{n}"]
        assert events.count("START") == 1
        assert events.count("END") in (0, 1)  # the loop may have stopped between the two
    generated = [r.session_identifier for r in stored if r.event_type == "RECORD_GENERATION"]
    assert sorted(generated) == sorted(built)  # one RECORD_GENERATION a build, none twice
    assert len(set(built)) == len(built)  # no session built twice


def test_an_outage_longer_than_the_timeout_is_one_clear_error(
        restartable: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nexusLIMS_db_timeout", str(TIMEOUT))
    assert get_sessions_to_build() == []
    restartable.pause()
    try:
        error, took = _ends_with_one_clear_error(
            lambda: insert_logs([log("x", "START", "2021-05-01T12:00:00")]))
        assert "nexusLIMS_db_timeout" in str(error) or "connect" in str(error).lower()
        assert took < HANG
    finally:
        restartable.resume()
    assert [r.session_identifier for r in rows()] == []  # nothing half-written
    assert psycopg is not None
