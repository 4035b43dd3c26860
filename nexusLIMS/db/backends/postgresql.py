"""The PostgreSQL backend (the ``postgres`` extra: psycopg 3 and sqlglot).

Connections are kept in a small pool per database URL, since opening one
costs several round trips to the server. A writers' transaction
that reads then writes (``BEGIN IMMEDIATE`` in SQLite) takes a
transaction-level advisory lock, so that such writers are serialized as
SQLite serializes them; other writes rely on PostgreSQL's row locks. Lock
waits are bounded by ``SET LOCAL lock_timeout``. The package's ``?`` placeholders become
psycopg's ``%s`` through sqlglot's tokenizer, which knows SQL's quoting.
"""

from __future__ import annotations

import atexit
import select
import threading
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Optional, Sequence
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus, TransactionStatus
from sqlglot import TokenType
from sqlglot.dialects.postgres import Postgres

from nexusLIMS.db.backends import insert_statement
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout
from nexusLIMS.db.config import Backend as BackendName
from nexusLIMS.db.errors import DatabaseConfigError, DatabaseUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from nexusLIMS.db.connection import Connection

__all__ = ["POSTGRESQL", "close_pools", "native_sql"]

#: The advisory lock of writers' transactions ("NXLM" in ASCII).
WRITERS_LOCK = 0x4E584C4D
_VERSION_TABLE = "nexuslims_schema_version"
_POOL_SIZE = 4
_QUOTED = frozenset({TokenType.STRING, TokenType.IDENTIFIER, TokenType.NATIONAL_STRING})
_MAX_MS = 2**31 - 1  # the largest lock_timeout PostgreSQL takes, in milliseconds
# Rows from which a COPY (two round trips, then a stream) beats an executemany
# (one pipelined round trip, then a statement per row).
_COPY_FROM = 100
_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL",
              "d": "SET DEFAULT"}


@lru_cache(maxsize=512)
def native_sql(sql: str) -> str:
    """Return ``sql`` with ``?`` and ``:name`` placeholders as psycopg's ``%s`` / ``%(name)s``.

    Every other ``%`` (in literals, comments or the modulo operator) is
    doubled, as psycopg requires. Outside literals and quoted names, ``?`` is
    always a placeholder, also where PostgreSQL's tokenizer reads it as the
    start of an operator (``?::integer``, ``?||?``).
    """
    tokens = Postgres().tokenize(sql)
    parts: list[str] = []
    position = 0
    index = 0
    while index < len(tokens):
        token = tokens[index]
        parts.append(sql[position : token.start].replace("%", "%%"))
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.token_type == TokenType.PLACEHOLDER and token.text == "?":
            parts.append("%s")
        elif token.text.startswith("?") and token.token_type not in _QUOTED:
            parts.append("%s" + token.text[1:].replace("%", "%%"))
        elif (token.token_type == TokenType.COLON and following is not None
              and following.start == token.end + 1 and following.text.isidentifier()):
            parts.append(f"%({following.text})s")
            index += 1
            token = following
        else:
            parts.append(sql[token.start : token.end + 1].replace("%", "%%"))
        position = token.end + 1
        index += 1
    parts.append(sql[position:].replace("%", "%%"))
    return "".join(parts)


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


def _traced_begin(mode: str) -> str:
    # In SQLite's words: IMMEDIATE is a transaction holding the writers' lock.
    return {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED"}.get(mode, "BEGIN")


def _where(location: DatabaseLocation) -> str:
    """Name the server and database of ``location`` (from the URL and libpq's defaults)."""
    try:
        given = conninfo_to_dict(location.target)
    except psycopg.ProgrammingError:  # a URL libpq cannot read: what the URL says, plainly
        parts = urlsplit(location.target)
        given = {"host": parts.hostname, "port": parts.port and str(parts.port),
                 "dbname": parts.path.lstrip("/") or None, "user": parts.username}
    defaults = {option.keyword.decode(): option.val.decode() if option.val else None
                for option in psycopg.pq.Conninfo.get_defaults()}
    host = given.get("host") or defaults.get("host") or "localhost"
    port = given.get("port") or defaults.get("port") or "5432"
    database = given.get("dbname") or defaults.get("dbname") or given.get("user") \
        or defaults.get("user")
    return f"database {database!r} on {host}:{port}"


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


class _Pools:
    """Idle connections by database URL, closed at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[psycopg.Connection[Any]]] = {}

    def take(self, target: str) -> Optional[psycopg.Connection[Any]]:
        with self._lock:
            idle = self._idle.get(target, [])
            while idle:
                raw = idle.pop()
                if _alive(raw):
                    return raw
                _zones.pop(id(raw), None)
                raw.close()
        return None

    def give(self, target: str, raw: psycopg.Connection[Any]) -> None:
        healthy = not raw.closed and raw.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            idle = self._idle.setdefault(target, [])
            if healthy and len(idle) < _POOL_SIZE:
                idle.append(raw)
                return
        _zones.pop(id(raw), None)
        raw.close()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            for raw in idle:
                _zones.pop(id(raw), None)
                raw.close()


_pools = _Pools()
# The session time zone each pooled connection was given (by id()).
_zones: dict[int, str] = {}
atexit.register(_pools.close)


def close_pools() -> None:
    """Close every idle pooled connection (the test fixtures call it when done)."""
    _pools.close()


class _PostgreSQL:
    """The PostgreSQL backend (see :class:`~nexusLIMS.db.backends.Backend`)."""

    name: BackendName = "postgresql"
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
    #: What locks the rows a SELECT reads until the transaction ends (SQLite: its
    #: write transaction already keeps every other writer out).
    lock_rows = " FOR UPDATE"
    driver_errors: tuple[type[BaseException], ...] = (psycopg.Error,)

    def open(self, location: DatabaseLocation, *, create: bool, foreign_keys: bool) -> Any:
        zone = _local_timezone()
        raw = _pools.take(location.target)
        if raw is not None:
            if _zones.get(id(raw)) != zone:  # the local offset changed (daylight saving)
                raw.execute(f"SET TimeZone = '{zone}'")
                _zones[id(raw)] = zone
            return raw
        try:
            options = conninfo_to_dict(location.target).get("options") or ""
        except psycopg.ProgrammingError as exc:
            raise DatabaseConfigError(
                f"The URL of PostgreSQL {_where(location)} ({location}, from {location.source}) "
                f"is not valid: {' '.join(str(exc).split())}") from None
        try:
            raw = psycopg.connect(
                location.target, autocommit=True,
                connect_timeout=int(max(2, min(lock_timeout(), 10))),
                options=f"{options} -c TimeZone={zone}".strip(),
            )
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DatabaseUnavailableError(
                f"Cannot connect to PostgreSQL {_where(location)} ({location}): {reason}"
            ) from None
        _zones[id(raw)] = zone
        return raw

    def open_watch(self, location: DatabaseLocation) -> Any:
        return None  # a server has no cheap counter of commits: look every time

    def data_version(self, raw: Any) -> Optional[int]:
        return None

    def release(self, location: DatabaseLocation, raw: Any) -> None:
        """Return a connection to the pool (or close it, if it is in a bad state)."""
        _pools.give(location.target, raw)

    def begin(self, conn: Connection, mode: str, timeout: float) -> str:
        conn.raw.execute("; ".join(_begin_statements(mode, timeout)))  # one round trip
        return _traced_begin(mode)

    def execute(self, conn: Connection, sql: str, params: Any, timeout: float) -> Any:
        # Always with a params object (maybe empty), so that psycopg turns %% back into %.
        return conn.raw.execute(native_sql(sql), params if params is not None else ())

    def write_alone(
        self, conn: Connection, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        raw = conn.raw
        # A pipeline sends every statement, then waits once: one round trip.
        with raw.pipeline():
            for statement in _begin_statements(mode, timeout):
                raw.execute(statement)
            cursor = raw.execute(native_sql(sql), params if params is not None else ())
            raw.execute("COMMIT")
        return _traced_begin(mode), int(cursor.rowcount)

    def executemany(self, conn: Connection, sql: str, rows: Sequence[Any]) -> None:
        with conn.raw.cursor() as cursor:
            cursor.executemany(native_sql(sql), rows)

    def insert_rows(
        self, conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) < _COPY_FROM:
            self.executemany(conn, insert_statement(table, columns), rows)
            return
        # COPY: one stream of rows, checked as INSERTs are, at a fraction of their cost.
        with conn.raw.cursor() as cursor, \
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        # One array parameter: one short statement to plan, however many values.
        return [(f"{column} = ANY(?)", (list(values),))] if values else []

    def insert_id(self, conn: Connection, sql: str, params: Any, key: str, timeout: float) -> int:
        row = conn.raw.execute(native_sql(f"{sql} RETURNING {key}"), params).fetchone()
        return int(row[0])

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.info.transaction_status != TransactionStatus.IDLE)

    def explain(self, exc: BaseException, location: DatabaseLocation) -> Optional[BaseException]:
        if isinstance(exc, pg_errors.LockNotAvailable):
            return type(exc)(
                f"database is locked: another program kept {location} locked for longer than "
                f"{ENV_TIMEOUT} ({lock_timeout():g} s); try again, or raise {ENV_TIMEOUT}")
        if isinstance(exc, pg_errors.ForeignKeyViolation) and "instruments" in str(exc) \
                and "still referenced" in str(exc):
            return type(exc)(
                "cannot delete or replace an instrument that has session_log rows: its history "
                "would be lost (to rename it, UPDATE instruments SET instrument_pid; to remove "
                f"it, first delete its session_log rows): {str(exc).splitlines()[0]}")
        lost = isinstance(exc, psycopg.OperationalError) \
            and not isinstance(exc, pg_errors.QueryCanceled)
        if lost:
            return DatabaseUnavailableError(
                f"Lost the connection to PostgreSQL {_where(location)}: "
                f"{' '.join(str(exc).split()) or type(exc).__name__}")
        return None

    def table_names(self, conn: Connection) -> set[str]:
        return {name for (name,) in conn.fetchall(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}

    def column_names(self, conn: Connection, table: str) -> list[str]:
        return [name for (name,) in conn.fetchall(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]

    def index_names(self, conn: Connection, table: str) -> set[str]:
        return {name for (name,) in conn.fetchall(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = ? AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = to_regclass(?))", (table, table))}

    def on_delete_action(self, conn: Connection, table: str, column: str) -> Optional[str]:
        action = conn.scalar(
            "SELECT c.confdeltype FROM pg_constraint AS c JOIN pg_attribute AS a "
            "ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "WHERE c.conrelid = to_regclass(?) AND c.contype = 'f' AND a.attname = ?",
            (table, column))
        return None if action is None else _ON_DELETE.get(str(action), str(action))

    def id_counter(self, conn: Connection, table: str, column: str) -> Optional[int]:
        sequence = conn.scalar("SELECT pg_get_serial_sequence(?, ?)", (table, column))
        if sequence is None:
            return None
        row = conn.fetchone(f"SELECT last_value, is_called FROM {sequence}")
        return None if row is None or not row[1] else int(row[0])

    def set_id_counter(self, conn: Connection, table: str, column: str, value: int) -> None:
        conn.execute("SELECT setval(pg_get_serial_sequence(?, ?), ?, ?)",
                     (table, column, max(int(value), 1), int(value) >= 1))

    def schema_version(self, conn: Connection) -> int:
        if not conn.scalar("SELECT to_regclass(?) IS NOT NULL", (_VERSION_TABLE,)):
            return 0
        return int(conn.scalar(f"SELECT max(version) FROM {_VERSION_TABLE}") or 0)

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} (version INTEGER NOT NULL)")
        conn.execute(f"DELETE FROM {_VERSION_TABLE}")
        conn.execute(f"INSERT INTO {_VERSION_TABLE} (version) VALUES (?)", (int(version),))


#: The PostgreSQL backend.
POSTGRESQL = _PostgreSQL()
