"""The PostgreSQL backend (the ``postgres`` extra: psycopg 3 and sqlglot).

Connections are kept in a small pool per database, since opening one costs
several round trips to the server. A writers' transaction that reads then
writes (``BEGIN IMMEDIATE`` in SQLite) takes a transaction-level advisory
lock, so that such writers are serialized as SQLite serializes them; other
writes rely on PostgreSQL's row locks. Lock waits are bounded by ``SET LOCAL
lock_timeout``. The package's ``?`` placeholders become psycopg's ``%s``
(:func:`~nexusLIMS.db.backends.translate.native_sql`).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from nexusLIMS.db.backends.base import Pool, Result, insert_statement, writes_to_parent
from nexusLIMS.db.backends.ddl import POSTGRESQL_DDL, Dialect
from nexusLIMS.db.backends.translate import native_sql, to_postgres
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout, pool_size
from nexusLIMS.db.config import Backend as BackendName
from nexusLIMS.db.errors import (
    ConstraintError,
    ConstraintKind,
    DatabaseConfigError,
    DatabaseLockedError,
    DatabaseUnavailableError,
    NexusLIMSDBError,
)
from nexusLIMS.db.tables import KEEP_LOGS_MESSAGE, Table, quote

__all__ = ["POSTGRESQL", "WRITERS_LOCK", "native_sql"]

logger = logging.getLogger(__name__)

#: The advisory lock of writers' transactions ("NXLM" in ASCII).
WRITERS_LOCK = 0x4E584C4D
#: Seconds a wait for the server may last beyond nexusLIMS_db_timeout (the lock
#: waits it bounds end first, with their own clear error).
_GRACE = 4.0
#: Seconds a caller waits for a pool that cannot reach its server, before a new
#: pool tries at once (the pool's own attempts grow further apart).
_AWAY_WAIT = 0.5
#: Seconds between the watchdog's looks while waits come and go (less than any
#: wait's bound, which is at least _GRACE).
_IDLE_LOOK = 1.0
#: Seconds a caller waits for the pool's connection before it connects by itself,
#: when the pool has room for more (see ``_Server.take``).
_STUCK_WAIT = 1.0
#: Seconds an unused connection stays open beyond the one a process keeps.
_MAX_IDLE = 1.0
_MAX_MS = 2**31 - 1  # the largest lock_timeout PostgreSQL takes, in milliseconds
# Rows from which a COPY (two round trips, then a stream) beats an executemany
# (one pipelined round trip, then a statement per row).
_COPY_FROM = 100
_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL",
              "d": "SET DEFAULT"}
_CONSTRAINTS: dict[str, tuple[type[psycopg.IntegrityError], ConstraintKind]] = {
    "23503": (pg_errors.ForeignKeyViolation, ConstraintKind.FOREIGN_KEY),
    "23001": (pg_errors.RestrictViolation, ConstraintKind.RESTRICT),
    "23514": (pg_errors.CheckViolation, ConstraintKind.CHECK),
    "23505": (pg_errors.UniqueViolation, ConstraintKind.UNIQUE),
    "23502": (pg_errors.NotNullViolation, ConstraintKind.NOT_NULL),
}


class _ForeignKeyError(ConstraintError, pg_errors.ForeignKeyViolation):
    """A foreign key was violated (also psycopg's ``ForeignKeyViolation``)."""


class _RestrictError(ConstraintError, pg_errors.RestrictViolation):
    """A parent with rows was deleted (also psycopg's ``RestrictViolation``)."""


class _CheckError(ConstraintError, pg_errors.CheckViolation):
    """A CHECK was violated (also psycopg's ``CheckViolation``)."""


class _UniqueError(ConstraintError, pg_errors.UniqueViolation):
    """A unique value was repeated (also psycopg's ``UniqueViolation``)."""


class _NotNullError(ConstraintError, pg_errors.NotNullViolation):
    """A required value was missing (also psycopg's ``NotNullViolation``)."""


class _OtherConstraintError(ConstraintError, psycopg.IntegrityError):
    """Another constraint was violated (also psycopg's ``IntegrityError``)."""


# The package's class for each of psycopg's (which it also is).
_CLASSES: dict[type[psycopg.IntegrityError], type[ConstraintError]] = {
    pg_errors.ForeignKeyViolation: _ForeignKeyError, pg_errors.RestrictViolation: _RestrictError,
    pg_errors.CheckViolation: _CheckError, pg_errors.UniqueViolation: _UniqueError,
    pg_errors.NotNullViolation: _NotNullError, psycopg.IntegrityError: _OtherConstraintError,
}


class _LockedError(DatabaseLockedError, pg_errors.LockNotAvailable):
    """A lock was held longer than the timeout (also psycopg's ``LockNotAvailable``)."""


def _local_timezone() -> str:
    """Return this computer's current UTC offset as a POSIX zone PostgreSQL accepts."""
    offset = datetime.now().astimezone().strftime("%z")  # e.g. -0500
    sign, hours, minutes = offset[0], offset[1:3], offset[3:5]
    west = "+" if sign == "-" else "-"  # POSIX counts hours west of UTC
    return f"<{sign}{hours}{minutes}>{west}{hours}:{minutes}"


def _begin_statements(mode: str, timeout: float) -> list[str]:
    """Return the statements that begin a transaction of ``mode`` (see ``Backend.begin``)."""
    # 0 means "no limit" to PostgreSQL: wait at least 1 ms.
    milliseconds = min(max(int(timeout * 1000), 1), _MAX_MS)
    statements = ["BEGIN", f"SET LOCAL lock_timeout = '{milliseconds}ms'"]
    if mode == "IMMEDIATE":
        statements.append(f"SELECT pg_advisory_xact_lock({WRITERS_LOCK})")
    return statements


# What the statements that begin a transaction start with.
_BEGIN_WORDS = ("BEGIN", "SET LOCAL lock_timeout", "SELECT pg_advisory_xact_lock")


def _traced_begin(mode: str) -> str:
    # In SQLite's words: IMMEDIATE is a transaction holding the writers' lock.
    return {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED"}.get(mode, "BEGIN")


def _where(location: DatabaseLocation) -> str:
    """Name the server and database of ``location`` (from the URL and libpq's defaults).

    A URL naming a service (``?service=``) is named by its service: libpq
    reads the service file only when it connects, so its host and database
    are not known here (the defaults would name others).
    """
    try:
        given: dict[str, Any] = conninfo_to_dict(location.target)
    except psycopg.ProgrammingError:  # a URL libpq cannot read: what the URL says, leniently
        given = location.server()
    if given.get("service"):
        return location.scrub(f"service {given['service']!r}")
    defaults = {option.keyword.decode(): option.val.decode() if option.val else None
                for option in psycopg.pq.Conninfo.get_defaults()}
    host = given.get("host") or defaults.get("host") or "localhost"
    port = given.get("port") or defaults.get("port") or "5432"
    database = given.get("dbname") or defaults.get("dbname") or given.get("user") \
        or defaults.get("user")
    return location.scrub(f"database {database!r} on {host}:{port}")


def _alive(raw: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection still works, as far as can be told without a round trip.

    A server that closed the connection (restart, idle timeout, terminated
    backend) has left that on the socket: reading what is pending, without
    waiting, shows it.
    """
    if raw.closed or raw.info.transaction_status != TransactionStatus.IDLE:
        return False
    try:  # an idle connection has nothing to read; anything there is a goodbye
        readable, _, _ = select.select([raw.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable and bool(raw.pgconn.status == ConnStatus.OK)


def _told(exc: BaseException, location: DatabaseLocation) -> str:
    """Return the driver's message of ``exc`` on one line, without the URL's secrets.

    libpq quotes a URL it cannot read, password and all: the exception itself,
    and those chained to it, are scrubbed too, so that no traceback showing
    them (as the cause or context of another) shows the password.
    """
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if location.scrub(str(current)) != str(current):
            current.args = (location.scrub(str(current)),)
        pending += [current.__cause__, current.__context__]
    return " ".join(str(exc).split()) or type(exc).__name__


class _Result:
    """What one statement of a query of several gave: its rows, like a cursor's."""

    def __init__(self, rows: Optional[list[tuple[Any, ...]]], rowcount: int,
                 description: Any) -> None:
        self.rows = rows or []
        self.rowcount = rowcount
        self.description = description

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Return the rows not fetched yet."""
        rows, self.rows = self.rows, []
        return rows

    def fetchone(self) -> Optional[tuple[Any, ...]]:
        """Return the next row, or None."""
        return self.rows.pop(0) if self.rows else None

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        """Return up to ``size`` of the rows not fetched yet."""
        rows, self.rows = self.rows[:size], self.rows[size:]
        return rows


class _Watchdog:
    """Cuts the connection of a call that waits for the server longer than its limit.

    A server (or network) that stops answering leaves a client waiting
    forever: TCP keeps a connection through a black hole alive, and the
    server's own timeouts cannot reach the client. Every wait for the
    server (each round trip) is registered here with its deadline; when one
    passes, the socket is shut down, so the wait ends at once with an error.
    One thread serves every connection of the process.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: dict[int, tuple[float, _Connection]] = {}
        self._next = 0
        self._thread: Optional[threading.Thread] = None
        #: By when the thread looks at the deadlines again (None: once notified).
        self._wake_at: Optional[float] = None

    def arm(self, conn: _Connection, seconds: float) -> int:
        with self._cond:
            self._next += 1
            now = time.monotonic()
            deadline = now + seconds
            self._deadlines[self._next] = (deadline, conn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nexuslims-db watchdog",
                                                daemon=True)
                self._thread.start()
            # The thread is woken only when it would look too late: a thread switch
            # for every round trip would cost more than the round trip itself.
            if self._wake_at is None or deadline < self._wake_at:
                self._wake_at = now  # (it looks at once)
                self._cond.notify()
            return self._next

    def disarm(self, token: int) -> None:
        with self._cond:
            self._deadlines.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            armed = self._next
            while True:
                now = time.monotonic()
                for token, (deadline, conn) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[token]
                        conn.cut()
                soonest = min((deadline for deadline, _ in self._deadlines.values()), default=None)
                if soonest is None and self._next != armed:
                    # Waits come and go: look again a little later, sooner than any
                    # deadline a new one can have, rather than be woken for each.
                    soonest = now + _IDLE_LOOK
                armed = self._next
                self._wake_at = soonest
                self._cond.wait(None if soonest is None else max(soonest - now, 0.001))


_WATCHDOG = _Watchdog()


class _Connection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server is bounded (see :class:`_Watchdog`)."""

    #: How long one round trip may take, in seconds (0: unbounded).
    limit: float = 0.0
    #: Set when the watchdog cut the connection.
    was_cut: bool = False
    #: The pool that handed the connection out (while it is out).
    pool: Optional[ConnectionPool[Any]] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Statements that need no answer yet, sent with the next one that does:
        #: ``(sql, params, many)`` (a transaction's BEGIN, writes whose results
        #: nobody reads). Nothing is sent for a transaction that ran nothing.
        self.pending: list[tuple[str, Any, bool]] = []
        #: Whether a transaction was begun (perhaps not yet sent) and not ended.
        self.begun = False
        #: The session's settings, as last sent (see ``_session_settings``).
        self.settings: dict[str, Any] = {}

    def send(self, statements: Sequence[tuple[str, Any, bool]]) -> list[Any]:
        """Send what is pending and ``statements`` in one round trip; return their cursors."""
        pending, self.pending = self.pending, []
        batch = [*pending, *statements]
        if len(batch) == 1 and not batch[0][2]:
            sql, params, _ = batch[0]
            return [self.execute(sql, params)]
        # One query of several statements (libpq reads its results in C, where a
        # pipeline's are read in Python; and after a pipeline's last message, a
        # flush request, PostgreSQL would never end a session idle in a
        # transaction left open).
        return self._send_simple(batch)[len(pending):]

    def _send_simple(self, batch: Sequence[tuple[str, Any, bool]]) -> list[_Result]:
        """Send ``batch`` as one query of several statements, values bound here."""
        cursor = psycopg.ClientCursor(self)
        texts: list[str] = []
        sizes: list[int] = []
        for sql, params, many in batch:
            rows = params if many else [params]
            texts += [cursor.mogrify(sql, row) for row in rows]
            sizes.append(len(rows))
        cursor.execute(";\n".join(texts), prepare=False)
        results: list[_Result] = []
        for size in sizes:
            count, found, description = 0, None, None
            for _ in range(size):
                if cursor.description is not None:
                    found, description = cursor.fetchall(), cursor.description
                count += max(cursor.rowcount, 0)
                cursor.nextset()
            results.append(_Result(found, count, description))
        return results

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        """Wait for the server as psycopg does, for at most :attr:`limit` seconds."""
        if not self.limit:
            return super().wait(gen, *args, **kwargs)
        token = _WATCHDOG.arm(self, self.limit)
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError:
            if self.was_cut:
                raise psycopg.OperationalError(
                    f"no answer from the server for {self.limit:g} s "
                    f"({ENV_TIMEOUT} plus {_GRACE:g} s): the server or the network stopped "
                    f"answering") from None
            raise
        finally:
            _WATCHDOG.disarm(token)

    def cut(self) -> None:
        """End the wait in progress: shut the socket down (the connection is lost)."""
        self.was_cut = True
        try:
            sock = socket.socket(fileno=self.pgconn.socket)
        except (OSError, ValueError, psycopg.OperationalError):
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()  # the socket stays libpq's to close


def _worker_name() -> str:
    """Name this process to the server (``pg_stat_activity.application_name``)."""
    return f"nexuslims-db {socket.gethostname()}:{os.getpid()}"[:63]


def _milliseconds(seconds: float) -> int:
    """Return ``seconds`` as PostgreSQL's milliseconds (0 means no limit to it: at least 1)."""
    return min(max(int(seconds * 1000), 1), _MAX_MS)


def _connection_settings(location: DatabaseLocation) -> dict[str, Any]:
    """Return psycopg's connection parameters beyond the URL's: the package's limits.

    A dead peer on either side is noticed by TCP keepalives and
    ``tcp_user_timeout``. The session's own settings (its time zone, a
    statement's limit, a transaction's idle limit, see
    :func:`_session_settings`) go with its first statement, so that the
    URL's, a service file's and ``PGOPTIONS``' options all stay in force.
    """
    try:
        conninfo_to_dict(location.target)
    except psycopg.ProgrammingError as exc:
        raise DatabaseConfigError(
            f"The URL of PostgreSQL {_where(location)} ({location}, from {location.source}) "
            f"is not valid: {_told(exc, location)}") from None
    timeout = lock_timeout()
    keepalive = max(1, min(int(timeout / 3) or 1, 60))
    return {
        "autocommit": True,
        # psycopg would prepare a statement at its sixth run, a round trip more
        # (and prepared statements break behind a pooler such as PgBouncer).
        "prepare_threshold": None,
        "connect_timeout": int(max(2, min(timeout, 10))),
        "application_name": _worker_name(),
        "keepalives": 1, "keepalives_idle": keepalive, "keepalives_interval": keepalive,
        "keepalives_count": 3, "tcp_user_timeout": _milliseconds(timeout + _GRACE),
    }


def _session_settings(zone: str) -> dict[str, Any]:
    """Return the server's settings of a session: its time zone and limits, as of now.

    A statement is bounded (``statement_timeout``) and so is a transaction
    left idle while it holds locks (``idle_in_transaction_session_timeout``:
    the server frees the locks of a client that froze or vanished); the
    server's keepalives notice a peer gone.
    """
    timeout = lock_timeout()
    keepalive = max(1, min(int(timeout / 3) or 1, 60))
    return {"TimeZone": zone, "statement_timeout": _milliseconds(timeout + _GRACE / 2),
            "idle_in_transaction_session_timeout": _milliseconds(max(timeout, 1)),
            "tcp_keepalives_idle": keepalive, "tcp_keepalives_interval": keepalive,
            "tcp_keepalives_count": 3}


def _connect(location: DatabaseLocation) -> _Connection:
    """Open one connection (the real reason, plainly, if the server refuses it)."""
    try:
        raw = _Connection.connect(location.target, **_connection_settings(location))
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(
            f"Cannot connect to PostgreSQL {_where(location)} ({location}): "
            f"{_told(exc, location)}", transient=_transient(exc), sent=False) from None
    raw.limit = lock_timeout() + _GRACE
    return raw


def _transient(exc: psycopg.Error) -> bool:
    """Whether a failure to connect may pass: no answer, a server starting or stopping.

    A refused login, a missing database, a certificate that does not verify
    do not pass by themselves: trying again would only fail again (and count
    failed logins against the account). libpq gives no SQLSTATE for a
    connection it could not make, so this is the one place that reads its
    words, and only English ones: libpq's own (in the client's language,
    English unless the program chose another) and the server's refusals in
    English. Anything else passes, so that a server starting or stopping is
    waited for in any language; a refusal in another language is then tried
    again until ``nexusLIMS_db_timeout`` before it is raised.
    """
    if exc.sqlstate:
        return exc.sqlstate[:2] in ("08", "57") or exc.sqlstate == "53300"
    text = str(exc)
    return not any(words in text for words in _REFUSED)


# What trying again cannot mend: libpq refusing on its own, and the server's
# refusals (its answers that pass: starting up, shutting down, in recovery, full).
_REFUSED = ("password", "certificate", "SSL", "ssl", "host name", "translate host",
            "authentication", "service", "invalid", "GSS", "does not exist", "pg_hba.conf",
            "not permitted to log in", "permission denied", "not currently accepting")


def _pool_wait() -> float:
    """Return how long to wait for a connection from the pool (0 would not even look)."""
    return max(lock_timeout(), 1.0)


def _check(raw: _Connection) -> None:
    """Refuse a connection broken while it was idle in the pool: no round trip (:func:`_alive`)."""
    if not _alive(raw):
        raw.close()  # so that the pool replaces it, instead of keeping it
        raise psycopg.OperationalError("the connection was closed by the server")


class _Server:
    """Connections to one server database, in a :class:`psycopg_pool.ConnectionPool`.

    The pool keeps the connections a process has opened (at least one, for
    a process that polls), checks each before handing it out (without a
    round trip: a connection broken by a restart is never handed out) and
    opens new ones in the background when the server comes back. The first
    connection is opened directly, so that a server that refuses it says
    why at once.
    """

    def __init__(self, location: DatabaseLocation) -> None:
        self.location = location
        self._lock = threading.Lock()
        self._pool: Optional[ConnectionPool[_Connection]] = None
        self.last_error: Optional[str] = None

    def _current(self) -> Optional[ConnectionPool[_Connection]]:
        return self._pool

    def _open_pool(self) -> ConnectionPool[_Connection]:
        existing = self._current()
        if existing is not None:
            return existing
        _connect(self.location).close()  # refused? says why, now
        server = self

        class _Pooled(_Connection):
            """A connection the pool opens in the background, with the settings of the moment."""

            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> _Connection:  # type: ignore[override]
                try:
                    raw = _connect(server.location)
                except DatabaseUnavailableError as exc:
                    server.last_error = str(exc)  # for the caller who waits in vain
                    raise
                server.last_error = None
                return raw

        pool: ConnectionPool[_Connection] = ConnectionPool(
            self.location.target, connection_class=_Pooled, min_size=1, max_size=pool_size(),
            check=_check, name=self.location.describe(), timeout=_pool_wait(),
            max_idle=_MAX_IDLE, num_workers=1, open=False)
        # Its first connection, before the first caller asks (one, not two); if the
        # server went away since the first connection, callers wait for it.
        with suppress(PoolTimeout):
            pool.open(wait=True, timeout=_pool_wait())
        with self._lock:
            existing = self._current()
            if existing is None:
                self._pool = pool
        if existing is not None:  # another thread opened one meanwhile
            pool.close()
            return existing
        return pool

    def take(self, *, create: bool, foreign_keys: bool) -> Any:
        pool = self._open_pool()
        # While the pool cannot reach the server, it tries again less and less
        # often: a caller asks briefly, then a new pool connects at once.
        away = self.last_error
        wait = _AWAY_WAIT if away else _pool_wait()
        try:
            try:
                raw = pool.getconn(timeout=min(wait, _STUCK_WAIT))
                raw.pool = pool
            except PoolTimeout:
                if away:  # a new pool, at once: connected if the server is back, or says why not
                    self._discard(pool)
                    return self.take(create=create, foreign_keys=foreign_keys)
                if pool.get_stats().get("pool_size", 0) < pool.max_size:
                    # The pool has room yet brings none: after an outage it tries again
                    # less and less often, one connection at a time. This call
                    # connects by itself (the connection is closed when given back).
                    raw = _connect(self.location)
                else:  # every connection is in use: wait for one
                    raw = pool.getconn(timeout=max(wait - _STUCK_WAIT, 0.001))
                    raw.pool = pool
        except PoolTimeout:
            reason = self.last_error or "all its connections are busy"
            raise DatabaseUnavailableError(
                f"No connection to PostgreSQL {_where(self.location)} within {ENV_TIMEOUT} "
                f"({lock_timeout():g} s): {reason}", sent=False) from None
        except PoolClosed:  # closed meanwhile: a new pool next time
            with self._lock:
                self._pool = None
            return self.take(create=create, foreign_keys=foreign_keys)
        raw.limit = lock_timeout() + _GRACE
        # The settings of the moment (the local offset moves with daylight saving
        # time; nexusLIMS_db_timeout may have changed): sent with the first statement.
        for name, value in _session_settings(_local_timezone()).items():
            if raw.settings.get(name) != value:
                raw.pending.append((f"SET {name} = '{value}'", (), False))
                raw.settings[name] = value
        return raw

    def give(self, raw: Any) -> None:
        pool = raw.pool
        raw.pool = None
        if pool is None or pool.closed:
            raw.close()
        else:
            pool.putconn(raw)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _discard(self, pool: ConnectionPool[_Connection]) -> None:
        """Drop ``pool``: the next caller opens a new one (closed aside: it may be connecting)."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        threading.Thread(target=pool.close, name="nexuslims-db pool closing",
                         daemon=True).start()

    def stats(self) -> dict[str, int]:
        pool = self._pool
        if pool is None:
            return {"open": 0, "idle": 0, "most": pool_size()}
        figures = pool.get_stats()
        return {"open": figures.get("pool_size", 0), "idle": figures.get("pool_available", 0),
                "most": pool.max_size}


class _Listener:
    """A connection listening for changes of ``instruments`` in one schema, and their count."""

    def __init__(self, raw: _Connection, schema: str) -> None:
        self.raw = raw
        self.schema = schema
        self.version = 0

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


def _run(raw: _Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """Run one statement of psycopg's own SQL (with what is pending); return its cursor."""
    return raw.send([(sql, params, False)])[0]


def _scalar(raw: _Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    row = _run(raw, sql, params).fetchone()
    return None if row is None else row[0]


class _PostgreSQL:
    """The PostgreSQL backend (see :class:`~nexusLIMS.db.backends.Backend`)."""

    name: BackendName = "postgresql"
    ddl: Dialect = POSTGRESQL_DDL
    driver_errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
    lock_rows = " FOR UPDATE"
    # A claim locks the START rows it takes, skipping those another builder holds.
    skip_locked = "SKIP LOCKED"
    # The claim's LIMIT then stops the scan of the claiming index, whatever the
    # statistics say (a sort would read every waiting row, and every dead one).
    ordered_reads: tuple[str, ...] = (
        "SELECT set_config('enable_sort', 'off', true), "
        "set_config('enable_incremental_sort', 'off', true)",)
    # One plain read: no join plan can go wrong on stale statistics.
    pairs_through_index = False
    is_file = False

    # --- connections -----------------------------------------------------------

    def pool(self, location: DatabaseLocation) -> Pool:
        return _Server(location)

    def open_watch(self, location: DatabaseLocation) -> Any:
        # A connection that LISTENs for the trigger's announcements of changes to
        # instruments: asking it whether one came costs no round trip.
        raw = _connect(location)
        try:
            schema, announced = raw.execute(
                "SELECT current_schema(), EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s "
                "AND tgrelid = to_regclass('instruments'))",
                (POSTGRESQL_DDL.instruments_trigger,)).fetchone() or (None, False)
            if not announced:
                logger.info("%s has no trigger announcing changes of its instruments (made "
                            "before this version?): instrument look-ups ask the server every "
                            "time; 'nexuslims-db init' adds it", location)
                raw.close()
                return None
            raw.execute(f"LISTEN {POSTGRESQL_DDL.instruments_channel}")
        except BaseException:
            raw.close()
            raise
        return _Listener(raw, str(schema))

    def data_version(self, raw: Any) -> Optional[int]:
        listener: _Listener = raw
        pgconn = listener.raw.pgconn
        try:
            pgconn.consume_input()  # what arrived, without waiting
        except psycopg.OperationalError:
            return None  # lost (a restart?): changes may have been missed
        while (note := pgconn.notifies()) is not None:
            if note.extra.decode() == listener.schema:
                listener.version += 1
        return listener.version

    def begin(self, raw: Any, mode: str, timeout: float) -> str:
        # Sent with the transaction's first statement: no round trip of its own.
        raw.pending.extend((statement, (), False) for statement in _begin_statements(mode, timeout))
        raw.begun = True
        return _traced_begin(mode)

    def execute(self, raw: Any, sql: str, params: Any, timeout: float) -> Any:
        # Always with a params object (maybe empty), so that psycopg turns %% back into %.
        return _run(raw, native_sql(sql), params if params is not None else ())

    def queue(self, raw: Any, sql: str, params: Any, many: bool) -> None:
        raw.pending.append((native_sql(sql), params if params is not None else (), many))

    def write_alone(
        self, raw: Any, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        began, ((_, count),) = self.write_batch(raw, [(sql, params)], mode, timeout)
        return began, count

    def write_batch(
        self, raw: Any, statements: Sequence[tuple[Any, ...]], mode: str, timeout: float
    ) -> tuple[str, list[Result]]:
        # Every statement sent, then one wait: one round trip.
        begin = _begin_statements(mode, timeout)
        cursors = raw.send([
            *((statement, (), False) for statement in begin),
            *((native_sql(f"{sql} RETURNING {key[0]}" if key else sql),
               params if params is not None else (), False) for sql, params, *key in statements),
            ("COMMIT", (), False)])[len(begin):-1]
        return _traced_begin(mode), [
            (cursor.fetchall() if cursor.description else None, int(cursor.rowcount))
            for cursor in cursors]

    def read_batch(
        self, raw: Any, statements: Sequence[tuple[str, Any]], timeout: float
    ) -> tuple[list[str], list[list[tuple[Any, ...]]]]:
        snapshot = len(statements) > 1 and not self.in_transaction(raw)
        queries = [(native_sql(sql), params if params is not None else (), False)
                   for sql, params in statements]
        if snapshot:  # one snapshot for them all
            queries = [("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", (), False), *queries,
                       ("COMMIT", (), False)]
        cursors = raw.send(queries)
        if snapshot:
            cursors = cursors[1:-1]
        return (["BEGIN DEFERRED", "COMMIT"] if snapshot else []), [
            cursor.fetchall() for cursor in cursors]

    def executemany(self, raw: Any, sql: str, rows: Sequence[Any]) -> None:
        raw.send([(native_sql(sql), rows, True)])

    def insert_rows(
        self, raw: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) < _COPY_FROM:  # sent with the next statement, or the commit
            self.queue(raw, insert_statement(table, columns), rows, True)
            return
        if raw.pending:  # (a COPY cannot be in a pipeline)
            raw.send([])
        # COPY: one stream of rows, checked as INSERTs are, at a fraction of their cost.
        with raw.cursor() as cursor, \
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def insert_id(self, raw: Any, sql: str, params: Any, key: str, timeout: float) -> int:
        row = _run(raw, native_sql(f"{sql} RETURNING {key}"), params).fetchone()
        return int(row[0])

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        # One array parameter: one short statement to plan, however many values.
        return [(f"{column} = ANY(?)", (list(values),))] if values else []

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.begun or raw.info.transaction_status != TransactionStatus.IDLE)

    def commit(self, raw: Any) -> None:
        self._end(raw, "COMMIT")

    def rollback(self, raw: Any) -> None:
        self._end(raw, "ROLLBACK")

    def _end(self, raw: Any, statement: str) -> None:
        raw.begun = False
        if raw.info.transaction_status == TransactionStatus.IDLE and (
                statement == "ROLLBACK" or all(sql.startswith(_BEGIN_WORDS)
                                               for sql, _, _ in raw.pending)):
            if any(sql.startswith("SET ") for sql, _, _ in raw.pending):
                raw.settings = {}  # not sent after all: sent with the next call
            raw.pending.clear()  # nothing of it reached the server: nothing to end
            return
        _run(raw, statement)

    def translate(
        self, exc: BaseException, location: DatabaseLocation, statement: str = ""
    ) -> Optional[BaseException]:
        if isinstance(exc, NexusLIMSDBError) or not isinstance(exc, psycopg.Error):
            return None
        message = _told(exc, location)  # the driver's error is scrubbed of secrets, too
        if isinstance(exc, pg_errors.LockNotAvailable):
            return _LockedError(
                f"database is locked: another program kept {location} locked for longer than "
                f"{ENV_TIMEOUT} ({lock_timeout():g} s); try again, or raise {ENV_TIMEOUT}")
        if isinstance(exc, psycopg.IntegrityError):
            return _constraint_error(exc, statement)
        if isinstance(exc, pg_errors.IdleInTransactionSessionTimeout):
            return DatabaseUnavailableError(
                f"PostgreSQL {_where(location)} ended the session: it was idle in a transaction "
                f"for longer than {ENV_TIMEOUT} ({lock_timeout():g} s), so that its locks hold "
                f"up no one: {message}")
        if isinstance(exc, psycopg.OperationalError) \
                and not isinstance(exc, pg_errors.QueryCanceled):
            return DatabaseUnavailableError(
                f"Lost the connection to PostgreSQL {_where(location)}: {message}")
        return None

    def from_sqlite_sql(self, sql: str) -> str:
        return to_postgres(sql)

    # --- the catalogue ---------------------------------------------------------

    def table_names(self, raw: Any) -> set[str]:
        return {name for (name,) in _run(raw,
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()}

    def column_names(self, raw: Any, table: str) -> list[str]:
        return [name for (name,) in _run(raw,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()]

    def index_names(self, raw: Any, table: str) -> set[str]:
        return {name for (name,) in _run(raw,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = to_regclass(%s))", (table, table)).fetchall()}

    def on_delete_action(self, raw: Any, table: str, column: str) -> Optional[str]:
        action = _scalar(
            raw, "SELECT c.confdeltype FROM pg_constraint AS c JOIN pg_attribute AS a "
                 "ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
                 "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' AND a.attname = %s",
            (table, column))
        return None if action is None else _ON_DELETE.get(str(action), str(action))

    def id_counter(self, raw: Any, table: str, column: str) -> Optional[int]:
        sequence = _scalar(raw, "SELECT pg_get_serial_sequence(%s, %s)", (table, column))
        if sequence is None:
            return None
        row = _run(raw, f"SELECT last_value, is_called FROM {sequence}").fetchone()
        return None if row is None or not row[1] else int(row[0])

    def set_id_counter(self, raw: Any, table: str, column: str, value: int) -> None:
        _run(raw, "SELECT setval(pg_get_serial_sequence(%s, %s), %s, %s)",
                    (table, column, max(int(value), 1), int(value) >= 1))

    def schema_version(self, raw: Any) -> int:
        version_table = POSTGRESQL_DDL.version_table
        if not _scalar(raw, "SELECT to_regclass(%s) IS NOT NULL", (version_table,)):
            return 0
        return int(_scalar(raw, f"SELECT max(version) FROM {version_table}") or 0)

    def set_schema_version(self, raw: Any, version: int) -> None:
        create, insert = POSTGRESQL_DDL.version_statements(version)
        _run(raw, create)
        _run(raw, f"DELETE FROM {POSTGRESQL_DDL.version_table}")
        _run(raw, insert)

    def server_version(self, raw: Any) -> str:
        version = int(raw.info.server_version)  # e.g. 150018
        return f"PostgreSQL {version // 10000}.{version % 10000}"

    def size(self, raw: Any, location: DatabaseLocation) -> Optional[int]:
        size = _scalar(raw, "SELECT pg_database_size(current_database())")
        return None if size is None else int(size)

    # --- migration mechanics -----------------------------------------------------

    def guard_old_schema(self, raw: Any, version: int) -> None:
        """Nothing to guard: the foreign key itself refuses (see ``restrict_deletes``)."""

    def blockers(self, raw: Any, table: str) -> list[str]:
        return []  # constraints change in place, under views and triggers alike

    def apply_constraints(self, raw: Any, table: Table, known_indexes: set[str]) -> None:
        # PostgreSQL changes constraints in place; the indexes stay.
        names = [name for (name,) in _run(raw,
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) "
            "AND contype IN ('c', 'f')", (table.name,)).fetchall()]
        for name in names:
            _run(raw, f"ALTER TABLE {table.name} DROP CONSTRAINT {quote(name)}")
        for column in table.columns:
            if column.allowed:
                _run(raw, f"ALTER TABLE {table.name} ADD CONSTRAINT "
                            f"{table.name}_{column.name}_check {POSTGRESQL_DDL.check(column)}")
            if column.references:
                # NOT VALID keeps rows whose instrument is gone, as SQLite does.
                _run(raw, f"ALTER TABLE {table.name} ADD CONSTRAINT "
                            f"{table.name}_{column.name}_fkey FOREIGN KEY ({quote(column.name)}) "
                            f"{POSTGRESQL_DDL.references(column)} NOT VALID")

    def restrict_deletes(self, raw: Any) -> None:
        """Nothing beyond the foreign key: its refusal is explained by :meth:`translate`."""

    def backup(self, raw: Any, target: Path) -> Optional[Path]:
        return None  # a server backs itself up (pg_dump)

    def compact(self, location: DatabaseLocation) -> bool:
        return False  # the autovacuum daemon does it

    def removed_if_failed(self, location: DatabaseLocation) -> AbstractContextManager[None]:
        return nullcontext()  # a server database is never created here

    def staged(self, location: DatabaseLocation,
               like: Optional[Path]) -> AbstractContextManager[DatabaseLocation]:
        return nullcontext(location)  # written in place, in one transaction

    # --- integrity and identity ----------------------------------------------------

    def integrity_problems(self, raw: Any, *, full: bool) -> list[str]:
        # What the catalogue tells at once: indexes a failed CREATE INDEX
        # CONCURRENTLY (or REINDEX CONCURRENTLY) left behind, which queries
        # skip. The server checksums its own pages; reading every table is not cheap.
        return [f"index {index} of table {table} is invalid (a CREATE INDEX or REINDEX "
                f"CONCURRENTLY that failed); rebuild it: REINDEX INDEX {quote(index)}"
                for index, table in _run(raw,
                    "SELECT i.relname, t.relname FROM pg_index AS x "
                    "JOIN pg_class AS i ON i.oid = x.indexrelid "
                    "JOIN pg_class AS t ON t.oid = x.indrelid "
                    "WHERE i.relnamespace = to_regnamespace(current_schema()) "
                    "AND NOT (x.indisvalid AND x.indisready AND x.indislive) "
                    "ORDER BY t.relname, i.relname").fetchall()]

    def damage_advice(self, location: DatabaseLocation) -> str:
        return ("rebuild what is invalid as the message says (as the table's owner), or "
                "restore the database from a backup (pg_dump)")

    def identity(self, raw: Any, location: DatabaseLocation) -> Hashable:
        # The server by its start and its port (its own, not a proxy's), then the
        # database and the schema the tables are in.
        row = _run(raw, "SELECT pg_postmaster_start_time(), current_setting('port'), "
                          "current_database(), current_schema()").fetchone()
        return tuple(row)


def _constraint_error(exc: psycopg.IntegrityError, statement: str) -> ConstraintError:
    """Return the package's error for a constraint psycopg reports, by SQLSTATE."""
    cls, kind = _CONSTRAINTS.get(exc.sqlstate or "", (psycopg.IntegrityError, ConstraintKind.OTHER))
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if kind is ConstraintKind.FOREIGN_KEY and writes_to_parent(statement):
        # A foreign key refusing to delete (or replace) an instrument with logs.
        kind, message = ConstraintKind.RESTRICT, f"{KEEP_LOGS_MESSAGE}: {message}"
    return _CLASSES[cls](message).classified(kind, exc.diag.constraint_name, exc.diag.table_name)


#: The PostgreSQL backend.
POSTGRESQL = _PostgreSQL()
