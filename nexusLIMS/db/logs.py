"""Session logs: one row of ``session_log`` as :class:`SessionLog`, and writing them.

What a write does with a START or END log, in one write transaction:

* the **same event** already stored (identifier, instrument, event type,
  user and the same instant, whatever its status or spelling): nothing is
  written; a warning says so (1.4's message);
* a **revision**: the session already has a log of that event type still
  waiting for its record (``TO_BE_BUILT`` or ``WAITING_FOR_END``) at another
  time or with another user, as when NEMO staff correct a usage event: that
  row is updated in place (its id kept) and an INFO message names both times;
* a **late revision**: the session's record was built already: nothing is
  changed; a warning names the session, and the revision is kept for
  ``nexuslims-db check`` to list;
* otherwise the log is **inserted**.

:func:`log_start` and :func:`log_end` are what the Session Logger on an
instrument PC does: a START waiting for its END, then the END, which makes
the session ready to build.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Optional, Union

from nexusLIMS.db import queries
from nexusLIMS.db.config import DatabaseRef
from nexusLIMS.db.connection import Connection, retrying
from nexusLIMS.db.enums import WAITING_STATUSES, EventType, ProblemKind, RecordStatus, coerce
from nexusLIMS.db.instruments import (
    read_instruments,
    reading_instruments,
    zone_named,
)
from nexusLIMS.db.pairing import pair_problems
from nexusLIMS.db.schema import (
    SESSION_CLAIMS,
    SESSION_LOG,
    SESSION_REVISIONS,
    has_table,
    transaction,
)
from nexusLIMS.db.tables import LOG_COLUMNS, StoredLog, describe_log
from nexusLIMS.db.timestamps import (
    canonical_timestamp,
    now_local_iso,
    same_instant,
    utc_now,
    utc_text,
)
from nexusLIMS.db.validation import check_text

__all__ = [
    "LOG_COLUMNS",
    "SessionLog",
    "StoredLog",
    "WriteResult",
    "insert_logs",
    "log_end",
    "log_start",
    "logs_of",
    "require_instrument",
    "set_status",
    "settle_outcomes",
    "write_logs",
]

# The name NexusLIMS 1.4 logged these messages under.
logger = logging.getLogger("nexusLIMS.db.session_handler")


@dataclass(unsafe_hash=True)
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
        return describe_log(self)

    def insert_log(self) -> bool:
        """Insert this log into the NexusLIMS database, unless it is there already.

        The same event stored already is not written again (a warning says
        so); a START or END that revises one still waiting for its record
        updates it in place (see :mod:`nexusLIMS.db.logs`). The check and the
        write are one write transaction, so concurrent writers cannot both
        insert it.

        Returns
        -------
        bool
            True: the log was written, or was there already.

        Raises
        ------
        ValueError
            The event type, status, identifier, instrument or timestamp is not
            valid; nothing is written.
        """
        logger.debug("Logging %s for %s", self.event_type, self.session_identifier)
        row = _checked_row(self)
        # Ridden through a lost connection: a second attempt finds what a first wrote.
        retrying(lambda: _write_one(row, self))
        return True


def _write_one(row: StoredLog, log: SessionLog) -> None:
    """Write one log as :func:`write_logs` would, in one round trip to a server.

    One transaction reads the log's event as stored and, in the same batch,
    inserts the log if it is the first of its event, revises the current
    waiting log if the log's text or user differs, or keeps a late revision.
    The rules (:func:`_decide`) then judge what was read: a log that names the
    same instant in other words (a duplicate) undoes what the batch did, in a
    second round trip; anything else the batch cannot write (a second
    RECORD_GENERATION, say) is written as :func:`write_logs` writes it.
    """
    identity = (row.session_identifier, row.instrument, row.event_type)
    revisable = row.event_type in (EventType.START, EventType.END)
    received = utc_text(utc_now())
    with transaction(begin=None) as conn:
        keeps_revisions = has_table(conn, SESSION_REVISIONS.name)
        statements: list[tuple[str, Any]] = [
            (queries.INSTRUMENT_ZONE, (row.instrument,)),
            (queries.LOGS_OF_EVENT + conn.backend.lock_rows, identity),
            (queries.INSERT_IF_FIRST, (*row[1:], row.instrument, *identity))]
        if revisable:
            statements.append((queries.REVISE_CURRENT, (
                row.timestamp, row.user, *identity, row.timestamp, row.user, row.instrument)))
            if keeps_revisions:
                statements.append((queries.KEEP_LATE_REVISION, (
                    row.timestamp, row.user, received, *identity, *identity, row.timestamp,
                    row.user, row.timestamp, row.user, row.instrument)))
        results = conn.write_batch(statements, mode="IMMEDIATE")
        zones, stored = results[0][0] or [], [StoredLog(*found) for found in results[1][0] or ()]
        if not zones:  # nothing was written: no such instrument
            require_instrument(row.instrument, read_instruments(conn), log)
        inserted, revised = results[2][1], (results[3][1] if revisable else 0)
        late_kept = results[4][1] if revisable and keeps_revisions else 0
        kind, old = _decide(row, stored, zone_named(zones[0][0]))
        if kind == "insert" and not inserted:  # what the batch cannot do
            write_logs(_began(conn), [log])
        elif kind == "duplicate":
            undo: list[tuple[str, Any]] = []
            current = _newest([s for s in stored if s.record_status in WAITING_STATUSES]
                              or stored) if stored else None
            if revised and current is not None:  # the same instant, spelled otherwise
                undo.append((queries.UNREVISE_LOG, (current.timestamp, current.user,
                                                    current.id_session_log, row.timestamp)))
            if late_kept and current is not None:
                undo.append((queries.DROP_REVISION, (current.id_session_log, row.timestamp,
                                                     received)))
            if undo:
                conn.write_batch(undo, mode="IMMEDIATE")
            _warn_duplicate(row)
        elif kind == "revise":
            assert old is not None
            _revise(old, row)
        elif kind == "late":
            assert old is not None
            _warn_late(old, row)


def _began(conn: Connection) -> Connection:
    """Begin a writers' transaction on ``conn`` (outside one) and return it."""
    conn.begin("IMMEDIATE")
    return conn


@dataclass
class WriteResult:
    """What :func:`write_logs` did with a batch of logs."""

    inserted: int = 0
    revised: int = 0
    duplicates: int = 0
    late_revisions: int = 0


def require_instrument(pid: object, instruments: Iterable[str], subject: object) -> None:
    """Raise ValueError naming ``subject`` if ``pid`` is not a known instrument."""
    known = instruments if isinstance(instruments, (set, frozenset, dict)) else set(instruments)
    if not isinstance(pid, str) or pid not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise ValueError(
            f"Cannot write {subject!r}: instrument {pid!r} is not in the "
            f"instruments table (known: {listed})"
        )


def _as_list(logs: object) -> list[SessionLog]:
    """Return ``logs`` as a list; TypeError unless it is an iterable (of logs, checked later)."""
    if isinstance(logs, (str, bytes)) or not isinstance(logs, Iterable):
        raise TypeError(f"Expected an iterable of SessionLog, got {type(logs).__name__}: {logs!r}")
    return list(logs)


def _checked_row(log: SessionLog) -> StoredLog:
    """Return the row to write for ``log`` (id 0), checked but for its instrument.

    Raises
    ------
    ValueError
        Naming the log and what is wrong with it.
    TypeError
        ``log`` is not a :class:`SessionLog`.
    """
    if not isinstance(log, SessionLog):
        raise TypeError(f"Expected a SessionLog, got {type(log).__name__}: {log!r}")
    try:
        check_text(log.session_identifier, "session_identifier")
        event_type = coerce(EventType, log.event_type, "event_type").value
        status = coerce(RecordStatus, log.record_status or "", "record_status").value
        if log.user is not None and not isinstance(log.user, str):
            raise ValueError(f"Invalid user {log.user!r}; expected a string or None")
        if log.user is not None:
            check_text(log.user, "user", blank=True)
        timestamp = canonical_timestamp(log.timestamp)
    except ValueError as exc:
        raise ValueError(f"Cannot write {log!r}: {exc}") from None
    return StoredLog(0, log.session_identifier, log.instrument, timestamp, event_type, status,
                     log.user)


def logs_of(conn: Connection, identifiers: list[str], *, lock: bool = False) -> list[StoredLog]:
    """Return every stored log of the sessions ``identifiers`` (distinct), through their index.

    By identifier alone, so that every planner takes that index (a session
    has few logs); callers filter statuses and events themselves. ``lock``
    keeps other writers (an outcome being recorded) off these rows until the
    transaction ends.
    """
    rows: list[StoredLog] = []
    lock_rows = conn.backend.lock_rows if lock else ""
    for condition, params in conn.backend.in_values("session_identifier", identifiers):
        rows.extend(StoredLog(*row) for row in conn.fetchall(
            queries.select_logs(condition) + lock_rows, params))
    return rows


def _newest(logs: list[StoredLog]) -> StoredLog:
    """Return the newest of ``logs`` (the highest id; one of this batch, id 0, is newer)."""
    return max(logs, key=lambda log: log.id_session_log or float("inf"))


def _decide(
    row: StoredLog, known: list[StoredLog], zone: Optional[tzinfo]
) -> tuple[str, Optional[StoredLog]]:
    """Return what writing ``row`` does, given the stored logs of its event: the rules, once.

    ``("duplicate", None)``: the same event is stored; ``("insert", None)``;
    ``("revise", old)``: ``old``, waiting for its record, gets the new time
    and user; ``("late", old)``: the session's record was built already.

    A START or END is compared with the session's current log of its event
    (the newest waiting one, else the newest): one that equals a superseded
    log (an ERROR a repair left, say) is a revision, reverting a correction.
    Any other event is the same as any stored one.
    """
    revisable = row.event_type in (EventType.START, EventType.END)
    waiting = [old for old in known if old.record_status in WAITING_STATUSES]
    compared = ([_newest(waiting or known)] if known else []) if revisable else known
    if any(old.user == row.user and same_instant(old.timestamp, row.timestamp, zone)
           for old in compared):
        return "duplicate", None
    if not revisable or not known:
        return "insert", None
    if waiting:
        return "revise", _newest(waiting)
    return "late", _newest(known)


def write_logs(conn: Connection, logs: Iterable[SessionLog]) -> WriteResult:
    """Write ``logs`` in the open write (IMMEDIATE) transaction; see the module docs.

    Every log is validated before anything is written: one bad log rejects
    the whole batch with a ``ValueError`` naming it (``TypeError`` for an
    item that is not a :class:`SessionLog`). On a server: one round trip
    reads what the decisions need; the writes go with the commit (or a COPY).
    """
    batch = _as_list(logs)
    result = WriteResult()
    if not batch:
        return result
    # Every log checked before anything is read (a NUL is no text a server takes);
    # the instruments, once read, in the same order, so the first bad log is named.
    checked: list[StoredLog] = []
    refused: Optional[Exception] = None
    for log in batch:
        try:
            checked.append(_checked_row(log))
        except (TypeError, ValueError) as exc:
            refused = exc
            break
    identifiers = list(dict.fromkeys(row.session_identifier for row in checked))
    # The instruments (unless known unchanged), the stored logs of the batch's
    # sessions (locked: an outcome recorded meanwhile would make a revision
    # late), and the revisions kept of them.
    instruments, from_rows = reading_instruments(conn)
    reads: list[tuple[str, Any]] = [] if instruments is not None \
        else [(queries.INSTRUMENT_ROWS, ())]
    conditions = conn.backend.in_values("session_identifier", identifiers)
    reads += [(queries.select_logs(condition) + conn.backend.lock_rows, params)
              for condition, params in conditions]
    keeps_revisions = has_table(conn, SESSION_REVISIONS.name)
    if keeps_revisions:
        reads += [(queries.revisions_where(condition), params)
                  for condition, params in conditions]
    results = conn.read_batch(reads) if reads else []
    if instruments is None:
        instruments = from_rows(results.pop(0))
    for row, log in zip(checked, batch):
        require_instrument(row.instrument, instruments, log)
    if refused is not None:
        raise refused
    rows = checked
    by_event: dict[tuple[str, str, str], list[StoredLog]] = {}
    for found in results[:len(conditions)]:
        for stored in map(StoredLog._make, found):
            by_event.setdefault((*stored[1:3], stored.event_type), []).append(stored)
    kept: dict[int, set[tuple[str, Optional[str]]]] = {}
    for found in results[len(conditions):]:
        for log_id, revised, user in found:
            kept.setdefault(log_id, set()).add((revised, user))
    inserts: list[StoredLog] = []
    updates: dict[int, tuple[str, Optional[str]]] = {}
    late: list[tuple[StoredLog, StoredLog]] = []
    for row in rows:
        known = by_event.setdefault((*row[1:3], row.event_type), [])
        kind, old = _decide(row, known, instruments[row.instrument].timezone)
        if kind == "duplicate":
            result.duplicates += 1
            _warn_duplicate(row)
        elif kind == "insert":
            known.append(row)
            inserts.append(row)
        elif kind == "revise":
            assert old is not None
            new = old._replace(timestamp=row.timestamp, user=row.user)
            known[known.index(old)] = new
            if old.id_session_log:
                updates[old.id_session_log] = (row.timestamp, row.user)
            else:  # a revision of a log earlier in this batch
                inserts[inserts.index(old)] = new
            _revise(old, row)
            result.revised += 1
        else:
            assert old is not None
            late.append((old, row))
    conn.insert_rows(SESSION_LOG.name, queries.WRITTEN_LOG_COLUMNS,
                     [row[1:] for row in inserts])
    conn.queue_many(queries.REVISE_LOG, [(timestamp, user, log_id)
                                         for log_id, (timestamp, user) in updates.items()])
    result.inserted = len(inserts)
    result.late_revisions = _keep_late_revisions(conn, late, kept if keeps_revisions else None)
    return result


def _warn_duplicate(row: StoredLog) -> None:
    logger.warning("SessionLog already existed in DB, so no row was added: %s", describe_log(row))


def _change(old: StoredLog, new: StoredLog) -> str:
    """Describe what a revision changes: the time of the event, or its user."""
    if old.timestamp != new.timestamp:
        return f"its {new.event_type} moved from {old.timestamp} to {new.timestamp}"
    return f"the user of its {new.event_type} changed from {old.user!r} to {new.user!r}"


def _revise(old: StoredLog, new: StoredLog) -> None:
    changed = f"from {old.timestamp} to {new.timestamp}" if old.timestamp != new.timestamp \
        else f"user from {old.user!r} to {new.user!r}"
    logger.info("Revised the %s of session %s on %s %s (log %s)", new.event_type,
                new.session_identifier, new.instrument, changed, old.id_session_log or "new")


def _warn_late(old: StoredLog, new: StoredLog) -> None:
    logger.warning(
        "Session %s on %s was revised after its record was built (status %s): %s; "
        "nothing was changed (see 'nexuslims-db check')",
        new.session_identifier, new.instrument, old.record_status, _change(old, new))


def _keep_late_revisions(
    conn: Connection, late: list[tuple[StoredLog, StoredLog]],
    kept: Optional[dict[int, set[tuple[str, Optional[str]]]]],
) -> int:
    """Warn about revisions of built sessions and keep them for ``check``; return how many.

    ``kept``: the revisions kept already, by log id (None: the database keeps none).
    """
    received = utc_text(utc_now())
    for old, new in late:
        _warn_late(old, new)
        if kept is None:
            continue
        known = kept.setdefault(old.id_session_log, set())
        if (new.timestamp, new.user) not in known:
            known.add((new.timestamp, new.user))
            conn.queue(queries.INSERT_REVISION, (
                old.id_session_log, new.session_identifier, new.instrument, new.event_type,
                old.timestamp, new.timestamp, new.user, received))
    return len(late)


def insert_logs(logs: Iterable[SessionLog], database: Optional[DatabaseRef] = None) -> int:
    """Write many session logs in one transaction; return how many rows were inserted.

    Each log is treated as :meth:`SessionLog.insert_log` treats one (same
    events skipped, revisions applied in place), also against logs earlier
    in ``logs``. Every log is validated before anything is written: one bad
    log rejects the whole batch.

    Raises
    ------
    TypeError
        ``logs`` is not an iterable of :class:`SessionLog`.
    ValueError
        A log has an unknown event type or status, a blank identifier or one
        with control characters, an instrument not in the ``instruments``
        table, or a timestamp that is not ISO 8601 (or out of range); the
        message names the log. Nothing is written.
    """
    batch = _as_list(logs)
    if not batch:
        return 0
    def write() -> WriteResult:
        with transaction(database, begin="IMMEDIATE") as conn:
            return write_logs(conn, batch)

    # Ridden through a lost connection: a second attempt finds what a first wrote.
    result = retrying(write)
    logger.debug("Inserted %d of %d session logs (%d revised)",
                 result.inserted, len(batch), result.revised)
    return result.inserted


def set_status(
    conn: Connection,
    status: Union[RecordStatus, str],
    *,
    session_identifier: Optional[str] = None,
    ids: Iterable[int] = (),
    claims_ended: bool = False,
) -> int:
    """Set ``record_status`` of a session's logs, or of the logs ``ids``; return rows changed.

    An outcome (any status but TO_BE_BUILT) of a session settles it (see
    :func:`settle_outcomes`), unless the caller did (``claims_ended``).
    """
    value = coerce(RecordStatus, status, "record_status").value
    if session_identifier is not None:
        changed = int(conn.execute(queries.SET_SESSION_STATUS,
                                   (value, session_identifier)).rowcount)
        if value != RecordStatus.TO_BE_BUILT and not claims_ended:
            settle_outcomes(conn, [session_identifier])
        return changed
    rows = [(value, log_id) for log_id in sorted(set(ids))]
    conn.executemany(queries.SET_LOG_STATUS, rows)
    return len(rows)


def settle_outcomes(conn: Connection, session_identifiers: Iterable[str]) -> None:
    """End the claims on these sessions and settle their revisions: an outcome was recorded.

    Revisions applied in place are settled (no longer listed): the outcome is
    for the times they set. Nothing of a table an older schema lacks.
    """
    rows = [(identifier,) for identifier in session_identifiers]
    if rows and has_table(conn, SESSION_CLAIMS.name):
        conn.executemany(queries.END_CLAIMS, rows)
    if rows and has_table(conn, SESSION_REVISIONS.name):
        conn.executemany(queries.SETTLE_REVISIONS, rows)


def _event_log(
    event: EventType,
    status: RecordStatus,
    instrument: str,
    session_identifier: str,
    user: Optional[str],
    at: Union[str, datetime, None],
) -> SessionLog:
    """Return the log to write; the time is now (local, with offset) when ``at`` is None."""
    timestamp = now_local_iso() if at is None else canonical_timestamp(at)
    return SessionLog(session_identifier, instrument, timestamp, event.value, user, status.value)


def log_start(
    instrument: str,
    session_identifier: str,
    user: Optional[str] = None,
    at: Union[str, datetime, None] = None,
    *,
    database: Optional[DatabaseRef] = None,
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
    database
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
    try:
        check_text(session_identifier, "session_identifier")
        log = _event_log(EventType.START, RecordStatus.WAITING_FOR_END, instrument,
                         session_identifier, user, at)
    except ValueError as exc:
        raise ValueError(f"Cannot start session {session_identifier!r}: {exc}") from None
    def write() -> None:
        with transaction(database, begin="IMMEDIATE") as conn:
            existing = conn.fetchone(queries.STARTS_OF_SESSION, (session_identifier,))
            if existing is not None:
                start = StoredLog(*existing)
                raise ValueError(
                    f"Session {session_identifier!r} already has a START log "
                    f"(id {start.id_session_log}, status {start.record_status}); "
                    f"not writing another"
                )
            write_logs(conn, [log])

    retrying(write, resend=False)  # a second START would be refused: only if none was sent
    logger.info("Logged START of session %s on %s", session_identifier, instrument)
    return log


def log_end(
    instrument: str,
    session_identifier: str,
    user: Optional[str] = None,
    at: Union[str, datetime, None] = None,
    *,
    database: Optional[DatabaseRef] = None,
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
    database
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
    try:
        check_text(session_identifier, "session_identifier")
        log = _event_log(EventType.END, RecordStatus.TO_BE_BUILT, instrument,
                         session_identifier, user, at)
    except ValueError as exc:
        raise ValueError(f"Cannot end session {session_identifier!r}: {exc}") from None
    def write() -> None:
        with transaction(database, begin="IMMEDIATE") as conn:
            instruments = read_instruments(conn)
            require_instrument(instrument, instruments, log)
            logs = [StoredLog(*row) for row in conn.fetchall(queries.LOGS_OF_SESSION,
                                                             (session_identifier,))]
            ends = [row for row in logs if row.event_type == EventType.END]
            if ends:
                raise ValueError(
                    f"Cannot end session {session_identifier!r}: it already has an END log "
                    f"(id {ends[0].id_session_log}, status {ends[0].record_status})"
                )
            waiting = RecordStatus.WAITING_FOR_END.value
            starts = [row for row in logs
                      if row.event_type == EventType.START and row.record_status == waiting]
            if len(starts) != 1:
                how_many = "no open START log" if not starts else f"{len(starts)} open START logs"
                raise ValueError(
                    f"Cannot end session {session_identifier!r}: it has {how_many} "
                    f"(status {waiting}); expected exactly one"
                )
            start = starts[0]
            end = StoredLog(0, session_identifier, instrument, log.timestamp, EventType.END.value,
                            RecordStatus.TO_BE_BUILT.value, log.user)
            _, problems = pair_problems(session_identifier, start, end,
                                        instruments.get(start.instrument))
            kinds = {kind for kind, _ in problems}
            if ProblemKind.INSTRUMENT_MISMATCH in kinds:
                raise ValueError(
                    f"Cannot end session {session_identifier!r} on {instrument!r}: "
                    f"it started on {start.instrument!r}"
                )
            if ProblemKind.END_BEFORE_START in kinds:
                raise ValueError(
                    f"Cannot end session {session_identifier!r} at {log.timestamp}: "
                    f"it started later, at {start.timestamp}"
                )
            if problems:
                raise ValueError(f"Cannot end session {session_identifier!r}: {problems[0][1]}")
            if log.user is None:
                log.user = start.user
            write_logs(conn, [log])
            set_status(conn, RecordStatus.TO_BE_BUILT, ids=[start.id_session_log])

    retrying(write, resend=False)  # a second END would be refused: only if none was sent
    logger.info("Logged END of session %s on %s", session_identifier, instrument)
    return log
