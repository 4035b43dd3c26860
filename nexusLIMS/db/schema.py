"""The database schema, defined once, and opening a verified NexusLIMS database.

The tables, their columns (which are required, their CHECK lists built from
:mod:`~nexusLIMS.db.enums`), the foreign keys and the indexes are Python
values below; :func:`render` turns them into SQL for SQLite or PostgreSQL
(``nexuslims-db schema`` prints it). :func:`init_db` creates a database from
them; :func:`transaction` opens an existing one, after checking that it is
a NexusLIMS database this package can use.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, locate_database
from nexusLIMS.db.connection import Connection, connect, removed_if_failed
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.errors import UnsupportedDatabaseError

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
    "Column",
    "DatabaseInfo",
    "Index",
    "Table",
    "create_statements",
    "forget",
    "has_table",
    "index_statement",
    "init_db",
    "inspect",
    "keep_logs_trigger",
    "render",
    "table_statement",
    "transaction",
]

logger = logging.getLogger(__name__)

#: The schema version this package writes (``PRAGMA user_version`` in SQLite):
#: 0 is NexusLIMS 1.4's script; see :mod:`~nexusLIMS.db.migrations` for the rest.
SCHEMA_VERSION = 4

#: The default of ``session_log.timestamp``: local time as ``YYYY-MM-DDTHH:MM:SS.fff``.
LOCAL_NOW = object()


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes
    ----------
    name
        The column's name.
    type
        Its SQLite type as 1.4 declared it; PostgreSQL gets ``TEXT`` for
        every character type (SQLite never enforced their lengths).
    required
        NOT NULL.
    default
        A literal default, or :data:`LOCAL_NOW`.
    allowed
        The values a CHECK allows, if any.
    references
        ``(table, column)`` of a foreign key: renaming the parent carries
        the rows along, deleting a parent that has rows is refused.
    doc
        What the column holds, for help texts.
    """

    name: str
    type: str
    required: bool = False
    primary_key: bool = False
    autoincrement: bool = False
    unique: bool = False
    default: object = None
    allowed: Optional[tuple[str, ...]] = None
    references: Optional[tuple[str, str]] = None
    doc: str = ""

    @property
    def needs_value(self) -> bool:
        """Whether an INSERT must give this column a value (NOT NULL, no default)."""
        return self.required and self.default is None and not self.autoincrement


@dataclass(frozen=True)
class Table:
    """A table: its name, its columns in order, and the schema version that added it."""

    name: str
    columns: tuple[Column, ...]
    since: int = 0
    doc: str = ""
    column_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(column.name for column in self.columns))

    def column(self, name: str) -> Column:
        """Return the column called ``name``."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")


@dataclass(frozen=True)
class Index:
    """An index; ``where`` makes it partial: ``(column, value)``."""

    name: str
    table: str
    columns: tuple[str, ...]
    where: Optional[tuple[str, str]] = None
    since: int = 1


INSTRUMENTS = Table("instruments", (
    Column("instrument_pid", "VARCHAR(100)", required=True, primary_key=True,
           doc="instrument PID, unique (e.g. FEI-Titan-TEM-635816)"),
    Column("api_url", "TEXT", required=True, unique=True,
           doc="calendar API URL, unique (e.g. a NEMO tool URL)"),
    Column("calendar_name", "TEXT", required=True, doc="name of the instrument's calendar"),
    Column("calendar_url", "TEXT", required=True, doc="URL of the instrument's calendar"),
    Column("location", "VARCHAR(100)", required=True, doc="building and room"),
    Column("schema_name", "TEXT", required=True, doc="the instrument's name in records"),
    Column("property_tag", "VARCHAR(20)", required=True, doc="property tag (asset number)"),
    Column("filestore_path", "TEXT", required=True,
           doc="data folder, relative to mmfnexus_path (e.g. ./Titan)"),
    Column("computer_name", "TEXT", unique=True, doc="instrument PC host name, unique"),
    Column("computer_ip", "VARCHAR(15)", unique=True, doc="instrument PC IP address, unique"),
    Column("computer_mount", "TEXT", doc="data mount point on the instrument PC (e.g. M:/)"),
    Column("harvester", "TEXT", doc="harvester of its reservations (e.g. nemo)"),
    Column("timezone", "TEXT", required=True, default="America/New_York",
           doc="IANA time zone of the instrument"),
), doc="The facility's instruments.")

SESSION_LOG = Table("session_log", (
    Column("id_session_log", "INTEGER", primary_key=True, autoincrement=True),
    # VARCHAR(36) as in 1.4; harvesters store URLs, and nothing enforces it.
    Column("session_identifier", "VARCHAR(36)", required=True),
    Column("instrument", "VARCHAR(100)", required=True,
           references=("instruments", "instrument_pid")),
    Column("timestamp", "DATETIME", required=True, default=LOCAL_NOW),
    Column("event_type", "TEXT", required=True, allowed=EventType.values()),
    Column("record_status", "TEXT", required=True, default=RecordStatus.WAITING_FOR_END.value,
           allowed=RecordStatus.values()),
    Column("user", "VARCHAR(50)"),
), doc="START, END and RECORD_GENERATION events of instrument sessions.")

SESSION_CLAIMS = Table("session_claims", (
    Column("session_identifier", "TEXT", required=True, primary_key=True),
    Column("worker", "TEXT", required=True),
    Column("token", "TEXT", required=True),
    Column("claimed_at", "TEXT", required=True),
    Column("expires_at", "TEXT", required=True),
), since=3, doc="Which record builder is building which session, until when.")

SESSION_REVISIONS = Table("session_revisions", (
    Column("id_revision", "INTEGER", primary_key=True, autoincrement=True),
    Column("log_id", "INTEGER", required=True),
    Column("session_identifier", "TEXT", required=True),
    Column("instrument", "TEXT", required=True),
    Column("event_type", "TEXT", required=True,
           allowed=(EventType.START.value, EventType.END.value)),
    Column("stored_timestamp", "TEXT", required=True),
    Column("revised_timestamp", "TEXT", required=True),
    Column("revised_user", "TEXT"),
    Column("received_at", "TEXT", required=True),
), since=4, doc="START and END times revised after the session's record was built.")

#: Every table, in creation order.
TABLES = (INSTRUMENTS, SESSION_LOG, SESSION_CLAIMS, SESSION_REVISIONS)

#: Serves get_sessions_to_build: every column it reads of the TO_BE_BUILT START
#: and END rows, so it reads no table page, and each START finds its END by
#: (event_type, session_identifier). Partial: it holds only the sessions
#: waiting for their record, so it stays small.
PAIRING_INDEX = Index(
    "session_log_to_be_built_idx", "session_log",
    ("event_type", "session_identifier", "instrument", "timestamp", "user", "record_status"),
    where=("record_status", RecordStatus.TO_BE_BUILT.value))
#: Serves claim_sessions: the sessions waiting for their record, in START order.
CLAIMING_INDEX = Index(
    "session_log_to_be_built_order_idx", "session_log", ("event_type", "id_session_log"),
    where=("record_status", RecordStatus.TO_BE_BUILT.value), since=3)

INDEXES = (
    Index("session_log_instrument_idx", "session_log", ("instrument",)),
    Index("session_log_session_identifier_idx", "session_log", ("session_identifier",)),
    # The count of TO_BE_BUILT ENDs, and status summaries.
    Index("session_log_status_event_idx", "session_log", ("record_status", "event_type")),
    PAIRING_INDEX,
    CLAIMING_INDEX,
    Index("session_revisions_session_idx", "session_revisions", ("session_identifier",), since=4),
)

# Tables the backends keep for themselves, which are not another application's.
_BACKEND_TABLES = frozenset({"sqlite_sequence", "nexuslims_schema_version"})
_RESERVED = frozenset({"user"})
_SQLITE_LOCAL_NOW = "(strftime('%Y-%m-%dT%H:%M:%f', 'now', 'localtime'))"
_POSTGRES_LOCAL_NOW = "to_char(localtimestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS')"


def _name(identifier: str) -> str:
    return f'"{identifier}"' if identifier in _RESERVED else identifier


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _column_sql(column: Column, dialect: str) -> str:
    if dialect == "postgresql":
        if column.autoincrement:
            return f"{_name(column.name)} BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        sql_type = "TEXT" if column.type in ("DATETIME", "TEXT") or "CHAR" in column.type \
            else column.type
    else:
        if column.autoincrement:
            return f"{_name(column.name)} INTEGER PRIMARY KEY AUTOINCREMENT"
        sql_type = column.type
    parts = [_name(column.name), sql_type]
    if column.required:
        parts.append("NOT NULL")
    if column.primary_key:
        parts.append("PRIMARY KEY")
    if column.unique:
        parts.append("UNIQUE")
    if column.default is LOCAL_NOW:
        now = _POSTGRES_LOCAL_NOW if dialect == "postgresql" else _SQLITE_LOCAL_NOW
        parts.append(f"DEFAULT {now}")
    elif isinstance(column.default, str):
        parts.append(f"DEFAULT {_literal(column.default)}")
    if column.references:
        table, parent = column.references
        parts.append(f"REFERENCES {table} ({parent}) ON UPDATE CASCADE ON DELETE RESTRICT")
    if column.allowed:
        values = ", ".join(_literal(value) for value in column.allowed)
        parts.append(f"CHECK ({_name(column.name)} IN ({values}))")
    return " ".join(parts)


def table_statement(table: Table, dialect: str, *, name: Optional[str] = None) -> str:
    """Return the ``CREATE TABLE IF NOT EXISTS`` of ``table`` (optionally under another name)."""
    columns = ",\n    ".join(_column_sql(column, dialect) for column in table.columns)
    return f"CREATE TABLE IF NOT EXISTS {name or table.name} (\n    {columns}\n)"


def index_statement(index: Index) -> str:
    """Return the ``CREATE INDEX IF NOT EXISTS`` of ``index`` (the same in both dialects)."""
    columns = ", ".join(_name(column) for column in index.columns)
    sql = f"CREATE INDEX IF NOT EXISTS {index.name} ON {index.table} ({columns})"
    if index.where:
        sql += f" WHERE {index.where[0]} = {_literal(index.where[1])}"
    return sql


def create_statements(dialect: str, *, version: int = SCHEMA_VERSION) -> list[str]:
    """Return the statements creating every table, index and trigger up to schema ``version``."""
    statements = [table_statement(table, dialect) for table in TABLES if table.since <= version]
    statements += [index_statement(index) for index in INDEXES if index.since <= version]
    if dialect == "sqlite" and version >= KEEPS_LOGS_SINCE:
        statements.append(keep_logs_trigger())
    return statements


def render(dialect: str = "sqlite") -> str:
    """Return the whole schema as an SQL script for ``dialect``, ending with its version."""
    header = (f"-- The NexusLIMS session database, schema version {SCHEMA_VERSION} "
              f"({dialect}); generated by nexusLIMS.db.schema.\n")
    if dialect == "sqlite":
        version = [f"PRAGMA user_version = {SCHEMA_VERSION}"]
    else:
        version = ["CREATE TABLE IF NOT EXISTS nexuslims_schema_version (version INTEGER NOT NULL)",
                   f"INSERT INTO nexuslims_schema_version (version) VALUES ({SCHEMA_VERSION})"]
    return header + "".join(f"\n{statement};\n"
                            for statement in [*create_statements(dialect), *version])


@dataclass(frozen=True)
class DatabaseInfo:
    """What a database holds, as far as this package cares.

    Attributes
    ----------
    tables
        The names of its tables.
    version
        The stored schema version (0: NexusLIMS 1.4's script, or none).
    alembic_revision
        The revision in ``alembic_version`` (a NexusLIMS 2.x database), if any.
    """

    location: DatabaseLocation
    tables: frozenset[str]
    version: int
    alembic_revision: Optional[str]

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
        if self.alembic_revision is not None:
            raise UnsupportedDatabaseError(
                f"{where} is a NexusLIMS 2.x database (alembic revision "
                f"{self.alembic_revision}); this package uses databases made by NexusLIMS 1.4 "
                f"or by itself (schema versions 0 to {SCHEMA_VERSION}): use NexusLIMS 2.x "
                f"with it, or point nexusLIMS_db_path at a 1.4 database"
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
    """Return what the open database holds."""
    tables = frozenset(conn.backend.table_names(conn))
    revision = None
    if "alembic_version" in tables:
        revision = str(conn.scalar("SELECT version_num FROM alembic_version") or "unknown")
    return DatabaseInfo(conn.location, tables, conn.backend.schema_version(conn), revision)


def keep_logs_trigger(*, temporary: bool = False) -> str:
    """Return SQLite's trigger refusing to delete (or REPLACE) an instrument that has logs.

    The foreign key says ``ON DELETE RESTRICT`` since schema version 2; this
    trigger (part of the schema since then) says why, in words. A file of an
    older schema, whose foreign key still cascades, gets it as a TEMP trigger
    on every connection the package opens.
    """
    name, main = ("TEMP TRIGGER IF NOT EXISTS nexuslims_keep_logs", "main.") if temporary \
        else ("TRIGGER IF NOT EXISTS instruments_keep_logs", "")
    return (
        f"CREATE {name} BEFORE DELETE ON {main}{INSTRUMENTS.name} "
        f"WHEN EXISTS (SELECT 1 FROM {main}{SESSION_LOG.name} "
        f"WHERE instrument = OLD.instrument_pid) "
        f"BEGIN SELECT RAISE(ABORT, 'cannot delete or replace an instrument that has "
        f"session_log rows: its history would be lost (to rename it, UPDATE instruments SET "
        f"instrument_pid; to remove it, first delete its session_log rows)'); END"
    )


#: The schema version whose foreign key (and trigger) keeps an instrument's logs.
KEEPS_LOGS_SINCE = 2


# What a server database holds, once checked: it does not turn into another
# application's database, and only init_db, migrate_db and copy_database (which
# call forget()) change its tables. A file is looked at every time.
_servers: dict[DatabaseLocation, DatabaseInfo] = {}


def has_table(conn: Connection, name: str) -> bool:
    """Whether the open database has the table ``name`` (schema versions differ)."""
    info = _servers.get(conn.location)
    return name in (info.tables if info is not None else conn.backend.table_names(conn))


def forget(location: DatabaseLocation) -> None:
    """Forget what was learnt of a server database's tables (they were just changed)."""
    _servers.pop(location, None)


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
        if conn.location not in _servers:
            info = inspect(conn)
            info.check_usable(require_tables=require_tables)
            if conn.dialect == "sqlite" and info.is_nexuslims and info.version < KEEPS_LOGS_SINCE:
                conn.execute(keep_logs_trigger(temporary=True))
            elif conn.dialect != "sqlite" and info.is_nexuslims:
                _servers[conn.location] = info
        if begin is not None:
            conn.begin(begin)
        yield conn


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
            for statement in create_statements(conn.dialect, version=version):
                conn.execute(statement)
            if fresh:
                conn.backend.set_schema_version(conn, SCHEMA_VERSION)
        forget(location)
    logger.info("Initialised NexusLIMS database at %s", location.describe())
    return location
