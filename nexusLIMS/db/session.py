"""The Session model: one session's identifier, instrument and times, and recording its outcome.

A :class:`Session` is what :func:`~nexusLIMS.db.sessions.get_sessions_to_build`
returns to the record builder: NexusLIMS 1.4's class, name for name. Its
methods write the session's RECORD_GENERATION log and its outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional, Union

from nexusLIMS.db import queries
from nexusLIMS.db.config import DatabaseRef, record_user
from nexusLIMS.db.connection import Connection, Statement, retrying
from nexusLIMS.db.enums import EventType, RecordStatus, coerce
from nexusLIMS.db.errors import ConstraintError, ConstraintKind
from nexusLIMS.db.instruments import Instrument, read_instruments
from nexusLIMS.db.logs import require_instrument, set_status
from nexusLIMS.db.schema import SESSION_CLAIMS, SESSION_REVISIONS, has_table, transaction
from nexusLIMS.db.tables import StoredLog
from nexusLIMS.db.timestamps import now_local_iso, span, utc_now, utc_text

__all__ = ["Outcome", "Session", "handed_session", "record_outcome", "set_session_status",
           "settled_outcome"]

# The name NexusLIMS 1.4 logged these messages under.
logger = logging.getLogger("nexusLIMS.db.session_handler")


@dataclass(unsafe_hash=True)
class Session:
    """A session in the NexusLIMS database, made of a START and an END log.

    Parameters
    ----------
    session_identifier
        The identifier shared by the session's logs.
    instrument
        The instrument the session was on.
    dt_range
        The start and end of the session, in that order; also available as
        :attr:`dt_from` and :attr:`dt_to`.
    user
        The user name of the session (may not be trustworthy).
    """

    session_identifier: str
    instrument: Instrument
    dt_range: tuple[datetime, datetime]
    user: Optional[str]
    dt_from: datetime = field(init=False, repr=False)
    dt_to: datetime = field(init=False, repr=False)
    #: What the builder was handed, when the session came from the database:
    #: the START's and END's timestamps as stored (see :func:`handed_session`).
    _handed: Optional[tuple[str, str]] = field(default=None, init=False, repr=False,
                                               compare=False)

    def __post_init__(self) -> None:
        if type(self.dt_range) is not tuple:  # a list would not hash
            self.dt_range = tuple(self.dt_range)  # type: ignore[assignment]
        self.dt_from, self.dt_to = self.dt_range

    def __repr__(self) -> str:
        return (
            f"{self.dt_from.isoformat()} to {self.dt_to.isoformat()} "
            f"on {self.instrument.name}"
        )

    #: Whether the session's logs are known to be in the database (claimed ones are).
    _has_logs = False

    def _database(self) -> Optional[DatabaseRef]:
        """Return the database this session's writes go to (None: the configured one)."""
        return None

    def _claim_token(self) -> Optional[str]:
        """Return the token of this builder's claim on the session (a claimed session's hook)."""
        return None

    def _lost(self, action: str) -> Exception:
        """Return the error for a write refused because the claim is gone (a claimed session's)."""
        raise NotImplementedError  # only a claimed session has a claim to lose

    @property
    def duration(self) -> Optional[timedelta]:
        """How long the session lasted; None if its start and end cannot be compared.

        A naive start or end is local time at the instrument; across a
        daylight-saving change the real elapsed time is given.
        """
        try:
            return span(self.dt_from, self.dt_to, self.instrument.timezone)
        except OverflowError:
            return None

    def update_session_status(self, status: Union[RecordStatus, str]) -> bool:
        """Set ``record_status`` on every log of this session.

        Parameters
        ----------
        status
            One of the :class:`~nexusLIMS.db.enums.RecordStatus` values (the
            member or its string).

        Returns
        -------
        bool
            True when rows were updated; False (with a warning logged) when no
            log has this session's identifier.

        Raises
        ------
        ValueError
            ``status`` is not allowed; the message lists the allowed values.
            Nothing is written.
        """
        value = coerce(RecordStatus, status, "record_status").value

        def record() -> Outcome:
            with transaction(self._database(), begin=None) as conn:
                return record_outcome(conn, self, value)

        outcome = retrying(record)  # a status set twice is the same status
        if outcome.revisions:
            logger.warning(
                "Session %r was revised while its record was built (%s); status %s not set: "
                "it stays TO_BE_BUILT to be built again with the new times (see 'nexuslims-db "
                "check')", self.session_identifier, outcome.describe_revisions(), value)
            return True  # as NexusLIMS 1.4: the call is done; the session is built again
        if outcome.updated == 0:
            logger.warning(
                "No session_log rows have session_identifier %r; status %s not set",
                self.session_identifier,
                status,
            )
            return False
        return True

    def insert_record_generation_event(self, *, require_logs: bool = False) -> dict[str, Any]:
        """Insert a RECORD_GENERATION log for this session and return that row.

        The log has this session's identifier and instrument, the user from
        ``nexusLIMS_user`` (NULL when unset) and the current time in the
        system's zone, stored as ISO text with its UTC offset.

        Parameters
        ----------
        require_logs
            Refuse a session that has no log in the database. By default such
            a session gets its RECORD_GENERATION log with a warning, as in
            NexusLIMS 1.4 (whose own tests rely on it).

        Returns
        -------
        dict
            The inserted row (found by its id): ``id_session_log``,
            ``event_type``, ``session_identifier`` and ``timestamp``.

        Raises
        ------
        ValueError
            The session has no identifier (or, with ``require_logs``, no log in
            the database), or an instrument that is not in the ``instruments``
            table; nothing is written.
        """
        logger.debug("Logging RECORD_GENERATION for %s", self.session_identifier)
        pid = getattr(self.instrument, "name", self.instrument)
        if not isinstance(self.session_identifier, str) or not self.session_identifier.strip():
            raise ValueError(f"Cannot log RECORD_GENERATION for {self!r}: the session has no "
                             f"identifier ({self.session_identifier!r})")
        timestamp = now_local_iso()
        identifier, token = self.session_identifier, self._claim_token()

        def write() -> int:
            with transaction(self._database(), begin=None) as conn:
                if require_logs and not self._has_logs:  # refused, rolled back: before writing
                    conn.begin("WRITE")
                    if not conn.fetchone(queries.SESSION_HAS_LOGS, (identifier,)):
                        raise ValueError(f"Cannot log RECORD_GENERATION for session "
                                         f"{identifier!r}: it has no log in the database")
                    conn.rollback()
                # One batch (one round trip to a server): whether the session has logs, and
                # the insert, only while the claim (if any) is this builder's.
                statements: list[Statement] = []
                guard: list[tuple[str, tuple[Any, ...]]] = []
                if token is not None:
                    statements.append((queries.CLAIM_HELD + conn.backend.lock_rows,
                                       (identifier, token)))
                    guard.append((queries.CLAIM_IS_HELD, (identifier, token)))
                if not self._has_logs:
                    statements.append((queries.SESSION_HAS_LOGS, (identifier,)))
                statements.append((*_guarded(queries.INSERT_RECORD_GENERATION,
                                             (pid, identifier, record_user(), timestamp), guard),
                                   "id_session_log"))
                try:
                    results = conn.write_batch(statements, mode="WRITE")
                except ConstraintError as exc:
                    if exc.kind is not ConstraintKind.FOREIGN_KEY:
                        raise
                    conn.rollback()  # (PostgreSQL's transaction is void after an error)
                    require_instrument(pid, read_instruments(conn), self)  # names the known ones
                    raise
            inserted, has_logs = results[-1], results[-2] if not self._has_logs else None
            if not inserted[1]:
                raise self._lost("log RECORD_GENERATION")
            if has_logs is not None and not has_logs[0]:
                logger.warning("Session %r has no log in the database; its RECORD_GENERATION was "
                               "logged anyway", identifier)
            assert inserted[0] is not None
            return int(inserted[0][0][0])

        def settle() -> Optional[int]:  # a lost answer: was the row written?
            with transaction(self._database(), begin=None) as conn:
                found = conn.fetchone(queries.RECORD_GENERATION_AT, (identifier, timestamp))
            return None if found is None else int(found[0])

        log_id = retrying(write, resend=False, settle=settle)  # never written twice
        # The row as stored: the values written (a text column keeps them as they are).
        return {"id_session_log": log_id,
                "event_type": EventType.RECORD_GENERATION.value,
                "session_identifier": identifier, "timestamp": timestamp}


def set_session_status(
    session_identifier: str,
    status: Union[RecordStatus, str],
    *,
    database: Optional[DatabaseRef] = None,
) -> int:
    """Set ``record_status`` on every log of a session; return how many rows changed.

    Parameters
    ----------
    session_identifier
        The session whose logs to update.
    status
        The new status (a :class:`~nexusLIMS.db.enums.RecordStatus` or its value).
    database
        The database; by default from ``nexusLIMS_db_path``.

    Raises
    ------
    ValueError
        ``status`` is not an allowed status (checked before writing).
    sqlite3.IntegrityError
        The database's CHECK predates ``status`` (a NexusLIMS 1.4 file); the
        message says to migrate it.
    """
    value = coerce(RecordStatus, status, "record_status").value

    def write() -> int:
        with transaction(database, begin="WRITE") as conn:
            try:
                return set_status(conn, value, session_identifier=session_identifier)
            except ConstraintError as exc:
                raise _unknown_status(exc, value) from exc

    return retrying(write)  # a status set twice is the same status


_new_session = object.__new__


def handed_session(
    identifier: str, instrument: Instrument, times: tuple[datetime, datetime],
    user: Optional[str], texts: tuple[str, str],
) -> Session:
    """Return the :class:`Session` of a START and END read from the database.

    It remembers the two timestamps as stored (``texts``): the outcome it
    records is for those, and a revision that changed them meanwhile is
    noticed (see :func:`record_outcome`).
    """
    # What Session(...) makes, without its __init__ (a hot path: one call a session).
    # The attributes are set one by one, in __init__'s order, so that the instance
    # keeps them as Python keeps those of every instance of its class (in half the
    # memory and time of a __dict__ of its own).
    session = _new_session(Session)
    session.session_identifier = identifier
    session.instrument = instrument
    session.dt_range = times
    session.user = user
    session._handed = texts
    session.dt_from = times[0]
    session.dt_to = times[1]
    return session


@dataclass(frozen=True)
class Outcome:
    """What :func:`record_outcome` did.

    Attributes
    ----------
    updated
        How many logs got the new status.
    revisions
        The session's waiting logs as revised since it was handed out (none:
        the outcome was recorded).
    claim_held
        Whether the claim (when a token was given) was still the builder's.
    """

    updated: int
    revisions: tuple[StoredLog, ...] = ()
    claim_held: bool = True

    def describe_revisions(self) -> str:
        """Name what changed: ``its END moved to 10:30 (log 7)``."""
        return "; ".join(f"its {log.event_type} is now {log.timestamp} (user {log.user!r}, "
                         f"log {log.id_session_log})" for log in self.revisions)


def record_outcome(
    conn: Connection, session: Session, value: str, *, token: Optional[str] = None
) -> Outcome:
    """Record ``value`` for ``session`` in one transaction (one round trip to a server).

    For a session read from the database (:func:`handed_session`), an outcome
    (any status but TO_BE_BUILT) is recorded only if the session's waiting
    START and END are still the ones handed out; otherwise nothing is set,
    the session stays to be built again, and its revisions are kept for
    ``check`` to name until an outcome is recorded for the new times. With a
    claim's ``token``, everything also requires that the claim is still this
    builder's, and an outcome ends the claim (also when the session was revised).

    Must be called outside a transaction.
    """
    identifier = session.session_identifier
    outcome = value != RecordStatus.TO_BE_BUILT
    handed = session._handed if outcome else None
    revisions_kept = has_table(conn, SESSION_REVISIONS.name)
    claims_kept = has_table(conn, SESSION_CLAIMS.name)
    guard: list[tuple[str, tuple[Any, ...]]] = []  # (condition, its parameters)
    if token is not None:
        guard.append((queries.CLAIM_IS_HELD, (identifier, token)))
    revised_since: tuple[Any, ...] = ()
    if handed is not None:
        revised_since = (identifier, handed[0], session.user, handed[1])
        guard.append((queries.UNREVISED_SINCE_HANDED, revised_since))
    statements: list[Statement] = []
    lock = conn.backend.lock_rows
    if lock:  # keep a revision out until this commits
        statements.append((queries.LOCK_SESSION_LOGS + lock, (identifier,)))
    held_at = len(statements)
    if token is not None:  # (and a claim's takeover)
        statements.append((queries.CLAIM_HELD + lock, (identifier, token)))
    first = len(statements)
    if handed is not None:
        statements.append((queries.REVISED_SINCE_HANDED, revised_since))
        if revisions_kept:
            statements.append(_guarded(
                queries.KEEP_REVISIONS_SINCE_HANDED,
                (handed[0], handed[1], utc_text(utc_now()), *revised_since),
                guard[:-1]))
    statements.append(_guarded(queries.SET_SESSION_STATUS, (value, identifier), guard))
    update = len(statements) - 1
    if outcome and revisions_kept:
        statements.append(_guarded(queries.SETTLE_REVISIONS, (identifier,), guard))
    if token is not None and outcome:  # the claim ends, whatever else happened
        statements.append((queries.END_OWN_CLAIM, (identifier, token)))
    elif outcome and claims_kept:
        statements.append(_guarded(queries.END_CLAIMS, (identifier,), guard))
    try:
        results = conn.write_batch(statements, mode="WRITE")
    except ConstraintError as exc:
        raise _unknown_status(exc, value) from exc
    revisions = tuple(StoredLog(*row) for row in results[first][0] or ()) \
        if handed is not None else ()
    held = token is None or bool(results[held_at][0])
    return Outcome(results[update][1], revisions if held else (), held)


def settled_outcome(conn: Connection, session: Session, value: str,
                    token: str) -> Optional[Outcome]:
    """Tell what :func:`record_outcome` with a claim's ``token`` did when its answer was lost.

    None while the claim is still the token's: nothing was recorded (or
    ``value`` is TO_BE_BUILT, which keeps the claim), and recording it again
    is safe. Otherwise the outcome, when the session's logs all have
    ``value``; else the claim was lost (or ended on a revision).
    """
    identifier = session.session_identifier
    if conn.fetchall(queries.CLAIM_HELD, (identifier, token)):
        return None
    counts = {status: int(count) for status, count in
              conn.fetchall(queries.SESSION_STATUS_COUNTS, (identifier,))}
    if set(counts) == {value}:
        return Outcome(counts[value])
    return Outcome(0, (), claim_held=False)


def _guarded(
    statement: str, params: tuple[Any, ...], guard: list[tuple[str, tuple[Any, ...]]]
) -> tuple[str, tuple[Any, ...]]:
    """Return ``statement`` (which has a WHERE) that runs only where ``guard`` holds."""
    for condition, values in guard:
        statement = f"{statement} AND {condition}"
        params = (*params, *values)
    return statement, params


def _unknown_status(exc: ConstraintError, value: str) -> ConstraintError:
    """Return ``exc``, with the remedy added when the database's CHECK predates ``value``."""
    if exc.kind is not ConstraintKind.CHECK:
        return exc
    # The same type as 1.4 raised, with the remedy added.
    return exc.reworded(
        f"{exc}: this database does not allow record_status {value!r}; it was probably made "
        f"by NexusLIMS 1.4: run 'nexuslims-db migrate' (or nexusLIMS.db.migrate_db()) to "
        f"update it")
