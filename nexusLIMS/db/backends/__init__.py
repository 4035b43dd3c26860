"""The database backends: what differs between SQLite and PostgreSQL.

Each backend opens connections, runs ``BEGIN`` the way its locking needs,
rewrites the package's ``?`` placeholders if it must, explains its errors
and answers the few schema questions the package asks (tables, columns,
indexes, the schema version). Everything above
:mod:`nexusLIMS.db.connection` is written once, for both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

from nexusLIMS.db.config import Backend as BackendName
from nexusLIMS.db.config import DatabaseLocation

if TYPE_CHECKING:  # pragma: no cover
    from nexusLIMS.db.connection import Connection

__all__ = ["Backend", "Begin", "backend_for", "insert_statement"]

#: ``"DEFERRED"``: a read; ``"WRITE"``: writes that need no other writer kept
#: out (each checks what it needs in the statement that writes); ``"IMMEDIATE"``:
#: takes the writers' lock at once, for a read-then-write that no other writer
#: may interleave with; ``None``: autocommit. (SQLite has one writer at a time
#: anyway: WRITE and IMMEDIATE are both its BEGIN IMMEDIATE.)
Begin = Optional[str]


class Backend(Protocol):
    """What :class:`~nexusLIMS.db.connection.Connection` needs from a database."""

    name: BackendName
    #: Exception classes meaning "a constraint was violated".
    integrity_errors: tuple[type[BaseException], ...]
    #: Appended to a SELECT in a write transaction, keeps the rows it read
    #: from other writers until the transaction ends.
    lock_rows: str
    #: Exception classes of the driver (what a failed statement raises).
    driver_errors: tuple[type[BaseException], ...]

    def open(self, location: DatabaseLocation, *, create: bool, foreign_keys: bool) -> Any:
        """Return a new driver connection in autocommit mode; create the database if asked."""

    def release(self, location: DatabaseLocation, raw: Any) -> None:
        """Close a driver connection (or keep it for reuse)."""

    def open_watch(self, location: DatabaseLocation) -> Any:
        """Return a kept, read-only driver connection for :meth:`data_version`, or None."""

    def data_version(self, raw: Any) -> Optional[int]:
        """Return a number that changes when another connection commits (None: unknown)."""

    def begin(self, conn: Connection, mode: str, timeout: float) -> str:
        """Start a transaction of ``mode``, waiting at most ``timeout`` s for locks.

        Returns the statement to trace, in SQLite's words (``BEGIN IMMEDIATE``
        for a transaction that holds the writers' lock).
        """

    def execute(self, conn: Connection, sql: str, params: Any, timeout: float) -> Any:
        """Run one statement (already traced) and return the driver cursor."""

    def write_alone(
        self, conn: Connection, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        """Begin a transaction of ``mode``, run one statement, commit: in one round trip.

        Returns the begin statement to trace (as :meth:`begin`) and the
        statement's row count. On failure the transaction is left for the
        caller to roll back.
        """

    def executemany(self, conn: Connection, sql: str, rows: Sequence[Any]) -> None:
        """Run one statement for every row of ``rows``."""

    def insert_rows(
        self, conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` (values of ``columns``, names as SQL spells them) the fastest way.

        The same checks as :func:`insert_statement` run once per row, and errors
        of the same classes for rows the database refuses. Values are strings,
        numbers or None (a bulk path may write other types differently).
        """

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        """Return conditions (with their parameters) that together match ``column`` to ``values``.

        A query run once per condition, results concatenated, finds each
        row whose ``column`` is one of ``values`` exactly once (for distinct ``values``).
        """

    def insert_id(self, conn: Connection, sql: str, params: Any, key: str, timeout: float) -> int:
        """Run an INSERT of one row and return the value of its ``key`` column."""

    def in_transaction(self, raw: Any) -> bool:
        """Whether a transaction is open on the driver connection."""

    def explain(self, exc: BaseException, location: DatabaseLocation) -> Optional[BaseException]:
        """Return a clearer exception for ``exc`` (naming the database), or None."""

    def table_names(self, conn: Connection) -> set[str]:
        """Return the names of the database's tables."""

    def column_names(self, conn: Connection, table: str) -> list[str]:
        """Return the columns of ``table``, in order."""

    def index_names(self, conn: Connection, table: str) -> set[str]:
        """Return the names of the indexes of ``table`` (not those of constraints)."""

    def on_delete_action(self, conn: Connection, table: str, column: str) -> Optional[str]:
        """Return the ON DELETE action of the foreign key of ``table.column``, if any."""

    def id_counter(self, conn: Connection, table: str, column: str) -> Optional[int]:
        """Return the last id ``table.column`` handed out (None if it never did)."""

    def set_id_counter(self, conn: Connection, table: str, column: str, value: int) -> None:
        """Make the next generated id of ``table.column`` follow ``value``."""

    def schema_version(self, conn: Connection) -> int:
        """Return the stored schema version (0 when none is stored)."""

    def set_schema_version(self, conn: Connection, version: int) -> None:
        """Store the schema version, in the open transaction."""


def insert_statement(table: str, columns: Sequence[str]) -> str:
    """Return the ``INSERT`` of one row of ``columns`` (names as SQL spells them) into ``table``."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def backend_for(location: DatabaseLocation) -> Backend:
    """Return the backend of ``location`` (importing PostgreSQL's only when needed)."""
    if location.backend == "sqlite":
        from nexusLIMS.db.backends.sqlite import SQLITE

        return SQLITE
    try:
        from nexusLIMS.db.backends.postgresql import POSTGRESQL
    except ImportError as exc:
        from nexusLIMS import DISTRIBUTION
        from nexusLIMS.db.errors import DatabaseConfigError

        raise DatabaseConfigError(
            f"{location.describe()} is a PostgreSQL database, which needs the postgres extra: "
            f'pip install "{DISTRIBUTION}[postgres]" ({exc})'
        ) from None
    return POSTGRESQL
