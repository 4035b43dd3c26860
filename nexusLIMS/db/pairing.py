"""Pairing TO_BE_BUILT START and END logs into sessions, in one pass.

The logs are read with one query, grouped by session identifier in one pass
and checked group by group, so the cost is linear in the number of logs.
A group is a *session* when it holds exactly one START and one END on the
same known instrument, with readable timestamps and the END not earlier than
the START; any other group is reported as a :class:`SessionProblem`.

The common case, where every group is a session, takes a faster path first:
SQLite joins each START to its END through the partial index
``session_log_to_be_built_idx``, so Python sees one row per session. At the
first sign of a problem (or without that index) the logs are read and
grouped as above, which finds every problem exactly.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Literal, Optional

from nexusLIMS.db.connection import PathLike, connect
from nexusLIMS.db.enums import EventType, ProblemKind, RecordStatus
from nexusLIMS.db.session import Session, session_span
from nexusLIMS.db.session_log import SessionLog
from nexusLIMS.db.timestamps import parse_timestamp
from nexusLIMS.instruments import Instrument, read_instruments

__all__ = ["OnError", "SessionProblem", "find_session_problems", "get_sessions_to_build"]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip", "mark"]
_ON_ERROR = ("raise", "skip", "mark")

# (id_session_log, session_identifier, instrument, timestamp, event_type, user)
_Row = tuple[int, str, str, str, str, Optional[str]]
_QUERY = (
    "SELECT id_session_log, session_identifier, instrument, timestamp, event_type, user "
    "FROM session_log WHERE record_status = ? AND event_type IN (?, ?)"
)
_QUERY_ARGS = (RecordStatus.TO_BE_BUILT.value, EventType.START.value, EventType.END.value)
_START = EventType.START.value
_ZERO = timedelta(0)

# The fast path: each TO_BE_BUILT START with the END(s) of its identifier on
# its instrument, one row per pair (a START without one gives a NULL END), in
# identifier order so that a repeated identifier is in adjacent rows. Served
# by the partial covering index of schema.sql, whose order is that order; the
# status is a literal so that SQLite can use that index.
_PAIR_INDEX = "session_log_to_be_built_idx"
_TBB = f"'{RecordStatus.TO_BE_BUILT.value}'"
_PAIRS = (
    "SELECT s.id_session_log, s.session_identifier, s.instrument, s.timestamp, s.user, "
    "e.timestamp "
    "FROM session_log AS s LEFT JOIN session_log AS e "
    f"ON e.record_status = {_TBB} AND e.event_type = '{EventType.END.value}' "
    "AND e.session_identifier = s.session_identifier AND e.instrument = s.instrument "
    f"WHERE s.record_status = {_TBB} AND s.event_type = '{_START}' "
    "ORDER BY s.session_identifier"
)
_COUNT_ENDS = (
    f"SELECT count(*) FROM session_log "
    f"WHERE record_status = {_TBB} AND event_type = '{EventType.END.value}'"
)


@dataclass(frozen=True)
class SessionProblem:
    """Why the TO_BE_BUILT logs of one session cannot be built into a record.

    Attributes
    ----------
    session_identifier
        The session's identifier.
    kind
        What is wrong.
    detail
        A human-readable explanation naming the logs involved.
    log_ids
        The ``id_session_log`` of every TO_BE_BUILT START and END log of the
        session (the rows ``on_error="mark"`` sets to ERROR).
    """

    session_identifier: str
    kind: ProblemKind
    detail: str
    log_ids: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.session_identifier}: {self.kind.value}: {self.detail}"


def _as_log(row: _Row) -> SessionLog:
    _, identifier, instrument, timestamp, event_type, user = row
    return SessionLog(identifier, instrument, timestamp, event_type, user, RecordStatus.TO_BE_BUILT)


def _group(rows: list[_Row]) -> dict[str, tuple[list[_Row], list[_Row]]]:
    """Group rows by identifier into (STARTs, ENDs), groups in order of first id."""
    rows.sort()
    groups: dict[str, tuple[list[_Row], list[_Row]]] = {}
    for row in rows:
        group = groups.get(row[1])
        if group is None:
            group = groups[row[1]] = ([], [])
        group[0 if row[4] == _START else 1].append(row)
    return groups


def _parse_or_none(text: str) -> Optional[datetime]:
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


def _parse(row: _Row, problems: list[tuple[ProblemKind, str]]) -> Optional[datetime]:
    value = _parse_or_none(row[3])
    if value is None:
        problems.append(
            (ProblemKind.BAD_TIMESTAMP, f"log {row[0]} has timestamp {row[3]!r}, not ISO 8601")
        )
    return value


def _check(
    identifier: str,
    starts: list[_Row],
    ends: list[_Row],
    instruments: dict[str, Instrument],
) -> tuple[Optional[Session], list[tuple[ProblemKind, str]]]:
    """Return the session of one group, or None and everything wrong with it."""
    problems: list[tuple[ProblemKind, str]] = []
    if starts and len(ends) != 1:
        problems.append((
            ProblemKind.END_COUNT,
            f"There was not exactly one 'END' log for this 'START' log; "
            f"len(matching_end_logs) was {len(ends)}; "
            f"start log was {_as_log(starts[0])}; "
            f"matching_end_logs was {[_as_log(row) for row in ends]}",
        ))
    if len(starts) > 1:
        problems.append((
            ProblemKind.MULTIPLE_STARTS,
            f"session {identifier!r} has {len(starts)} 'START' logs "
            f"(ids {', '.join(str(row[0]) for row in starts)}); expected one",
        ))
    if not starts:
        problems.append((
            ProblemKind.END_WITHOUT_START,
            f"session {identifier!r} has {len(ends)} 'END' log(s) "
            f"(ids {', '.join(str(row[0]) for row in ends)}) but no 'START' log",
        ))
    for pid in dict.fromkeys(row[2] for row in starts + ends):
        if pid not in instruments:
            problems.append((
                ProblemKind.UNKNOWN_INSTRUMENT,
                f"session {identifier!r} is on instrument {pid!r}, "
                f"which is not in the instruments table",
            ))
    if problems:
        return None, problems

    start, end = starts[0], ends[0]
    instrument = instruments[start[2]]
    if end[2] != start[2]:
        problems.append((
            ProblemKind.INSTRUMENT_MISMATCH,
            f"session {identifier!r} starts on {start[2]!r} but ends on {end[2]!r}",
        ))
    dt_from, dt_to = _parse(start, problems), _parse(end, problems)
    if dt_from is None or dt_to is None or problems:
        return None, problems
    if _ends_before_start(dt_from, dt_to, instrument):
        problems.append((
            ProblemKind.END_BEFORE_START,
            f"session {identifier!r} ends ({end[3]}) before it starts ({start[3]})",
        ))
        return None, problems
    return Session(identifier, instrument, (dt_from, dt_to), start[5]), problems


def _ends_before_start(dt_from: datetime, dt_to: datetime, instrument: Instrument) -> bool:
    span = session_span(dt_from, dt_to, instrument)
    return span is not None and span < _ZERO


def _clean_sessions(
    conn: sqlite3.Connection, instruments: dict[str, Instrument]
) -> Optional[list[Session]]:
    """Return the sessions if no TO_BE_BUILT log has a problem, else None.

    One row per START and its END, no per-log Python objects: the common
    case. None (for :func:`_pair` to find the problems) as soon as anything
    is off. Needs the partial index, without which the join is quadratic.
    """
    has_index = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_PAIR_INDEX,)
    ).fetchone()
    if has_index is None:
        return None
    rows: list[tuple[int, str, str, str, Optional[str], Optional[str]]]
    rows = conn.execute(_PAIRS).fetchall()
    # With no NULL END and no identifier in two rows, each row is a START and
    # its only END on the same instrument; with as many ENDs as rows, no END
    # is left over (none without START, none on another instrument).
    if conn.execute(_COUNT_ENDS).fetchone()[0] != len(rows):
        return None
    sessions: list[tuple[int, Session]] = []  # with the id of the START log
    fromisoformat = datetime.fromisoformat
    previous = None
    for start_id, identifier, pid, start, user, end in rows:
        instrument = instruments.get(pid)
        if instrument is None or end is None or identifier == previous:
            return None
        previous = identifier
        try:
            dt_from, dt_to = fromisoformat(start), fromisoformat(end)
        except (TypeError, ValueError):
            parsed_from, parsed_to = _parse_or_none(start), _parse_or_none(end)
            if parsed_from is None or parsed_to is None:
                return None
            dt_from, dt_to = parsed_from, parsed_to
        # Compared inline in the usual case (both naive or both aware): this
        # loop is the hot path. Mixed ones go through session_span's rule.
        if (dt_from.tzinfo is None) is (dt_to.tzinfo is None):
            if dt_to < dt_from:
                return None
        elif _ends_before_start(dt_from, dt_to, instrument):
            return None
        sessions.append((start_id, Session(identifier, instrument, (dt_from, dt_to), user)))
    sessions.sort(key=itemgetter(0))
    return [session for _, session in sessions]


def _pair(conn: sqlite3.Connection) -> tuple[list[Session], list[SessionProblem]]:
    instruments = read_instruments(conn)
    clean = _clean_sessions(conn, instruments)
    if clean is not None:
        return clean, []
    rows: list[_Row] = conn.execute(_QUERY, _QUERY_ARGS).fetchall()
    sessions: list[tuple[int, Session]] = []  # with the id of the START log
    problems: list[SessionProblem] = []
    for identifier, (starts, ends) in _group(rows).items():
        session, found = _check(identifier, starts, ends, instruments)
        if session is not None:
            sessions.append((starts[0][0], session))
        else:
            ids = tuple(sorted(row[0] for row in starts + ends))
            problems.extend(SessionProblem(identifier, kind, detail, ids) for kind, detail in found)
    # Groups come in order of their first log, which may be the END: order
    # the sessions by their START, as 1.4 does (and the docstring promises).
    sessions.sort(key=lambda pair: pair[0])
    return [session for _, session in sessions], problems


def find_session_problems(*, path: Optional[PathLike] = None) -> list[SessionProblem]:
    """Return every problem of the TO_BE_BUILT START and END logs, raising none.

    Returns
    -------
    list of SessionProblem
        In order of the sessions' first log id; a session may have several.
        Empty when every TO_BE_BUILT log belongs to a buildable session.
    """
    with connect(path) as conn:
        return _pair(conn)[1]


def get_sessions_to_build(
    *, on_error: OnError = "raise", path: Optional[PathLike] = None
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
        :func:`find_session_problems`): ``"raise"`` a ``ValueError`` for the
        first one (as NexusLIMS 1.4 does); ``"skip"`` them with one warning
        per session, naming all its problems; or ``"mark"``: skip them and
        set their TO_BE_BUILT START and END logs to ERROR, in the same
        transaction as the read.

    Returns
    -------
    list of Session
        In order of their START logs' ids; empty when there is nothing to do.

    Raises
    ------
    ValueError
        With ``on_error="raise"``, for an inconsistent session; for a START
        without exactly one END the message begins ``There was not exactly
        one 'END' log for this 'START' log;``.
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(_ON_ERROR)}, not {on_error!r}")
    with connect(path, begin="IMMEDIATE" if on_error == "mark" else "DEFERRED") as conn:
        sessions, problems = _pair(conn)
        if problems and on_error == "raise":
            # 1.4 raises only for a START without exactly one END: prefer that.
            first = next((p for p in problems if p.kind is ProblemKind.END_COUNT), problems[0])
            raise ValueError(first.detail)
        if problems and on_error == "mark":
            ids = sorted({log_id for problem in problems for log_id in problem.log_ids})
            conn.executemany(
                "UPDATE session_log SET record_status = ? WHERE id_session_log = ?",
                [(RecordStatus.ERROR.value, log_id) for log_id in ids],
            )
    by_session: dict[str, list[str]] = {}
    for problem in problems:
        by_session.setdefault(problem.session_identifier, []).append(
            f"{problem.kind.value}: {problem.detail}"
        )
    for identifier, found in by_session.items():
        logger.warning("Skipping session %r: %s", identifier, "; ".join(found))
    logger.info("Found %d new sessions to build", len(sessions))
    return sessions
