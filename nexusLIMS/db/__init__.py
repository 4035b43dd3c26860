"""Communication with the NexusLIMS database.

:func:`make_db_query` runs one SQL statement; the
:mod:`~nexusLIMS.db.session_handler` submodule maps session logs to Python
objects. Importing this package opens no database: the database is read from
``nexusLIMS_db_path`` (or ``NX_DB_PATH``) each time a query runs.
"""

from __future__ import annotations

from typing import Any

from nexusLIMS.db.errors import (
    ClaimLostError,
    DatabaseConfigError,
    DatabaseDamagedError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    MigrationError,
    NexusLIMSDBError,
    UnsupportedDatabaseError,
)
from nexusLIMS.db.legacy_sql import run_legacy_sql
from nexusLIMS.db.migrations import MigrationResult, migrate_db
from nexusLIMS.db.schema import SCHEMA_VERSION, init_db

__all__ = [
    "SCHEMA_VERSION",
    "ClaimLostError",
    "DatabaseConfigError",
    "DatabaseDamagedError",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "MigrationError",
    "MigrationResult",
    "NexusLIMSDBError",
    "UnsupportedDatabaseError",
    "init_db",
    "make_db_query",
    "migrate_db",
]


def make_db_query(query: str) -> list[tuple[Any, ...]]:
    """Execute a query on the NexusLIMS database and return the results as a list.

    Parameters
    ----------
    query
        The SQL query to execute (one statement, in SQLite's dialect).

    Returns
    -------
    list of tuple
        The rows the statement returned (empty for statements returning none).
    """
    return run_legacy_sql(query)
