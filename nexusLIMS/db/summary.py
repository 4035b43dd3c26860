"""An overview of a NexusLIMS database, as an admin pastes it into a support request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from nexusLIMS.db.config import DatabaseLocation, DatabaseRef
from nexusLIMS.db.connection import Connection
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.instruments import read_instruments
from nexusLIMS.db.logs import StoredLog, select_logs
from nexusLIMS.db.schema import SESSION_LOG, inspect, transaction
from nexusLIMS.db.sessions import SessionProblem, late_revisions, log_age, pair_sessions

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
    """

    location: DatabaseLocation
    schema_version: int
    size_bytes: Optional[int]
    instruments: int
    log_counts: tuple[tuple[str, str, int], ...]
    sessions_to_build: int
    oldest_waiting: Optional[tuple[StoredLog, Optional[timedelta]]]
    problems: tuple[SessionProblem, ...]


def _size(conn: Connection) -> Optional[int]:
    if conn.dialect == "sqlite":
        return conn.location.path.stat().st_size
    size = conn.scalar("SELECT pg_database_size(current_database())")
    return None if size is None else int(size)


def summarize(database: Optional[DatabaseRef] = None) -> DatabaseSummary:
    """Return an overview of the database: versions, counts, what waits, what is wrong."""
    with transaction(database) as conn:
        instruments = read_instruments(conn)
        counts = tuple(
            (str(event), str(status), int(count)) for event, status, count in conn.fetchall(
                f"SELECT event_type, record_status, count(*) FROM {SESSION_LOG.name} "
                f"GROUP BY event_type, record_status ORDER BY event_type, record_status"))
        sessions, problems = pair_sessions(conn, instruments)
        now = datetime.now(timezone.utc)
        waiting = [StoredLog(*row) for row in conn.fetchall(select_logs(
            f"event_type = '{EventType.START.value}' AND record_status = "
            f"'{RecordStatus.WAITING_FOR_END.value}' ORDER BY id_session_log"))]
        # By the instant, not the text: the zones of the timestamps differ.
        aged = [(log, log_age(log, instruments, now)) for log in waiting]
        oldest = max(aged, key=lambda pair: (pair[1] is not None, pair[1] or timedelta(0)),
                     default=None)
        return DatabaseSummary(
            location=conn.location,
            schema_version=inspect(conn).version,
            size_bytes=_size(conn),
            instruments=len(instruments),
            log_counts=counts,
            sessions_to_build=len(sessions),
            oldest_waiting=oldest,
            problems=tuple(problems + late_revisions(conn)),
        )
