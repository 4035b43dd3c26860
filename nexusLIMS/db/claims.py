"""Several record builders at once: claiming sessions, leases and fencing.

A builder calls :func:`claim_sessions`; each session it gets is claimed for it
alone (a row of ``session_claims`` with its worker name, a random token and a
lease expiry), in the same write transaction that found the session, so two
builders never get the same one. The builder renews the lease for a long
build and records the outcome with :meth:`ClaimedSession.finish`, which ends
the claim. A builder that dies loses nothing: once its lease expires, another
builder claims the session. Every write of a claimed session checks the
token in the same statement (*fencing*): a builder whose lease expired and
whose session another builder claimed since cannot overwrite the new
holder's outcome.

Claims need schema version 3 (``nexuslims-db migrate``); code that never
claims works on any version, as in NexusLIMS 1.4.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Optional, Union

from nexusLIMS.db import queries
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, mark_after
from nexusLIMS.db.connection import Connection
from nexusLIMS.db.enums import RecordStatus, coerce
from nexusLIMS.db.errors import ClaimLostError, SessionRevisedError, UnsupportedDatabaseError
from nexusLIMS.db.instruments import Instrument, read_instruments
from nexusLIMS.db.logs import logs_of
from nexusLIMS.db.pairing import check, waiting_logs
from nexusLIMS.db.schema import SESSION_CLAIMS, has_table, transaction
from nexusLIMS.db.session import Session, handed_session, record_outcome
from nexusLIMS.db.timestamps import utc_now, utc_text

__all__ = [
    "DEFAULT_LEASE",
    "Claim",
    "ClaimedSession",
    "claim_sessions",
    "default_worker",
    "list_claims",
    "release_claim",
]

logger = logging.getLogger(__name__)

#: How long a claim lasts unless renewed.
DEFAULT_LEASE = timedelta(hours=1)
_CLAIMS = SESSION_CLAIMS.name



def default_worker() -> str:
    """Return this process's worker name: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _require_claims(conn: Connection) -> None:
    if not has_table(conn, _CLAIMS):
        raise UnsupportedDatabaseError(
            f"{conn.location} has no {_CLAIMS} table (schema version 3): run "
            f"'nexuslims-db migrate' to let record builders claim sessions")


@dataclass(unsafe_hash=True, repr=False)
class ClaimedSession(Session):
    """A :class:`~nexusLIMS.db.sessions.Session` claimed by one builder until its lease expires.

    Use it as a context manager to be sure the claim ends: an exception in
    the block records ERROR (unless an outcome was recorded already) and the
    claim is always released.
    """

    worker: str = ""
    token: str = ""
    expires_at: Optional[datetime] = field(default=None, compare=False)
    database: Optional[DatabaseLocation] = field(default=None, compare=False)
    finished: bool = field(default=False, compare=False)

    _has_logs = True  # it was claimed from its logs

    def _database(self) -> Optional[DatabaseRef]:
        return self.database

    def _claim_token(self) -> Optional[str]:
        # Every write of the session checks it in the statement that writes
        # (fencing): a builder whose claim is gone writes nothing.
        return self.token

    def renew(self, lease: timedelta = DEFAULT_LEASE) -> datetime:
        """Extend the claim to ``lease`` from now, for a long build; return the new expiry.

        Raises
        ------
        ClaimLostError
            Another builder holds the session now (or an admin released it).
        ValueError
            ``lease`` is not positive.
        """
        if lease <= timedelta(0):
            raise ValueError(f"lease must be positive, not {lease}")
        expires = utc_now() + lease
        with transaction(self.database, begin=None) as conn:  # one statement, fenced
            renewed = conn.execute(queries.RENEW_CLAIM, (
                utc_text(expires), self.session_identifier, self.token)).rowcount
        if not renewed:
            raise self._lost("renew its claim")
        self.expires_at = expires
        return expires

    def finish(self, status: Union[RecordStatus, str]) -> None:
        """Record the session's outcome and end the claim, if the claim is still this builder's.

        Raises
        ------
        ValueError
            ``status`` is not allowed, or is TO_BE_BUILT (not an outcome).
        ClaimLostError
            Another builder claimed the session after this claim expired (or an
            admin released it): nothing was written.
        SessionRevisedError
            (A ``ClaimLostError``.) The session's START or END was revised
            while its record was built: the outcome was not recorded, the claim
            ended, and the session waits to be built again with the new times
            (``nexuslims-db check`` names it until then).
        """
        if coerce(RecordStatus, status, "record_status") is RecordStatus.TO_BE_BUILT:
            raise ValueError("TO_BE_BUILT is not an outcome; use release() to give the "
                             "session back")
        self._set_status(status)

    def update_session_status(self, status: Union[RecordStatus, str]) -> bool:
        """Set the status of the session's logs if this builder still holds the claim.

        Any status but TO_BE_BUILT ends the claim. Returns False (with a
        warning) and writes nothing when the claim was lost, or when the session
        was revised while its record was built (see :meth:`finish`).
        """
        try:
            self._set_status(status)
        except ClaimLostError as lost:
            logger.warning("%s; status %s not set", lost, status)
            return False
        return True

    def _set_status(self, status: Union[RecordStatus, str]) -> None:
        value = coerce(RecordStatus, status, "record_status").value
        with transaction(self.database, begin=None) as conn:
            outcome = record_outcome(conn, self, value, token=self.token)
        if not outcome.claim_held:
            raise self._lost(f"record {value}")
        if value == RecordStatus.TO_BE_BUILT:  # not an outcome: the claim stays
            return
        self.finished = True  # the claim ended
        if outcome.revisions:
            raise SessionRevisedError(
                f"Cannot record {value} for session {self.session_identifier!r}: it was revised "
                f"while worker {self.worker} built its record ({outcome.describe_revisions()}); "
                f"the claim ended and the session waits to be built again with the new times")

    def release(self) -> None:
        """Give the session back unbuilt (its claim ends; any builder may claim it)."""
        with transaction(self.database, begin=None) as conn:  # one statement
            conn.execute(queries.END_OWN_CLAIM, (self.session_identifier, self.token))
        self.finished = True

    def _lost(self, action: str) -> ClaimLostError:
        return ClaimLostError(
            f"Cannot {action} for session {self.session_identifier!r}: worker {self.worker}'s "
            f"claim is gone (its lease expired at {self.expires_at} and another builder "
            f"claimed the session, or an admin released it)")

    def __enter__(self) -> ClaimedSession:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        if self.finished:
            return
        if error is not None:
            logger.warning("Building session %s failed (%s: %s); recording ERROR",
                           self.session_identifier, kind.__name__ if kind else "", error)
            if self.update_session_status(RecordStatus.ERROR):
                return
        self.release()


def claim_sessions(
    limit: Optional[int] = None,
    *,
    worker: Optional[str] = None,
    lease: timedelta = DEFAULT_LEASE,
    database: Optional[DatabaseRef] = None,
) -> list[ClaimedSession]:
    """Claim up to ``limit`` sessions ready to build that no live claim holds.

    The sessions are those :func:`~nexusLIMS.db.sessions.get_sessions_to_build`
    returns, in START order; inconsistent sessions are never claimed (see
    ``nexuslims-db check``). Finding and claiming them is one write
    transaction, so concurrent builders never get the same session.

    Parameters
    ----------
    limit
        At most this many (all, when None).
    worker
        Who claims them (default ``host:pid``), as ``nexuslims-db claims`` shows.
    lease
        How long the claims last unless renewed or finished.
    database
        The database; by default from ``nexusLIMS_db_path``.

    Raises
    ------
    UnsupportedDatabaseError
        The database has no claims table yet (schema version < 3).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    if lease <= timedelta(0):
        raise ValueError(f"lease must be positive, not {lease}")
    worker = worker or default_worker()
    claimed: list[ClaimedSession] = []
    with transaction(database, begin="IMMEDIATE") as conn:
        _require_claims(conn)
        if limit == 0:
            return []
        now = utc_now()  # once the writers' lock is ours: the lease starts now
        instruments = read_instruments(conn)
        after, batch = 0, (limit or 0) + 8
        while limit is None or len(claimed) < limit:
            if limit is None:
                rows = conn.fetchall(queries.CLAIM_CANDIDATES, (utc_text(now), 0))
            else:  # more when some candidates are inconsistent
                rows = conn.fetchall(f"{queries.CLAIM_CANDIDATES} LIMIT ?",
                                     (utc_text(now), after, batch))
                batch *= 2
            if not rows:
                break
            after = rows[-1][0]
            for candidate in _consistent(conn, instruments, now, rows):
                if limit is not None and len(claimed) >= limit:
                    break
                session = ClaimedSession(
                    candidate.session_identifier, candidate.instrument, candidate.dt_range,
                    candidate.user, worker=worker, token=uuid.uuid4().hex,
                    expires_at=now + lease, database=conn.location)
                session._handed = candidate._handed
                claimed.append(session)
            if limit is None:
                break
        conn.executemany(queries.UPSERT_CLAIM, [
            (session.session_identifier, worker, session.token, utc_text(now),
             utc_text(now + lease)) for session in claimed])
    # A builder polls: a poll that found nothing is not news.
    logger.log(logging.INFO if claimed else logging.DEBUG, "Worker %s claimed %d session(s)",
               worker, len(claimed))
    return claimed


def _consistent(conn: Connection, instruments: dict[str, Instrument], now: datetime,
                rows: list[tuple[Any, ...]]) -> list[Session]:
    """Return the sessions of candidate STARTs whose TO_BE_BUILT logs pair cleanly, in order."""
    identifiers = list(dict.fromkeys(identifier for _, identifier in rows))
    sessions = []
    young = mark_after()
    for identifier, (starts, ends) in waiting_logs(identifiers,
                                                    logs_of(conn, identifiers)).items():
        session, _ = check(identifier, starts, ends, instruments, now, young, handed_session)
        if session is not None:
            sessions.append(session)
    return sessions


@dataclass(frozen=True)
class Claim:
    """A row of ``session_claims``, as ``nexuslims-db claims`` lists it."""

    session_identifier: str
    worker: str
    claimed_at: datetime
    expires_at: datetime

    def live(self, now: Optional[datetime] = None) -> bool:
        """Whether the lease has not expired."""
        return self.expires_at > (now or utc_now())

    def age(self, now: Optional[datetime] = None) -> timedelta:
        """How long ago the session was claimed."""
        return (now or utc_now()) - self.claimed_at

    def lease_left(self, now: Optional[datetime] = None) -> timedelta:
        """How long until the lease expires (negative once expired)."""
        return self.expires_at - (now or utc_now())


def list_claims(database: Optional[DatabaseRef] = None) -> list[Claim]:
    """Return every claim, live or expired, oldest first (none before schema version 3)."""
    with transaction(database) as conn:
        if not has_table(conn, _CLAIMS):
            return []
        return [Claim(identifier, worker, datetime.fromisoformat(claimed),
                      datetime.fromisoformat(expires))
                for identifier, worker, claimed, expires in conn.fetchall(queries.CLAIMS)]


def release_claim(session_identifier: str, database: Optional[DatabaseRef] = None) -> bool:
    """End the claim on a session by hand (its builder can no longer record an outcome).

    Returns False when no claim holds the session.
    """
    with transaction(database, begin="IMMEDIATE") as conn:
        _require_claims(conn)
        released = conn.execute(queries.END_CLAIMS, (session_identifier,)).rowcount
    if released:
        logger.info("Released the claim on session %s", session_identifier)
    return bool(released)
