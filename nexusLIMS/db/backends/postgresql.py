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
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from nexusLIMS.db.backends.base import Pool, Result, insert_statement, writes_to_parent
from nexusLIMS.db.backends.ddl import POSTGRESQL_DDL, Dialect
from nexusLIMS.db.backends.pg_connections import (
    Listener,
    ServerConnection,
    ServerPool,
    connect,
    milliseconds,
    told,
    where,
)
from nexusLIMS.db.backends.translate import native_sql, to_postgres
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout
from nexusLIMS.db.config import Backend as BackendName
from nexusLIMS.db.errors import (
    ConstraintError,
    ConstraintKind,
    DatabaseLockedError,
    DatabaseUnavailableError,
    NexusLIMSDBError,
)
from nexusLIMS.db.tables import KEEP_LOGS_MESSAGE, Table, quote

__all__ = ["POSTGRESQL", "WRITERS_LOCK", "native_sql"]

logger = logging.getLogger(__name__)

#: The advisory lock of writers' transactions ("NXLM" in ASCII).
WRITERS_LOCK = 0x4E584C4D
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


def _begin_statements(mode: str, timeout: float) -> list[str]:
    """Return the statements that begin a transaction of ``mode`` (see ``Backend.begin``)."""
    # 0 means "no limit" to PostgreSQL: wait at least 1 ms.
    statements = ["BEGIN", f"SET LOCAL lock_timeout = '{milliseconds(timeout)}ms'"]
    if mode == "IMMEDIATE":
        statements.append(f"SELECT pg_advisory_xact_lock({WRITERS_LOCK})")
    return statements


# What the statements that begin a transaction start with.
_BEGIN_WORDS = ("BEGIN", "SET LOCAL lock_timeout", "SELECT pg_advisory_xact_lock")


def _traced_begin(mode: str) -> str:
    # In SQLite's words: IMMEDIATE is a transaction holding the writers' lock.
    return {"IMMEDIATE": "BEGIN IMMEDIATE", "DEFERRED": "BEGIN DEFERRED"}.get(mode, "BEGIN")


def _run(raw: ServerConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    """Run one statement of psycopg's own SQL (with what is pending); return its cursor."""
    return raw.send([(sql, params, False)])[0]


def _scalar(raw: ServerConnection, sql: str, params: Sequence[Any] = ()) -> Any:
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
        return ServerPool(location)

    def open_watch(self, location: DatabaseLocation) -> Any:
        # A connection that LISTENs for the trigger's announcements of changes to
        # instruments: asking it whether one came costs no round trip.
        raw = connect(location)
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
        return Listener(raw, str(schema))

    def data_version(self, raw: Any) -> Optional[int]:
        listener: Listener = raw
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
            raw.undone(raw.pending)  # nothing of it reached the server: nothing to end
            raw.pending.clear()
            return
        if statement == "COMMIT" and raw.info.transaction_status == TransactionStatus.INERROR:
            # PostgreSQL would answer a COMMIT with a silent ROLLBACK: say so instead.
            _run(raw, "ROLLBACK")
            raise pg_errors.InFailedSqlTransaction(
                "the transaction was not committed: a statement in it failed (on PostgreSQL a "
                "failed statement ends its transaction), so nothing of it was written")
        _run(raw, statement)

    def translate(
        self, exc: BaseException, location: DatabaseLocation, statement: str = ""
    ) -> Optional[BaseException]:
        if isinstance(exc, NexusLIMSDBError) or not isinstance(exc, psycopg.Error):
            return None
        message = told(exc, location)  # the driver's error is scrubbed of secrets, too
        if isinstance(exc, pg_errors.LockNotAvailable):
            return _LockedError(
                f"database is locked: another program kept {location} locked for longer than "
                f"{ENV_TIMEOUT} ({lock_timeout():g} s); try again, or raise {ENV_TIMEOUT}")
        if isinstance(exc, psycopg.IntegrityError):
            return _constraint_error(exc, statement)
        if isinstance(exc, pg_errors.IdleInTransactionSessionTimeout):
            return DatabaseUnavailableError(
                f"PostgreSQL {where(location)} ended the session: it was idle in a transaction "
                f"for longer than {ENV_TIMEOUT} ({lock_timeout():g} s), so that its locks hold "
                f"up no one: {message}")
        # A connection lost: no SQLSTATE (libpq's own), or the server's classes 08
        # (connection exception) and 57 (operator intervention: shutdown,
        # terminated); a query cancelled by its timeout is not one. Any other
        # error (a deadlock, a full disk) is the driver's, as it is.
        state = exc.sqlstate or ""
        if isinstance(exc, psycopg.OperationalError) and state[:2] in ("", "08", "57") \
                and not isinstance(exc, pg_errors.QueryCanceled):
            return DatabaseUnavailableError(
                f"Lost the connection to PostgreSQL {where(location)}: {message}")
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
