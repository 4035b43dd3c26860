"""Several processes at once, on both backends: writers lose nothing, ``mark`` destroys nothing.

Writers race in rounds through a barrier on the same logs (one with a NULL
user) and each inserts logs of its own: every log ends up stored exactly once.

Then the race of issue 13.1: harvester processes write each session's START
and END as two ``insert_log`` calls (as NEMO's harvester does), while a
record builder loops over ``get_sessions_to_build(on_error="mark")``, builds
what it gets and records COMPLETED. A START whose END has not arrived yet
must not be marked ERROR: every session is built exactly once.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from helpers import QUANTA, TITAN, rows

from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import connect
from nexusLIMS.db.logs import SessionLog
from nexusLIMS.db.sessions import get_sessions_to_build

pytestmark = pytest.mark.slow

N_WRITERS = 4
N_ROUNDS = 10  # all writers meet at a barrier, then race on the same logs
PER_ROUND = 5  # distinct logs each writer inserts per round
SHARED = ("shared-session", TITAN, "2021-05-01T10:00:00.000", "START")


def _distinct_log(writer: int, i: int) -> SessionLog:
    return SessionLog(f"writer-{writer}-{i}", TITAN,
                      f"2021-05-01T11:{i // 60:02d}:{i % 60:02d}.000", "END", f"user{writer}")


def _round_log(round_: int) -> SessionLog:
    return SessionLog(f"round-{round_}", TITAN, "2021-05-01T12:00:00.000", "START", None)


def _racing_writer(writer: int, barrier: Any, errors: Any) -> None:
    try:
        shared = SessionLog(*SHARED, user=None)
        for round_ in range(N_ROUNDS):
            barrier.wait(timeout=60)
            assert _round_log(round_).insert_log() is True
            assert shared.insert_log() is True
            for i in range(round_ * PER_ROUND, (round_ + 1) * PER_ROUND):
                assert _distinct_log(writer, i).insert_log() is True
    except BaseException:
        errors.put(f"writer {writer}:\n{traceback.format_exc()}")
        raise


def _run(processes: list[Any], errors: Any, timeout: float = 120) -> None:
    """Start, wait for, and check processes; fail with any error they reported."""
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(timeout=max(deadline - time.monotonic(), 0))
    reports = []
    while not errors.empty():
        reports.append(errors.get())
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    errors.close()
    errors.join_thread()
    assert reports == []
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_racing_writers_store_every_log_exactly_once(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any]
) -> None:
    ctx = multiprocessing.get_context("spawn")  # children read nexusLIMS_db_path themselves
    barrier, errors = ctx.Barrier(N_WRITERS), ctx.Queue()
    _run([ctx.Process(target=_racing_writer, args=(writer, barrier, errors))
          for writer in range(N_WRITERS)], errors)

    counts = Counter(r[1:] for r in rows())
    as_row = lambda log: (log.session_identifier, log.instrument, log.timestamp,  # noqa: E731
                          log.event_type, log.record_status, log.user)
    shared = as_row(SessionLog(*SHARED, user=None))
    rounds = [as_row(_round_log(round_)) for round_ in range(N_ROUNDS)]
    distinct = [as_row(_distinct_log(writer, i)) for writer in range(N_WRITERS)
                for i in range(N_ROUNDS * PER_ROUND)]
    assert counts[shared] == 1
    assert [counts[row] for row in rounds] == [1] * N_ROUNDS
    assert [row for row in distinct if counts[row] != 1] == []
    assert set(counts) == {shared, *rounds, *distinct}
    if nexuslims_database.backend == "sqlite":
        with connect() as conn:
            assert conn.scalar("PRAGMA integrity_check") == "ok"


# ------------------------------------------------------ issue 13.1: mark vs writers

N_HARVESTERS = 4
SESSIONS_EACH = 30


def _harvester(number: int, errors: Any) -> None:
    """Write each session's START, then (a moment later) its END, as NEMO's harvester does."""
    try:
        rng = random.Random(number)
        for i in range(SESSIONS_EACH):
            start = datetime.now().astimezone() - timedelta(hours=2)
            identifier = f"https://nemo.example.org/api/usage_events/?id={number}-{i}"
            instrument = TITAN if i % 2 else QUANTA
            SessionLog(identifier, instrument, start.isoformat(), "START", f"user{number}",
                       "TO_BE_BUILT").insert_log()
            time.sleep(rng.uniform(0, 0.01))  # the builder may run in between
            SessionLog(identifier, instrument, (start + timedelta(hours=1)).isoformat(), "END",
                       f"user{number}", "TO_BE_BUILT").insert_log()
    except BaseException:
        errors.put(f"harvester {number}:\n{traceback.format_exc()}")
        raise


def _builder(done: Any, errors: Any) -> None:
    """Build what get_sessions_to_build(on_error="mark") returns, until told to stop."""
    try:
        while True:
            finishing = done.is_set()  # once set, one more pass picks up the last sessions
            for session in get_sessions_to_build(on_error="mark"):
                session.insert_record_generation_event()
                session.update_session_status("COMPLETED")
            if finishing:
                return
    except BaseException:
        errors.put(f"builder:\n{traceback.format_exc()}")
        raise


def test_mark_never_marks_a_session_its_harvester_is_still_writing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any]
) -> None:
    ctx = multiprocessing.get_context("spawn")
    errors, done = ctx.Queue(), ctx.Event()
    builder = ctx.Process(target=_builder, args=(done, errors))
    harvesters = [ctx.Process(target=_harvester, args=(number, errors))
                  for number in range(N_HARVESTERS)]
    builder.start()
    _run(harvesters, errors)
    done.set()
    builder.join(timeout=60)
    assert builder.exitcode == 0

    logs = rows()
    generated = Counter(r.session_identifier for r in logs if r.event_type == "RECORD_GENERATION")
    identifiers = {r.session_identifier for r in logs if r.event_type == "START"}
    assert len(identifiers) == N_HARVESTERS * SESSIONS_EACH
    assert [i for i in identifiers if generated[i] != 1] == []  # each built exactly once
    assert {r.record_status for r in logs if r.event_type != "RECORD_GENERATION"} == {"COMPLETED"}
