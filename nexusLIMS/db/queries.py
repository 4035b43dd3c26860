"""Every statement the package runs on its tables, named, one section per table.

Written once with ``?`` placeholders, in SQL both backends run as it is.
Statuses and event types that a partial index is defined on are literals
(a planner uses such an index only for a literal). The modules above choose
statements here by name; none writes SQL of its own for these tables.
"""

from __future__ import annotations

from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.tables import (
    INSTRUMENTS,
    SESSION_CLAIMS,
    SESSION_LOG,
    SESSION_REVISIONS,
    Table,
    quote,
    quoted_columns,
)

_START, _END = EventType.START.value, EventType.END.value
_RECORD_GENERATION = EventType.RECORD_GENERATION.value
_TBB = RecordStatus.TO_BE_BUILT.value
_WAITING_FOR_END = RecordStatus.WAITING_FOR_END.value

_LOG = SESSION_LOG.name
_WAITING = f"record_status IN ('{_TBB}', '{_WAITING_FOR_END}')"
_INSTRUMENTS = INSTRUMENTS.name
_CLAIMS = SESSION_CLAIMS.name
_REVISIONS = SESSION_REVISIONS.name


def insert(table: Table, columns: tuple[str, ...]) -> str:
    """Return the ``INSERT`` of one row of ``columns`` (names as the schema has them)."""
    names = ", ".join(quote(column) for column in columns)
    return f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})"


def select_all(table: Table) -> str:
    """Return the ``SELECT`` of every row of ``table``, every column, in key order."""
    return (f"SELECT {', '.join(quoted_columns(table))} FROM {table.name} "
            f"ORDER BY {quote(table.columns[0].name)}")


def count(table: Table) -> str:
    """Return the statement counting the rows of ``table``."""
    return f"SELECT count(*) FROM {table.name}"


# --- instruments ---------------------------------------------------------------------

#: Every instrument, every column in table order.
INSTRUMENT_ROWS = f"SELECT {', '.join(quoted_columns(INSTRUMENTS))} FROM {_INSTRUMENTS}"
#: Whether an instrument has this PID.
INSTRUMENT_EXISTS = f"SELECT 1 FROM {_INSTRUMENTS} WHERE instrument_pid = ?"
#: Remove one instrument.
DELETE_INSTRUMENT = f"DELETE FROM {_INSTRUMENTS} WHERE instrument_pid = ?"
#: How many logs an instrument has.
COUNT_INSTRUMENT_LOGS = f"SELECT count(*) FROM {_LOG} WHERE instrument = ?"


def instrument_using(column: str) -> str:
    """Return the look-up of the other instrument (not PID ``?``) with this value of ``column``."""
    return (f"SELECT instrument_pid FROM {_INSTRUMENTS} WHERE {quote(column)} = ? "
            f"AND instrument_pid <> ?")


def update_instrument(columns: tuple[str, ...]) -> str:
    """Return the ``UPDATE`` of ``columns`` of the instrument whose PID is the last ``?``."""
    assignments = ", ".join(f"{quote(column)} = ?" for column in columns)
    return f"UPDATE {_INSTRUMENTS} SET {assignments} WHERE instrument_pid = ?"


# --- session_log ---------------------------------------------------------------------

_LOG_COLUMNS = quoted_columns(SESSION_LOG)
#: The columns a log is written with (all but the id), as SQL spells them.
WRITTEN_LOG_COLUMNS = _LOG_COLUMNS[1:]


def select_logs(where: str) -> str:
    """Return ``SELECT <every column> FROM session_log WHERE <where>`` (for ``StoredLog``)."""
    return f"SELECT {', '.join(_LOG_COLUMNS)} FROM {_LOG} WHERE {where}"


#: Every log of one session, in id order.
LOGS_OF_SESSION = select_logs("session_identifier = ? ORDER BY id_session_log")
#: The START logs of one session, in id order.
STARTS_OF_SESSION = select_logs(
    f"session_identifier = ? AND event_type = '{_START}' ORDER BY id_session_log")
#: Whether a session has any log.
SESSION_HAS_LOGS = f"SELECT 1 FROM {_LOG} WHERE session_identifier = ?"
#: A log whose session has no log of its event on its instrument yet, and whose
#: instrument is known: inserted as it is (parameters: the written columns,
#: then instrument, identifier, instrument, event type).
INSERT_IF_FIRST = (
    f"INSERT INTO {_LOG} ({', '.join(WRITTEN_LOG_COLUMNS)}) "
    f"SELECT {', '.join('?' * len(WRITTEN_LOG_COLUMNS))} "
    f"WHERE EXISTS (SELECT 1 FROM {_INSTRUMENTS} WHERE instrument_pid = ?) "
    f"AND NOT EXISTS (SELECT 1 FROM {_LOG} WHERE session_identifier = ? "
    f"AND instrument = ? AND event_type = ?)"
)
# --- one START or END, in one round trip (see SessionLog.insert_log) ------------------
#
# Parameters of each: the written columns' values, then as each says. The
# newest waiting log of the event is the current one (else the newest).
_OF_EVENT = "session_identifier = ? AND instrument = ? AND event_type = ?"
_KNOWN_INSTRUMENT = f"EXISTS (SELECT 1 FROM {_INSTRUMENTS} WHERE instrument_pid = ?)"
#: The instrument's time zone (no row: unknown instrument).
INSTRUMENT_ZONE = f"SELECT timezone FROM {_INSTRUMENTS} WHERE instrument_pid = ?"
#: The logs of one event of a session (to lock them, append ``lock_rows``).
LOGS_OF_EVENT = select_logs(f"{_OF_EVENT} ORDER BY id_session_log")
#: Revise the current waiting log of the event, if it differs (parameters: new
#: time, new user; identifier, instrument, event; new time, new user; instrument).
REVISE_CURRENT = (
    f"UPDATE {_LOG} SET timestamp = ?, {quote('user')} = ? WHERE id_session_log = ("
    f"SELECT max(id_session_log) FROM {_LOG} WHERE {_OF_EVENT} AND {_WAITING}) "
    f"AND (timestamp <> ? OR coalesce({quote('user')}, '') <> coalesce(?, '')) "
    f"AND {_KNOWN_INSTRUMENT}"
)
#: Keep a revision of a session no longer waiting, once (parameters: new time,
#: new user, received at; identifier, instrument, event, twice; new time, new
#: user, twice; instrument).
KEEP_LATE_REVISION = (
    f"INSERT INTO {_REVISIONS} (log_id, session_identifier, instrument, event_type, "
    f"stored_timestamp, revised_timestamp, revised_user, received_at) "
    f"SELECT l.id_session_log, l.session_identifier, l.instrument, l.event_type, l.timestamp, "
    f"?, ?, ? FROM {_LOG} AS l WHERE l.id_session_log = (SELECT max(id_session_log) "
    f"FROM {_LOG} WHERE {_OF_EVENT}) AND NOT EXISTS (SELECT 1 FROM {_LOG} WHERE {_OF_EVENT} "
    f"AND {_WAITING}) AND (l.timestamp <> ? OR coalesce(l.{quote('user')}, '') <> "
    f"coalesce(?, '')) AND NOT EXISTS (SELECT 1 FROM {_REVISIONS} AS r "
    f"WHERE r.log_id = l.id_session_log AND r.revised_timestamp = ? "
    f"AND coalesce(r.revised_user, '') = coalesce(?, '')) AND {_KNOWN_INSTRUMENT}"
)
#: Undo a revision of one log (parameters: the old time and user, the id, the new time).
UNREVISE_LOG = (f"UPDATE {_LOG} SET timestamp = ?, {quote('user')} = ? "
                f"WHERE id_session_log = ? AND timestamp = ?")
#: Drop a revision kept by mistake (parameters: log id, revised time, received at).
DROP_REVISION = (f"DELETE FROM {_REVISIONS} WHERE log_id = ? AND revised_timestamp = ? "
                 f"AND received_at = ?")

#: The RECORD_GENERATION log of a session written at a time (parameters: identifier, time).
RECORD_GENERATION_AT = (f"SELECT id_session_log FROM {_LOG} WHERE session_identifier = ? "
                        f"AND event_type = '{_RECORD_GENERATION}' AND timestamp = ?")
#: A RECORD_GENERATION log (its status is the column's default); conditions may be
#: appended with AND.
INSERT_RECORD_GENERATION = (
    f"INSERT INTO {_LOG} (instrument, event_type, session_identifier, {quote('user')}, "
    f"timestamp) SELECT ?, '{_RECORD_GENERATION}', ?, ?, ? WHERE TRUE"
)
#: A revision applied in place: the new time and user of one log.
REVISE_LOG = f"UPDATE {_LOG} SET timestamp = ?, {quote('user')} = ? WHERE id_session_log = ?"
#: The status of every log of a session.
SET_SESSION_STATUS = f"UPDATE {_LOG} SET record_status = ? WHERE session_identifier = ?"
#: How many logs of session ``?`` have each status.
SESSION_STATUS_COUNTS = (f"SELECT record_status, count(*) FROM {_LOG} WHERE "
                         f"session_identifier = ? GROUP BY record_status")

# --- an outcome for the START and END a builder was handed -------------------------------
#
# A builder records an outcome for the START and END it was handed; a revision
# may have changed them meanwhile (the harvester revises a waiting log in
# place). The waiting START/END of session ``?`` that differ from what was
# handed (parameters: the START's text, its user, the END's text):
_DIFFERS_FROM_HANDED = (
    f"session_identifier = ? AND {_WAITING} AND ((event_type = '{_START}' AND "
    f"(timestamp <> ? OR coalesce({quote('user')}, '') <> coalesce(?, ''))) "
    f"OR (event_type = '{_END}' AND timestamp <> ?))"
)
#: A condition: no waiting START/END of the session differs from what was handed
#: (parameters: identifier, START text, START user, END text).
UNREVISED_SINCE_HANDED = f"NOT EXISTS (SELECT 1 FROM {_LOG} WHERE {_DIFFERS_FROM_HANDED})"
#: Every log of a session (to lock them, append the backend's ``lock_rows``).
LOCK_SESSION_LOGS = f"SELECT 1 FROM {_LOG} WHERE session_identifier = ?"
#: The waiting logs of a session that differ from what its builder was handed
#: (parameters: identifier, START text, START user, END text).
REVISED_SINCE_HANDED = select_logs(f"{_DIFFERS_FROM_HANDED} ORDER BY id_session_log")
#: Keep the revisions that arrived while a record was built, once each
#: (parameters: the START text, the END text (what was built), the time it was
#: noticed, then identifier, START text, START user, END text).
KEEP_REVISIONS_SINCE_HANDED = (
    f"INSERT INTO {SESSION_REVISIONS.name} (log_id, session_identifier, instrument, "
    f"event_type, stored_timestamp, revised_timestamp, revised_user, received_at) "
    f"SELECT l.id_session_log, l.session_identifier, l.instrument, l.event_type, "
    f"CASE WHEN l.event_type = '{_START}' THEN ? ELSE ? END, l.timestamp, l.{quote('user')}, ? "
    f"FROM {_LOG} AS l WHERE {_DIFFERS_FROM_HANDED} "
    f"AND NOT EXISTS (SELECT 1 FROM {SESSION_REVISIONS.name} AS r "
    f"WHERE r.log_id = l.id_session_log AND r.revised_timestamp = l.timestamp "
    f"AND coalesce(r.revised_user, '') = coalesce(l.{quote('user')}, ''))"
)
#: The status of one log.
SET_LOG_STATUS = f"UPDATE {_LOG} SET record_status = ? WHERE id_session_log = ?"

#: Each TO_BE_BUILT START with the END(s) of its identifier on its instrument,
#: one row per pair (a START without one gives a NULL END), in identifier
#: order so that a repeated identifier is in adjacent rows.
TO_BE_BUILT_PAIRS = (
    f"SELECT s.id_session_log, s.session_identifier, s.instrument, s.timestamp, "
    f"s.{quote('user')}, e.timestamp "
    f"FROM {_LOG} AS s LEFT JOIN {_LOG} AS e "
    f"ON e.record_status = '{_TBB}' AND e.event_type = '{_END}' "
    f"AND e.session_identifier = s.session_identifier AND e.instrument = s.instrument "
    f"WHERE s.record_status = '{_TBB}' AND s.event_type = '{_START}' "
    f"ORDER BY s.session_identifier"
)
#: How many TO_BE_BUILT ENDs there are.
COUNT_TO_BE_BUILT_ENDS = (
    f"SELECT count(*) FROM {_LOG} WHERE record_status = '{_TBB}' AND event_type = '{_END}'")
# TO_BE_BUILT ENDs without a START on their instrument (a merge of the two
# sorted runs of the partial index, not a look-up per END).
_ENDS_WITHOUT_STARTS = (
    f"SELECT session_identifier, instrument FROM {_LOG} "
    f"WHERE record_status = '{_TBB}' AND event_type = '{_END}' "
    f"EXCEPT SELECT session_identifier, instrument FROM {_LOG} "
    f"WHERE record_status = '{_TBB}' AND event_type = '{_START}' ORDER BY 1, 2"
)
#: The identifiers of TO_BE_BUILT ENDs without a START on their instrument, and
#: whether the session has a START on another one.
LONE_ENDS = (
    f"SELECT e.session_identifier, EXISTS (SELECT 1 FROM {_LOG} AS s "
    f"WHERE s.record_status = '{_TBB}' AND s.event_type = '{_START}' "
    f"AND s.session_identifier = e.session_identifier) FROM ({_ENDS_WITHOUT_STARTS}) AS e"
)
#: The TO_BE_BUILT STARTs, to pair without the pairing index (with :data:`WAITING_ENDS`).
WAITING_STARTS_TO_PAIR = (
    f"SELECT id_session_log, session_identifier, instrument, timestamp, {quote('user')} "
    f"FROM {_LOG} WHERE record_status = '{_TBB}' AND event_type = '{_START}'"
)
#: The TO_BE_BUILT ENDs, to pair without the pairing index.
WAITING_ENDS = (f"SELECT session_identifier, instrument, timestamp FROM {_LOG} "
                f"WHERE record_status = '{_TBB}' AND event_type = '{_END}'")
#: Sessions with several TO_BE_BUILT ENDs: those ENDs, in id order.
DUPLICATE_ENDS = select_logs(
    f"record_status = '{_TBB}' AND event_type = '{_END}' AND session_identifier IN ("
    f"SELECT session_identifier FROM {_LOG} WHERE record_status = '{_TBB}' "
    f"AND event_type = '{_END}' GROUP BY session_identifier HAVING count(*) > 1) "
    f"ORDER BY id_session_log")
#: START logs still waiting for their END, in id order.
WAITING_STARTS = select_logs(
    f"event_type = '{_START}' AND record_status = '{_WAITING_FOR_END}' ORDER BY id_session_log")
#: ``(event_type, record_status, count)`` of every combination present.
LOG_COUNTS = (f"SELECT event_type, record_status, count(*) FROM {_LOG} "
              f"GROUP BY event_type, record_status ORDER BY event_type, record_status")
#: How many logs name an instrument that is not in ``instruments``.
COUNT_ORPHAN_LOGS = (f"SELECT count(*) FROM {_LOG} WHERE instrument NOT IN "
                     f"(SELECT instrument_pid FROM {_INSTRUMENTS})")
#: The revision of a NexusLIMS 2.x database (Alembic's table).
ALEMBIC_REVISION = "SELECT version_num FROM alembic_version"
#: The largest log id.
MAX_LOG_ID = f"SELECT max(id_session_log) FROM {_LOG}"


def values_outside(column: str, allowed: tuple[str, ...]) -> str:
    """Return ``(value, count)`` of the values of a log ``column`` not in ``allowed`` (as ``?``)."""
    marks = ", ".join("?" * len(allowed))
    return (f"SELECT {quote(column)}, count(*) FROM {_LOG} WHERE {quote(column)} IS NULL "
            f"OR {quote(column)} NOT IN ({marks}) GROUP BY {quote(column)}")


# --- session_claims ------------------------------------------------------------------
#
# Claim times are written and judged by the database's clock (the dialect's
# ``clock``: a server's own; on SQLite, the builders'), given to the
# statements below as SQL: ``now`` and ``expires`` (the clock ``?`` seconds on).

#: TO_BE_BUILT STARTs in id order after id ``?``, leaving out those a live claim
#: (expiring after ``?``, the first parameter) holds: read through the partial
#: index ordered by id, so a claim reads only as many sessions as it takes.
#: (The claim of a database with one writer at a time: SQLite.)
CLAIM_CANDIDATES = (
    f"SELECT s.id_session_log, s.session_identifier FROM {_LOG} AS s "
    f"WHERE s.record_status = '{_TBB}' AND s.event_type = '{_START}' AND NOT EXISTS ("
    f"SELECT 1 FROM {_CLAIMS} AS c WHERE c.session_identifier = s.session_identifier "
    f"AND c.expires_at > ?) AND s.id_session_log > ? ORDER BY s.id_session_log"
)
#: Claim a session (or take over an expired claim).
UPSERT_CLAIM = (
    f"INSERT INTO {_CLAIMS} (session_identifier, worker, token, claimed_at, expires_at) "
    f"VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_identifier) DO UPDATE SET "
    f"worker = excluded.worker, token = excluded.token, claimed_at = excluded.claimed_at, "
    f"expires_at = excluded.expires_at"
)
#: A ``CASE`` of a log ``x`` of session ``s``: the waiting END on ``s``'s instrument.
_ITS_END = (f"x.record_status = '{_TBB}' AND x.event_type = '{_END}' "
            f"AND x.instrument = s.instrument")
#: The separator of the parts of a session's key in :func:`claim_sessions_statement`.
KEY_SEPARATOR = "\x1f"


def claim_sessions_statement(limit: int, *, now: str, expires: str, skip_locked: str) -> str:
    """Return the one statement that claims up to ``limit`` sessions for one builder.

    For a database whose locked rows can be skipped (``skip_locked``, the
    backend's words after ``FOR UPDATE OF s``): the TO_BE_BUILT STARTs in id
    order that no live claim holds, have exactly one waiting END, on their
    own (known) instrument, and are not among the sessions the builder judged
    inconsistent already (the first parameter: ``identifier, START time, END
    time`` joined by :data:`KEY_SEPARATOR`, an array); each START row is
    locked as it is taken, those another builder holds are skipped, so that
    no builder waits for another. Each is claimed for worker ``?`` with the
    token ``<?>-<START id>`` (a seed fresh for each call), at ``now`` until
    ``expires`` (its ``?``: the lease in seconds); an expired claim is taken
    over. Returns one row per START taken: ``(START id, identifier,
    instrument, START time, user, END id, END time, token, claimed_at,
    expires_at)``, the last three NULL where another builder's claim came
    first (it committed after this statement began): the session is not
    this builder's.

    The STARTs are read in the order of the claiming index, ``(event_type,
    id)``, which no other index gives: with the backend's ``ordered_reads``
    the planner can neither walk the primary key past the history nor sort
    the whole backlog, so a claim reads about as many index entries as it
    takes, however long the backlog and the history. Each START's logs are
    counted through the identifier's index alone (the statuses and events
    are tested on the rows, not in an index condition), whatever the statistics say.
    """
    return (
        f"WITH picked AS (SELECT s.id_session_log, s.session_identifier, s.instrument, "
        f"s.timestamp, s.{quote('user')}, e.end_id, e.end_time FROM {_LOG} AS s "
        f"CROSS JOIN LATERAL (SELECT sum(CASE WHEN x.record_status = '{_TBB}' AND "
        f"x.event_type IN ('{_START}', '{_END}') THEN 1 ELSE 0 END) AS waiting, "
        f"max(CASE WHEN {_ITS_END} THEN x.id_session_log END) AS end_id, "
        f"max(CASE WHEN {_ITS_END} THEN x.timestamp END) AS end_time, "
        f"EXISTS (SELECT 1 FROM {_INSTRUMENTS} AS i WHERE i.instrument_pid = s.instrument) "
        f"AS known FROM {_LOG} AS x WHERE x.session_identifier = s.session_identifier) AS e "
        f"WHERE s.record_status = '{_TBB}' AND s.event_type >= '{_START}' "
        f"AND s.event_type <= '{_START}' "
        # A filter of the scan itself, first: the sessions other builders hold cost
        # one probe of the claims' key each, not a count of their logs.
        f"AND coalesce((SELECT c.expires_at FROM {_CLAIMS} AS c "
        f"WHERE c.session_identifier = s.session_identifier), '') <= {now} "
        f"AND e.waiting = 2 AND e.end_id IS NOT NULL AND e.known "
        f"AND s.session_identifier || chr(31) || s.timestamp || chr(31) || e.end_time <> ALL(?) "
        f"ORDER BY s.event_type, s.id_session_log LIMIT {int(limit)} "
        f"FOR UPDATE OF s {skip_locked}), "
        f"claimed AS (INSERT INTO {_CLAIMS} (session_identifier, worker, token, claimed_at, "
        f"expires_at) SELECT p.session_identifier, ?, ? || '-' || p.id_session_log, {now}, "
        f"{expires} FROM picked AS p ON CONFLICT (session_identifier) DO UPDATE SET "
        f"worker = excluded.worker, token = excluded.token, claimed_at = excluded.claimed_at, "
        f"expires_at = excluded.expires_at WHERE {_CLAIMS}.expires_at <= excluded.claimed_at "
        f"RETURNING session_identifier, token, claimed_at, expires_at) "
        f"SELECT p.id_session_log, p.session_identifier, p.instrument, p.timestamp, "
        f"p.{quote('user')}, p.end_id, p.end_time, c.token, c.claimed_at, c.expires_at "
        f"FROM picked AS p LEFT JOIN claimed AS c ON c.session_identifier = p.session_identifier"
    )


#: Whether this token still holds the session's claim (to lock the row, append the
#: backend's ``lock_rows``).
CLAIM_HELD = f"SELECT 1 FROM {_CLAIMS} WHERE session_identifier = ? AND token = ?"
#: A condition: the claim on the session is this token's (parameters: identifier, token).
CLAIM_IS_HELD = (f"EXISTS (SELECT 1 FROM {_CLAIMS} WHERE {_CLAIMS}.session_identifier = ? "
                 f"AND {_CLAIMS}.token = ?)")


def renew_claim(expires: str) -> str:
    """Return the statement extending a claim that this token holds to ``expires``.

    Parameters: the lease in seconds (``expires``' ``?``), identifier, token.
    """
    return f"UPDATE {_CLAIMS} SET expires_at = {expires} WHERE session_identifier = ? AND token = ?"


#: The expiry of the claim this token holds.
CLAIM_EXPIRY = f"SELECT expires_at FROM {_CLAIMS} WHERE session_identifier = ? AND token = ?"
#: End a claim that this token holds.
END_OWN_CLAIM = f"DELETE FROM {_CLAIMS} WHERE session_identifier = ? AND token = ?"
#: End every claim on a session.
END_CLAIMS = f"DELETE FROM {_CLAIMS} WHERE session_identifier = ?"


def end_claims_where(condition: str) -> str:
    """Return the statement ending the claims where ``condition`` (on ``token``, say)."""
    return f"DELETE FROM {_CLAIMS} WHERE {condition}"


def live_claims(now: str) -> str:
    """Return the query of the sessions a claim holds that expires after ``now``."""
    return f"SELECT session_identifier FROM {_CLAIMS} WHERE expires_at > {now}"


def clock_reading(now: str) -> str:
    """Return the query of the database's clock ``now`` (one row)."""
    return f"SELECT {now}"


def claims_made_after(moment: str) -> str:
    """Return the query of ``(worker, claimed_at)`` of the claims made after ``moment``.

    A claim made "in the future" was written by a builder whose clock is ahead.
    """
    return (f"SELECT worker, max(claimed_at) FROM {_CLAIMS} WHERE claimed_at > {moment} "
            f"GROUP BY worker ORDER BY worker")


#: Every claim, oldest first.
CLAIMS = (f"SELECT session_identifier, worker, claimed_at, expires_at FROM {_CLAIMS} "
          f"ORDER BY claimed_at, session_identifier")

# --- session_revisions ---------------------------------------------------------------

#: Settle what a session's revisions said once an outcome is recorded for the
#: times they set: those applied in place (the log has the revised time and user).
SETTLE_REVISIONS = (
    f"DELETE FROM {_REVISIONS} WHERE session_identifier = ? AND EXISTS (SELECT 1 FROM {_LOG} "
    f"AS l WHERE l.id_session_log = {_REVISIONS}.log_id "
    f"AND l.timestamp = {_REVISIONS}.revised_timestamp "
    f"AND coalesce(l.{quote('user')}, '') = coalesce({_REVISIONS}.revised_user, ''))"
)


def revisions_where(condition: str) -> str:
    """Return ``(log_id, revised_timestamp, revised_user)`` of the revisions where ``condition``."""
    return f"SELECT log_id, revised_timestamp, revised_user FROM {_REVISIONS} WHERE {condition}"


#: Keep a revision that arrived after the session's record was built.
INSERT_REVISION = insert(SESSION_REVISIONS, SESSION_REVISIONS.column_names[1:])
#: The revisions kept, with the status, time and user of the log each revises,
#: oldest first.
LATE_REVISIONS = (
    f"SELECT r.session_identifier, r.event_type, r.stored_timestamp, r.revised_timestamp, "
    f"r.revised_user, r.log_id, l.record_status, l.timestamp, l.{quote('user')} "
    f"FROM {_REVISIONS} AS r JOIN {_LOG} AS l ON l.id_session_log = r.log_id "
    f"ORDER BY r.id_revision"
)
