"""The one way to the NexusLIMS database.

Every query of the package goes through :func:`connect`: it resolves the
database from the environment at call time, refuses to create a missing
file, turns foreign keys on, bounds lock waits by ``nexusLIMS_db_timeout``,
runs one transaction and always gives its connection back. SQL is written
once, with ``?`` placeholders, for every backend. A driver's error leaves
it as one of the package's (:mod:`nexusLIMS.db.errors`), classified by the
backend.

:func:`tracing` shows every connection and statement to a callback, which is
how the tests see the SQL and the transactions.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable, Optional, TypeVar, Union

from nexusLIMS.db.backends import Backend, Begin, backend_for, insert_statement, translated
from nexusLIMS.db.backends.base import Result
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, locate_database, lock_timeout
from nexusLIMS.db.databases import Database, Version, close_watches, database_at
from nexusLIMS.db.errors import DatabaseUnavailableError
from nexusLIMS.db.tables import INSTRUMENTS
from nexusLIMS.db.trace import Tracer, active_tracers, traced

__all__ = [
    "Begin",
    "Connection",
    "Params",
    "Statement",
    "Tracer",
    "close_watches",
    "connect",
    "data_version",
    "removed_if_failed",
    "retrying",
    "tracing",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_FIRST_PAUSE, _LONGEST_PAUSE = 0.05, 1.0

#: The values of a statement's placeholders.
Params = Union[Sequence[Any], Mapping[str, Any]]
#: A statement of a batch: ``(sql, params)``, or ``(sql, params, key)`` for an
#: INSERT of one row whose generated ``key`` comes back as its one row.
Statement = Union[tuple[str, Params], tuple[str, Params, str]]

_MODES = ("DEFERRED", "WRITE", "IMMEDIATE")
# A statement that may change the instruments table (whose rows look-ups keep).
_CHANGES_INSTRUMENTS = re.compile(
    rf'^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE'
    rf'(?:\s+TABLE)?|DROP\s+TABLE(?:\s+IF\s+EXISTS)?|ALTER\s+TABLE)\s+"?{INSTRUMENTS.name}\b',
    re.IGNORECASE)


def tracing(
    tracer: Tracer, database: Optional[DatabaseRef] = None
) -> AbstractContextManager[Tracer]:
    """Show every connection opened and statement run, in this block, to ``tracer``.

    Transactions show as SQLite begins them: ``BEGIN IMMEDIATE`` holds the
    writers' lock (on PostgreSQL, an advisory lock), ``BEGIN``/``BEGIN
    DEFERRED`` does not.

    Parameters
    ----------
    tracer
        Called as ``tracer(event, text)``: ``("open", location)``,
        ``("execute", sql)``, ``("executemany", sql)`` or ``("close", location)``.
    database
        Trace only this database (a path, URL or location); by default every one.

    Returns
    -------
    contextmanager
        A block that yields ``tracer`` itself.
    """
    if database is None:
        return traced(tracer)
    return traced(tracer, database_at(locate_database(database, must_exist=False)).tracers)


class Connection:
    """An open connection to the NexusLIMS database, as :func:`connect` yields it.

    Statements use ``?`` placeholders (or ``:name`` with a mapping) on every
    backend. A failed statement raises the package's error for it where
    there is one (see :mod:`nexusLIMS.db.errors`), else the driver's own.
    """

    def __init__(self, raw: Any, db: Database, tracers: list[Tracer], timeout: float) -> None:
        self.raw = raw
        """The driver's connection (``sqlite3.Connection`` or ``psycopg.Connection``)."""
        self.database = db
        """What the package keeps for this database (:class:`~nexusLIMS.db.databases.Database`)."""
        self.backend: Backend = db.backend
        self.location: DatabaseLocation = db.location
        self._tracers = tracers
        self._timeout = timeout
        #: Whether a statement run may have changed ``instruments``: once the
        #: block ends, look-ups of this process read them again.
        self.changes_instruments = False

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"`` (for messages and tests; never branched on)."""
        return self.backend.name

    def _trace(self, event: str, text: str) -> None:
        if _CHANGES_INSTRUMENTS.match(text):
            self.changes_instruments = True
        for tracer in self._tracers:
            tracer(event, text)

    def _translating(self, statement: str = "") -> AbstractContextManager[None]:
        """Raise the package's error for a driver's error of ``statement``, where it has one."""
        return translated(self.backend, self.location, statement)

    def execute(self, sql: str, params: Params = ()) -> Any:
        """Run one statement; return the driver's cursor (``fetchone``, ``rowcount``, ...)."""
        self._trace("execute", sql)
        with self._translating(sql):
            return self.backend.execute(self.raw, sql, params, self._timeout)

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement for each row of ``rows``."""
        if not rows:
            return
        self._trace("executemany", sql)
        with self._translating(sql):
            self.backend.executemany(self.raw, sql, rows)

    def queue(self, sql: str, params: Params = ()) -> None:
        """Run a statement whose result is not needed; a server gets it with the next one.

        Its errors show at the next statement (or the commit) that reaches the server.
        """
        self._trace("execute", sql)
        with self._translating(sql):
            self.backend.queue(self.raw, sql, params, False)

    def queue_many(self, sql: str, rows: Sequence[Params]) -> None:
        """:meth:`queue` one statement for each row of ``rows``."""
        if not rows:
            return
        self._trace("executemany", sql)
        with self._translating(sql):
            self.backend.queue(self.raw, sql, rows, True)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` into ``table``: as an ``executemany`` of one ``INSERT``, only faster.

        ``columns`` are spelt as SQL needs them (``'"user"'``). Traced as that
        ``INSERT``; PostgreSQL runs a ``COPY`` for a hundred rows or more.
        """
        if not rows:
            return
        statement = insert_statement(table, columns)
        self._trace("executemany", statement)
        with self._translating(statement):
            self.backend.insert_rows(self.raw, table, columns, rows)

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
        with self._translating(sql):
            return self.backend.insert_id(self.raw, sql, params, key, self._timeout)

    def write_alone(self, sql: str, params: Params = (), *, mode: str = "IMMEDIATE") -> int:
        """Run one writing statement as a whole transaction; return the rows it changed.

        Outside any transaction only. On a server, the transaction's
        statements go in one round trip.
        """
        if self.in_transaction:
            raise RuntimeError("write_alone runs its own transaction; one is open already")
        _check_mode(mode)
        with self._translating(sql):
            began, count = self.backend.write_alone(self.raw, sql, params, mode, self._timeout)
        for text in (began, sql, "COMMIT"):
            self._trace("execute", text)
        return count

    def read_batch(self, statements: Sequence[tuple[str, Params]]) -> list[list[tuple[Any, ...]]]:
        """Run queries in one round trip; return each one's rows.

        Outside a transaction, several queries read one snapshot (traced as
        ``BEGIN DEFERRED`` ... ``COMMIT``); inside one, they are part of it.
        """
        with self._translating(statements[0][0] if statements else ""):
            around, results = self.backend.read_batch(self.raw, statements, self._timeout)
        texts = [sql for sql, _ in statements]
        for text in ([around[0], *texts, around[1]] if around else texts):
            self._trace("execute", text)
        return results

    def write_batch(
        self, statements: Sequence[Statement], *, mode: str = "WRITE"
    ) -> list[Result]:
        """Run ``statements`` as one whole transaction; return each one's rows and row count.

        Outside any transaction only. On a server, the transaction's
        statements go in one round trip.
        """
        if self.in_transaction:
            raise RuntimeError("write_batch runs its own transaction; one is open already")
        _check_mode(mode)
        with self._translating():
            began, results = self.backend.write_batch(self.raw, statements, mode, self._timeout)
        for text in (began, *(statement[0] for statement in statements), "COMMIT"):
            self._trace("execute", text)
        return results

    def begin(self, mode: str = "DEFERRED") -> None:
        """Start a transaction: ``"DEFERRED"``, ``"WRITE"`` or ``"IMMEDIATE"`` (see ``Begin``)."""
        _check_mode(mode)
        with self._translating():
            self._trace("execute", self.backend.begin(self.raw, mode, self._timeout))

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return self.backend.in_transaction(self.raw)

    def commit(self) -> None:
        """Commit the open transaction (a server gets what is queued with it)."""
        self._trace("execute", "COMMIT")
        with self._translating():
            self.backend.commit(self.raw)

    def rollback(self) -> None:
        """Roll the open transaction back."""
        self._trace("execute", "ROLLBACK")
        with self._translating():
            self.backend.rollback(self.raw)


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
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
    db = database_at(location)
    backend = db.backend
    timeout = lock_timeout()  # a bad setting fails here, before anything is opened
    tracers = [*active_tracers(db.tracers), *([trace] if trace else [])]
    raw = db.take(create=create, foreign_keys=foreign_keys)
    described = location.describe()
    for tracer in tracers:
        tracer("open", described)
    conn = Connection(raw, db, tracers, timeout)
    try:
        with translated(backend, location):  # (the driver's connection's own errors)
            if begin is not None:
                conn.begin(begin)
            yield conn
            if conn.in_transaction:
                conn.commit()
    except BaseException:
        _roll_back(conn)
        raise
    finally:
        db.give(conn.raw)
        if conn.changes_instruments:
            db.changed()
        for tracer in tracers:
            tracer("close", described)


def _roll_back(conn: Connection) -> None:
    """Roll back what a failed block left open (nothing to undo if the connection failed)."""
    try:
        if conn.in_transaction:
            conn.rollback()
    except Exception:  # the connection itself failed: nothing to undo
        logger.debug("Rollback failed on %s", conn.location, exc_info=True)


def data_version(location: DatabaseLocation) -> Optional[Version]:
    """Return a value that changes whenever another connection commits to ``location``.

    None when it cannot be told cheaply: then nothing read before may be reused.
    """
    return database_at(location).data_version()


def removed_if_failed(location: DatabaseLocation) -> AbstractContextManager[None]:
    """Remove the database that the block creates if the block fails (a new file only).

    A failed ``init`` or ``copy`` must not leave a file behind that later
    commands would take for a database.
    """
    return backend_for(location).removed_if_failed(location)


def retrying(
    call: Callable[[], T], *, resend: bool = True,
    settle: Optional[Callable[[], Optional[T]]] = None,
) -> T:
    """Return ``call()``, riding through a lost connection (a server restarting, a cut).

    A call that failed for a connection lost (or not made) is made again on
    a new connection, after a pause that grows (50 ms to 1 s), until it
    succeeds or ``nexusLIMS_db_timeout`` has passed since the first attempt;
    then the last error is raised. A login refused or a database missing is
    raised at once.

    Parameters
    ----------
    call
        The whole call: a transaction of its own (or several), which begins again.
    resend
        Whether the call may be made again after it may have reached the
        server: only for calls that cannot write twice (reads, and writes
        that find what an earlier attempt wrote: a log by its instant, a
        status). Otherwise only a failure before anything was sent is retried.
    settle
        For a call that could write twice: after a failure that may have
        reached the server, tells what the earlier attempt wrote (None:
        nothing), by reading, before trying again.
    """
    started = time.monotonic()
    deadline: Optional[float] = None  # read from the environment at the first failure
    pause = _FIRST_PAUSE
    while True:
        try:
            return call()
        except DatabaseUnavailableError as exc:
            again = exc.transient and (resend or settle is not None or not exc.sent)
            if deadline is None:
                deadline = started + lock_timeout()
            if not again or time.monotonic() + pause >= deadline:
                raise
            logger.info("%s; trying again in %.2f s", exc, pause)
            reached, last = exc.sent, exc
        time.sleep(pause * random.uniform(0.8, 1.2))
        pause = min(pause * 2, _LONGEST_PAUSE)
        if reached and settle is not None:
            # What the lost attempt did must be read before anything is sent again:
            # when that cannot be done in time, the caller learns it was not.
            if time.monotonic() >= deadline:
                raise last
            done = retrying(settle)
            if done is not None:
                return done


