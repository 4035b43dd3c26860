"""Exceptions raised by :mod:`nexusLIMS.db` beyond the standard ones.

A database driver's errors are classified once, where they leave the
backend (:mod:`nexusLIMS.db.backends`), by exception class and error code
(SQLSTATE, SQLite's extended result code), never by message text, which
depends on the server's language. What the rest of the package (and a
caller) sees is one of the classes below. Each error raised for a driver's
error is also an instance of the driver's own class (``sqlite3.IntegrityError``,
``psycopg.errors.LockNotAvailable``, ...), so code written for NexusLIMS 1.4
that catches those keeps working. A file that cannot be used (not a
database, read-only, full) raises the driver's own class, with a message
naming the file and what to do; a damaged one raises
:class:`DatabaseDamagedError`, which is also ``sqlite3.DatabaseError``.
"""

from __future__ import annotations

from enum import Enum
from typing import Optional, Sequence, TypeVar

__all__ = [
    "ClaimLostError",
    "ConstraintError",
    "ConstraintKind",
    "DatabaseConfigError",
    "DatabaseDamagedError",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "MigrationError",
    "NexusLIMSDBError",
    "SessionRevisedError",
    "UnsupportedDatabaseError",
    "UnsupportedSQLError",
]


class NexusLIMSDBError(Exception):
    """Base class of the errors specific to this package."""


class DatabaseConfigError(NexusLIMSDBError):
    """The environment does not say which database to use, or says it badly."""


class DatabaseNotFoundError(DatabaseConfigError, FileNotFoundError):
    """The configured database file does not exist (and is never created)."""


class DatabaseUnavailableError(NexusLIMSDBError, ConnectionError):
    """The database server cannot be reached, refuses the login, or lacks the database.

    Attributes
    ----------
    transient
        Whether trying again may succeed (a server restarting, a network
        cut), unlike a refused login or a missing database.
    sent
        Whether the call may have reached the server before the connection
        failed (then only a call that cannot write twice is tried again).
    """

    def __init__(self, message: str, *, transient: bool = True, sent: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
        self.sent = sent


class UnsupportedDatabaseError(NexusLIMSDBError):
    """The database is not one this package can use (another application's, or NexusLIMS 2.x)."""


class UnsupportedSQLError(NexusLIMSDBError, ValueError):
    """SQL written for SQLite that cannot be carried over to PostgreSQL."""


class MigrationError(NexusLIMSDBError):
    """The database cannot be migrated; it was left unchanged."""


class ClaimLostError(NexusLIMSDBError):
    """A builder's claim on a session expired and another builder holds it now."""


class SessionRevisedError(ClaimLostError):
    """The session was revised while its record was built: the outcome was not recorded.

    Its claim has ended and it waits to be built again with the new times.
    """

class DatabaseDamagedError(NexusLIMSDBError):
    """The database is damaged (SQLite: its file's pages; PostgreSQL: an invalid index).

    Raised before anything is written. The message names the database, the
    first problem found and what to do.

    Attributes
    ----------
    problems
        Every problem the database's own check reported, first problem first.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class DatabaseLockedError(NexusLIMSDBError):
    """Another program held a lock for longer than ``nexusLIMS_db_timeout``."""


class ConstraintKind(str, Enum):
    """Which kind of constraint a statement broke."""

    FOREIGN_KEY = "foreign_key"
    """A row names a parent that does not exist."""
    RESTRICT = "restrict"
    """A parent that still has rows was deleted or replaced (an instrument with logs)."""
    CHECK = "check"
    """A value a CHECK does not allow (a status a 1.4 file does not know)."""
    UNIQUE = "unique"
    """A value (or key) that another row has already."""
    NOT_NULL = "not_null"
    """A required value is missing."""
    OTHER = "other"
    """Any other refusal (a trigger's, for instance)."""


E = TypeVar("E", bound="ConstraintError")


class ConstraintError(NexusLIMSDBError):
    """A statement broke a constraint of the schema; nothing it would have written was kept.

    Attributes
    ----------
    kind
        Which kind of constraint (:class:`ConstraintKind`).
    constraint
        The constraint's name, where the database says it.
    table
        The table the statement wrote to, where the database says it.
    """

    kind: ConstraintKind = ConstraintKind.OTHER
    constraint: Optional[str] = None
    table: Optional[str] = None

    def classified(
        self: E, kind: ConstraintKind, constraint: Optional[str] = None,
        table: Optional[str] = None,
    ) -> E:
        """Set what was violated; return the error itself."""
        self.kind, self.constraint, self.table = kind, constraint, table
        return self

    def reworded(self: E, message: str) -> E:
        """Return an error of the same class and kind with another message."""
        return type(self)(message).classified(self.kind, self.constraint, self.table)
