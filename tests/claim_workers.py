"""A record builder that dies mid-build, for tests/test_claims.py, run in a spawned process.

A spawned child imports this module by name (``tests/`` is on ``sys.path`` in
the test run) and finds the database through ``nexusLIMS_db_path``, which it
inherits from the test's environment. The builders that build every session
are ``nexusLIMS.db.testing.run_builders`` (which the benchmarks run too).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from nexusLIMS.db.claims import claim_sessions


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
