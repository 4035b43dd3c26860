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
from datetime import datetime, timedelta
from typing import Optional, Union

from nexusLIMS.db.connection import PathLike, connect
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.session import session_span
from nexusLIMS.db.session_log import SessionLog, require_instrument, write_logs
from nexusLIMS.db.timestamps import now_local_iso, parse_timestamp
from nexusLIMS.instruments import read_instruments

__all__ = ["log_end", "log_start"]

logger = logging.getLogger(__name__)

_WAITING = RecordStatus.WAITING_FOR_END.value


def _log(
    event: EventType,
    status: RecordStatus,
    instrument: str,
    session_identifier: str,
    user: Optional[str],
    at: Union[str, datetime, None],
) -> SessionLog:
    """Return the log to write; the time is now (local, with offset) when ``at`` is None."""
    if at is None:
        timestamp = now_local_iso()
    else:
        timestamp = at.isoformat() if isinstance(at, datetime) else at
    return SessionLog(session_identifier, instrument, timestamp, event.value, user, status.value)


def _first_log(
    conn: sqlite3.Connection, session_identifier: str, event: EventType
) -> Optional[tuple[int, str]]:
    """Return (id, status) of the session's first log of type ``event``, if any."""
    row = conn.execute(
        "SELECT id_session_log, record_status FROM session_log "
        "WHERE session_identifier = ? AND event_type = ? ORDER BY id_session_log",
        (session_identifier, event.value),
    ).fetchone()
    return None if row is None else (row[0], row[1])


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
    log = _log(EventType.START, RecordStatus.WAITING_FOR_END, instrument,
               session_identifier, user, at)
    with connect(path, begin="IMMEDIATE") as conn:
        existing = _first_log(conn, log.session_identifier, EventType.START)
        if existing is not None:
            raise ValueError(
                f"Session {session_identifier!r} already has a START log "
                f"(id {existing[0]}, status {existing[1]}); not writing another"
            )
        write_logs(conn, [log])
    logger.info("Logged START of session %s on %s", session_identifier, instrument)
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
    log = _log(EventType.END, RecordStatus.TO_BE_BUILT, instrument,
               session_identifier, user, at)
    with connect(path, begin="IMMEDIATE") as conn:
        instruments = read_instruments(conn)
        require_instrument(instrument, frozenset(instruments), log)
        has_end = _first_log(conn, log.session_identifier, EventType.END)
        if has_end is not None:
            raise ValueError(
                f"Cannot end session {session_identifier!r}: it already has an END log "
                f"(id {has_end[0]}, status {has_end[1]})"
            )
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
        if log.user is None:
            log.user = start_user
        write_logs(conn, [log])  # validates the END (instrument, timestamp, ...)
        span = session_span(
            parse_timestamp(start_time),
            parse_timestamp(log.timestamp),
            instruments[instrument],
        )
        if span is not None and span < timedelta(0):
            raise ValueError(  # rolls the END back
                f"Cannot end session {session_identifier!r} at {log.timestamp}: "
                f"it started later, at {start_time}"
            )
        conn.execute(
            "UPDATE session_log SET record_status = ? WHERE id_session_log = ?",
            (RecordStatus.TO_BE_BUILT.value, start_id),
        )
    logger.info("Logged END of session %s on %s", session_identifier, instrument)
    return log
