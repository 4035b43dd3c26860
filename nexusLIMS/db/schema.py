"""Opening a verified NexusLIMS database, and creating one.

:func:`transaction` opens an existing database after checking that it is a
NexusLIMS database this package can use; :func:`init_db` creates one from
the schema defined in :mod:`nexusLIMS.db.tables` (whose names this module
also offers), rendered by the backend; :func:`render` prints that schema as
SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from nexusLIMS.db import queries
from nexusLIMS.db.backends import dialect_named
from nexusLIMS.db.backends.ddl import DIALECTS
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, locate_database
from nexusLIMS.db.connection import Connection, connect, removed_if_failed
from nexusLIMS.db.databases import database_at
from nexusLIMS.db.errors import UnsupportedDatabaseError
from nexusLIMS.db.tables import (
    CLAIMING_INDEX,
    INDEXES,
    INSTRUMENTS,
    PAIRING_INDEX,
    SCHEMA_VERSION,
    SESSION_CLAIMS,
    SESSION_LOG,
    SESSION_REVISIONS,
    TABLES,
    Column,
    Index,
    Table,
)

__all__ = [
    "CLAIMING_INDEX",
    "INDEXES",
    "INSTRUMENTS",
    "PAIRING_INDEX",
    "SCHEMA_VERSION",
    "SESSION_CLAIMS",
    "SESSION_LOG",
    "SESSION_REVISIONS",
    "TABLES",
    "TABLES_2X",
    "Column",
    "DatabaseInfo",
    "Index",
    "Table",
    "forget",
    "has_index",
    "has_table",
    "init_db",
    "inspect",
    "render",
    "transaction",
]

logger = logging.getLogger(__name__)

# Tables the backends keep for themselves, which are not another application's.
_BACKEND_TABLES = frozenset().union(*(dialect.own_tables for dialect in DIALECTS.values()))
#: Tables only NexusLIMS 2.x makes: its log of record exports (2.4) and its
#: map of user names to other systems' (2.5). 2.x's ``nexuslims db create-demo``
#: makes them without Alembic's table.
TABLES_2X = frozenset({"upload_log", "external_user_identifiers"})
# NexusLIMS 2.5 renamed schema_name to display_name and dropped calendar_name.
_COLUMN_2X, _COLUMN_1_4 = "display_name", "calendar_name"
# What a database is known to hold, kept for a server database (see transaction()).
_VERIFIED = "verified schema"


@dataclass(frozen=True)
class DatabaseInfo:
    """What a database holds, as far as this package cares.

    Attributes
    ----------
    location
        The database.
    tables
        The names of its tables.
    version
        The stored schema version (0: NexusLIMS 1.4's script, or none).
    alembic_revision
        The revision in ``alembic_version`` (a NexusLIMS 2.x database), if any.
    signs_of_2x
        What shows a NexusLIMS 2.x database that has no ``alembic_version``
        table (its tables, or its ``instruments`` columns), if anything.
    """

    location: DatabaseLocation
    tables: frozenset[str]
    version: int
    alembic_revision: Optional[str]
    signs_of_2x: Optional[str] = None

    @property
    def is_nexuslims_2x(self) -> bool:
        """Whether it is a NexusLIMS 2.x database (with or without Alembic's table)."""
        return self.alembic_revision is not None or self.signs_of_2x is not None

    @property
    def is_nexuslims(self) -> bool:
        """Whether it has the two tables of every NexusLIMS database."""
        return {INSTRUMENTS.name, SESSION_LOG.name} <= self.tables

    @property
    def foreign_tables(self) -> list[str]:
        """Tables that are neither this package's nor its backends'."""
        ours = {table.name for table in TABLES} | _BACKEND_TABLES
        return sorted(name for name in self.tables if name not in ours)

    def check_usable(self, *, require_tables: bool = True) -> None:
        """Raise :class:`UnsupportedDatabaseError` unless this package can use the database."""
        where = self.location.describe()
        if self.is_nexuslims_2x:
            why = (f"alembic revision {self.alembic_revision}" if self.alembic_revision is not None
                   else f"no alembic revision, but {self.signs_of_2x}")
            raise UnsupportedDatabaseError(
                f"{where} is a NexusLIMS 2.x database ({why}); this package uses databases made "
                f"by NexusLIMS 1.4 or by itself (schema versions 0 to {SCHEMA_VERSION}): use "
                f"NexusLIMS 2.x with it, or point nexusLIMS_db_path at a 1.4 database"
            )
        # Another application's file may use user_version for itself.
        if self.is_nexuslims and self.version > SCHEMA_VERSION:
            raise UnsupportedDatabaseError(
                f"{where} has schema version {self.version}, newer than this package's "
                f"({SCHEMA_VERSION}); update nexusLIMS"
            )
        if require_tables and not self.is_nexuslims:
            lacking = [t for t in (INSTRUMENTS.name, SESSION_LOG.name) if t not in self.tables]
            raise UnsupportedDatabaseError(
                f"{where} is not a NexusLIMS database: it has no {' or '.join(lacking)} table "
                f"(create one with init_db or 'nexuslims-db init')"
            )


def inspect(conn: Connection) -> DatabaseInfo:
    """Return what the open database holds.

    It runs on every transaction of a file: its columns are read only for a
    file that has no schema version of this package's (1.4's or 2.x's), and
    no 2.x table or Alembic revision that tells already.
    """
    backend, raw = conn.backend, conn.raw
    tables = frozenset(backend.table_names(raw))
    version = backend.schema_version(raw)
    revision = None
    if "alembic_version" in tables:
        revision = str(conn.scalar(queries.ALEMBIC_REVISION) or "unknown")
    signs = None
    if revision is None:
        if tables & TABLES_2X:
            signs = f"2.x's tables: {', '.join(sorted(tables & TABLES_2X))}"
        elif version == 0 and INSTRUMENTS.name in tables:
            columns = backend.column_names(raw, INSTRUMENTS.name)
            if _COLUMN_2X in columns and _COLUMN_1_4 not in columns:
                signs = f"2.x's instruments columns ({_COLUMN_2X}, no {_COLUMN_1_4})"
    return DatabaseInfo(conn.location, tables, version, revision, signs)


class _Verified:
    """What was verified of a server database: it does not turn into another application's."""

    info: Optional[DatabaseInfo] = None
    #: The indexes of each table, once asked for.
    indexes: dict[str, frozenset[str]]

    def __init__(self) -> None:
        self.indexes = {}


def has_table(conn: Connection, name: str) -> bool:
    """Whether the open database has the table ``name`` (schema versions differ)."""
    info = conn.database.state(_VERIFIED, _Verified).info
    return name in (info.tables if info is not None else conn.backend.table_names(conn.raw))


def has_index(conn: Connection, table: str, name: str) -> bool:
    """Whether the open database has the index ``name`` on ``table`` (asked once of a server)."""
    verified = conn.database.state(_VERIFIED, _Verified)
    if verified.info is None:  # a file: it may have changed since
        return name in conn.backend.index_names(conn.raw, table)
    if table not in verified.indexes:
        verified.indexes[table] = frozenset(conn.backend.index_names(conn.raw, table))
    return name in verified.indexes[table]


def forget(location: DatabaseLocation) -> None:
    """Forget what was learnt of a database's tables (they were just changed)."""
    db = database_at(location)
    db.forget(_VERIFIED)
    db.watch_again()


@contextmanager
def transaction(
    database: Optional[DatabaseRef] = None,
    *,
    begin: Optional[str] = "DEFERRED",
    require_tables: bool = True,
) -> Iterator[Connection]:
    """Open the NexusLIMS database, check it, run one transaction and close it.

    Like :func:`~nexusLIMS.db.connection.connect`, after refusing a database
    this package cannot use (NexusLIMS 2.x, a newer schema, or one without
    the NexusLIMS tables when ``require_tables``) and making sure no delete
    of an instrument can take its session logs along.

    Raises
    ------
    UnsupportedDatabaseError
        The database is not one this package can use; nothing was written.
    """
    with connect(database, begin=None) as conn:
        # A server database does not turn into another application's: check it
        # once per process (a file is checked every time; it may be replaced).
        verified = conn.database.state(_VERIFIED, _Verified)
        if verified.info is None:
            info = inspect(conn)
            info.check_usable(require_tables=require_tables)
            if info.is_nexuslims:
                conn.backend.guard_old_schema(conn.raw, info.version)
                if not conn.backend.is_file:
                    verified.info = info
        if begin is not None:
            conn.begin(begin)
        yield conn


def render(dialect: str = "sqlite") -> str:
    """Return the whole schema as an SQL script for ``dialect``, ending with its version."""
    return dialect_named(dialect).render()


def init_db(database: Optional[DatabaseRef] = None, *, force: bool = False) -> DatabaseLocation:
    """Create the NexusLIMS database, or add what an existing one lacks.

    Creates the file (and its folder) if needed, then every table and index
    where missing, and records the schema version in a new database.
    Existing tables and rows are never dropped or changed; to bring an older
    database up to date use :func:`~nexusLIMS.db.migrate_db`. If creating a
    new file fails, no file is left behind.

    Parameters
    ----------
    database
        Where the database is; by default from ``nexusLIMS_db_path``.
    force
        Also add the NexusLIMS tables to a database that holds tables of
        another application (and set its schema version).

    Returns
    -------
    DatabaseLocation
        Where the database is (``.path`` for a SQLite file).

    Raises
    ------
    UnsupportedDatabaseError
        The database belongs to another application (without ``force``), to
        NexusLIMS 2.x, or has a newer schema; nothing was written.
    """
    location = locate_database(database, must_exist=False)
    with removed_if_failed(location):
        with connect(location, begin="IMMEDIATE", create=True) as conn:
            info = inspect(conn)
            info.check_usable(require_tables=False)
            if info.foreign_tables and not force:
                raise UnsupportedDatabaseError(
                    f"{location.describe()} holds tables of another application "
                    f"({', '.join(info.foreign_tables)}); not adding the NexusLIMS tables to "
                    f"it (use another file, or force=True / 'init --force' to add them anyway)"
                )
            fresh = not info.is_nexuslims
            version = SCHEMA_VERSION if fresh else info.version
            for statement in conn.backend.ddl.create_statements(version):
                conn.execute(statement)
            if fresh:
                conn.backend.set_schema_version(conn.raw, SCHEMA_VERSION)
        forget(location)
    logger.info("Initialised NexusLIMS database at %s", location.describe())
    return location
