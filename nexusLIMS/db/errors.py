"""Exceptions raised by :mod:`nexusLIMS.db` beyond the standard ones."""

from __future__ import annotations

__all__ = [
    "ClaimLostError",
    "DatabaseConfigError",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "MigrationError",
    "NexusLIMSDBError",
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
    """The database server cannot be reached, refuses the login, or lacks the database."""


class UnsupportedDatabaseError(NexusLIMSDBError):
    """The database is not one this package can use (another application's, or NexusLIMS 2.x)."""


class UnsupportedSQLError(NexusLIMSDBError, ValueError):
    """SQL written for SQLite that cannot be carried over to PostgreSQL."""


class MigrationError(NexusLIMSDBError):
    """The database cannot be migrated; it was left unchanged."""


class ClaimLostError(NexusLIMSDBError):
    """A builder's claim on a session expired and another builder holds it now."""
