"""An overview of a NexusLIMS database, as an admin pastes it into a support request."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from typing import Optional

from nexusLIMS.db import queries
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef
from nexusLIMS.db.instruments import Instrument, read_instruments
from nexusLIMS.db.integrity import verify_integrity
from nexusLIMS.db.schema import inspect, transaction
from nexusLIMS.db.sessions import SessionProblem, late_revisions, pair_sessions
from nexusLIMS.db.tables import StoredLog
from nexusLIMS.db.timestamps import age, utc_now

__all__ = ["DatabaseSummary", "summarize"]


@dataclass(frozen=True)
class DatabaseSummary:
    """What :func:`summarize` found.

    Attributes
    ----------
    location
        The database.
    schema_version
        The stored schema version.
    size_bytes
        The size of the database file (or, on PostgreSQL, of the database).
    instruments
        How many instruments there are.
    log_counts
        ``(event_type, record_status, count)`` for every combination present.
    sessions_to_build
        How many sessions :func:`~nexusLIMS.db.sessions.get_sessions_to_build`
        would return.
    oldest_waiting
        The oldest START still waiting for its END (a Session Logger left
        running?), and how long ago it started, if any.
    problems
        What ``check`` reports.
    server
        What serves the database, with its version.
    connections
        The connections this process keeps to it: ``open``, ``idle`` and
        ``most`` (none for a file, opened per call).
    """

    location: DatabaseLocation
    schema_version: int
    size_bytes: Optional[int]
    instruments: int
    log_counts: tuple[tuple[str, str, int], ...]
    sessions_to_build: int
    oldest_waiting: Optional[tuple[StoredLog, Optional[timedelta]]]
    problems: tuple[SessionProblem, ...]
    server: str = ""
    connections: dict[str, int] = field(default_factory=dict)


def summarize(database: Optional[DatabaseRef] = None) -> DatabaseSummary:
    """Return an overview of the database: versions, counts, what waits, what is wrong.

    Raises
    ------
    DatabaseDamagedError
        The database is damaged (SQLite's ``quick_check``; on PostgreSQL,
        invalid indexes): nothing in it can be trusted until that is dealt with.
    """
    with transaction(database) as conn:
        verify_integrity(conn)
        instruments = read_instruments(conn)
        counts = tuple((str(event), str(status), int(count))
                       for event, status, count in conn.fetchall(queries.LOG_COUNTS))
        sessions, problems = pair_sessions(conn, instruments)
        now = utc_now()
        waiting = [StoredLog(*row) for row in conn.fetchall(queries.WAITING_STARTS)]
        # By the instant, not the text: the zones of the timestamps differ.
        aged = [(log, age(log.timestamp, _zone(instruments, log.instrument), now))
                for log in waiting]
        oldest = max(aged, key=lambda pair: (pair[1] is not None, pair[1] or timedelta(0)),
                     default=None)
        return DatabaseSummary(
            location=conn.location,
            schema_version=inspect(conn).version,
            size_bytes=conn.backend.size(conn.raw, conn.location),
            instruments=len(instruments),
            log_counts=counts,
            sessions_to_build=len(sessions),
            oldest_waiting=oldest,
            problems=tuple(problems + late_revisions(conn)),
            server=conn.backend.server_version(conn.raw),
            connections=conn.database.pool_stats(),
        )


def _zone(instruments: dict[str, Instrument], pid: str) -> Optional[tzinfo]:
    """Return the time zone of instrument ``pid`` (None if unknown: this computer's)."""
    instrument = instruments.get(pid)
    return None if instrument is None else instrument.timezone
