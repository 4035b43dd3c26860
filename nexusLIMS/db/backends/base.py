"""What every backend implements (:class:`Backend`), and the helpers they share."""


from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Hashable, Optional, Protocol, Sequence

from nexusLIMS.db.backends.ddl import Dialect
from nexusLIMS.db.config import Backend as BackendName
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.tables import TABLES, Table

__all__ = ["Backend", "Begin", "Pool", "Result", "insert_statement", "translated",
           "writes_to_parent"]

#: ``"DEFERRED"``: a read; ``"WRITE"``: writes that need no other writer kept
#: out (each checks what it needs in the statement that writes); ``"IMMEDIATE"``:
#: takes the writers' lock at once, for a read-then-write that no other writer
#: may interleave with; ``None``: autocommit. (SQLite has one writer at a time
#: anyway: WRITE and IMMEDIATE are both its BEGIN IMMEDIATE.)
Begin = Optional[str]


#: What a statement of a batch gave: its rows (None for a statement that
#: returns none) and the number of rows it changed.
Result = tuple[Optional[list[tuple[Any, ...]]], int]


class Pool(Protocol):
    """The raw connections of one database: opened on demand, kept where that pays."""

    def take(self, *, create: bool, foreign_keys: bool) -> Any:
        """Return a working raw connection in autocommit mode."""

    def give(self, raw: Any) -> None:
        """Take back a connection :meth:`take` returned (kept if healthy, else closed)."""

    def close(self) -> None:
        """Close every connection kept."""

    def stats(self) -> dict[str, int]:
        """Return figures of the connections kept (``open``, ``idle``, ``most``), if any."""


class Backend(Protocol):
    """What the package needs from a database (see :mod:`nexusLIMS.db.backends`)."""

    name: BackendName
    #: The schema in this backend's SQL.
    ddl: Dialect
    #: Exception classes of the driver (what a failed statement raises).
    driver_errors: tuple[type[BaseException], ...]
    #: The driver's classes for a broken constraint (every
    #: :class:`~nexusLIMS.db.errors.ConstraintError` of the backend is one too).
    integrity_errors: tuple[type[BaseException], ...]
    #: Appended to a SELECT in a write transaction, keeps the rows it read
    #: from other writers until the transaction ends.
    lock_rows: str
    #: Where rows locked by another transaction can be skipped instead of
    #: waited for, the words that do it after ``FOR UPDATE OF <table>``
    #: (``"SKIP LOCKED"``): claims are then one statement that locks only the
    #: sessions it takes, and no builder waits for another. Empty where the
    #: database lets one writer in at a time (SQLite): a claim then reads and
    #: writes in one write transaction.
    skip_locked: str
    #: Statements that make the rest of a transaction read an index in its
    #: order rather than sort what it found, so that a LIMIT stops the read
    #: whatever the planner's statistics say (none where there is no choice).
    ordered_reads: tuple[str, ...]
    #: Whether the planner pairs START and END logs best through the partial
    #: pairing index (one join); else one scan of the waiting logs, paired in Python.
    pairs_through_index: bool
    #: Whether the database is a file of its own, which backups copy and a
    #: failed creation removes.
    is_file: bool

    # --- connections -------------------------------------------------------------

    def pool(self, location: DatabaseLocation) -> Pool:
        """Return a new pool of connections to ``location``."""

    def open_watch(self, location: DatabaseLocation) -> Any:
        """Return a kept, read-only raw connection for :meth:`data_version`, or None."""

    def data_version(self, raw: Any) -> Optional[int]:
        """Return a number that changes when another connection commits (None: unknown)."""

    def begin(self, raw: Any, mode: str, timeout: float) -> str:
        """Start a transaction of ``mode``, waiting at most ``timeout`` s for locks.

        Returns the statement to trace, in SQLite's words (``BEGIN IMMEDIATE``
        for a transaction that holds the writers' lock).
        """

    def execute(self, raw: Any, sql: str, params: Any, timeout: float) -> Any:
        """Run one statement and return the driver cursor."""

    def queue(self, raw: Any, sql: str, params: Any, many: bool) -> None:
        """Run a statement whose result nobody reads, now or with the next one that is read.

        ``many``: run it for every row of ``params``. A server gets it in the
        same round trip as the next statement (or the COMMIT); its errors
        show there.
        """

    def write_alone(
        self, raw: Any, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        """Begin a transaction of ``mode``, run one statement, commit: in one round trip.

        Returns the begin statement to trace (as :meth:`begin`) and the
        statement's row count. On failure the transaction is left for the
        caller to roll back.
        """

    def write_batch(
        self, raw: Any, statements: Sequence[tuple[Any, ...]], mode: str, timeout: float
    ) -> tuple[str, list[Result]]:
        """Begin a transaction of ``mode``, run ``statements``, commit: in one round trip.

        A statement is ``(sql, params)``, or ``(sql, params, key)`` for an
        INSERT of one row whose generated ``key`` its result's rows give.
        Returns the begin statement to trace (as :meth:`begin`) and each
        statement's :data:`Result`. On failure the transaction is left for the
        caller to roll back.
        """

    def read_batch(
        self, raw: Any, statements: Sequence[tuple[str, Any]], timeout: float
    ) -> tuple[list[str], list[list[tuple[Any, ...]]]]:
        """Run queries in one round trip and return the statements to trace and each one's rows.

        Outside a transaction, several queries read one snapshot (a read-only
        transaction begun and committed around them); inside one, they are
        part of it.
        """

    def executemany(self, raw: Any, sql: str, rows: Sequence[Any]) -> None:
        """Run one statement for every row of ``rows``."""

    def insert_rows(
        self, raw: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` (values of ``columns``, names as SQL spells them) the fastest way.

        The same checks as :func:`insert_statement` run once per row, and errors
        of the same classes for rows the database refuses. Values are strings,
        numbers or None (a bulk path may write other types differently).
        """

    def insert_id(self, raw: Any, sql: str, params: Any, key: str, timeout: float) -> int:
        """Run an INSERT of one row and return the value of its ``key`` column."""

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        """Return conditions (with their parameters) that together match ``column`` to ``values``.

        A query run once per condition, results concatenated, finds each
        row whose ``column`` is one of ``values`` exactly once (for distinct ``values``).
        """

    def in_transaction(self, raw: Any) -> bool:
        """Whether a transaction is open on the raw connection."""

    def commit(self, raw: Any) -> None:
        """Commit the open transaction."""

    def rollback(self, raw: Any) -> None:
        """Roll the open transaction back."""

    def translate(
        self, exc: BaseException, location: DatabaseLocation, statement: str = ""
    ) -> Optional[BaseException]:
        """Return the package's error for a driver error (naming the database), or None.

        ``statement`` is the SQL that failed, where known. None leaves ``exc``
        as it is: a driver error the package has no better words for (a
        syntax error in SQL a caller wrote, say).
        """

    def from_sqlite_sql(self, sql: str) -> str:
        """Return SQL written for SQLite (NexusLIMS 1.4's callers) in this backend's dialect."""

    # --- the catalogue -------------------------------------------------------------

    def table_names(self, raw: Any) -> set[str]:
        """Return the names of the database's tables."""

    def column_names(self, raw: Any, table: str) -> list[str]:
        """Return the columns of ``table``, in order."""

    def index_names(self, raw: Any, table: str) -> set[str]:
        """Return the names of the indexes of ``table`` (not those of constraints)."""

    def on_delete_action(self, raw: Any, table: str, column: str) -> Optional[str]:
        """Return the ON DELETE action of the foreign key of ``table.column``, if any."""

    def id_counter(self, raw: Any, table: str, column: str) -> Optional[int]:
        """Return the last id ``table.column`` handed out (None if it never did)."""

    def set_id_counter(self, raw: Any, table: str, column: str, value: int) -> None:
        """Make the next generated id of ``table.column`` follow ``value``."""

    def schema_version(self, raw: Any) -> int:
        """Return the stored schema version (0 when none is stored)."""

    def set_schema_version(self, raw: Any, version: int) -> None:
        """Store the schema version, in the open transaction."""

    def size(self, raw: Any, location: DatabaseLocation) -> Optional[int]:
        """Return the size of the database in bytes, if known."""

    def server_version(self, raw: Any) -> str:
        """Return what serves the database, with its version (``PostgreSQL 15.18``)."""

    # --- migration mechanics --------------------------------------------------------

    def guard_old_schema(self, raw: Any, version: int) -> None:
        """Make this connection refuse what an old schema (``version``) would wrongly allow.

        An instrument of a database older than schema version 2 must not be
        deleted with its logs (SQLite: a TEMP trigger; PostgreSQL: nothing to do).
        """

    def blockers(self, raw: Any, table: str) -> list[str]:
        """Return what keeps ``table`` from being rebuilt (``"trigger t"``, ``"view v"``)."""

    def apply_constraints(self, raw: Any, table: Table, known_indexes: set[str]) -> None:
        """Give ``table`` the schema's CHECKs and foreign keys, keeping every row and id.

        SQLite rebuilds the table (keeping its indexes other than ``known_indexes``,
        which the caller makes anew); PostgreSQL alters the constraints in place.
        """

    def restrict_deletes(self, raw: Any) -> None:
        """Add what, beyond a RESTRICT foreign key, refuses to delete an instrument with logs.

        SQLite: a trigger that says why, in words; PostgreSQL: nothing.
        """

    def backup(self, raw: Any, target: Path) -> Optional[Path]:
        """Copy the open database to the file ``target``; None if it is not a file.

        The backup is no more readable than the database's file.
        """

    def compact(self, location: DatabaseLocation) -> bool:
        """Give the space freed by a rebuild back to the disk; False if there is nothing to do."""

    def removed_if_failed(self, location: DatabaseLocation) -> AbstractContextManager[None]:
        """Remove the database that the block creates if the block fails (a new file only)."""

    def staged(self, location: DatabaseLocation,
               like: Optional[Path]) -> AbstractContextManager[DatabaseLocation]:
        """Yield where to write a whole new copy of a database that goes to ``location``.

        What exists is written in place, in one transaction. A new file is
        written under a temporary name beside it, no more readable than the
        file ``like`` (the source's, if it is a file), and takes its name only
        when the block succeeds: a failure, or a kill at any moment, leaves no
        file by that name.
        """

    # --- integrity and identity -------------------------------------------------------

    def integrity_problems(self, raw: Any, *, full: bool) -> list[str]:
        """Return what the database's own check finds damaged, first problem first; [] if none.

        SQLite runs ``PRAGMA quick_check`` (``full``: ``integrity_check``);
        PostgreSQL reports what its catalogue tells at once (invalid indexes).
        """

    def damage_advice(self, location: DatabaseLocation) -> str:
        """Return what to do about a damaged database, for messages."""

    def identity(self, raw: Any, location: DatabaseLocation) -> Hashable:
        """Return what tells the database itself apart, whatever name or URL reaches it.

        Two locations with equal identities are the same database (a file by
        its device and inode; a server database by its server, database and schema).
        """


class translated(AbstractContextManager[None]):  # noqa: N801 (used as a function)
    """Raise the package's error for a driver's error in the block, where it has one.

    :meth:`Backend.translate` says which; any other error passes as it is.
    (A class, not a generator: it guards every instrument look-up.)
    """

    def __init__(self, backend: Backend, location: DatabaseLocation,
                 statement: str = "") -> None:
        self.backend, self.location, self.statement = backend, location, statement

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 trace: Any) -> None:
        if exc is not None and isinstance(exc, self.backend.driver_errors):
            better = self.backend.translate(exc, self.location, self.statement)
            if better is not None:
                raise better from exc


def insert_statement(table: str, columns: Sequence[str]) -> str:
    """Return the ``INSERT`` of one row of ``columns`` (names as SQL spells them) into ``table``."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# The table a DELETE, UPDATE or INSERT (OR REPLACE) writes to, quoted or not.
_TARGET = re.compile(
    r'^\s*(?:DELETE\s+FROM|UPDATE|INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO)\s+"?(\w+)"?',
    re.IGNORECASE)
# The tables a foreign key points to.
_PARENTS = frozenset(column.references[0] for table in TABLES for column in table.columns
                     if column.references)


def writes_to_parent(statement: str) -> bool:
    """Whether ``statement`` writes to a table a foreign key points to (deleting a parent).

    A foreign-key error of such a statement is a parent refused because it
    has rows (an instrument with logs), not a row naming a missing parent.
    """
    target = _TARGET.match(statement)
    return target is not None and target.group(1).lower() in _PARENTS
