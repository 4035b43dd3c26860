"""Pairing START and END logs into sessions: a pure engine, fed rows, doing no I/O.

The one definition of a valid pair is :func:`pair_problems`: a START and an
END on the same instrument, both ISO 8601 times that can be compared, the
END not before the START (naive times are local to the instrument). Every
caller uses it: pairing all waiting logs (:class:`Pairing`), diagnosing a
session log by log (:func:`check`), claiming sessions, and the Session
Logger's END (:func:`~nexusLIMS.db.logs.log_end`).

:class:`Pairing` takes the rows the queries of
:mod:`nexusLIMS.db.sessions` read and makes the sessions with a factory it is
given (the :class:`~nexusLIMS.db.session.Session` class), so that the engine
knows nothing of databases. Sessions whose rows do not pair cleanly become
*suspects*; their logs are looked at one by one (:meth:`Pairing.diagnose`),
so a few problems never slow the rest down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar

from nexusLIMS.db.enums import EventType, ProblemKind, RecordStatus
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.tables import StoredLog, describe_log
from nexusLIMS.db.timestamps import age, parse_timestamp, span

__all__ = ["Pairing", "SessionProblem", "check", "pair_problems", "waiting_logs"]

S = TypeVar("S")
#: Makes a session: ``make(identifier, instrument, (start, end), user, (start text,
#: end text))``, the texts as stored.
SessionFactory = Callable[
    [str, Instrument, "tuple[datetime, datetime]", Optional[str], "tuple[str, str]"], S]
#: ``(start id, identifier, instrument PID, start text, user, end text)``.
PairRow = tuple[int, str, str, str, Optional[str], str]

_START, _END = EventType.START.value, EventType.END.value
_TBB = RecordStatus.TO_BE_BUILT.value
_ZERO = timedelta(0)
#: What 1.4's error for several ENDs gains: the command that fixes such a session.
REPAIR_HINT = ("; if the later END revises the earlier one, 'nexuslims-db repair' keeps "
               "the newest END")


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
    markable
        False while a writer may still complete the session (a START still
        waiting for its END, or an END for its START, younger than
        ``nexusLIMS_db_mark_after``): ``mark`` skips it without marking.
    """

    session_identifier: str
    kind: ProblemKind
    detail: str
    log_ids: tuple[int, ...]
    markable: bool = True

    def __str__(self) -> str:
        return f"{self.session_identifier}: {self.kind.value}: {self.detail}"


def pair_problems(
    identifier: str, start: StoredLog, end: StoredLog, instrument: Optional[Instrument]
) -> tuple[Optional[tuple[datetime, datetime]], list[tuple[ProblemKind, str]]]:
    """Return the times of a valid pair of ``start`` and ``end``, or what makes it invalid.

    ``instrument`` is the START's (None: not in the ``instruments`` table).

    Returns
    -------
    tuple
        ``((start, end), [])`` for a valid pair, else ``(None, problems)``
        with each problem's kind and a message naming the session.
    """
    if instrument is None:
        return None, [(ProblemKind.UNKNOWN_INSTRUMENT,
                       f"session {identifier!r} is on instrument {start.instrument!r}, "
                       f"which is not in the instruments table")]
    found: list[tuple[ProblemKind, str]] = []
    if end.instrument != start.instrument:
        found.append((ProblemKind.INSTRUMENT_MISMATCH,
                      f"session {identifier!r} starts on {start.instrument!r} "
                      f"but ends on {end.instrument!r}"))
    times = []
    for log in (start, end):
        try:
            times.append(parse_timestamp(log.timestamp))
        except ValueError:
            found.append((ProblemKind.BAD_TIMESTAMP,
                          f"session {identifier!r}: log {log.id_session_log} has timestamp "
                          f"{log.timestamp!r}, not ISO 8601"))
    if found:
        return None, found
    try:
        length = span(times[0], times[1], instrument.timezone)
    except OverflowError:
        return None, [(ProblemKind.BAD_TIMESTAMP,
                       f"session {identifier!r} has times that cannot be placed in its "
                       f"instrument's zone ({start.timestamp}, {end.timestamp})")]
    if length is None:
        return None, [(ProblemKind.BAD_TIMESTAMP,
                       f"session {identifier!r} mixes times with and without a UTC offset "
                       f"({start.timestamp}, {end.timestamp}) on an instrument without a "
                       f"time zone")]
    if length < _ZERO:
        return None, [(ProblemKind.END_BEFORE_START,
                       f"session {identifier!r} ends ({end.timestamp}) before it starts "
                       f"({start.timestamp})")]
    return (times[0], times[1]), []


def check(
    identifier: str,
    starts: list[StoredLog],
    ends: list[StoredLog],
    instruments: dict[str, Instrument],
    now: datetime,
    mark_after: timedelta,
    make: SessionFactory[S],
) -> tuple[Optional[S], list[SessionProblem]]:
    """Return the session of one identifier's TO_BE_BUILT logs, or everything wrong with it.

    ``starts`` and ``ends`` are in id order; ``now`` is aware; a lone log
    younger than ``mark_after`` may still be completed by its writer.
    """
    found: list[tuple[ProblemKind, str, bool]] = []
    ids = tuple(sorted(log.id_session_log for log in starts + ends))
    # A writer may still be completing a session: its START waits for the END
    # (or an END for its START). Until it is old, it is not marked.
    lone = starts if not ends else ends if not starts else []
    how_old = None
    if len(lone) == 1:
        instrument = instruments.get(lone[0].instrument)
        how_old = age(lone[0].timestamp, instrument.timezone if instrument else None, now)
    completable = how_old is not None and how_old < mark_after
    if starts and len(ends) != 1:
        found.append((
            ProblemKind.END_COUNT,
            f"There was not exactly one 'END' log for this 'START' log; "
            f"len(matching_end_logs) was {len(ends)}; "
            f"start log was {describe_log(starts[0])}; "
            f"matching_end_logs was [{', '.join(describe_log(row) for row in ends)}]"
            + (REPAIR_HINT if len(ends) > 1 else ""),
            not (completable and not ends),
        ))
    if len(starts) > 1:
        found.append((
            ProblemKind.MULTIPLE_STARTS,
            f"session {identifier!r} has {len(starts)} 'START' logs "
            f"(ids {', '.join(str(row.id_session_log) for row in starts)}); expected one",
            True,
        ))
    if not starts:
        found.append((
            ProblemKind.END_WITHOUT_START,
            f"session {identifier!r} has {len(ends)} 'END' log(s) "
            f"(ids {', '.join(str(row.id_session_log) for row in ends)}) but no 'START' log",
            not completable,
        ))
    for pid in dict.fromkeys(log.instrument for log in starts + ends):
        if pid not in instruments:
            found.append((
                ProblemKind.UNKNOWN_INSTRUMENT,
                f"session {identifier!r} is on instrument {pid!r}, "
                f"which is not in the instruments table",
                True,
            ))
    if not found:
        start, end = starts[0], ends[0]
        instrument = instruments[start.instrument]
        times, problems = pair_problems(identifier, start, end, instrument)
        if times is not None:
            return make(identifier, instrument, times, start.user,
                        (start.timestamp, end.timestamp)), []
        found.extend((kind, detail, True) for kind, detail in problems)
    return None, [SessionProblem(identifier, kind, detail, ids, markable)
                  for kind, detail, markable in found]


def waiting_logs(
    identifiers: Iterable[str], logs: Iterable[StoredLog]
) -> dict[str, tuple[list[StoredLog], list[StoredLog]]]:
    """Return the TO_BE_BUILT STARTs and ENDs among ``logs`` of each of ``identifiers``, by id."""
    groups: dict[str, tuple[list[StoredLog], list[StoredLog]]] = {
        identifier: ([], []) for identifier in identifiers}
    for log in logs:
        group = groups.get(log.session_identifier)
        if group is not None and log.record_status == _TBB and log.event_type in (_START, _END):
            group[log.event_type == _END].append(log)
    for starts, ends in groups.values():
        starts.sort()
        ends.sort()
    return groups


class Pairing(Generic[S]):
    """One pass of pairing: the sessions of the rows it is fed, and the suspects.

    Feed it the rows of the pairing index (:meth:`take_index_rows`, then
    :meth:`take_lone_ends` if the ENDs do not add up) or the waiting STARTs
    and ENDs (:meth:`take_scan`); then give :meth:`diagnose` the logs of the
    :attr:`suspects`, and take the sessions from :meth:`result`.
    """

    def __init__(self, instruments: dict[str, Instrument], now: datetime, mark_after: timedelta,
                 make: SessionFactory[S]) -> None:
        self.instruments = instruments
        self.now = now
        self.mark_after = mark_after
        self.make = make
        self.sessions: list[tuple[int, S]] = []  # with the id of the START log
        self.suspects: dict[str, None] = {}  # identifiers to look at log by log
        self.recheck: set[str] = set()  # suspects that may have been paired already

    def pair(self, start_id: int, identifier: str, pid: str, start: str,
             user: Optional[str], end: str) -> None:
        """Make the session of a START and its only END, or suspect it."""
        instrument = self.instruments.get(pid)
        times, _ = pair_problems(
            identifier, StoredLog(start_id, identifier, pid, start, _START, _TBB, user),
            StoredLog(0, identifier, pid, end, _END, _TBB, None), instrument)
        # Years 1 and 9999 may not be placeable in UTC: looked at closely.
        if times is None or instrument is None or not all(1 < t.year < 9999 for t in times):
            self.suspects[identifier] = None
            return
        self.sessions.append((start_id, self.make(identifier, instrument, times, user,
                                                  (start, end))))

    def pair_all(self, pairs: Iterable[PairRow]) -> None:
        """Make the sessions of many ``(start id, identifier, pid, start, user, end)``.

        The usual pair (two ISO texts of the same kind, a known instrument, in
        order) is accepted inline, the hot path, where a call per pair would
        cost a fifth of the run; :meth:`pair` (the full definition) judges
        anything else.
        """
        get_instrument = self.instruments.get
        fromisoformat = datetime.fromisoformat
        append = self.sessions.append
        make = self.make
        for pair in pairs:
            start_id, identifier, pid, start, user, end = pair
            instrument = get_instrument(pid)
            try:
                dt_from, dt_to = fromisoformat(start), fromisoformat(end)
            except (TypeError, ValueError):
                self.pair(*pair)
                continue
            if (instrument is not None and 1 < dt_from.year < 9999 and 1 < dt_to.year < 9999
                    and (dt_from.tzinfo is None) is (dt_to.tzinfo is None) and dt_to >= dt_from):
                append((start_id, make(identifier, instrument, (dt_from, dt_to), user,
                                       (start, end))))
            else:
                self.pair(*pair)

    def take_index_rows(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """Pair the rows of the pairing index: one per START and its END (NULL: none).

        Rows come in identifier order. Returns how many ENDs the rows account
        for: when it is the count of waiting ENDs, no END lacks a START.
        """
        suspects = self.suspects
        previous: Optional[str] = None
        pairs: list[Any] = []
        unpaired = 0  # first rows with an END, taken back: their identifier repeats
        for row in rows:
            identifier = row[1]
            if identifier == previous:  # several ENDs, or several STARTs
                suspects[identifier] = None
                if pairs and pairs[-1][1] == identifier:
                    pairs.pop()
                    unpaired += 1
            elif row[5] is None:
                suspects[identifier] = None
            else:
                pairs.append(row)
            previous = identifier
        self.pair_all(pairs)
        # Each identifier whose first row has an END accounts for at least one
        # END of its own.
        return len(pairs) + unpaired

    def take_lone_ends(self, rows: Iterable[tuple[str, Any]]) -> None:
        """Suspect the sessions of ENDs without a START: ``(identifier, has a START elsewhere)``."""
        for identifier, has_start in rows:
            self.suspects[identifier] = None
            if has_start:  # its START may have paired with another END
                self.recheck.add(identifier)

    def take_scan(self, starts: list[tuple[Any, ...]], ends: list[tuple[Any, ...]]) -> None:
        """Pair the waiting STARTs with the waiting ENDs, both read in any order.

        ``starts`` are ``(id, identifier, pid, timestamp, user)``; ``ends``
        ``(identifier, pid, timestamp)``. Each identifier's END is filed, then
        each START takes its END away, so that a second START (or a START
        without an END) finds none, and an END left over has no START. The
        usual pair is accepted inline (the hot path); :meth:`pair` judges
        anything else.
        """
        suspects, recheck = self.suspects, self.recheck
        by_identifier: dict[str, Any] = {end[0]: end for end in ends}
        if len(by_identifier) < len(ends):  # some identifier has two ENDs (rare: look again)
            seen: set[str] = set()
            for end in ends:
                if end[0] in seen:
                    suspects[end[0]] = None
                seen.add(end[0])
        take_end = by_identifier.pop
        get_instrument, fromisoformat = self.instruments.get, datetime.fromisoformat
        append, make = self.sessions.append, self.make
        for log_id, identifier, pid, start, user in starts:
            end = take_end(identifier, None)
            if end is None:  # none, or a second START: the first may have been paired
                suspects[identifier] = None
                recheck.add(identifier)
                continue
            if end[1] != pid or identifier in suspects:
                suspects[identifier] = None
                continue
            stop = end[2]
            instrument = get_instrument(pid)
            try:
                dt_from, dt_to = fromisoformat(start), fromisoformat(stop)
            except (TypeError, ValueError):
                self.pair(log_id, identifier, pid, start, user, stop)
                continue
            if (instrument is not None and 1 < dt_from.year < 9999 and 1 < dt_to.year < 9999
                    and (dt_from.tzinfo is None) is (dt_to.tzinfo is None) and dt_to >= dt_from):
                append((log_id, make(identifier, instrument, (dt_from, dt_to), user,
                                     (start, stop))))
            else:
                self.pair(log_id, identifier, pid, start, user, stop)
        suspects.update((identifier, None) for identifier in by_identifier)  # no START

    def diagnose(self, logs: Iterable[StoredLog]) -> list[SessionProblem]:
        """Look at the suspects log by log (``logs``: every stored log of the suspects).

        Returns the problems, in order of each session's first log; a suspect
        that turns out to pair cleanly becomes a session.
        """
        if not self.suspects:
            return []
        if self.recheck:
            self.sessions = [(i, s) for i, s in self.sessions
                             if _identifier(s) not in self.recheck]
        problems: list[tuple[int, SessionProblem]] = []
        for identifier, (starts, ends) in waiting_logs(self.suspects, logs).items():
            if not starts and not ends:  # built (or changed) since it was suspected
                continue
            session, found = check(identifier, starts, ends, self.instruments, self.now,
                                   self.mark_after, self.make)
            if session is not None:
                self.sessions.append((starts[0].id_session_log, session))
            first_id = min(log.id_session_log for log in starts + ends)
            problems.extend((first_id, problem) for problem in found)
        problems.sort(key=itemgetter(0))
        return [problem for _, problem in problems]

    def result(self) -> list[S]:
        """Return the sessions, in order of their START logs (as 1.4 returns them)."""
        self.sessions.sort(key=itemgetter(0))
        return [session for _, session in self.sessions]


def _identifier(session: Any) -> str:
    return str(session.session_identifier)
