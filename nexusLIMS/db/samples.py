"""Sample instruments and a demo database, for tests, demos and trying the package out.

:func:`sample_instruments` are three instruments in two time zones;
:func:`populate_demo` fills an empty database with them and with sessions as
the Session Logger, a harvester and the record builder leave them: three
ready to build, one still running, one completed with its RECORD_GENERATION
log.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

import pytz

from nexusLIMS.db import queries
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.instruments import Instrument, read_instruments, write_instrument
from nexusLIMS.db.logs import SessionLog, write_logs
from nexusLIMS.db.schema import INSTRUMENTS, SESSION_LOG, transaction

__all__ = ["DemoSummary", "add_sample_instruments", "demo_logs", "populate_demo",
           "sample_instruments"]

logger = logging.getLogger(__name__)


def sample_instruments() -> list[Instrument]:
    """Return new :class:`Instrument` objects for three sample instruments.

    Two are in ``America/New_York`` and one in ``America/Denver``.
    """
    return [
        Instrument(
            name="FEI-Titan-TEM-635816",
            api_url="https://nemo.example.org/api/tools/?id=1",
            calendar_name="FEI Titan TEM",
            calendar_url="https://nemo.example.org/calendar/titan-tem/",
            location="Building 217, Room F131",
            schema_name="Titan TEM",
            property_tag="635816",
            filestore_path="./Titan",
            computer_name="TITAN-PC-01",
            computer_ip="192.0.2.11",
            computer_mount="M:/",
            harvester="nemo",
            timezone="America/New_York",
        ),
        Instrument(
            name="FEI-Quanta-ESEM-633137",
            api_url="https://nemo.example.org/api/tools/?id=2",
            calendar_name="FEI Quanta200 ESEM",
            calendar_url="https://nemo.example.org/calendar/quanta/",
            location="Building 217, Room E123",
            schema_name="Quanta FEG 200",
            property_tag="633137",
            filestore_path="./Quanta",
            computer_name="QUANTA-PC-01",
            computer_ip="192.0.2.12",
            computer_mount="M:/",
            harvester="nemo",
            timezone="America/New_York",
        ),
        Instrument(
            name="JEOL-JEM3010-TEM-565989",
            api_url="https://nemo.example.org/api/tools/?id=3",
            calendar_name="JEOL JEM-3010 TEM",
            calendar_url="https://nemo.example.org/calendar/jeol-3010/",
            location="Building 1, Room 1201",
            schema_name="JEOL JEM-3010",
            property_tag="565989",
            filestore_path="./JEOL3010",
            computer_name="JEOL3010-PC",
            computer_ip="192.0.2.13",
            computer_mount="J:/",
            harvester="nemo",
            timezone="America/Denver",
        ),
    ]


def add_sample_instruments(database: Optional[DatabaseRef] = None) -> dict[str, Instrument]:
    """Add the :func:`sample_instruments` not in the database yet; return its instruments.

    Parameters
    ----------
    database
        The database; by default from ``nexusLIMS_db_path``.
    """
    with transaction(database, begin="IMMEDIATE") as conn:
        present = read_instruments(conn)
        for instrument in sample_instruments():
            if instrument.name not in present:
                write_instrument(conn, instrument)
        return read_instruments(conn)



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
    location
        The database.
    instruments
        ``(pid, timezone)`` of each instrument added.
    sessions
        ``(session_identifier, instrument, status)`` of each session added.
    logs
        How many ``session_log`` rows were written.
    """

    location: DatabaseLocation
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
        logs.append(SessionLog(identifier, pid, _at(start, zone), EventType.START, user, status))
        if end is not None:
            logs.append(SessionLog(identifier, pid, _at(end, zone), EventType.END, user, status))
        if status is RecordStatus.COMPLETED:
            logs.append(SessionLog(identifier, pid, _at(_RECORD_BUILT_AT, zone),
                                   EventType.RECORD_GENERATION,
                                   _BUILDER_USER, status))
    return logs


def populate_demo(database: Optional[DatabaseRef] = None) -> DemoSummary:
    """Add the sample instruments and the demo sessions to an empty database.

    Parameters
    ----------
    database
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
    logs = demo_logs()
    with transaction(database, begin="IMMEDIATE") as conn:  # all or nothing
        counts = [conn.scalar(queries.count(table)) for table in (INSTRUMENTS, SESSION_LOG)]
        if any(counts):
            raise ValueError(
                f"The demo needs an empty database; {conn.location} has {counts[0]} "
                f"instruments and {counts[1]} session logs"
            )
        for instrument in sample_instruments():
            write_instrument(conn, instrument)
        write_logs(conn, logs)
        instruments = read_instruments(conn)
        location = conn.location
    sessions = tuple(
        (log.session_identifier, log.instrument, str(log.record_status))
        for log in logs
        if log.event_type == EventType.START
    )
    logger.info("Added %d demo instruments and %d demo logs to %s",
                len(instruments), len(logs), location)
    return DemoSummary(
        location=location,
        instruments=tuple((pid, str(i.timezone)) for pid, i in instruments.items()),
        sessions=sessions,
        logs=len(logs),
    )
