"""The schema as data: the tables, their columns and indexes, defined once.

Which columns are required, their CHECK lists (built from
:mod:`~nexusLIMS.db.enums`), the foreign keys and the indexes are Python
values here; each backend renders them as its SQL
(:mod:`nexusLIMS.db.backends`), and ``nexuslims-db schema`` prints that.
Nothing here touches a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from nexusLIMS.db.enums import EventType, RecordStatus

__all__ = [
    "CLAIMING_INDEX",
    "INDEXES",
    "INSTRUMENTS",
    "KEEPS_LOGS_SINCE",
    "KEEP_LOGS_MESSAGE",
    "LOCAL_NOW",
    "LOG_COLUMNS",
    "PAIRING_INDEX",
    "SCHEMA_VERSION",
    "SESSION_CLAIMS",
    "SESSION_LOG",
    "SESSION_REVISIONS",
    "TABLES",
    "Column",
    "Index",
    "StoredLog",
    "Table",
    "describe_log",
    "quote",
    "quoted_columns",
]

#: The schema version this package writes: 0 is NexusLIMS 1.4's script; see
#: :mod:`~nexusLIMS.db.migrations` for the rest.
SCHEMA_VERSION = 4

#: The schema version whose foreign key (and, on SQLite, trigger) keeps an
#: instrument's logs when someone tries to delete the instrument.
KEEPS_LOGS_SINCE = 2

#: Why deleting (or replacing) an instrument that has logs is refused.
KEEP_LOGS_MESSAGE = (
    "cannot delete or replace an instrument that has session_log rows: its history would be "
    "lost (to rename it, UPDATE instruments SET instrument_pid; to remove it, first delete its "
    "session_log rows)"
)


class _LocalNow:
    """The default of ``session_log.timestamp``: local time as ``YYYY-MM-DDTHH:MM:SS.fff``."""

    def __repr__(self) -> str:
        return "LOCAL_NOW"


#: The default of ``session_log.timestamp`` (each backend spells it in its SQL).
LOCAL_NOW = _LocalNow()

# Words that must be quoted to be a column name on both backends.
_RESERVED = frozenset({"user"})
_PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")


def quote(identifier: str) -> str:
    """Return ``identifier`` as SQL spells it: double-quoted when it is a keyword or not plain.

    The one quoting rule of the package: plain lower-case names stay as they
    are (so the SQL reads as 1.4's did); ``user`` and anything else are quoted.
    """
    if identifier in _RESERVED or not _PLAIN.match(identifier):
        return '"' + identifier.replace('"', '""') + '"'
    return identifier


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
    primary_key
        The table's primary key.
    autoincrement
        An id the database generates, never reused.
    unique
        UNIQUE.
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

#: Every index, with the schema version that added it.
INDEXES = (
    Index("session_log_instrument_idx", "session_log", ("instrument",)),
    Index("session_log_session_identifier_idx", "session_log", ("session_identifier",)),
    # The count of TO_BE_BUILT ENDs, and status summaries.
    Index("session_log_status_event_idx", "session_log", ("record_status", "event_type")),
    PAIRING_INDEX,
    CLAIMING_INDEX,
    Index("session_revisions_session_idx", "session_revisions", ("session_identifier",), since=4),
)

#: The columns of ``session_log``, in table order (what ``SELECT *`` returns).
LOG_COLUMNS = SESSION_LOG.column_names


def quoted_columns(table: Table) -> tuple[str, ...]:
    """Return the column names of ``table`` as SQL spells them (:func:`quote`)."""
    return tuple(quote(name) for name in table.column_names)


def describe_log(log: Any) -> str:
    """Return a log (a ``SessionLog`` or a :class:`StoredLog`) as NexusLIMS 1.4 shows one."""
    return (f"SessionLog (id={log.session_identifier}, instrument={log.instrument}, "
            f"timestamp={log.timestamp}, event_type={log.event_type}, user={log.user}, "
            f"record_status={log.record_status})")


class StoredLog(NamedTuple):
    """One stored ``session_log`` row, field for column."""

    id_session_log: int
    session_identifier: str
    instrument: str
    timestamp: str
    event_type: str
    record_status: str
    user: Optional[str]
