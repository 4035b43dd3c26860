"""The one way to the NexusLIMS database.

Every query of the package goes through :func:`connect`: it resolves the
database from the environment at call time, refuses to create a missing
file, turns foreign keys on, bounds lock waits by ``nexusLIMS_db_timeout``,
runs one transaction and always closes. SQL is written once, with ``?``
placeholders, for every backend.

:func:`tracing` shows every connection and statement to a callback, which is
how the tests see the SQL and the transactions.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

from nexusLIMS.db.backends import Backend, Begin, backend_for, insert_statement
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, locate_database, lock_timeout

__all__ = [
    "Begin",
    "Connection",
    "Params",
    "Tracer",
    "close_watches",
    "connect",
    "data_version",
    "removed_if_failed",
    "tracing",
]

logger = logging.getLogger(__name__)

#: The values of a statement's placeholders.
Params = Union[Sequence[Any], Mapping[str, Any]]
#: A callback given ``(event, text)``: ``("open", location)``,
#: ``("execute", sql)``, ``("executemany", sql)`` or ``("close", location)``.
Tracer = Callable[[str, str], None]

_tracers: list[Tracer] = []
_tracers_lock = threading.Lock()


@contextmanager
def tracing(tracer: Tracer) -> Iterator[Tracer]:
    """Show every connection opened and statement run, in this block, to ``tracer``.

    Transactions show as SQLite begins them: ``BEGIN IMMEDIATE`` holds the
    writers' lock (on PostgreSQL, an advisory lock), ``BEGIN``/``BEGIN
    DEFERRED`` does not.

    Yields
    ------
    Tracer
        ``tracer`` itself.
    """
    with _tracers_lock:
        _tracers.append(tracer)
    try:
        yield tracer
    finally:
        with _tracers_lock:
            _tracers.remove(tracer)


class Connection:
    """An open connection to the NexusLIMS database, as :func:`connect` yields it.

    Statements use ``?`` placeholders (or ``:name`` with a mapping) on every
    backend. Errors are the driver's own, with a clearer message where the
    driver's names no file or server.
    """

    def __init__(
        self, raw: Any, backend: Backend, location: DatabaseLocation, tracers: list[Tracer],
        timeout: float,
    ) -> None:
        self.raw = raw
        """The driver's connection (``sqlite3.Connection`` or ``psycopg.Connection``)."""
        self.backend = backend
        self.location = location
        self._tracers = tracers
        self._timeout = timeout

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.backend.name

    def _trace(self, event: str, text: str) -> None:
        for tracer in self._tracers:
            tracer(event, text)

    @contextmanager
    def _explaining(self) -> Iterator[None]:
        """Re-raise a driver error with a clearer message where the backend has one."""
        try:
            yield
        except self.backend.driver_errors as exc:
            better = self.backend.explain(exc, self.location)
            if better is None:
                raise
            raise better from exc

    def execute(self, sql: str, params: Params = ()) -> Any:
        """Run one statement; return the driver's cursor (``fetchone``, ``rowcount``, ...)."""
        self._trace("execute", sql)
        with self._explaining():
            return self.backend.execute(self, sql, params, self._timeout)

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement for each row of ``rows``."""
        if not rows:
            return
        self._trace("executemany", sql)
        with self._explaining():
            self.backend.executemany(self, sql, rows)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` into ``table``: as an ``executemany`` of one ``INSERT``, only faster.

        ``columns`` are spelt as SQL needs them (``'"user"'``). Traced as that
        ``INSERT``; PostgreSQL runs a ``COPY`` for a hundred rows or more.
        """
        if not rows:
            return
        self._trace("executemany", insert_statement(table, columns))
        with self._explaining():
            self.backend.insert_rows(self, table, columns, rows)

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a query and return all its rows as tuples."""
        return list(self.execute(sql, params).fetchall())

    def fetchone(self, sql: str, params: Params = ()) -> Optional[tuple[Any, ...]]:
        """Run a query and return its first row, or None."""
        row = self.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def scalar(self, sql: str, params: Params = ()) -> Any:
        """Run a query and return the first column of its first row (None if no row)."""
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def insert(self, sql: str, params: Params = (), *, key: str) -> int:
        """Run an INSERT of one row and return its ``key`` column (its generated id)."""
        self._trace("execute", sql)
        with self._explaining():
            return self.backend.insert_id(self, sql, params, key, self._timeout)

    def write_alone(self, sql: str, params: Params = (), *, mode: str = "IMMEDIATE") -> int:
        """Run one writing statement as a whole transaction; return the rows it changed.

        Outside any transaction only. On a server, the transaction's
        statements go in one round trip.
        """
        if self.in_transaction:
            raise RuntimeError("write_alone runs its own transaction; one is open already")
        _check_mode(mode)
        with self._explaining():
            began, count = self.backend.write_alone(self, sql, params, mode, self._timeout)
        for text in (began, sql, "COMMIT"):
            self._trace("execute", text)
        return count

    def begin(self, mode: str = "DEFERRED") -> None:
        """Start a transaction: ``"DEFERRED"``, ``"WRITE"`` or ``"IMMEDIATE"`` (see ``Begin``)."""
        _check_mode(mode)
        with self._explaining():
            self._trace("execute", self.backend.begin(self, mode, self._timeout))

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return self.backend.in_transaction(self.raw)

    def commit(self) -> None:
        """Commit the open transaction."""
        self.execute("COMMIT")

    def rollback(self) -> None:
        """Roll the open transaction back."""
        self._trace("execute", "ROLLBACK")
        self.raw.execute("ROLLBACK")


def _check_mode(mode: str) -> None:
    if mode not in ("DEFERRED", "WRITE", "IMMEDIATE"):
        raise ValueError(f"Unknown transaction mode {mode!r}")


@contextmanager
def connect(
    database: Optional[DatabaseRef] = None,
    *,
    begin: Begin = "DEFERRED",
    create: bool = False,
    foreign_keys: bool = True,
    trace: Optional[Tracer] = None,
) -> Iterator[Connection]:
    """Open the database, run one transaction, and always close it.

    Parameters
    ----------
    database
        A path, URL or :class:`~nexusLIMS.db.config.DatabaseLocation`; by
        default from the environment (see
        :func:`~nexusLIMS.db.config.locate_database`).
    begin
        ``"DEFERRED"`` (reads), ``"WRITE"`` (writes that check what they need
        in the statements that write), ``"IMMEDIATE"`` (takes the writers'
        lock at once: a read-then-write no other writer may interleave with)
        or ``None`` for autocommit, where each statement is its own
        transaction (what :func:`~nexusLIMS.db.make_db_query` needs to run any
        statement).
    create
        Allow creating the database file (only ``init_db`` does).
    foreign_keys
        Enforce foreign keys (the default). Only a table rebuild turns this
        off, to keep rows whose instrument is missing.
    trace
        Also show this connection's statements to ``trace`` (see :func:`tracing`).

    Yields
    ------
    Connection
        The open connection. The transaction is committed when the block
        ends normally and rolled back when it raises.
    """
    location = locate_database(database, must_exist=not create)
    backend = backend_for(location)
    timeout = lock_timeout()  # a bad setting fails here, before anything is opened
    with _tracers_lock:
        tracers = [*_tracers, *([trace] if trace else [])]
    raw = backend.open(location, create=create, foreign_keys=foreign_keys)
    for tracer in tracers:
        tracer("open", location.describe())
    conn = Connection(raw, backend, location, tracers, timeout)
    try:
        if begin is not None:
            conn.begin(begin)
        yield conn
        if conn.in_transaction:
            conn.commit()
    except BaseException:
        try:
            if conn.in_transaction:
                conn.rollback()
        except backend.driver_errors:  # the connection itself failed: nothing to undo
            logger.debug("Rollback failed on %s", location, exc_info=True)
        raise
    finally:
        backend.release(location, conn.raw)
        for tracer in tracers:
            tracer("close", location.describe())


class _Watches:
    """Kept read-only connections, one per database, that tell whether it changed.

    The only connections the package keeps open: :func:`data_version` asks
    one for SQLite's change counter, which costs no read of the database's
    pages, so that data read earlier can be reused while nothing changed.
    At most a few are kept (the least recently used is closed), and all are
    closed at exit or by :func:`close_watches`.
    """

    _KEEP = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[DatabaseLocation, tuple[Backend, Any]] = {}

    def version(self, location: DatabaseLocation) -> Optional[int]:
        with self._lock:
            watch = self._open.pop(location, None)
            backend = backend_for(location)
            try:
                if watch is None:
                    watch = (backend, backend.open_watch(location))
                    if watch[1] is not None:
                        for tracer in list(_tracers):
                            tracer("open", f"{location.describe()} (change watch)")
                version = None if watch[1] is None else backend.data_version(watch[1])
            except backend.driver_errors as exc:
                if watch is not None:
                    self._close(location, watch)
                better = backend.explain(exc, location)
                if better is None:
                    raise
                raise better from exc
            self._open[location] = watch  # the most recently used last
            while len(self._open) > self._KEEP:
                oldest = next(iter(self._open))
                self._close(oldest, self._open.pop(oldest))
            return version

    def _close(self, location: DatabaseLocation, watch: tuple[Backend, Any]) -> None:
        if watch[1] is not None:
            watch[1].close()
            for tracer in list(_tracers):
                tracer("close", f"{location.describe()} (change watch)")

    def close(self) -> None:
        with self._lock:
            watches, self._open = self._open, {}
        for location, watch in watches.items():
            self._close(location, watch)


_watches = _Watches()
atexit.register(_watches.close)


def data_version(location: DatabaseLocation) -> Optional[int]:
    """Return a number that changes whenever another connection commits to ``location``.

    None when the backend cannot tell cheaply (PostgreSQL): then nothing read
    before may be reused.
    """
    return _watches.version(location)


def close_watches() -> None:
    """Close the kept change-watch connections (test fixtures call it when done)."""
    _watches.close()


@contextmanager
def removed_if_failed(location: DatabaseLocation) -> Iterator[None]:
    """Remove the SQLite file that the block creates (and its journal) if the block fails.

    A failed ``init`` or ``copy`` must not leave a file behind that later
    commands would take for a database.
    """
    new_file = location.backend == "sqlite" and not location.path.exists()
    try:
        yield
    except BaseException:
        if new_file:
            journal = location.path.with_name(location.path.name + "-journal")
            for leftover in (location.path, journal):
                leftover.unlink(missing_ok=True)
        raise
