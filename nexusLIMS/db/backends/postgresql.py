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

import select
import threading
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus, TransactionStatus

from nexusLIMS.db.backends.base import Pool, insert_statement, writes_to_parent
from nexusLIMS.db.backends.ddl import POSTGRESQL_DDL, Dialect
from nexusLIMS.db.backends.translate import native_sql, to_postgres
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout
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

#: The advisory lock of writers' transactions ("NXLM" in ASCII).
WRITERS_LOCK = 0x4E584C4D
_POOL_SIZE = 4
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


def _traced_begin(mode: str) -> str:
    # In SQLite's words: IMMEDIATE is a transaction holding the writers' lock.
    return {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED"}.get(mode, "BEGIN")


def _where(location: DatabaseLocation) -> str:
    """Name the server and database of ``location`` (from the URL and libpq's defaults)."""
    try:
        given: dict[str, Any] = conninfo_to_dict(location.target)
    except psycopg.ProgrammingError:  # a URL libpq cannot read: what the URL says, leniently
        given = location.server()
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


class _Server:
    """Connections to one server database: up to a few idle ones kept for reuse."""

    def __init__(self, location: DatabaseLocation) -> None:
        self.location = location
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []

    def take(self, *, create: bool, foreign_keys: bool) -> Any:
        zone = _local_timezone()
        with self._lock:
            while self._idle:
                raw = self._idle.pop()
                if _alive(raw):
                    break
                raw.close()
            else:
                raw = None
        if raw is not None:
            # The session's zone is what the server reports; the local offset
            # may have changed since (daylight saving time).
            if raw.info.parameter_status("TimeZone") != zone:
                raw.execute(f"SET TimeZone = '{zone}'")
            return raw
        return self._connect(zone)

    def _connect(self, zone: str) -> psycopg.Connection[Any]:
        location = self.location
        try:
            options = conninfo_to_dict(location.target).get("options") or ""
        except psycopg.ProgrammingError as exc:
            raise DatabaseConfigError(
                f"The URL of PostgreSQL {_where(location)} ({location}, from {location.source}) "
                f"is not valid: {_told(exc, location)}") from None
        try:
            return psycopg.connect(
                location.target, autocommit=True,
                connect_timeout=int(max(2, min(lock_timeout(), 10))),
                options=f"{options} -c TimeZone={zone}".strip(),
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"Cannot connect to PostgreSQL {_where(location)} ({location}): "
                f"{_told(exc, location)}"
            ) from None

    def give(self, raw: Any) -> None:
        healthy = not raw.closed and raw.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and len(self._idle) < _POOL_SIZE:
                self._idle.append(raw)
                return
        raw.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            raw.close()


def _scalar(raw: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    row = raw.execute(sql, params).fetchone()
    return None if row is None else row[0]


class _PostgreSQL:
    """The PostgreSQL backend (see :class:`~nexusLIMS.db.backends.Backend`)."""

    name: BackendName = "postgresql"
    ddl: Dialect = POSTGRESQL_DDL
    driver_errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
    lock_rows = " FOR UPDATE"
    # One plain read: no join plan can go wrong on stale statistics.
    pairs_through_index = False
    is_file = False

    # --- connections -----------------------------------------------------------

    def pool(self, location: DatabaseLocation) -> Pool:
        return _Server(location)

    def open_watch(self, location: DatabaseLocation) -> Any:
        return None  # a server has no cheap counter of commits: look every time

    def data_version(self, raw: Any) -> Optional[int]:
        return None

    def begin(self, raw: Any, mode: str, timeout: float) -> str:
        raw.execute("; ".join(_begin_statements(mode, timeout)))  # one round trip
        return _traced_begin(mode)

    def execute(self, raw: Any, sql: str, params: Any, timeout: float) -> Any:
        # Always with a params object (maybe empty), so that psycopg turns %% back into %.
        return raw.execute(native_sql(sql), params if params is not None else ())

    def write_alone(
        self, raw: Any, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        # A pipeline sends every statement, then waits once: one round trip.
        with raw.pipeline():
            for statement in _begin_statements(mode, timeout):
                raw.execute(statement)
            cursor = raw.execute(native_sql(sql), params if params is not None else ())
            raw.execute("COMMIT")
        return _traced_begin(mode), int(cursor.rowcount)

    def executemany(self, raw: Any, sql: str, rows: Sequence[Any]) -> None:
        with raw.cursor() as cursor:
            cursor.executemany(native_sql(sql), rows)

    def insert_rows(
        self, raw: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if len(rows) < _COPY_FROM:
            self.executemany(raw, insert_statement(table, columns), rows)
            return
        # COPY: one stream of rows, checked as INSERTs are, at a fraction of their cost.
        with raw.cursor() as cursor, \
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def insert_id(self, raw: Any, sql: str, params: Any, key: str, timeout: float) -> int:
        row = raw.execute(native_sql(f"{sql} RETURNING {key}"), params).fetchone()
        return int(row[0])

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        # One array parameter: one short statement to plan, however many values.
        return [(f"{column} = ANY(?)", (list(values),))] if values else []

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.info.transaction_status != TransactionStatus.IDLE)

    def rollback(self, raw: Any) -> None:
        raw.execute("ROLLBACK")

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
        if isinstance(exc, psycopg.OperationalError) \
                and not isinstance(exc, pg_errors.QueryCanceled):
            return DatabaseUnavailableError(
                f"Lost the connection to PostgreSQL {_where(location)}: {message}")
        return None

    def from_sqlite_sql(self, sql: str) -> str:
        return to_postgres(sql)

    # --- the catalogue ---------------------------------------------------------

    def table_names(self, raw: Any) -> set[str]:
        return {name for (name,) in raw.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()}

    def column_names(self, raw: Any, table: str) -> list[str]:
        return [name for (name,) in raw.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()]

    def index_names(self, raw: Any, table: str) -> set[str]:
        return {name for (name,) in raw.execute(
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
        row = raw.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        return None if row is None or not row[1] else int(row[0])

    def set_id_counter(self, raw: Any, table: str, column: str, value: int) -> None:
        raw.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s, %s)",
                    (table, column, max(int(value), 1), int(value) >= 1))

    def schema_version(self, raw: Any) -> int:
        version_table = POSTGRESQL_DDL.version_table
        if not _scalar(raw, "SELECT to_regclass(%s) IS NOT NULL", (version_table,)):
            return 0
        return int(_scalar(raw, f"SELECT max(version) FROM {version_table}") or 0)

    def set_schema_version(self, raw: Any, version: int) -> None:
        create, insert = POSTGRESQL_DDL.version_statements(version)
        raw.execute(create)
        raw.execute(f"DELETE FROM {POSTGRESQL_DDL.version_table}")
        raw.execute(insert)

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
        names = [name for (name,) in raw.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) "
            "AND contype IN ('c', 'f')", (table.name,)).fetchall()]
        for name in names:
            raw.execute(f"ALTER TABLE {table.name} DROP CONSTRAINT {quote(name)}")
        for column in table.columns:
            if column.allowed:
                raw.execute(f"ALTER TABLE {table.name} ADD CONSTRAINT "
                            f"{table.name}_{column.name}_check {POSTGRESQL_DDL.check(column)}")
            if column.references:
                # NOT VALID keeps rows whose instrument is gone, as SQLite does.
                raw.execute(f"ALTER TABLE {table.name} ADD CONSTRAINT "
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
                for index, table in raw.execute(
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
        row = raw.execute("SELECT pg_postmaster_start_time(), current_setting('port'), "
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
