"""What the Session Logger on an instrument PC writes: a session's START and END.

:func:`log_start` writes a START log with status ``WAITING_FOR_END``;
:func:`log_end` writes the END log and sets both logs of the session to
``TO_BE_BUILT``, so that the record builder picks the session up. Each is one
write transaction that checks before it writes, so a refused call writes
nothing.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from typing import Optional, Union

from nexusLIMS.db.connection import PathLike, connect
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.session_log import SessionLog, instrument_pids, require_instrument
from nexusLIMS.db.timestamps import now_local_iso, parse_timestamp, validate_timestamp

__all__ = ["log_end", "log_start"]

logger = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO session_log "
    "(session_identifier, instrument, timestamp, event_type, record_status, user) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_WAITING = RecordStatus.WAITING_FOR_END.value
_TO_BE_BUILT = RecordStatus.TO_BE_BUILT.value


def _timestamp(at: Union[str, datetime, None]) -> str:
    """Return the ISO text to store: now (local, with offset) when ``at`` is None."""
    if at is None:
        return now_local_iso()
    if isinstance(at, datetime):
        return at.isoformat()
    return validate_timestamp(at)


def _new_log(
    event: EventType,
    status: RecordStatus,
    instrument: str,
    session_identifier: str,
    user: Optional[str],
    at: Union[str, datetime, None],
) -> SessionLog:
    if not isinstance(session_identifier, str) or not session_identifier:
        raise ValueError(
            f"Invalid session identifier {session_identifier!r}; expected a non-empty string"
        )
    if user is not None and not isinstance(user, str):
        raise ValueError(f"Invalid user {user!r}; expected a string or None")
    return SessionLog(session_identifier, instrument, _timestamp(at), event.value, user,
                      status.value)


def _ends_before(start: str, end: str) -> bool:
    """Whether ``end`` is earlier than ``start`` (False when they cannot be compared)."""
    try:
        return parse_timestamp(end) < parse_timestamp(start)
    except (TypeError, ValueError):  # one has an offset and the other not, or bad text
        return False


def _insert(conn: sqlite3.Connection, log: SessionLog) -> int:
    cursor = conn.execute(_INSERT, log.to_row())
    return int(cursor.lastrowid or 0)


def log_start(
    instrument: str,
    session_identifier: str,
    user: Optional[str] = None,
    at: Union[str, datetime, None] = None,
    *,
    path: Optional[PathLike] = None,
) -> SessionLog:
    """Log the start of a session: a START log with status ``WAITING_FOR_END``.

    Parameters
    ----------
    instrument
        The instrument PID; must be in the ``instruments`` table.
    session_identifier
        The new session's identifier; no START may exist for it yet.
    user
        Who is using the instrument, if known.
    at
        When the session started (ISO 8601 text or ``datetime``); by default
        now, in the system's zone, with its UTC offset.
    path
        The database; by default from ``nexusLIMS_db_path``.

    Returns
    -------
    SessionLog
        The log written.

    Raises
    ------
    ValueError
        The instrument is unknown, the identifier already has a START log,
        or an argument is invalid. Nothing is written.
    """
    log = _new_log(EventType.START, RecordStatus.WAITING_FOR_END, instrument,
                   session_identifier, user, at)
    with connect(path, begin="IMMEDIATE") as conn:
        require_instrument(instrument, instrument_pids(conn), log)
        existing = conn.execute(
            "SELECT id_session_log, record_status FROM session_log "
            "WHERE session_identifier = ? AND event_type = ? ORDER BY id_session_log",
            (session_identifier, EventType.START.value),
        ).fetchone()
        if existing is not None:
            raise ValueError(
                f"Session {session_identifier!r} already has a START log "
                f"(id {existing[0]}, status {existing[1]}); not writing another"
            )
        log_id = _insert(conn, log)
    logger.info("Logged START %d of session %s on %s", log_id, session_identifier, instrument)
    return log


def log_end(
    instrument: str,
    session_identifier: str,
    user: Optional[str] = None,
    at: Union[str, datetime, None] = None,
    *,
    path: Optional[PathLike] = None,
) -> SessionLog:
    """Log the end of a session and mark it ready for its record to be built.

    Writes an END log and sets the session's START and END logs to
    ``TO_BE_BUILT``, in one transaction.

    Parameters
    ----------
    instrument
        The instrument PID; must be the one the session started on.
    session_identifier
        The session's identifier; it must have one open START log (status
        ``WAITING_FOR_END``) and no END log.
    user
        Who used the instrument; by default the user of the START log.
    at
        When the session ended (ISO 8601 text or ``datetime``); by default
        now, in the system's zone, with its UTC offset. Not before the start.
    path
        The database; by default from ``nexusLIMS_db_path``.

    Returns
    -------
    SessionLog
        The END log written.

    Raises
    ------
    ValueError
        There is no open START for the identifier (or several), it has an END
        already, the instrument is unknown or not the session's, the end is
        before the start, or an argument is invalid. Nothing is written.
    """
    log = _new_log(EventType.END, RecordStatus.TO_BE_BUILT, instrument,
                   session_identifier, user, at)
    with connect(path, begin="IMMEDIATE") as conn:
        require_instrument(instrument, instrument_pids(conn), log)
        starts = conn.execute(
            "SELECT id_session_log, instrument, timestamp, user FROM session_log "
            "WHERE session_identifier = ? AND event_type = ? AND record_status = ?",
            (session_identifier, EventType.START.value, _WAITING),
        ).fetchall()
        if len(starts) != 1:
            how_many = "no open START log" if not starts else f"{len(starts)} open START logs"
            raise ValueError(
                f"Cannot end session {session_identifier!r}: it has {how_many} "
                f"(status {_WAITING}); expected exactly one"
            )
        start_id, start_instrument, start_time, start_user = starts[0]
        if start_instrument != instrument:
            raise ValueError(
                f"Cannot end session {session_identifier!r} on {instrument!r}: "
                f"it started on {start_instrument!r}"
            )
        has_end = conn.execute(
            "SELECT id_session_log FROM session_log WHERE session_identifier = ? "
            "AND event_type = ?",
            (session_identifier, EventType.END.value),
        ).fetchone()
        if has_end is not None:
            raise ValueError(
                f"Cannot end session {session_identifier!r}: it already has an END log "
                f"(id {has_end[0]})"
            )
        if _ends_before(start_time, log.timestamp):
            raise ValueError(
                f"Cannot end session {session_identifier!r} at {log.timestamp}: "
                f"it started later, at {start_time}"
            )
        if log.user is None:
            log.user = start_user
        end_id = _insert(conn, log)
        conn.execute(
            "UPDATE session_log SET record_status = ? WHERE id_session_log = ?",
            (_TO_BE_BUILT, start_id),
        )
    logger.info("Logged END %d of session %s on %s", end_id, session_identifier, instrument)
    return log
