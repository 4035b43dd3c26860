"""Issue 18.1 and 18.2: on a server, each call costs one round trip; look-ups cost none.

Counted by a proxy that reads the client's side of the protocol
(``tests/roundtrips.py``), never timed. Each call is made once to warm up
(the pool's connection, the schema checked once per process, the change
watch), then counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Callable

import pytest
from helpers import JEOL, TITAN, log, psycopg
from roundtrips import RoundTripCounter

from nexusLIMS.db import make_db_query
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.session_handler import Session, db_query, get_sessions_to_build
from nexusLIMS.instruments import get_instr_from_api_url, get_instr_from_filepath, instrument_db

pytestmark = pytest.mark.extra("postgres")


@pytest.fixture
def proxy(nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
          monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[RoundTripCounter]:
    """The test server behind a round-trip counter, named by the environment, warmed up."""
    with RoundTripCounter(nexuslims_postgres_db.target) as counter:
        monkeypatch.setenv("nexusLIMS_db_path", counter.url)
        monkeypatch.setenv("mmfnexus_path", str(tmp_path))
        insert_logs([log(f"s{n}", event, f"2021-05-01T1{n}:{minute}:00")
                     for n in range(5) for event, minute in (("START", "00"), ("END", "30"))])
        assert instrument_db[TITAN]  # the instruments read, the change watch open
        try:
            yield counter
        finally:  # before the proxy goes: no pool left reconnecting through it
            close_databases()


def _round_trips(proxy: RoundTripCounter, call: Callable[[], Any]) -> int:
    proxy.reset()
    call()
    return proxy.round_trips


def test_the_1_4_calls_are_one_round_trip_each(proxy: RoundTripCounter) -> None:
    assert _round_trips(proxy, get_sessions_to_build) == 1
    sessions = get_sessions_to_build()
    assert len(sessions) == 5
    assert _round_trips(proxy, sessions[0].insert_record_generation_event) == 1
    assert _round_trips(proxy, lambda: sessions[0].update_session_status("COMPLETED")) == 1
    assert _round_trips(proxy, lambda: make_db_query("SELECT count(*) FROM session_log")) == 1
    assert _round_trips(proxy, lambda: db_query("SELECT ?", (1,))) == 1
    assert _round_trips(proxy, lambda: db_query(
        "DELETE FROM session_log WHERE event_type = 'RECORD_GENERATION'")) == 1
    made = Session("s1", instrument_db[TITAN], (datetime(2021, 5, 1, 11), datetime(2021, 5, 1, 12)),
                   "alice")
    assert _round_trips(proxy, lambda: made.update_session_status("ERROR")) == 1
    assert _round_trips(proxy, made.insert_record_generation_event) == 1


def test_a_call_made_again_and_again_stays_one_round_trip(proxy: RoundTripCounter) -> None:
    """No statement is prepared on the server later on (psycopg would, at the sixth run)."""
    session = get_sessions_to_build()[0]
    calls: list[Callable[[], Any]] = [
        get_sessions_to_build, lambda: make_db_query("SELECT count(*) FROM session_log"),
        lambda: db_query("SELECT count(*) FROM session_log WHERE instrument = ?", (TITAN,)),
        lambda: session.update_session_status("TO_BE_BUILT"),
        lambda: log("s0", "START", "2021-05-01T10:00:00").insert_log(),
    ]
    assert [[_round_trips(proxy, call) for _ in range(10)] for call in calls] == \
        [[1] * 10] * len(calls)


def test_get_sessions_to_build_reads_changed_instruments_in_its_one_round_trip(
    proxy: RoundTripCounter,
) -> None:
    make_db_query("UPDATE instruments SET location = 'Moved' WHERE instrument_pid = "
                  f"'{JEOL}'")
    assert _round_trips(proxy, get_sessions_to_build) == 1
    assert instrument_db[JEOL].location == "Moved"


def test_look_ups_ask_nothing_while_nothing_changed(proxy: RoundTripCounter) -> None:
    titan = instrument_db[TITAN]
    proxy.reset()
    for _ in range(100):
        assert instrument_db[TITAN] is titan
        assert get_instr_from_api_url(titan.api_url) is titan
        assert get_instr_from_filepath("/nowhere/at/all") is None
        assert len(instrument_db) == 3
    assert proxy.round_trips == 0


def test_a_change_in_this_process_is_seen_at_once(proxy: RoundTripCounter) -> None:
    assert instrument_db[TITAN].location != "Moved"
    db_query("UPDATE instruments SET location = 'Moved' WHERE instrument_pid = ?", (TITAN,))
    assert instrument_db[TITAN].location == "Moved"


@pytest.mark.slow
def test_another_processs_change_is_seen_about_a_round_trip_after_its_commit(
    proxy: RoundTripCounter, nexuslims_postgres_db: DatabaseLocation,
) -> None:
    titan = instrument_db[TITAN]
    # Another client of the server (not through the package, not through the proxy).
    with psycopg.connect(nexuslims_postgres_db.target, autocommit=True) as other:
        other.execute("UPDATE instruments SET location = 'Elsewhere' WHERE instrument_pid = %s",
                      (TITAN,))
    # The announcement comes on the watch's connection; waiting is bounded only
    # to catch a hang (it takes about a round trip).
    deadline = time.monotonic() + 30
    while instrument_db[TITAN] is titan and time.monotonic() < deadline:
        time.sleep(0.001)
    assert instrument_db[TITAN].location == "Elsewhere"
