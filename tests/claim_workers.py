"""Record builders for tests/test_claims.py, run in spawned processes.

A spawned child imports this module by name (``tests/`` is on ``sys.path`` in
the test run) and finds the database through ``nexusLIMS_db_path``, which it
inherits from the test's environment.
"""

from __future__ import annotations

import time
import traceback
from datetime import timedelta
from typing import Any

from nexusLIMS.db.claims import claim_sessions
from nexusLIMS.db.connection import connect

#: How long a builder waits before looking again when every session left is claimed.
POLL = 0.02


def unbuilt() -> int:
    """Return how many sessions still wait for their record (TO_BE_BUILT STARTs)."""
    with connect() as conn:
        return int(conn.scalar("SELECT count(*) FROM session_log WHERE event_type = 'START' "
                               "AND record_status = 'TO_BE_BUILT'"))


def builder(name: str, batch: int, build_seconds: float, lease_seconds: float,
            barrier: Any, results: Any) -> None:
    """Claim ``batch`` sessions at a time and build each, until no session is left to build.

    Each build is ``insert_record_generation_event()``, a sleep of
    ``build_seconds`` (the record building), and ``finish("COMPLETED")``.
    Reports ``(name, identifiers finished, start time, end time, error)`` on
    ``results`` (times from ``time.time()``, comparable across processes).
    """
    finished: list[str] = []
    started = ended = 0.0
    error = None
    try:
        barrier.wait(timeout=120)
        started = time.time()
        while True:
            claimed = claim_sessions(batch, worker=name, lease=timedelta(seconds=lease_seconds))
            if not claimed:
                if unbuilt() == 0:
                    break
                time.sleep(POLL)  # the rest is claimed by others (or a dead builder)
                continue
            for session in claimed:
                session.insert_record_generation_event()
                time.sleep(build_seconds)
                session.finish("COMPLETED")
                finished.append(session.session_identifier)
        ended = time.time()
    except BaseException:
        error = f"builder {name}:\n{traceback.format_exc()}"
    results.put((name, finished, started, ended, error))


def doomed_builder(name: str, batch: int, lease_seconds: float, claimed_queue: Any) -> None:
    """Claim ``batch`` sessions with a short lease, report them, then hang in the build.

    It logs RECORD_GENERATION for the first session before reporting. The
    test SIGKILLs it while it sleeps: its claims stay behind until their
    lease expires.
    """
    claimed = claim_sessions(batch, worker=name, lease=timedelta(seconds=lease_seconds))
    claimed[0].insert_record_generation_event()  # it starts building the first one...
    claimed_queue.put([session.session_identifier for session in claimed])
    time.sleep(600)  # ... and is killed here
