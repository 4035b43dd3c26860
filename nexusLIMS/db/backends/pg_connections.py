"""Connections to a PostgreSQL server: the pool, the watchdog, the change listener.

Part of the PostgreSQL backend (:mod:`nexusLIMS.db.backends.postgresql`).
Every wait for the server is bounded (:class:`ServerConnection`, whose waits
a watchdog thread cuts); connections are kept in a ``psycopg_pool`` pool per
database (:class:`ServerPool`), each checked without a round trip before it
is handed out, with the session's settings (time zone, statement and idle
limits, keepalives) sent with its first statement; a connection that failed
to connect says why, without the password (:func:`told`).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from contextlib import suppress
from datetime import datetime
from typing import Any, Optional, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout, pool_size
from nexusLIMS.db.errors import DatabaseConfigError, DatabaseUnavailableError

__all__ = ["Listener", "ServerConnection", "ServerPool", "connect",
           "milliseconds", "told", "where"]

logger = logging.getLogger(__name__)

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
#: when the pool has room for more (see ``ServerPool.take``).
_STUCK_WAIT = 1.0
#: Seconds an unused connection stays open beyond the one a process keeps.
_MAX_IDLE = 1.0
_MAX_MS = 2**31 - 1  # the largest lock_timeout PostgreSQL takes, in milliseconds


def _local_timezone() -> str:
    """Return this computer's current UTC offset as a POSIX zone PostgreSQL accepts."""
    offset = datetime.now().astimezone().strftime("%z")  # e.g. -0500
    sign, hours, minutes = offset[0], offset[1:3], offset[3:5]
    west = "+" if sign == "-" else "-"  # POSIX counts hours west of UTC
    return f"<{sign}{hours}{minutes}>{west}{hours}:{minutes}"


def where(location: DatabaseLocation) -> str:
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
        readable = _readable(raw.pgconn.socket)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable and bool(raw.pgconn.status == ConnStatus.OK)


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read (or was closed), without waiting."""
    if hasattr(select, "poll"):  # (select.select refuses descriptors from 1024 on)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def told(exc: BaseException, location: DatabaseLocation) -> str:
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
        self._deadlines: dict[int, tuple[float, ServerConnection]] = {}
        self._next = 0
        self._thread: Optional[threading.Thread] = None
        #: By when the thread looks at the deadlines again (None: once notified).
        self._wake_at: Optional[float] = None

    def arm(self, conn: ServerConnection, seconds: float) -> int:
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


class ServerConnection(psycopg.Connection[Any]):
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
        try:
            if len(batch) == 1 and not batch[0][2]:
                sql, params, _ = batch[0]
                return [self.execute(sql, params)]
            # One query of several statements (libpq reads its results in C, where a
            # pipeline's are read in Python; and after a pipeline's last message, a
            # flush request, PostgreSQL would never end a session idle in a
            # transaction left open).
            return self._send_simple(batch)[len(pending):]
        except BaseException:
            self.undone(pending)  # (undone with the rest of the failed batch)
            raise

    def undone(self, statements: Sequence[tuple[str, Any, bool]]) -> None:
        """Note that ``statements``, once pending, took no effect (settings: sent again)."""
        if any(sql.startswith("SET ") for sql, _, _ in statements):
            self.settings = {}

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


def milliseconds(seconds: float) -> int:
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
            f"The URL of PostgreSQL {where(location)} ({location}, from {location.source}) "
            f"is not valid: {told(exc, location)}") from None
    timeout = lock_timeout()
    keepalive = _keepalive(timeout)
    return {
        "autocommit": True,
        # psycopg would prepare a statement at its sixth run, a round trip more
        # (and prepared statements break behind a pooler such as PgBouncer).
        "prepare_threshold": None,
        "connect_timeout": int(max(2, min(timeout, 10))),
        "application_name": _worker_name(),
        "keepalives": 1, "keepalives_idle": keepalive, "keepalives_interval": keepalive,
        "keepalives_count": 3, "tcp_user_timeout": milliseconds(timeout + _GRACE),
    }


def _keepalive(timeout: float) -> int:
    """Seconds between TCP keepalive probes (three unanswered: the peer is gone)."""
    return max(1, min(int(timeout / 3) or 1, 60))


def _session_settings(zone: str, timeout: float) -> dict[str, Any]:
    """Return the server's settings of a session: its time zone and limits.

    A statement is bounded (``statement_timeout``) and so is a transaction
    left idle while it holds locks (``idle_in_transaction_session_timeout``:
    the server frees the locks of a client that froze or vanished); the
    server's keepalives notice a peer gone. ``timeout`` is ``nexusLIMS_db_timeout``.
    """
    keepalive = _keepalive(timeout)
    return {"TimeZone": zone, "statement_timeout": milliseconds(timeout + _GRACE / 2),
            "idle_in_transaction_session_timeout": milliseconds(max(timeout, 1)),
            "tcp_keepalives_idle": keepalive, "tcp_keepalives_interval": keepalive,
            "tcp_keepalives_count": 3}


def connect(location: DatabaseLocation) -> ServerConnection:
    """Open one connection (the real reason, plainly, if the server refuses it)."""
    try:
        raw = ServerConnection.connect(location.target, **_connection_settings(location))
    except psycopg.Error as exc:
        raise DatabaseUnavailableError(
            f"Cannot connect to PostgreSQL {where(location)} ({location}): "
            f"{told(exc, location)}", transient=_transient(exc), sent=False) from None
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
_REFUSED = ("password", "certificate", "SSL is not enabled", "does not support SSL",
            "SSL off", "sslmode", "sslrootcert", "server common name",
            "Name or service not known", "nodename nor servname", "authentication", "service",
            "invalid", "GSS", "does not exist", "pg_hba.conf", "not permitted to log in",
            "permission denied", "not currently accepting")


def _pool_wait(timeout: float) -> float:
    """Return how long to wait for a connection from the pool (0 would not even look)."""
    return max(timeout, 1.0)


def _check(raw: ServerConnection) -> None:
    """Refuse a connection broken while it was idle in the pool: no round trip (:func:`_alive`)."""
    if not _alive(raw):
        raw.close()  # so that the pool replaces it, instead of keeping it
        raise psycopg.OperationalError("the connection was closed by the server")


class ServerPool:
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
        self._pool: Optional[ConnectionPool[ServerConnection]] = None
        self.last_error: Optional[str] = None

    def _current(self) -> Optional[ConnectionPool[ServerConnection]]:
        return self._pool

    def _open_pool(self) -> ConnectionPool[ServerConnection]:
        existing = self._current()
        if existing is not None:
            return existing
        connect(self.location).close()  # refused? says why, now
        server = self

        class _Pooled(ServerConnection):
            """A connection the pool opens in the background, with the settings of the moment."""

            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> ServerConnection:  # type: ignore[override]
                try:
                    raw = connect(server.location)
                except DatabaseUnavailableError as exc:
                    server.last_error = str(exc)  # for the caller who waits in vain
                    raise
                server.last_error = None
                return raw

        pool: ConnectionPool[ServerConnection] = ConnectionPool(
            self.location.target, connection_class=_Pooled, min_size=1, max_size=pool_size(),
            check=_check, name=self.location.describe(), timeout=_pool_wait(lock_timeout()),
            max_idle=_MAX_IDLE, num_workers=1, open=False)
        # Its first connection, before the first caller asks (one, not two); if the
        # server went away since the first connection, callers wait for it.
        with suppress(PoolTimeout):
            pool.open(wait=True, timeout=_pool_wait(lock_timeout()))
        with self._lock:
            existing = self._current()
            if existing is None:
                self._pool = pool
        if existing is not None:  # another thread opened one meanwhile
            pool.close()
            return existing
        return pool

    def take(self, *, create: bool, foreign_keys: bool) -> Any:
        """Return a connection (see :class:`~nexusLIMS.db.backends.base.Pool`)."""
        pool = self._open_pool()
        # While the pool cannot reach the server, it tries again less and less
        # often: a caller asks briefly, then a new pool connects at once.
        away = self.last_error
        timeout = lock_timeout()
        wait = _AWAY_WAIT if away else _pool_wait(timeout)
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
                    raw = connect(self.location)
                else:  # every connection is in use: wait for one
                    raw = pool.getconn(timeout=max(wait - _STUCK_WAIT, 0.001))
                    raw.pool = pool
        except PoolTimeout:
            reason = self.last_error or "all its connections are busy"
            raise DatabaseUnavailableError(
                f"No connection to PostgreSQL {where(self.location)} within {ENV_TIMEOUT} "
                f"({timeout:g} s): {reason}", sent=False) from None
        except PoolClosed:  # closed meanwhile: a new pool next time
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            return self.take(create=create, foreign_keys=foreign_keys)
        raw.limit = timeout + _GRACE
        # The settings of the moment (the local offset moves with daylight saving
        # time; nexusLIMS_db_timeout may have changed): sent with the first statement.
        for name, value in _session_settings(_local_timezone(), timeout).items():
            if raw.settings.get(name) != value:
                raw.pending.append((f"SET {name} = '{value}'", (), False))
                raw.settings[name] = value
        return raw

    def give(self, raw: Any) -> None:
        """Take back a connection :meth:`take` returned (closed if it is not the pool's)."""
        pool = raw.pool
        raw.pool = None
        if raw.pending:  # never sent (a block that ended without its transaction's end)
            raw.undone(raw.pending)
            raw.pending.clear()
        raw.begun = False
        if pool is None or pool.closed:
            raw.close()
        else:
            pool.putconn(raw)

    def close(self) -> None:
        """Close the pool and its connections."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _discard(self, pool: ConnectionPool[ServerConnection]) -> None:
        """Drop ``pool``: the next caller opens a new one (closed aside: it may be connecting)."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        threading.Thread(target=pool.close, name="nexuslims-db pool closing",
                         daemon=True).start()

    def stats(self) -> dict[str, int]:
        """Return the connections open, those idle, and the most the pool keeps."""
        pool = self._pool
        if pool is None:
            return {"open": 0, "idle": 0, "most": pool_size()}
        figures = pool.get_stats()
        return {"open": figures.get("pool_size", 0), "idle": figures.get("pool_available", 0),
                "most": pool.max_size}


class Listener:
    """A connection listening for changes of ``instruments`` in one schema, and their count."""

    def __init__(self, raw: ServerConnection, schema: str) -> None:
        self.raw = raw
        self.schema = schema
        self.version = 0

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()
