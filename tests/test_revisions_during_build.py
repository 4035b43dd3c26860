"""Issue 20.1 and 20.3: a revision is never silently lost, nor taken for a duplicate.

A builder records an outcome for the START and END it was handed. When the
harvester revises them while the record is built, the outcome is not
recorded: on the NexusLIMS 1.4 path (``get_sessions_to_build`` then
``update_session_status``) the session stays TO_BE_BUILT and is built again
with the new times, 1.4's return values kept; on the claims path ``finish``
raises ``SessionRevisedError`` (a ``ClaimLostError``). ``check`` and ``info``
name such a session until an outcome is recorded for the new times.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest
from helpers import TITAN, insert_raw, log, row, rows, statuses, warnings

from nexusLIMS.db.claims import claim_sessions, list_claims
from nexusLIMS.db.cli import main as cli_main
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import tracing
from nexusLIMS.db.enums import ProblemKind
from nexusLIMS.db.errors import ClaimLostError, SessionRevisedError
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.sessions import (
    Session,
    find_session_problems,
    get_sessions_to_build,
    repair_duplicate_ends,
)
from nexusLIMS.db.summary import summarize

START, END, LATER = "2024-03-01T09:00:00", "2024-03-01T09:30:00", "2024-03-01T10:30:00"


@pytest.fixture
def waiting(nexuslims_database: DatabaseLocation,
            nexuslims_instruments: dict[str, Instrument]) -> DatabaseLocation:
    """A session (START 09:00, END 09:30) waiting for its record."""
    insert_logs([log("s1", "START", START), log("s1", "END", END)])
    return nexuslims_database


def _revise_end(at: str = LATER) -> None:
    """What the harvester does when NEMO staff correct the usage event's end."""
    assert log("s1", "END", at).insert_log() is True


def _problems(kind: ProblemKind) -> list[Any]:
    return [p for p in find_session_problems() if p.kind is kind]


def test_the_1_4_path_builds_a_revised_session_again(
    waiting: DatabaseLocation, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (session,) = get_sessions_to_build()
    assert session.insert_record_generation_event()["session_identifier"] == "s1"
    _revise_end()
    with caplog.at_level(logging.WARNING):
        assert session.update_session_status("COMPLETED") is True  # 1.4's return value
    assert any("revised while its record was built" in m and "status COMPLETED not set" in m
               and LATER in m for m in warnings(caplog))
    assert set(statuses().values()) == {"TO_BE_BUILT", "WAITING_FOR_END"}  # RG row's default
    (problem,) = _problems(ProblemKind.REVISED_DURING_BUILD)
    assert problem.session_identifier == "s1"
    assert END in problem.detail
    assert LATER in problem.detail
    assert [p.kind for p in summarize().problems] == [ProblemKind.REVISED_DURING_BUILD]
    assert cli_main(["check"]) == 1
    assert "s1: revised_during_build" in capsys.readouterr().out
    # The next poll hands it out with the new times; its outcome settles it.
    (again,) = get_sessions_to_build()
    assert again.dt_to == datetime.fromisoformat(LATER)
    assert again.update_session_status("COMPLETED") is True
    assert {r.event_type: r.record_status for r in rows()
            if r.event_type != "RECORD_GENERATION"} == {"START": "COMPLETED", "END": "COMPLETED"}
    assert find_session_problems() == []
    assert cli_main(["check"]) == 0


def test_a_revised_user_is_a_revision_too(waiting: DatabaseLocation) -> None:
    (session,) = get_sessions_to_build()
    assert log("s1", "START", START, user="bob").insert_log() is True
    assert session.update_session_status("COMPLETED") is True
    assert "COMPLETED" not in statuses().values()
    (problem,) = _problems(ProblemKind.REVISED_DURING_BUILD)
    assert "'bob'" in problem.detail


def test_a_session_made_by_hand_keeps_1_4s_behaviour(waiting: DatabaseLocation) -> None:
    # 1.4's own tests make sessions by hand, with any times, and set their status.
    made = Session("s1", Instrument(name=TITAN), (datetime(2000, 1, 1), datetime(2000, 1, 2)),
                   "someone")
    assert made.update_session_status("NO_FILES_FOUND") is True
    assert set(statuses().values()) == {"NO_FILES_FOUND"}


def test_an_unrevised_outcome_is_recorded_as_before(waiting: DatabaseLocation) -> None:
    (session,) = get_sessions_to_build()
    insert_logs([log("s1", "END", END)])  # the same event again: no revision
    assert session.update_session_status("COMPLETED") is True
    assert set(statuses().values()) == {"COMPLETED"}
    assert find_session_problems() == []


def test_the_claims_path_refuses_the_outcome(waiting: DatabaseLocation) -> None:
    (claimed,) = claim_sessions(1, worker="builder-1")
    claimed.insert_record_generation_event()
    _revise_end()
    with pytest.raises(SessionRevisedError, match="revised while worker builder-1") as raised:
        claimed.finish("COMPLETED")
    assert isinstance(raised.value, ClaimLostError)  # what a builder's loop already catches
    assert list_claims() == []  # the claim ended: the session can be claimed again
    assert "COMPLETED" not in statuses().values()
    assert len(_problems(ProblemKind.REVISED_DURING_BUILD)) == 1
    (again,) = claim_sessions(1, worker="builder-2")
    assert again.dt_to == datetime.fromisoformat(LATER)
    again.finish("COMPLETED")
    assert find_session_problems() == []


def test_a_claimed_session_in_a_with_block_is_not_marked_error(
        waiting: DatabaseLocation) -> None:
    (claimed,) = claim_sessions(1)

    def build() -> None:
        with claimed as session:  # the block's exception reaches __exit__
            _revise_end()
            session.finish("COMPLETED")

    with pytest.raises(SessionRevisedError):
        build()
    assert "ERROR" not in statuses().values()
    assert list_claims() == []
    assert claimed.update_session_status("COMPLETED") is False  # its claim is gone


def test_a_claim_renewed_by_a_slow_builder_still_notices(waiting: DatabaseLocation) -> None:
    (claimed,) = claim_sessions(1, lease=timedelta(minutes=1))
    _revise_end()
    claimed.renew(timedelta(minutes=5))
    with pytest.raises(SessionRevisedError):
        claimed.finish("NO_FILES_FOUND")


# --- racing: the revision and the outcome, each holding its lock first ------------------


def _paused_revision(pause_on: str) -> tuple[threading.Thread, threading.Event,
                                             threading.Event, list[BaseException]]:
    """Start the harvester's revision in a thread that waits before ``pause_on`` runs."""
    reached, go, errors = threading.Event(), threading.Event(), []
    owner: list[int] = []

    def tracer(event: str, text: str) -> None:
        if threading.get_ident() in owner and text.startswith(pause_on) and not reached.is_set():
            reached.set()
            assert go.wait(30)

    def run() -> None:
        owner.append(threading.get_ident())
        try:
            with tracing(tracer):  # insert_logs: its transaction is open while paused
                assert insert_logs([log("s1", "END", LATER)]) == 0
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert reached.wait(30)
    return thread, go, errors


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    return thread, out


@pytest.mark.slow
def test_an_outcome_waits_for_a_revision_in_progress(waiting: DatabaseLocation) -> None:
    (session,) = get_sessions_to_build()
    # The revision has read (and locked) the session's logs, and is about to update them.
    revision, go, errors = _paused_revision("UPDATE session_log SET timestamp")
    outcome, result = _in_thread(lambda: session.update_session_status("COMPLETED"))
    outcome.join(0.5)
    assert outcome.is_alive()  # waiting for the revision's lock
    go.set()
    revision.join(30)
    outcome.join(30)
    assert errors == []
    assert result == [True]
    assert "COMPLETED" not in statuses().values()
    assert len(_problems(ProblemKind.REVISED_DURING_BUILD)) == 1


@pytest.mark.slow
def test_a_revision_after_the_outcome_is_a_late_revision(waiting: DatabaseLocation) -> None:
    (session,) = get_sessions_to_build()
    assert session.update_session_status("COMPLETED") is True
    _revise_end()
    assert set(statuses().values()) == {"COMPLETED"}
    assert len(_problems(ProblemKind.LATE_REVISION)) == 1


# --- 20.3: a reverted correction is a revision --------------------------------------------


def test_a_reverted_correction_is_applied(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # Two waiting ENDs written before revisions were applied in place.
    start, first, second = insert_raw([row("s1", "START", START), row("s1", "END", END),
                                       row("s1", "END", LATER)])
    assert repair_duplicate_ends() == [("s1", second, (first,))]
    assert statuses()[first] == "ERROR"
    # NEMO's staff revert their correction: the END is 09:30 again.
    assert insert_logs([log("s1", "END", END)]) == 0
    assert {r.id_session_log: r.timestamp for r in rows()} == {
        start: START, first: END, second: END}
    (session,) = get_sessions_to_build()
    assert session.dt_to == datetime.fromisoformat(END)


def test_a_current_log_sent_again_is_still_the_same_event(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    insert_raw([row("s1", "START", START), row("s1", "END", END, status="ERROR"),
                row("s1", "END", LATER)])
    assert insert_logs([log("s1", "END", LATER)]) == 0
    assert any("already existed" in message for message in warnings(caplog))
    assert [r.timestamp for r in rows()] == [START, END, LATER]
