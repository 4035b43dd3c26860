"""Issue 19: claims at server scale: no turn-taking, the server's clock, one round trip each.

On PostgreSQL unless a test says otherwise:

1. a claim locks only the START rows it takes and skips those another
   transaction holds: no builder waits for another's claim, and no claim,
   renew, finish or release needs the writers' lock that harvesters hold;
2. the server's clock writes and judges the leases: builders whose clocks
   are two minutes ahead or behind never take a live claim, and never build
   a session twice; on SQLite (one host) a claim made in the future is
   reported, naming its worker;
3. claim, finish, renew and release are one round trip each (counted by a
   proxy, never timed); an inconsistent session the SQL let through costs
   one more round trip, once per builder;
4. a builder asking for N gets N whenever N consistent sessions are free.

Costs through a backlog and the side-by-side with a job queue are measured
by ``benchmarks/bench_claims.py``, never here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

import pytest
from helpers import INCONSISTENT, TITAN, insert_raw, psycopg, row, sql, warnings
from roundtrips import RoundTripCounter
from test_claims import add_sessions, check_built_once, claim_rows, names

from nexusLIMS.db import make_db_query, testing
from nexusLIMS.db.claims import claim_sessions, list_claims, release_claim
from nexusLIMS.db.cli import main
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.sessions import get_sessions_to_build
from nexusLIMS.instruments import instrument_db

T = TypeVar("T")
MINUTE = timedelta(seconds=60)
TWO_MINUTES = 120.0


@pytest.fixture
def server(nexuslims_postgres_db: DatabaseLocation,
           nexuslims_instruments: dict[str, Instrument]) -> DatabaseLocation:
    """The test's PostgreSQL database, with the sample instruments."""
    return nexuslims_postgres_db


@pytest.fixture
def database(nexuslims_database: DatabaseLocation,
             nexuslims_instruments: dict[str, Instrument]) -> DatabaseLocation:
    """The test's database (SQLite, then PostgreSQL) with the sample instruments."""
    return nexuslims_database


@contextmanager
def clock(seconds: float) -> Iterator[None]:
    """This process's clock, as the package reads it, ``seconds`` off for the block."""
    restore = testing.skew_clock(seconds)
    try:
        yield
    finally:
        restore()


def real_now() -> datetime:
    return datetime.now(timezone.utc)


# ----------------------------------------------------------- 1. no turn-taking


def test_a_claim_skips_what_another_transaction_holds_and_never_waits(
    server: DatabaseLocation, monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_sessions(["s1", "s2", "s3", "s4"])
    from nexusLIMS.db.backends.postgresql import WRITERS_LOCK

    # A wait for either lock would end in DatabaseLockedError after a second.
    monkeypatch.setenv(ENV_TIMEOUT, "1")
    with psycopg.connect(server.target) as other:
        # A harvester holding the writers' lock, and another builder in the middle of
        # claiming s1 (its START row locked), both in transactions left open.
        other.execute("SELECT pg_advisory_xact_lock(%s)", (WRITERS_LOCK,))
        other.execute("SELECT 1 FROM session_log WHERE session_identifier = 's1' "
                      "AND event_type = 'START' FOR UPDATE")
        [s2] = claim_sessions(1, worker="w")
        assert names([s2]) == ["s2"]
        s2.renew(timedelta(minutes=5))
        s2.insert_record_generation_event()
        s2.finish("COMPLETED")
        [s3, s4] = claim_sessions(2, worker="w")
        assert names([s3, s4]) == ["s3", "s4"]
        s3.release()
        assert release_claim(s4.session_identifier) is True
        assert get_sessions_to_build(exclude_claimed=True) != []
        other.rollback()
    assert names(claim_sessions(worker="w2")) == ["s1", "s3", "s4"]


def test_a_builder_asking_for_n_gets_n_past_inconsistent_sessions(
    database: DatabaseLocation,
) -> None:
    # Sessions the SQL refuses (counts, instruments) and sessions only Python
    # can judge (times), before the good ones in START order.
    kinds = ["end before start", "start with two ends", "unparseable start",
             "end before start in the instrument's zone", "different instruments",
             "unknown instrument", "end before start, naive start, aware end"]
    insert_raw([r for kind in kinds for r in INCONSISTENT[kind].rows(f"x-{kind}")])
    add_sessions([f"ok-{n}" for n in range(5)])
    assert names(claim_sessions(3, worker="w")) == ["ok-0", "ok-1", "ok-2"]
    assert sorted(claim_rows()) == ["ok-0", "ok-1", "ok-2"]  # none of the others kept
    assert names(claim_sessions(3, worker="w")) == ["ok-3", "ok-4"]
    assert claim_sessions(3, worker="w") == []
    assert sorted(claim_rows()) == [f"ok-{n}" for n in range(5)]


# ------------------------------------------------------------- 2. whose clock


def test_a_builder_behind_writes_the_servers_lease(server: DatabaseLocation) -> None:
    add_sessions(["s1", "s2"])
    before = real_now()
    with clock(-TWO_MINUTES):
        [late] = claim_sessions(1, worker="behind", lease=MINUTE)
    after = real_now()
    _, _, claimed_at, expires_at = claim_rows()["s1"]
    # The server's clock (this machine's, here), not the builder's two minutes behind.
    assert before <= datetime.fromisoformat(claimed_at) <= after
    assert datetime.fromisoformat(expires_at) - datetime.fromisoformat(claimed_at) == MINUTE
    assert late.expires_at == datetime.fromisoformat(expires_at)
    # Its lease is live for everyone, whatever their clocks.
    assert names(claim_sessions(worker="on-time")) == ["s2"]
    with clock(TWO_MINUTES):
        assert claim_sessions(worker="ahead") == []
    with clock(-TWO_MINUTES):
        renewed = late.renew(MINUTE)
    assert renewed >= before + MINUTE
    assert datetime.fromisoformat(claim_rows()["s1"][3]) == renewed


def test_a_builder_ahead_never_takes_a_live_claim(
    server: DatabaseLocation, caplog: pytest.LogCaptureFixture,
) -> None:
    add_sessions(["s1"])
    [held] = claim_sessions(1, worker="on-time", lease=MINUTE)
    with clock(TWO_MINUTES):
        assert claim_sessions(worker="ahead") == []
        assert get_sessions_to_build(exclude_claimed=True) == []
        [claim] = list_claims()
        assert claim.live()  # judged by the server's clock
        assert abs(claim.now() - real_now()) < MINUTE
    with clock(-TWO_MINUTES):
        assert claim_sessions(worker="behind") == []
    held.finish("COMPLETED")
    assert warnings(caplog) == []  # the server wrote every claim: none in the future


def test_the_claims_command_judges_by_the_servers_clock(
    server: DatabaseLocation, capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(["s1"])
    claim_sessions(1, worker="on-time", lease=MINUTE)
    with clock(TWO_MINUTES):  # the admin's machine is two minutes ahead
        assert main(["claims"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[1:3] == ["on-time", "live"]
    assert lines[-1] == "1 claim, 0 expired."


@pytest.mark.slow
def test_builders_with_clocks_two_minutes_off_never_build_a_session_twice(
    server: DatabaseLocation,
) -> None:
    sessions = [f"s{n:03d}" for n in range(300)]
    add_sessions(sessions)
    # A minute's lease, builders two minutes ahead and behind: judged by their
    # own clocks, those ahead would take every claim of the others at once.
    reports = testing.run_builders(6, 2, 0.002, lease=MINUTE, record_generation=True,
                                   clock_offsets=(TWO_MINUTES, -TWO_MINUTES, 0.0),
                                   timeout=600)
    assert [report.error for report in reports if report.error] == []
    check_built_once(sessions, Counter(name for report in reports for name in report.finished))


def test_on_sqlite_a_claim_made_in_the_future_names_its_worker(
    nexuslims_db: Any, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_sessions(["s1", "s2", "s3"])
    with clock(TWO_MINUTES):  # SQLite: the builders' clocks write the leases
        claim_sessions(1, worker="ahead", lease=MINUTE)
    with caplog.at_level(logging.WARNING, logger="nexusLIMS.db.claims"):
        caplog.clear()
        assert names(claim_sessions(1, worker="on-time")) == ["s2"]
        [warning] = warnings(caplog)
        assert "Worker ahead made a claim at" in warning
        assert "must share a clock" in warning
        caplog.clear()
        assert len(list_claims()) == 2
        [warning] = warnings(caplog)
        assert "Worker ahead" in warning
        caplog.clear()
        with clock(TWO_MINUTES):  # its own clock sees nothing wrong
            claim_sessions(1, worker="ahead", lease=MINUTE)
        assert warnings(caplog) == []


# ------------------------------------------------------------ 3. round trips


@pytest.fixture
def proxy(server: DatabaseLocation, monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTripCounter]:
    """The test server behind a round-trip counter, named by the environment, warmed up."""
    with RoundTripCounter(server.target) as counter:
        monkeypatch.setenv("nexusLIMS_db_path", counter.url)
        add_sessions([f"s{n:02d}" for n in range(30)])
        assert claim_sessions(0) == []  # the pool, the schema checked
        assert instrument_db[TITAN]  # the instruments read, the change watch open
        try:
            yield counter
        finally:  # before the proxy goes: no pool left reconnecting through it
            close_databases()


def counted(proxy: RoundTripCounter, call: Callable[[], T]) -> tuple[T, int]:
    """What ``call`` returned, and the round trips it took."""
    proxy.reset()
    result = call()
    return result, proxy.round_trips


def test_claim_finish_renew_and_release_are_one_round_trip_each(
    proxy: RoundTripCounter,
) -> None:
    one, trips = counted(proxy, lambda: claim_sessions(1, worker="w"))
    assert (names(one), trips) == (["s00"], 1)
    ten, trips = counted(proxy, lambda: claim_sessions(10, worker="w"))
    assert (len(ten), trips) == (10, 1)
    session = ten[0]
    assert counted(proxy, lambda: session.renew(MINUTE))[1] == 1
    assert counted(proxy, session.insert_record_generation_event)[1] == 1
    assert counted(proxy, lambda: session.finish("COMPLETED"))[1] == 1
    assert counted(proxy, ten[1].release)[1] == 1
    assert counted(proxy, lambda: ten[2].update_session_status("ERROR"))[1] == 1
    assert counted(proxy, lambda: release_claim(ten[3].session_identifier))[1] == 1
    assert counted(proxy, lambda: len(list_claims()))[1] == 1
    rest, trips = counted(proxy, lambda: claim_sessions(worker="w"))
    assert (len(rest), trips) == (21, 1)  # s02, s04 (given back), s11 to s29
    assert counted(proxy, lambda: claim_sessions(5, worker="w")) == ([], 1)  # nothing free


def test_a_claim_reads_changed_instruments_in_its_one_round_trip(
    proxy: RoundTripCounter,
) -> None:
    make_db_query(f"UPDATE instruments SET location = 'Moved' WHERE instrument_pid = '{TITAN}'")
    [claimed], trips = counted(proxy, lambda: claim_sessions(1, worker="w"))
    assert trips == 1
    assert claimed.instrument.location == "Moved"


def test_an_inconsistent_session_costs_one_more_round_trip_once(
    proxy: RoundTripCounter,
) -> None:
    sql("DELETE FROM session_log")
    insert_raw(INCONSISTENT["end before start"].rows("x-backwards"))
    add_sessions(["ok-1", "ok-2", "ok-3"])
    # Claimed by the SQL (its times are Python's to judge), given back with the
    # claim of one more in its place, and not claimed again while it stays so.
    got, trips = counted(proxy, lambda: claim_sessions(2, worker="w"))
    assert (names(got), trips) == (["ok-1", "ok-2"], 2)
    assert sorted(claim_rows()) == ["ok-1", "ok-2"]
    assert counted(proxy, lambda: names(claim_sessions(2, worker="w"))) == (["ok-3"], 1)
    # Revised so that it pairs: claimable again.
    sql("UPDATE session_log SET timestamp = '2021-05-01T12:00:00' "
        "WHERE session_identifier = 'x-backwards' AND event_type = 'END'")
    assert counted(proxy, lambda: names(claim_sessions(2, worker="w"))) == (["x-backwards"], 1)


def test_a_lone_inconsistent_session_is_given_back_at_once(proxy: RoundTripCounter) -> None:
    sql("DELETE FROM session_log")
    insert_raw([row("x-late", "START", "2021-05-01T10:00:00"),
                row("x-late", "END", "2021-05-01T09:00:00")])
    assert counted(proxy, lambda: claim_sessions(1, worker="w")) == ([], 2)
    assert claim_rows() == {}
    assert counted(proxy, lambda: claim_sessions(1, worker="w")) == ([], 1)
