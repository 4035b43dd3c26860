"""Issue 18.4: a write whose answer was lost is settled by reading, never made twice.

The proxy lets the call reach the server, which commits it, then drops the
connection with the answer (``RoundTripCounter.lose_next_answer``): the
client cannot tell whether its transaction committed. The package reads
what it wrote (or gives back what a claim took) and goes on; the caller
sees one successful call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from helpers import log, rows
from roundtrips import RoundTripCounter

from nexusLIMS.db.claims import claim_sessions, list_claims
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.session_handler import get_sessions_to_build

pytestmark = pytest.mark.extra("postgres")


@pytest.fixture
def proxy(nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTripCounter]:
    """The test server behind a proxy, three sessions waiting to be built."""
    with RoundTripCounter(nexuslims_postgres_db.target) as counter:
        monkeypatch.setenv("nexusLIMS_db_path", counter.url)
        monkeypatch.setenv("nexusLIMS_db_timeout", "10")
        insert_logs([log(f"s{n}", event, f"2021-05-01T1{n}:{minute}:00")
                     for n in range(3) for event, minute in (("START", "00"), ("END", "30"))])
        try:
            yield counter
        finally:
            close_databases()


def _statuses(identifier: str) -> Counter[str]:
    return Counter(r.record_status for r in rows() if r.session_identifier == identifier)


def test_a_log_whose_answer_was_lost_is_stored_once(proxy: RoundTripCounter) -> None:
    proxy.lose_next_answer()
    log("new", "START", "2021-05-02T10:00:00").insert_log()
    assert [r.event_type for r in rows() if r.session_identifier == "new"] == ["START"]


def test_a_status_whose_answer_was_lost_is_set(proxy: RoundTripCounter) -> None:
    session = get_sessions_to_build()[0]
    proxy.lose_next_answer()
    assert session.update_session_status("COMPLETED") is True
    assert _statuses(session.session_identifier) == {"COMPLETED": 2}


def test_a_record_generation_whose_answer_was_lost_is_written_once(
        proxy: RoundTripCounter) -> None:
    session = get_sessions_to_build()[0]
    proxy.lose_next_answer()
    written = session.insert_record_generation_event()
    generated = [r for r in rows() if r.event_type == "RECORD_GENERATION"]
    assert [r.id_session_log for r in generated] == [written["id_session_log"]]


def test_a_claim_whose_answer_was_lost_leaves_no_claim_behind(proxy: RoundTripCounter) -> None:
    proxy.lose_next_answer()
    claimed = claim_sessions(2, worker="builder")
    assert len(claimed) == 2
    # Only this builder's claims, the lost attempt's given back.
    assert sorted((c.session_identifier, c.worker) for c in list_claims()) == \
        sorted((c.session_identifier, "builder") for c in claimed)
    for session in claimed:
        session.finish("COMPLETED")
    assert list_claims() == []


def test_a_finish_whose_answer_was_lost_is_recorded_once(proxy: RoundTripCounter) -> None:
    [claimed] = claim_sessions(1)
    proxy.lose_next_answer()
    claimed.finish("COMPLETED")  # no ClaimLostError: its own outcome is read back
    assert _statuses(claimed.session_identifier) == {"COMPLETED": 2}
    assert list_claims() == []


def test_a_renewal_whose_answer_was_lost_is_renewed(proxy: RoundTripCounter) -> None:
    [claimed] = claim_sessions(1, lease=timedelta(minutes=5))
    first: Any = claimed.expires_at
    proxy.lose_next_answer()
    assert claimed.renew(timedelta(hours=2)) > first + timedelta(minutes=30)
    claimed.release()
    assert list_claims() == []
