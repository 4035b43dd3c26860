"""Several record builders at once: claiming sessions, leases and fencing.

A builder calls :func:`claim_sessions`; each session it gets is claimed for it
alone (a row of ``session_claims`` with its worker name, a random token and a
lease expiry), in the same transaction that found the session, so two
builders never get the same one. The builder renews the lease for a long
build and records the outcome with :meth:`ClaimedSession.finish`, which ends
the claim. A builder that dies loses nothing: once its lease expires, another
builder claims the session. Every write of a claimed session checks the
token in the same statement (*fencing*): a builder whose lease expired and
whose session another builder claimed since cannot overwrite the new
holder's outcome.

On a server (PostgreSQL) a claim is one statement: it locks the START rows
it takes and skips those another builder is taking, so no builder ever waits
for another's claim, and it never takes the writers' lock that harvesters
use. The server's clock writes and judges the leases, never a builder's.
Claim, finish, renew and release are one round trip each. SQLite lets one
writer in at a time: a claim reads and writes in one write transaction, and
leases are judged by the builders' clock, so builders sharing a file must
share a clock (one host); a claim made more than a few seconds "in the
future" is reported.

Claims need schema version 3 (``nexuslims-db migrate``); code that never
claims works on any version, as in NexusLIMS 1.4.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Optional, Union

from nexusLIMS.db import queries, timestamps
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, mark_after
from nexusLIMS.db.connection import Connection, Statement, retrying
from nexusLIMS.db.enums import EventType, RecordStatus, coerce
from nexusLIMS.db.errors import ClaimLostError, SessionRevisedError, UnsupportedDatabaseError
from nexusLIMS.db.instruments import Instrument, read_instruments, reading_instruments
from nexusLIMS.db.logs import logs_of
from nexusLIMS.db.pairing import check, waiting_logs
from nexusLIMS.db.schema import SESSION_CLAIMS, has_table, transaction
from nexusLIMS.db.session import (
    Outcome,
    Session,
    handed_session,
    record_outcome,
    settled_outcome,
)
from nexusLIMS.db.tables import StoredLog
from nexusLIMS.db.timestamps import utc_text

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
#: How far in the future a claim may have been made before it is reported: a
#: builder's clock that far ahead judges leases wrong (SQLite).
CLOCK_TOLERANCE = timedelta(seconds=5)
_CLAIMS = SESSION_CLAIMS.name
_START, _END = EventType.START.value, EventType.END.value
_TBB = RecordStatus.TO_BE_BUILT.value
# The sessions a claim of every session takes per statement (limit None).
_ALL_CHUNK = 1000
# The inconsistent sessions a builder remembers, so as not to claim them again.
_JUDGED_MAX = 1000


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
        claim = (self.session_identifier, self.token)

        def renew() -> tuple[int, Any]:
            with transaction(self.database, begin=None) as conn:  # one round trip, fenced
                (_, renewed), (expiry, _) = conn.write_batch([
                    # The database's clock sets the expiry (a server's, never the builder's).
                    (queries.renew_claim(conn.backend.ddl.clock("?")),
                     (lease.total_seconds(), *claim)),
                    (queries.CLAIM_EXPIRY, claim)], mode="WRITE")
            return renewed, expiry

        renewed, expiry = retrying(renew)  # renewing twice is renewing (by token)
        if not renewed or not expiry:
            raise self._lost("renew its claim")
        self.expires_at = datetime.fromisoformat(expiry[0][0])
        return self.expires_at

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

        def record() -> Outcome:
            with transaction(self.database, begin=None) as conn:
                return record_outcome(conn, self, value, token=self.token)

        def settle() -> Optional[Outcome]:  # its answer lost: did it end the claim?
            with transaction(self.database, begin=None) as conn:
                return settled_outcome(conn, self, value, self.token)

        outcome = retrying(record, resend=False, settle=settle)
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
        def release() -> None:
            with transaction(self.database, begin=None) as conn:  # one statement
                conn.execute(queries.END_OWN_CLAIM, (self.session_identifier, self.token))

        retrying(release)  # (by token: ending it twice ends it)
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
    ``nexuslims-db check``), and a builder asking for N gets N whenever N
    consistent sessions are free. Finding and claiming them is one
    transaction, so concurrent builders never get the same session. On a
    server it is one statement in one round trip that skips the sessions
    other builders are claiming at that moment (no builder waits for
    another), and the server's clock sets the lease.

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
    seeds: list[str] = []  # of each attempt's tokens

    def claim() -> list[ClaimedSession]:
        seeds.append(uuid.uuid4().hex)
        with transaction(database, begin=None) as conn:
            _require_claims(conn)
            if limit == 0:
                return []
            if conn.backend.skip_locked:
                return _claim_skipping_locked(conn, limit, worker, lease, seeds[-1])
            return _claim_in_write_transaction(conn, limit, worker, lease, seeds[-1])

    def settle() -> None:  # an attempt's answer was lost: give back what it may have claimed
        with transaction(database, begin=None) as conn:
            conn.execute(queries.end_claims_where("token LIKE ?"), (f"{seeds[-1]}-%",))

    claimed = retrying(claim, resend=False, settle=settle)
    # A builder polls: a poll that found nothing is not news.
    logger.log(logging.INFO if claimed else logging.DEBUG, "Worker %s claimed %d session(s)",
               worker, len(claimed))
    return claimed


def _claimed(session: Session, worker: str, token: str, expires_at: datetime,
             location: DatabaseLocation) -> ClaimedSession:
    """Return ``session`` (as handed out) claimed by ``worker`` with ``token``."""
    claimed = ClaimedSession(
        session.session_identifier, session.instrument, session.dt_range, session.user,
        worker=worker, token=token, expires_at=expires_at, database=location)
    claimed._handed = session._handed
    return claimed


def _claim_skipping_locked(conn: Connection, limit: Optional[int], worker: str,
                           lease: timedelta, seed: str) -> list[ClaimedSession]:
    """Claim in one statement (one round trip) that locks the STARTs it takes, skipping others'.

    SQL takes only sessions whose waiting logs pair by count and instrument;
    their times are judged here (:func:`~nexusLIMS.db.pairing.check`). A
    session claimed that does not pair is given back with the next
    statement (asking for one more in its place), or alone when none is
    needed, and remembered so as not to be claimed again while its logs stay
    as they are. So are sessions taken by a builder whose claim committed
    first: more are asked for, in another round trip.
    """
    backend, clock = conn.backend, conn.backend.ddl.clock
    judged = conn.database.state(_JUDGED, _Judged)
    instruments, from_rows = reading_instruments(conn)
    # Tokens: <seed>-<START id>, unique to this claim.
    claimed: list[ClaimedSession] = []
    give_back: list[str] = []  # the tokens of sessions claimed that do not pair
    while True:
        wanted = _ALL_CHUNK if limit is None else limit - len(claimed)
        statements: list[Statement] = [(sql, ()) for sql in backend.ordered_reads]
        statements += [(queries.end_claims_where(condition), params)
                       for condition, params in backend.in_values("token", give_back)]
        if instruments is None:
            statements.append((queries.INSTRUMENT_ROWS, ()))
        statements.append((
            queries.claim_sessions_statement(wanted, now=clock(), expires=clock("?"),
                                             skip_locked=backend.skip_locked),
            (judged.keys(instruments), worker, seed, lease.total_seconds())))
        results = conn.write_batch(statements, mode="WRITE")
        if instruments is None:
            assert from_rows is not None
            instruments = from_rows(results[-2][0] or [])
        rows = sorted(results[-1][0] or [])
        give_back = []
        now, young = timestamps.utc_now(), mark_after()
        for start_id, identifier, pid, start, user, end_id, end, token, _, expires in rows:
            if token is None:  # another builder's claim committed first
                continue
            session, _ = check(
                identifier, [StoredLog(start_id, identifier, pid, start, _START, _TBB, user)],
                [StoredLog(end_id, identifier, pid, end, _END, _TBB, None)],
                instruments, now, young, handed_session)
            if session is None:
                give_back.append(token)
                judged.add(identifier, start, end, instruments.get(pid))
            else:
                claimed.append(_claimed(session, worker, token,
                                        datetime.fromisoformat(expires), conn.location))
        # Fewer rows than asked for: nothing more is free. Else ask again for the
        # sessions given back or taken by another builder meanwhile.
        if len(rows) < wanted or (limit is not None and len(claimed) >= limit):
            break
    if give_back:  # (the rare path: a session that does not pair, at the very end)
        conn.write_batch([(queries.end_claims_where(condition), params)
                          for condition, params in backend.in_values("token", give_back)],
                         mode="WRITE")
    return claimed


def _claim_in_write_transaction(conn: Connection, limit: Optional[int], worker: str,
                                lease: timedelta, seed: str) -> list[ClaimedSession]:
    """Claim where one writer is let in at a time (SQLite): read, judge and write, in one go.

    Leases are judged by this builder's clock; a claim some builder made more
    than :data:`CLOCK_TOLERANCE` "in the future" is reported: its clock is
    ahead, and builders sharing a database must share a clock.
    """
    claimed: list[ClaimedSession] = []
    conn.begin("WRITE")
    now = timestamps.utc_now()  # once the writers' lock is ours: the lease starts now
    _report_clocks_ahead(conn.fetchall(queries.claims_made_after("?"),
                                       (utc_text(now + CLOCK_TOLERANCE),)), now)
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
            claimed.append(_claimed(candidate, worker, f"{seed}-{len(claimed)}", now + lease,
                                    conn.location))
        if limit is None:
            break
    conn.executemany(queries.UPSERT_CLAIM, [
        (session.session_identifier, worker, session.token, utc_text(now),
         utc_text(now + lease)) for session in claimed])
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


def _report_clocks_ahead(rows: list[tuple[Any, ...]], now: datetime) -> None:
    """Warn of the workers that made claims after ``now`` (``(worker, claimed_at)`` rows)."""
    for worker, claimed_at in rows:
        ahead = datetime.fromisoformat(claimed_at) - now
        logger.warning(
            "Worker %s made a claim at %s, %.0f s after now by this clock: its clock is "
            "ahead, and leases are judged wrong (a session may be built twice); record "
            "builders sharing a SQLite database must share a clock (run them on one host, "
            "or use PostgreSQL, whose clock judges the leases)",
            worker, claimed_at, ahead.total_seconds())


class _Judged:
    """The sessions a builder claimed and found inconsistent, so as not to claim them again.

    Kept per database, keyed by identifier and the START and END times as
    stored (a revision makes a new key) with the instrument's zone at the
    time (a session judged under another zone is judged again); the oldest
    go first beyond :data:`_JUDGED_MAX`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zones: dict[str, tuple[str, str]] = {}  # key: (instrument, its zone)

    def add(self, identifier: str, start: str, end: str,
            instrument: Optional[Instrument]) -> None:
        """Remember a session found inconsistent (unless its instrument is not known yet)."""
        if instrument is None:  # a look-up about to see it, perhaps: judged again
            return
        key = queries.KEY_SEPARATOR.join((identifier, start, end))
        with self._lock:
            self._zones.pop(key, None)
            self._zones[key] = (str(instrument.name), str(instrument.timezone))
            while len(self._zones) > _JUDGED_MAX:
                del self._zones[next(iter(self._zones))]

    def keys(self, instruments: Optional[dict[str, Instrument]]) -> list[str]:
        """Return the keys to leave out (forgetting those whose instrument's zone changed)."""
        with self._lock:
            if self._zones and instruments is not None:
                for key in [key for key, (pid, zone) in self._zones.items()
                            if pid not in instruments or str(instruments[pid].timezone) != zone]:
                    del self._zones[key]
            return list(self._zones)


_JUDGED = "claims: inconsistent sessions judged"


@dataclass(frozen=True)
class Claim:
    """A row of ``session_claims``, as ``nexuslims-db claims`` lists it.

    Its times are judged by the database's clock (a server's; on SQLite this
    machine's), as the claims themselves are.
    """

    session_identifier: str
    worker: str
    claimed_at: datetime
    expires_at: datetime
    #: How far the database's clock was ahead of this machine's when listed.
    clock_offset: timedelta = field(default=timedelta(0), compare=False, repr=False)

    def now(self) -> datetime:
        """Return the present moment by the database's clock (aware, UTC)."""
        return timestamps.utc_now() + self.clock_offset

    def live(self, now: Optional[datetime] = None) -> bool:
        """Whether the lease has not expired."""
        return self.expires_at > (now or self.now())

    def age(self, now: Optional[datetime] = None) -> timedelta:
        """How long ago the session was claimed."""
        return (now or self.now()) - self.claimed_at

    def lease_left(self, now: Optional[datetime] = None) -> timedelta:
        """How long until the lease expires (negative once expired)."""
        return self.expires_at - (now or self.now())


def list_claims(database: Optional[DatabaseRef] = None) -> list[Claim]:
    """Return every claim, live or expired, oldest first (none before schema version 3).

    A claim made more than :data:`CLOCK_TOLERANCE` after now by the
    database's clock is reported with a warning naming its worker: that
    builder's clock is ahead (SQLite; a server writes its claims itself).
    """
    def read() -> Optional[tuple[list[Any], str]]:
        with transaction(database, begin=None) as conn:
            if not has_table(conn, _CLAIMS):
                return None
            rows, ((now_text,),) = conn.read_batch([
                (queries.CLAIMS, ()), (queries.clock_reading(conn.backend.ddl.clock()), ())])
            return rows, now_text

    found = retrying(read)
    if found is None:
        return []
    rows, now_text = found
    now = datetime.fromisoformat(now_text)
    offset = now - timestamps.utc_now()
    claims = [Claim(identifier, worker, datetime.fromisoformat(claimed),
                    datetime.fromisoformat(expires), offset)
              for identifier, worker, claimed, expires in rows]
    ahead: dict[str, str] = {}
    for claim in claims:
        if claim.claimed_at > now + CLOCK_TOLERANCE:
            ahead[claim.worker] = max(ahead.get(claim.worker, ""), claim.claimed_at.isoformat())
    _report_clocks_ahead(sorted(ahead.items()), now)
    return claims


def release_claim(session_identifier: str, database: Optional[DatabaseRef] = None) -> bool:
    """End the claim on a session by hand (its builder can no longer record an outcome).

    Returns False when no claim holds the session.
    """
    def release() -> int:
        with transaction(database, begin=None) as conn:  # one statement
            _require_claims(conn)
            return int(conn.execute(queries.END_CLAIMS, (session_identifier,)).rowcount)

    # Made again only if it never reached the server: a DELETE by identifier made
    # again after its answer was lost could end a claim made since by a builder.
    released = retrying(release, resend=False)
    if released:
        logger.info("Released the claim on session %s", session_identifier)
    return bool(released)
