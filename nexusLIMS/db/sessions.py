"""Sessions to build: pairing every waiting log, and what to do with inconsistent sessions.

:func:`get_sessions_to_build` pairs each TO_BE_BUILT START with the END of
its identifier through the partial index ``session_log_to_be_built_idx``
where the backend's planner does that best (else one scan of the waiting
logs), so the cost is the cost of reading those rows; the pairing itself is
:mod:`nexusLIMS.db.pairing`'s. Its ``on_error`` policies, the diagnosis
behind ``nexuslims-db check`` and the repair of duplicate ENDs are here.
This module also offers the :class:`~nexusLIMS.db.session.Session` model
under its NexusLIMS 1.4 name.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Optional

from nexusLIMS.db import queries
from nexusLIMS.db.config import DatabaseRef, mark_after
from nexusLIMS.db.connection import Connection, retrying
from nexusLIMS.db.enums import WAITING_STATUSES, ProblemKind, RecordStatus
from nexusLIMS.db.instruments import Instrument, reading_instruments
from nexusLIMS.db.logs import logs_of, set_status, settle_outcomes
from nexusLIMS.db.pairing import Pairing, SessionProblem
from nexusLIMS.db.schema import (
    PAIRING_INDEX,
    SESSION_CLAIMS,
    SESSION_LOG,
    SESSION_REVISIONS,
    has_index,
    has_table,
    transaction,
)
from nexusLIMS.db.session import Session, handed_session, set_session_status
from nexusLIMS.db.tables import StoredLog
from nexusLIMS.db.timestamps import utc_now

__all__ = [
    "OnError",
    "Session",
    "SessionProblem",
    "find_session_problems",
    "get_sessions_to_build",
    "late_revisions",
    "live_claims",
    "pair_sessions",
    "repair_duplicate_ends",
    "set_session_status",
]

# The name NexusLIMS 1.4 logged these messages under.
logger = logging.getLogger("nexusLIMS.db.session_handler")

OnError = Literal["raise", "strict", "skip", "mark"]
_ON_ERROR = ("raise", "strict", "skip", "mark")
# Each database's note that its missing pairing index was pointed out once.
_SUGGESTED = "pairing index suggested"


class _Suggested:
    done = False


@contextmanager
def _collection_paused() -> Iterator[None]:
    """Pause Python's automatic garbage collection while many objects are made.

    Every 700 new objects the collector scans the young ones; pairing makes
    tens of thousands (sessions, their rows), none of them garbage, so those
    scans cost a third of the run and free nothing. They resume after, with
    what was made handed to the oldest generation unscanned (a freeze and an
    unfreeze, when nothing else is frozen): the first young scan would
    otherwise look at every session once more, for nothing.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def pair_sessions(
    conn: Connection, instruments: Optional[Mapping[str, Instrument]] = None
) -> tuple[list[Session], list[SessionProblem]]:
    """Pair the TO_BE_BUILT logs of the open database: its sessions, and its problems."""
    sessions, problems, _ = _pair(conn, instruments)
    return sessions, problems


Reads = Sequence[tuple[str, tuple[Any, ...]]]


def _pair(
    conn: Connection, instruments: Optional[Mapping[str, Instrument]], also: Reads = ()
) -> tuple[list[Session], list[SessionProblem], list[list[tuple[Any, ...]]]]:
    """Pair the waiting logs, reading in one round trip (more only for problem sessions).

    The reads: the instruments (unless given, or unchanged since last read),
    the pairs or the waiting logs, and the queries ``also`` (whose rows are
    returned).
    """
    with _collection_paused():
        known, from_rows = (dict(instruments), None) if instruments is not None \
            else reading_instruments(conn)
        backend = conn.backend
        indexed = backend.pairs_through_index \
            and has_index(conn, SESSION_LOG.name, PAIRING_INDEX.name)
        reads: list[tuple[str, tuple[Any, ...]]] = [] if known is not None \
            else [(queries.INSTRUMENT_ROWS, ())]
        reads += [(queries.TO_BE_BUILT_PAIRS, ()), (queries.COUNT_TO_BE_BUILT_ENDS, ())] \
            if indexed else [(queries.WAITING_STARTS_TO_PAIR, ()), (queries.WAITING_ENDS, ())]
        results = conn.read_batch([*reads, *also])
        if known is None:
            assert from_rows is not None
            known = from_rows(results.pop(0))
        pairing = Pairing(known, utc_now(), mark_after(), handed_session)
        if indexed:
            accounted = pairing.take_index_rows(results.pop(0))
            if results.pop(0)[0][0] != accounted:
                pairing.take_lone_ends(conn.fetchall(queries.LONE_ENDS))
        else:
            _suggest_the_index(conn)
            pairing.take_scan(results.pop(0), results.pop(0))
        problems = pairing.diagnose(logs_of(conn, list(pairing.suspects))) \
            if pairing.suspects else []
        return pairing.result(), problems, results


def _suggest_the_index(conn: Connection) -> None:
    """Say once per database that migrating would make pairing faster, where it would."""
    suggested = conn.database.state(_SUGGESTED, _Suggested)
    if conn.backend.pairs_through_index and not suggested.done:
        suggested.done = True
        logger.info("%s has no index for pairing sessions (a NexusLIMS 1.4 database?); "
                    "'nexuslims-db migrate' would make get_sessions_to_build faster",
                    conn.location)


def live_claims(conn: Connection) -> set[str]:
    """Return the identifiers of the sessions a live claim holds (none before schema 3)."""
    if not has_table(conn, SESSION_CLAIMS.name):
        return set()
    return {identifier for (identifier,) in conn.fetchall(
        queries.live_claims(conn.backend.ddl.clock()))}


def late_revisions(conn: Connection) -> list[SessionProblem]:
    """Revisions a record does not cover yet (schema version 4+), oldest first.

    A revision that arrived after the session's record was built (the log
    kept its time) is a late revision; one applied while the record was
    being built (the outcome was refused) leaves the session to be built
    again, and is named until an outcome is recorded for the new times.
    """
    if not has_table(conn, SESSION_REVISIONS.name):
        return []
    problems = []
    for identifier, event, stored, revised, user, log_id, status, now, now_user in \
            conn.fetchall(queries.LATE_REVISIONS):
        change = (f"its {event} was revised from {stored} to {revised}" if stored != revised
                  else f"the user of its {event} was revised to {user!r}")
        if status in WAITING_STATUSES:
            problems.append(SessionProblem(
                identifier, ProblemKind.REVISED_DURING_BUILD,
                f"{change} while (or after) a record was built for {stored}; no outcome was "
                f"recorded for the new times yet: it waits to be built again "
                f"(status {status})", (log_id,), markable=False))
        elif (now, now_user or "") != (revised, user or ""):  # applied in place: settled
            problems.append(SessionProblem(
                identifier, ProblemKind.LATE_REVISION,
                f"{change} after its record was built (status {status}); an admin may set it "
                f"to TO_BE_BUILT to build it again", (log_id,), markable=False))
    return problems


def find_session_problems(*, database: Optional[DatabaseRef] = None) -> list[SessionProblem]:
    """Return every problem of the TO_BE_BUILT START and END logs, raising none.

    Also lists revisions of START or END times that arrived after a
    session's record was built.

    Returns
    -------
    list of SessionProblem
        In order of the sessions' first log id; a session may have several.
        Empty when every TO_BE_BUILT log belongs to a buildable session.
    """
    def read() -> list[SessionProblem]:
        with transaction(database) as conn:
            return pair_sessions(conn)[1] + late_revisions(conn)

    return retrying(read)


def get_sessions_to_build(
    *,
    on_error: OnError = "raise",
    database: Optional[DatabaseRef] = None,
    instruments: Optional[Mapping[str, Instrument]] = None,
    exclude_claimed: bool = False,
) -> list[Session]:
    """Get the sessions that need their record built.

    Pairs the START and END logs whose status is TO_BE_BUILT by session
    identifier, each session with its instrument, its start and end as
    ``datetime`` (UTC offset kept when the timestamp has one) and the user of
    its START log.

    Parameters
    ----------
    on_error
        What to do with inconsistent sessions (see
        :func:`find_session_problems`):

        ``"raise"`` (the default, as NexusLIMS 1.4)
            raise ``ValueError`` for a START without exactly one END; skip
            any other inconsistent session with one warning naming it.
        ``"strict"``
            raise ``ValueError`` for any inconsistent session.
        ``"skip"``
            skip them, with one warning per session naming its problems.
        ``"mark"``
            skip them and set their TO_BE_BUILT START and END logs to ERROR,
            in the same transaction as the read; a session a writer may still
            complete (see :class:`SessionProblem`) is skipped, not marked.

    database
        The database; by default from ``nexusLIMS_db_path``.
    instruments
        Look the sessions' instruments up here instead of in the
        ``instruments`` table.
    exclude_claimed
        Leave out the sessions a record builder has claimed (see
        :mod:`nexusLIMS.db.claims`) and whose claim has not expired.

    Returns
    -------
    list of Session
        In order of their START logs' ids; empty when there is nothing to do.

    Raises
    ------
    ValueError
        For a START without exactly one END (except with ``"skip"`` or
        ``"mark"``), the message beginning ``There was not exactly one 'END'
        log for this 'START' log;``; with ``"strict"``, for any problem.
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(_ON_ERROR)}, not {on_error!r}")
    # One round trip to a server: a snapshot's reads in one pipeline (a mark writes more).
    sessions, problems, marked = retrying(lambda: _sessions_to_build(
        on_error, database, instruments, exclude_claimed))
    by_session: dict[str, list[str]] = {}
    for problem in problems:
        by_session.setdefault(problem.session_identifier, []).append(
            f"{problem.kind.value}: {problem.detail}")
    for identifier, reasons in by_session.items():
        action = "Marked ERROR and skipped" if identifier in marked else "Skipping"
        logger.warning("%s session %r: %s", action, identifier, "; ".join(reasons))
    # A builder polls: a poll that found nothing is not news.
    logger.log(logging.INFO if sessions else logging.DEBUG, "Found %i new sessions to build",
               len(sessions))
    return sessions


def _sessions_to_build(
    on_error: OnError, database: Optional[DatabaseRef],
    instruments: Optional[Mapping[str, Instrument]], exclude_claimed: bool,
) -> tuple[list[Session], list[SessionProblem], set[str]]:
    """Read (and with ``mark``, mark) as :func:`get_sessions_to_build` does, in one transaction.

    Returns the sessions, the problems and the sessions marked ERROR.
    """
    with transaction(database, begin="IMMEDIATE" if on_error == "mark" else None) as conn:
        claims = exclude_claimed and has_table(conn, SESSION_CLAIMS.name)
        sessions, problems, extra = _pair(  # live by the database's clock (a server's)
            conn, instruments, [(queries.live_claims(conn.backend.ddl.clock()), ())]
            if claims else [])
        if claims:
            claimed = {identifier for (identifier,) in extra[0]}
            sessions = [s for s in sessions if s.session_identifier not in claimed]
        if problems and on_error in ("raise", "strict"):
            # 1.4 raises for a START without exactly one END: that first.
            first = next((p for p in problems if p.kind is ProblemKind.END_COUNT), None)
            if first is None and on_error == "strict":
                first = problems[0]
            if first is not None:
                raise ValueError(first.detail)
        marked: set[str] = set()
        if problems and on_error == "mark":  # (again, in a retry: the same rows, ERROR again)
            marked = {p.session_identifier for p in problems if p.markable}
            set_status(conn, RecordStatus.ERROR, ids=[
                log_id for p in problems if p.session_identifier in marked for log_id in p.log_ids])
            settle_outcomes(conn, marked)
    return sessions, problems, marked


def repair_duplicate_ends(
    *, dry_run: bool = False, database: Optional[DatabaseRef] = None
) -> list[tuple[str, int, tuple[int, ...]]]:
    """Keep the newest of several TO_BE_BUILT ENDs of a session; mark the others ERROR.

    Databases written before revisions were applied in place can hold two
    ENDs for one START (a revised usage event written again). The END
    written last (the highest id) is the revision, so it is kept.

    Parameters
    ----------
    dry_run
        Only report what would be done.
    database
        The database; by default from ``nexusLIMS_db_path``.

    Returns
    -------
    list of tuple
        ``(session_identifier, kept END id, superseded END ids)`` per session.
    """
    with transaction(database, begin="IMMEDIATE") as conn:
        rows = [StoredLog(*row) for row in conn.fetchall(queries.DUPLICATE_ENDS)]
        repairs: dict[str, list[int]] = {}
        for row in rows:
            repairs.setdefault(row.session_identifier, []).append(row.id_session_log)
        plan = [(identifier, ids[-1], tuple(ids[:-1])) for identifier, ids in repairs.items()]
        if not dry_run:
            set_status(conn, RecordStatus.ERROR, ids=[i for _, _, old in plan for i in old])
    for identifier, kept, superseded in plan:
        logger.info("%s session %s: kept END %d, %s superseded END(s) %s",
                    "Would repair" if dry_run else "Repaired", identifier, kept,
                    "would mark" if dry_run else "marked ERROR",
                    ", ".join(map(str, superseded)))
    return plan

