"""Exceptions raised by :mod:`nexusLIMS.db` beyond the standard ones."""

from __future__ import annotations

__all__ = ["DatabaseConfigError", "DatabaseNotFoundError", "NexusLIMSDBError"]


class NexusLIMSDBError(Exception):
    """Base class of the errors specific to this package."""


class DatabaseConfigError(NexusLIMSDBError):
    """The environment does not say which database to use, or says it badly."""


class DatabaseNotFoundError(DatabaseConfigError, FileNotFoundError):
    """The configured database file does not exist (and is never created)."""
