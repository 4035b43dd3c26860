"""A small demo database: sample instruments and sessions in several states.

:func:`populate_demo` fills an empty database with the
:func:`~nexusLIMS.db.samples.sample_instruments` (in two time zones) and
sessions as the Session Logger, a harvester and the record builder leave
them: three ready to build, one still running, one completed with its
RECORD_GENERATION log.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import pytz

from nexusLIMS.db.connection import PathLike, connect, resolve_db_path
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.samples import sample_instruments
from nexusLIMS.db.session_log import SessionLog, write_logs
from nexusLIMS.instruments import read_instruments, write_instrument

__all__ = ["DemoSummary", "demo_logs", "populate_demo"]

logger = logging.getLogger(__name__)

_START, _END, _GEN = EventType.START, EventType.END, EventType.RECORD_GENERATION

# (identifier, instrument index, user, start, end or None, status), local wall times.
_SESSIONS: tuple[tuple[str, int, Optional[str], str, Optional[str], RecordStatus], ...] = (
    ("8a3e6c1d-5b2f-4e7a-9c0d-1f2e3a4b5c6d", 0, "alice", "2024-05-06T09:00:00",
     "2024-05-06T11:30:00", RecordStatus.TO_BE_BUILT),
    ("https://nemo.example.org/api/usage_events/?id=1042", 1, None, "2024-05-06T13:15:00",
     "2024-05-06T14:05:30", RecordStatus.TO_BE_BUILT),
    ("0d9c8b7a-6f5e-4d3c-8b2a-190817263544", 2, "bob", "2024-05-06T13:00:00",
     "2024-05-06T16:15:00", RecordStatus.TO_BE_BUILT),
    ("f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9", 1, "carol", "2024-05-07T08:30:00", None,
     RecordStatus.WAITING_FOR_END),
    ("5c4b3a29-1807-4f6e-9d5c-4b3a29180706", 0, "dave", "2024-05-03T10:00:00",
     "2024-05-03T12:45:00", RecordStatus.COMPLETED),
)
_RECORD_BUILT_AT = "2024-05-03T13:02:17"
_BUILDER_USER = "nexuslims"


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`populate_demo` added.

    Attributes
    ----------
    path
        The database.
    instruments
        ``(pid, timezone)`` of each instrument added.
    sessions
        ``(session_identifier, instrument, status)`` of each session added.
    logs
        How many ``session_log`` rows were written.
    """

    path: Path
    instruments: tuple[tuple[str, str], ...]
    sessions: tuple[tuple[str, str, str], ...]
    logs: int

    @property
    def timezones(self) -> tuple[str, ...]:
        """The distinct time zones of the instruments, sorted."""
        return tuple(sorted({zone for _, zone in self.instruments}))

    @property
    def status_counts(self) -> dict[str, int]:
        """How many sessions are in each status."""
        return dict(Counter(status for _, _, status in self.sessions))


def _at(naive: str, zone: str) -> str:
    """Return a wall time in ``zone`` as ISO text with its UTC offset."""
    return pytz.timezone(zone).localize(datetime.fromisoformat(naive)).isoformat()


def demo_logs() -> list[SessionLog]:
    """Return the demo's session logs, timestamps in their instruments' zones."""
    instruments = [(i.name or "", str(i.timezone)) for i in sample_instruments()]
    logs: list[SessionLog] = []
    for identifier, index, user, start, end, status in _SESSIONS:
        pid, zone = instruments[index]
        logs.append(SessionLog(identifier, pid, _at(start, zone), _START, user, status))
        if end is not None:
            logs.append(SessionLog(identifier, pid, _at(end, zone), _END, user, status))
        if status is RecordStatus.COMPLETED:
            logs.append(SessionLog(identifier, pid, _at(_RECORD_BUILT_AT, zone), _GEN,
                                   _BUILDER_USER, status))
    return logs


def populate_demo(path: Optional[PathLike] = None) -> DemoSummary:
    """Add the sample instruments and the demo sessions to an empty database.

    Parameters
    ----------
    path
        The database, made by :func:`~nexusLIMS.db.init_db`; by default from
        ``nexusLIMS_db_path``.

    Returns
    -------
    DemoSummary
        What was added.

    Raises
    ------
    ValueError
        The database already has instruments or session logs.
    """
    db_path = resolve_db_path(path)
    logs = demo_logs()
    with connect(db_path, begin="IMMEDIATE") as conn:  # all or nothing
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM instruments), (SELECT count(*) FROM session_log)"
        ).fetchone()
        if any(counts):
            raise ValueError(
                f"The demo needs an empty database; {str(db_path)!r} has {counts[0]} "
                f"instruments and {counts[1]} session logs"
            )
        for instrument in sample_instruments():
            write_instrument(conn, instrument)
        write_logs(conn, logs)
        instruments = read_instruments(conn)
    sessions = tuple(
        (log.session_identifier, log.instrument, str(log.record_status))
        for log in logs
        if log.event_type == _START.value
    )
    logger.info("Added %d demo instruments and %d demo logs to %s",
                len(instruments), len(logs), db_path)
    return DemoSummary(
        path=db_path,
        instruments=tuple((pid, str(i.timezone)) for pid, i in instruments.items()),
        sessions=sessions,
        logs=len(logs),
    )
