"""One row of ``session_log`` as a Python object, and inserting such rows."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Optional

from nexusLIMS.db.connection import connect
from nexusLIMS.db.enums import EventType, RecordStatus, coerce
from nexusLIMS.db.timestamps import validate_timestamp

__all__ = ["SessionLog", "insert_logs", "instrument_pids", "require_instrument", "write_logs"]

logger = logging.getLogger(__name__)

# (session_identifier, instrument, timestamp, event_type, record_status, user)
_LogRow = tuple[str, str, str, str, str, Optional[str]]
_EVENT_TYPES = frozenset(EventType.values())
_STATUSES = frozenset(RecordStatus.values())

_INSERT = (
    "INSERT INTO session_log "
    "(session_identifier, instrument, timestamp, event_type, record_status, user) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# The stored rows of some sessions, through the session_identifier index (a
# handful of rows per key), to skip logs already present. Compared in Python
# as tuples, so a NULL user matches a NULL user (1.4's "user = ?" never did).
_STORED = (
    "SELECT session_identifier, instrument, timestamp, event_type, record_status, user "
    "FROM session_log WHERE session_identifier IN ({marks})"
)
_CHUNK = 500  # identifiers per look-up, below the oldest SQLite limit of 999 parameters


@dataclass
class SessionLog:
    """A log of the start or end of a session: one row of ``session_log``.

    Parameters
    ----------
    session_identifier
        The identifier shared by a session's START, END and RECORD_GENERATION
        logs (often a UUID or a URL).
    instrument
        The instrument PID (a key of the ``instruments`` table).
    timestamp
        The ISO 8601 date and time of the event (a ``datetime`` is turned into
        its ISO text).
    event_type
        ``"START"``, ``"END"`` or ``"RECORD_GENERATION"`` (or an
        :class:`~nexusLIMS.db.enums.EventType`).
    user
        The user name, if known.
    record_status
        The status of the record; falsy means ``"TO_BE_BUILT"``.
    """

    session_identifier: str
    instrument: str
    timestamp: str
    event_type: str
    user: Optional[str]
    record_status: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.record_status:
            self.record_status = RecordStatus.TO_BE_BUILT.value
        # Keep every field a plain string, whatever the caller passed.
        for name in ("event_type", "record_status"):
            value = getattr(self, name)
            if isinstance(value, (EventType, RecordStatus)):
                setattr(self, name, value.value)
        timestamp: object = self.timestamp
        if isinstance(timestamp, datetime):
            self.timestamp = timestamp.isoformat()

    def __repr__(self) -> str:
        return (
            f"SessionLog (id={self.session_identifier}, "
            f"instrument={self.instrument}, "
            f"timestamp={self.timestamp}, "
            f"event_type={self.event_type}, "
            f"user={self.user}, "
            f"record_status={self.record_status})"
        )

    def insert_log(self) -> bool:
        """Insert this log into the NexusLIMS database, unless it is there already.

        The check for an identical row (same identifier, instrument, timestamp,
        event type, status and user, a NULL user matching a NULL user) and the
        insert are one write transaction, so concurrent writers cannot both
        insert it.

        Returns
        -------
        bool
            True: the row was inserted, or an identical row already existed
            (then a warning is logged and nothing is written).

        Raises
        ------
        ValueError
            The event type, status, instrument or timestamp is not valid;
            nothing is written.
        """
        logger.debug("Logging %s for %s", self.event_type, self.session_identifier)
        if insert_logs([self]) == 0:
            logger.warning("SessionLog already existed in DB, so no row was added: %s", self)
        return True

    def to_row(self) -> _LogRow:
        """Return the values to insert, in the column order of ``_INSERT``."""
        return (
            self.session_identifier,
            self.instrument,
            self.timestamp,
            self.event_type,
            self.record_status or RecordStatus.TO_BE_BUILT.value,
            self.user,
        )


def instrument_pids(conn: sqlite3.Connection) -> frozenset[str]:
    """Return the PIDs of the instruments table of the open database."""
    return frozenset(pid for (pid,) in conn.execute("SELECT instrument_pid FROM instruments"))


def require_instrument(pid: object, known: frozenset[str], subject: object) -> None:
    """Raise ValueError naming ``subject`` if ``pid`` is not a known instrument."""
    if not isinstance(pid, str) or pid not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"Cannot write {subject!r}: instrument {pid!r} is not in the "
            f"instruments table (known: {listed})"
        )


def _validate(log: SessionLog, known_instruments: frozenset[str]) -> None:
    """Raise ValueError naming ``log`` if it cannot be written."""
    try:
        if not isinstance(log.session_identifier, str) or not log.session_identifier:
            raise ValueError(
                f"Invalid session_identifier {log.session_identifier!r}; "
                f"expected a non-empty string"
            )
        if not (isinstance(log.event_type, str) and log.event_type in _EVENT_TYPES):
            coerce(EventType, log.event_type, "event_type")
        if not (isinstance(log.record_status, str) and log.record_status in _STATUSES):
            coerce(RecordStatus, log.record_status or "", "record_status")
        if log.user is not None and not isinstance(log.user, str):
            raise ValueError(f"Invalid user {log.user!r}; expected a string or None")
        validate_timestamp(log.timestamp)
    except ValueError as exc:
        raise ValueError(f"Cannot write {log!r}: {exc}") from None
    require_instrument(log.instrument, known_instruments, log)


def _new_rows(conn: sqlite3.Connection, rows: list[_LogRow]) -> list[_LogRow]:
    """Return ``rows`` without those stored already or earlier in ``rows``, in order."""
    identifiers = list(dict.fromkeys(row[0] for row in rows))
    seen: set[_LogRow] = set()
    for start in range(0, len(identifiers), _CHUNK):
        chunk = identifiers[start : start + _CHUNK]
        seen.update(conn.execute(_STORED.format(marks=", ".join("?" * len(chunk))), chunk))
    new: list[_LogRow] = []
    for row in rows:
        if row not in seen:
            seen.add(row)
            new.append(row)
    return new


def insert_logs(logs: Iterable[SessionLog]) -> int:
    """Insert many session logs in one transaction, skipping those already present.

    A log is skipped when an identical row exists in the database or earlier
    in ``logs`` (same semantics as :meth:`SessionLog.insert_log`). Every log is
    validated before anything is written: one bad log rejects the whole batch.

    Parameters
    ----------
    logs
        The logs to insert.

    Returns
    -------
    int
        How many rows were inserted.

    Raises
    ------
    ValueError
        A log has an unknown event type or status, an instrument not in the
        ``instruments`` table, or a timestamp that is not ISO 8601; the
        message names the log. Nothing is written.
    """
    batch = list(logs)
    if not batch:
        return 0
    with connect(begin="IMMEDIATE") as conn:
        inserted = write_logs(conn, batch)
    logger.debug("Inserted %d of %d session logs", inserted, len(batch))
    return inserted


def write_logs(conn: sqlite3.Connection, logs: list[SessionLog]) -> int:
    """Validate ``logs``, then insert those not present, in the open transaction.

    The caller's transaction must be ``IMMEDIATE`` so that the duplicate check
    and the insert cannot interleave with another writer. Returns how many
    rows were inserted; raises ``ValueError`` (before writing) for a bad log.
    """
    known = instrument_pids(conn)
    for log in logs:
        _validate(log, known)
    new = _new_rows(conn, [log.to_row() for log in logs])
    conn.executemany(_INSERT, new)
    return len(new)
