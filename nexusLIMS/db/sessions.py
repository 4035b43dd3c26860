"""Sessions: pairing TO_BE_BUILT START and END logs, and recording their outcome.

:func:`get_sessions_to_build` pairs each TO_BE_BUILT START with the END of
its identifier in one query (through the partial index
``session_log_to_be_built_idx``), so the cost is the cost of reading those
rows. A session whose logs do not pair cleanly is a :class:`SessionProblem`;
only such sessions are looked at again, log by log, so a few problems never
slow the rest down.
"""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Union

from nexusLIMS.db.config import DatabaseRef, mark_after, record_user
from nexusLIMS.db.connection import Connection
from nexusLIMS.db.enums import EventType, ProblemKind, RecordStatus, coerce
from nexusLIMS.db.instruments import Instrument, read_instruments
from nexusLIMS.db.logs import (
    SessionLog,
    StoredLog,
    end_claims,
    logs_of,
    require_instrument,
    select_logs,
    set_status,
)
from nexusLIMS.db.schema import (
    PAIRING_INDEX,
    SESSION_CLAIMS,
    SESSION_LOG,
    SESSION_REVISIONS,
    has_table,
    transaction,
)
from nexusLIMS.db.timestamps import now_local_iso, parse_timestamp, span

__all__ = [
    "OnError",
    "Session",
    "SessionProblem",
    "find_session_problems",
    "get_sessions_to_build",
    "repair_duplicate_ends",
    "set_session_status",
]

# The name NexusLIMS 1.4 logged these messages under.
logger = logging.getLogger("nexusLIMS.db.session_handler")

OnError = Literal["raise", "strict", "skip", "mark"]
_ON_ERROR = ("raise", "strict", "skip", "mark")
_START, _END = EventType.START.value, EventType.END.value
_TBB = RecordStatus.TO_BE_BUILT.value
_ZERO = timedelta(0)

# Each TO_BE_BUILT START with the END(s) of its identifier on its instrument,
# one row per pair (a START without one gives a NULL END), in identifier
# order so that a repeated identifier is in adjacent rows. The statuses are
# literals so that the planner can use the partial index.
_PAIRS = (
    f'SELECT s.id_session_log, s.session_identifier, s.instrument, s.timestamp, s."user", '
    f"e.timestamp "
    f"FROM {SESSION_LOG.name} AS s LEFT JOIN {SESSION_LOG.name} AS e "
    f"ON e.record_status = '{_TBB}' AND e.event_type = '{_END}' "
    f"AND e.session_identifier = s.session_identifier AND e.instrument = s.instrument "
    f"WHERE s.record_status = '{_TBB}' AND s.event_type = '{_START}' "
    f"ORDER BY s.session_identifier"
)
# TO_BE_BUILT ENDs without a START on their instrument (a merge of the two
# sorted runs of the partial index, not a look-up per END), and whether their
# session has a START on another one.
_ENDS_WITHOUT_STARTS = (
    f"SELECT session_identifier, instrument FROM {SESSION_LOG.name} "
    f"WHERE record_status = '{_TBB}' AND event_type = '{_END}' "
    f"EXCEPT SELECT session_identifier, instrument FROM {SESSION_LOG.name} "
    f"WHERE record_status = '{_TBB}' AND event_type = '{_START}' ORDER BY 1, 2"
)
_LONE_ENDS = (
    f"SELECT e.session_identifier, EXISTS (SELECT 1 FROM {SESSION_LOG.name} AS s "
    f"WHERE s.record_status = '{_TBB}' AND s.event_type = '{_START}' "
    f"AND s.session_identifier = e.session_identifier) FROM ({_ENDS_WITHOUT_STARTS}) AS e"
)
_COUNT_ENDS = (
    f"SELECT count(*) FROM {SESSION_LOG.name} "
    f"WHERE record_status = '{_TBB}' AND event_type = '{_END}'"
)
# Without the partial index (a NexusLIMS 1.4 file), or on a server: the
# TO_BE_BUILT logs, paired in Python by identifier.
_TO_BE_BUILT_LOGS = (
    f'SELECT id_session_log, session_identifier, instrument, timestamp, "user", event_type '
    f"FROM {SESSION_LOG.name} WHERE record_status = '{_TBB}' "
    f"AND event_type IN ('{_START}', '{_END}')"
)
_TAKEN = ("an END already paired",)


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

    def _check_write(self, conn: Connection, action: str) -> None:
        """Refuse a write to the session in the open transaction (a claimed session's hook)."""

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
        updated = set_session_status(self.session_identifier, status)
        if updated == 0:
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
        with transaction(self._database(), begin="WRITE") as conn:
            self._check_write(conn, "log RECORD_GENERATION")
            if not self._has_logs and not conn.fetchone(
                f"SELECT 1 FROM {SESSION_LOG.name} WHERE session_identifier = ?",
                (self.session_identifier,),
            ):
                if require_logs:
                    raise ValueError(
                        f"Cannot log RECORD_GENERATION for session "
                        f"{self.session_identifier!r}: it has no log in the database")
                logger.warning("Session %r has no log in the database; logging its "
                               "RECORD_GENERATION anyway", self.session_identifier)
            values = {"instrument": pid, "event_type": EventType.RECORD_GENERATION.value,
                      "session_identifier": self.session_identifier, "user": record_user(),
                      "timestamp": now_local_iso()}
            try:
                log_id = conn.insert(
                    f"INSERT INTO {SESSION_LOG.name} (instrument, event_type, session_identifier, "
                    f'"user", timestamp) VALUES (?, ?, ?, ?, ?)', tuple(values.values()),
                    key="id_session_log")
            except conn.backend.integrity_errors as exc:
                if "foreign key" not in str(exc).lower():
                    raise
                conn.rollback()  # (PostgreSQL's transaction is void after an error)
                require_instrument(pid, read_instruments(conn), self)  # names the known ones
                raise
        # The row as stored: the values written (a text column keeps them as they are).
        return {"id_session_log": log_id, **{name: values[name] for name in (
            "event_type", "session_identifier", "timestamp")}}


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
    with transaction(database, begin="WRITE") as conn:
        try:
            return set_status(conn, value, session_identifier=session_identifier)
        except conn.backend.integrity_errors as exc:
            if "CHECK" not in str(exc).upper():
                raise
            # The same type as 1.4 raised, with the remedy added.
            raise type(exc)(
                f"{exc}: this database does not allow record_status {value!r}; it was "
                f"probably made by NexusLIMS 1.4: run 'nexuslims-db migrate' "
                f"(or nexusLIMS.db.migrate_db()) to update it"
            ) from exc


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


class Pairing:
    """One pass of pairing over an open database: the sessions and the problems.

    :meth:`pair` makes the session of one START and its only END (or marks the
    identifier a suspect); :meth:`from_index` or :meth:`from_scan` pair every
    TO_BE_BUILT log; :meth:`diagnose` looks at the suspects log by log.
    """

    def __init__(self, conn: Connection, instruments: dict[str, Instrument], now: datetime):
        self.conn = conn
        self.instruments = instruments
        self.now = now
        self.sessions: list[tuple[int, Session]] = []  # with the id of the START log
        self.suspects: dict[str, None] = {}  # identifiers to look at log by log
        self.recheck: set[str] = set()  # suspects that may have been paired already
        self._taken = 0  # ENDs paired by :meth:`from_scan`

    def pair(self, start_id: int, identifier: str, pid: str, start: str,
             user: Optional[str], end: str) -> None:
        """Make the session of a START and its only END, or suspect it."""
        instrument = self.instruments.get(pid)
        if instrument is None:
            self.suspects[identifier] = None
            return
        try:
            dt_from, dt_to = datetime.fromisoformat(start), datetime.fromisoformat(end)
        except (TypeError, ValueError):
            try:
                dt_from, dt_to = parse_timestamp(start), parse_timestamp(end)
            except ValueError:
                self.suspects[identifier] = None
                return
        # Inline for the usual case (both naive or both aware): the hot path.
        # Years 1 and 9999 may not be placeable in UTC: looked at closely.
        if not (1 < dt_from.year < 9999 and 1 < dt_to.year < 9999):
            self.suspects[identifier] = None
            return
        if (dt_from.tzinfo is None) is (dt_to.tzinfo is None) and dt_to >= dt_from:
            pass
        elif not _in_order(dt_from, dt_to, instrument):
            self.suspects[identifier] = None
            return
        self.sessions.append((start_id, Session(identifier, instrument, (dt_from, dt_to), user)))

    def pair_all(self, pairs: Iterable[tuple[int, str, str, str, Optional[str], str]]) -> None:
        """Make the sessions of many ``(start id, identifier, pid, start, user, end)``.

        :meth:`pair` written out for the usual pair (two ISO texts of the same
        kind, a known instrument, in order): the hot path, where a call per
        pair would cost a fifth of the run. Anything else goes to :meth:`pair`.
        """
        get_instrument = self.instruments.get
        fromisoformat = datetime.fromisoformat
        append = self.sessions.append
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
                append((start_id, Session(identifier, instrument, (dt_from, dt_to), user)))
            else:
                self.pair(*pair)

    def from_index(self) -> None:
        """Pair through the partial index: one row per START and its END."""
        suspects = self.suspects
        previous: Optional[str] = None
        pairs: list[Any] = []
        unpaired = 0  # first rows with an END, taken back: their identifier repeats
        for row in self.conn.fetchall(_PAIRS):
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
        # Each identifier whose first row has an END accounts for at least one
        # END of its own: if they account for all, no END lacks a START.
        if self.conn.scalar(_COUNT_ENDS) != len(pairs) + unpaired:
            for identifier, has_start in self.conn.fetchall(_LONE_ENDS):
                suspects[identifier] = None
                if has_start:  # its START may have paired with another END
                    self.recheck.add(identifier)
        self.pair_all(pairs)

    def from_scan(self) -> None:
        """Pair without the index (a NexusLIMS 1.4 file, or a server): one read, grouped here.

        A first pass files each identifier's END; a second pairs each START
        with it, leaving its place taken so that a second START is caught.
        """
        rows = self.conn.fetchall(_TO_BE_BUILT_LOGS)
        suspects = self.suspects
        ends: dict[str, Any] = {}
        for row in rows:
            if row[5] != _START and ends.setdefault(row[1], row) is not row:
                suspects[row[1]] = None  # two ENDs
        self.pair_all(self._scanned_pairs(rows, ends))
        if len(ends) != self._taken:
            suspects.update((identifier, None) for identifier, end in ends.items()
                            if end is not _TAKEN)  # ENDs without a START

    def _scanned_pairs(
        self, rows: list[tuple[Any, ...]], ends: dict[str, Any]
    ) -> Iterator[tuple[int, str, str, str, Optional[str], str]]:
        suspects, get_end = self.suspects, ends.get
        self._taken = 0
        for log_id, identifier, pid, start, user, event in rows:
            if event != _START:
                continue
            end = get_end(identifier)
            if end is None:
                suspects[identifier] = None
            elif end is _TAKEN:  # a second START: the first may have been paired
                suspects[identifier] = None
                self.recheck.add(identifier)
            else:
                ends[identifier] = _TAKEN
                self._taken += 1
                if end[2] != pid or identifier in suspects:
                    suspects[identifier] = None
                else:
                    yield log_id, identifier, pid, start, user, end[3]

    def diagnose(self) -> list[SessionProblem]:
        """Look at the suspects log by log: their sessions, or their problems."""
        if not self.suspects:
            return []
        if self.recheck:
            self.sessions = [(i, s) for i, s in self.sessions
                             if s.session_identifier not in self.recheck]
        groups: dict[str, tuple[list[StoredLog], list[StoredLog]]] = {
            identifier: ([], []) for identifier in self.suspects}
        for log in logs_of(self.conn, list(self.suspects)):
            if log.record_status == _TBB and log.event_type in (_START, _END):
                groups[log.session_identifier][log.event_type == _END].append(log)
        problems: list[tuple[int, SessionProblem]] = []
        for identifier, (starts, ends) in groups.items():
            if not starts and not ends:  # built (or changed) since it was suspected
                continue
            starts.sort()
            ends.sort()
            session, found = _check(identifier, starts, ends, self.instruments, self.now)
            if session is not None:
                self.sessions.append((starts[0].id_session_log, session))
            first_id = min(log.id_session_log for log in starts + ends)
            problems.extend((first_id, problem) for problem in found)
        problems.sort(key=itemgetter(0))
        return [problem for _, problem in problems]

    def result(self) -> list[Session]:
        """Return the sessions, in order of their START logs (as 1.4 returns them)."""
        self.sessions.sort(key=itemgetter(0))
        return [session for _, session in self.sessions]


def _in_order(dt_from: datetime, dt_to: datetime, instrument: Instrument) -> bool:
    """Whether the END is not before the START (naive times local to the instrument)."""
    try:
        length = span(dt_from, dt_to, instrument.timezone)
    except OverflowError:
        return False
    return length is not None and length >= _ZERO


def _as_log(row: StoredLog) -> SessionLog:
    return SessionLog(row.session_identifier, row.instrument, row.timestamp, row.event_type,
                      row.user, row.record_status)


def log_age(
    log: StoredLog, instruments: Mapping[str, Instrument], now: datetime
) -> Optional[timedelta]:
    """Return how long before ``now`` the event of ``log`` happened; None if it cannot be placed."""
    try:
        moment = parse_timestamp(log.timestamp)
        if moment.tzinfo is None:
            instrument = instruments.get(log.instrument)
            if instrument is not None and instrument.timezone is not None:
                moment = instrument.localize_datetime(moment)
            else:
                moment = moment.astimezone()  # local time of this computer
        return now - moment
    except (ValueError, OverflowError):
        return None


def _check(
    identifier: str,
    starts: list[StoredLog],
    ends: list[StoredLog],
    instruments: dict[str, Instrument],
    now: datetime,
) -> tuple[Optional[Session], list[SessionProblem]]:
    """Return the session of one identifier's TO_BE_BUILT logs, or everything wrong with it."""
    found: list[tuple[ProblemKind, str, bool]] = []
    ids = tuple(sorted(log.id_session_log for log in starts + ends))
    # A writer may still be completing a session: its START waits for the END
    # (or an END for its START). Until it is old, it is not marked.
    lone = starts if not ends else ends if not starts else []
    age = log_age(lone[0], instruments, now) if len(lone) == 1 else None
    completable = age is not None and age < mark_after()
    if starts and len(ends) != 1:
        found.append((
            ProblemKind.END_COUNT,
            f"There was not exactly one 'END' log for this 'START' log; "
            f"len(matching_end_logs) was {len(ends)}; "
            f"start log was {_as_log(starts[0])}; "
            f"matching_end_logs was {[_as_log(row) for row in ends]}",
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
        if end.instrument != start.instrument:
            found.append((
                ProblemKind.INSTRUMENT_MISMATCH,
                f"session {identifier!r} starts on {start.instrument!r} "
                f"but ends on {end.instrument!r}",
                True,
            ))
        times = []
        for log in (start, end):
            try:
                times.append(parse_timestamp(log.timestamp))
            except ValueError:
                found.append((ProblemKind.BAD_TIMESTAMP,
                              f"session {identifier!r}: log {log.id_session_log} has timestamp "
                              f"{log.timestamp!r}, not ISO 8601", True))
        if not found:
            instrument = instruments[start.instrument]
            try:
                length = span(times[0], times[1], instrument.timezone)
            except OverflowError:
                found.append((ProblemKind.BAD_TIMESTAMP,
                              f"session {identifier!r} has times that cannot be placed in its "
                              f"instrument's zone ({start.timestamp}, {end.timestamp})", True))
            else:
                if length is None:
                    found.append((ProblemKind.BAD_TIMESTAMP,
                                  f"session {identifier!r} mixes times with and without a UTC "
                                  f"offset ({start.timestamp}, {end.timestamp}) on an "
                                  f"instrument without a time zone", True))
                elif length < _ZERO:
                    found.append((ProblemKind.END_BEFORE_START,
                                  f"session {identifier!r} ends ({end.timestamp}) before it "
                                  f"starts ({start.timestamp})", True))
                else:
                    return Session(identifier, instrument, (times[0], times[1]), start.user), []
    return None, [SessionProblem(identifier, kind, detail, ids, markable)
                  for kind, detail, markable in found]


_suggested_migration = False


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
    with _collection_paused():
        return _pair(conn, instruments)


def _pair(
    conn: Connection, instruments: Optional[Mapping[str, Instrument]]
) -> tuple[list[Session], list[SessionProblem]]:
    global _suggested_migration
    known = dict(instruments) if instruments is not None else read_instruments(conn)
    pairing = Pairing(conn, known, datetime.now(timezone.utc))
    if conn.dialect != "sqlite":
        # One plain read: no join plan can go wrong on stale statistics.
        pairing.from_scan()
    elif PAIRING_INDEX.name in conn.backend.index_names(conn, SESSION_LOG.name):
        pairing.from_index()
    else:
        if not _suggested_migration:
            _suggested_migration = True
            logger.info("%s has no index for pairing sessions (a NexusLIMS 1.4 database?); "
                        "'nexuslims-db migrate' would make get_sessions_to_build faster",
                        conn.location)
        pairing.from_scan()
    problems = pairing.diagnose()
    return pairing.result(), problems


def live_claims(conn: Connection) -> set[str]:
    """Return the identifiers of the sessions a live claim holds (none before schema 3)."""
    if not has_table(conn, SESSION_CLAIMS.name):
        return set()
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return {identifier for (identifier,) in conn.fetchall(
        f"SELECT session_identifier FROM {SESSION_CLAIMS.name} WHERE expires_at > ?", (now,))}


def late_revisions(conn: Connection) -> list[SessionProblem]:
    """Revisions that arrived after a session's record was built (schema version 4+)."""
    if not has_table(conn, SESSION_REVISIONS.name):
        return []
    rows = conn.fetchall(
        f"SELECT r.session_identifier, r.event_type, r.stored_timestamp, r.revised_timestamp, "
        f"r.revised_user, r.log_id, l.record_status FROM {SESSION_REVISIONS.name} AS r "
        f"JOIN {SESSION_LOG.name} AS l ON l.id_session_log = r.log_id ORDER BY r.id_revision")
    return [
        SessionProblem(
            identifier, ProblemKind.LATE_REVISION,
            (f"its {event} was revised from {stored} to {revised}" if stored != revised
             else f"the user of its {event} was revised to {user!r}")
            + f" after its record was built (status {status}); an admin may set it to "
              f"TO_BE_BUILT to build it again",
            (log_id,), markable=False)
        for identifier, event, stored, revised, user, log_id, status in rows
    ]


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
    with transaction(database) as conn:
        return pair_sessions(conn)[1] + late_revisions(conn)


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
    with transaction(database, begin="IMMEDIATE" if on_error == "mark" else "DEFERRED") as conn:
        sessions, problems = pair_sessions(conn, instruments)
        if exclude_claimed:
            claimed = live_claims(conn)
            sessions = [s for s in sessions if s.session_identifier not in claimed]
        if problems and on_error in ("raise", "strict"):
            # 1.4 raises for a START without exactly one END: that first.
            first = next((p for p in problems if p.kind is ProblemKind.END_COUNT), None)
            if first is None and on_error == "strict":
                first = problems[0]
            if first is not None:
                raise ValueError(first.detail)
        marked = set()
        if problems and on_error == "mark":
            marked = {p.session_identifier for p in problems if p.markable}
            set_status(conn, RecordStatus.ERROR, ids=[
                log_id for p in problems if p.session_identifier in marked for log_id in p.log_ids])
            end_claims(conn, marked)
    by_session: dict[str, list[str]] = {}
    for problem in problems:
        by_session.setdefault(problem.session_identifier, []).append(
            f"{problem.kind.value}: {problem.detail}")
    for identifier, reasons in by_session.items():
        action = "Marked ERROR and skipped" if identifier in marked else "Skipping"
        logger.warning("%s session %r: %s", action, identifier, "; ".join(reasons))
    logger.info("Found %i new sessions to build", len(sessions))
    return sessions


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
        rows = [StoredLog(*row) for row in conn.fetchall(select_logs(
            f"record_status = '{_TBB}' AND event_type = '{_END}' AND session_identifier IN ("
            f"SELECT session_identifier FROM {SESSION_LOG.name} WHERE record_status = '{_TBB}' "
            f"AND event_type = '{_END}' GROUP BY session_identifier HAVING count(*) > 1) "
            f"ORDER BY id_session_log"))]
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

