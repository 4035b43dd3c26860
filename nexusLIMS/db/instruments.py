"""The facility's instruments: the ``instruments`` table as :class:`Instrument` objects.

Instruments are read fresh from the configured database whenever they are
asked for, and an instrument whose row has not changed is the *same object*
as before (as in NexusLIMS 1.4, whose ``instrument_db`` was one dict loaded
at import): instruments compare equal across look-ups, work as dict keys, and
an attribute set on one is seen by the next look-up. A changed row gives a
new object with the new values.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Union

import pytz

from nexusLIMS.db import queries
from nexusLIMS.db.config import ENV_DB_PATH, DatabaseRef, configured_database
from nexusLIMS.db.connection import Connection, retrying
from nexusLIMS.db.databases import Database, Version, configured_database_state
from nexusLIMS.db.schema import INSTRUMENTS, transaction
from nexusLIMS.db.timestamps import localize
from nexusLIMS.db.validation import check_text

if TYPE_CHECKING:  # pragma: no cover
    from _collections_abc import dict_items, dict_keys, dict_values

__all__ = [
    "DEFAULT_TIMEZONE",
    "Instrument",
    "InstrumentDB",
    "add_instrument",
    "check_text",
    "current_instruments",
    "edit_instrument",
    "load_instruments",
    "read_instruments",
    "reading_instruments",
    "remove_instrument",
    "validate_timezone",
    "write_instrument",
    "zone_named",
]

# The name NexusLIMS 1.4 logged under (a facility's logging setup uses it).
logger = logging.getLogger("nexusLIMS.instruments")

#: The ``instruments.timezone`` default of the schema.
DEFAULT_TIMEZONE = str(INSTRUMENTS.column("timezone").default)

# The attribute of Instrument holding each column: the PID is ``name``.
_PID = "instrument_pid"
_ATTRIBUTES = tuple("name" if c == _PID else c for c in INSTRUMENTS.column_names)
# Where each database keeps its registry (see nexusLIMS.db.databases).
_REGISTRY = "instruments"
# What repr(instrument_db) shows while no database is configured.
_UNCONFIGURED_REPR = (
    f"<instrument_db: the instruments of the database that ${ENV_DB_PATH} names "
    f"(none is configured now)>"
)

Row = tuple[Any, ...]


class Instrument:
    """One instrument of the facility (one row of the ``instruments`` table).

    Parameters
    ----------
    api_url
        The calendar (e.g. NEMO tool) API URL of the instrument.
    calendar_name
        The name of the instrument's calendar.
    calendar_url
        The URL of the instrument's calendar.
    location
        Where the instrument is (building and room).
    name
        The instrument PID (``instrument_pid``), unique in the facility.
    schema_name
        The instrument's name in the record schema.
    property_tag
        The property tag (asset number).
    filestore_path
        Where the instrument's data lies, relative to ``mmfnexus_path``.
    computer_ip, computer_name, computer_mount
        The instrument PC's address, host name and data mount point.
    harvester
        Which harvester reads the instrument's reservations (e.g. ``"nemo"``).
    timezone
        The instrument's zone: a name such as ``"America/New_York"`` (made a
        ``pytz`` zone) or a ``tzinfo``.
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        calendar_name: Optional[str] = None,
        calendar_url: Optional[str] = None,
        location: Optional[str] = None,
        name: Optional[str] = None,
        schema_name: Optional[str] = None,
        property_tag: Optional[str] = None,
        filestore_path: Optional[str] = None,
        computer_ip: Optional[str] = None,
        computer_name: Optional[str] = None,
        computer_mount: Optional[str] = None,
        harvester: Optional[str] = None,
        timezone: Union[str, tzinfo, None] = None,
    ) -> None:
        self.api_url = api_url
        self.calendar_name = calendar_name
        self.calendar_url = calendar_url
        self.location = location
        self.name = name
        self.schema_name = schema_name
        self.property_tag = property_tag
        self.filestore_path = filestore_path
        self.computer_ip = computer_ip
        self.computer_name = computer_name
        self.computer_mount = computer_mount
        self.harvester = harvester
        self.timezone: Optional[tzinfo] = (
            zone_named(timezone) if isinstance(timezone, str) else timezone
        )

    def __repr__(self) -> str:
        fields = (
            ("Nexus Instrument:", self.name),
            ("API url:", self.api_url),
            ("Calendar name:", self.calendar_name),
            ("Calendar url:", self.calendar_url),
            ("Schema name:", self.schema_name),
            ("Location:", self.location),
            ("Property tag:", self.property_tag),
            ("Filestore path:", self.filestore_path),
            ("Computer IP:", self.computer_ip),
            ("Computer name:", self.computer_name),
            ("Computer mount:", self.computer_mount),
            ("Harvester:", self.harvester),
            ("Timezone:", self.timezone),
        )
        return "\n".join(f"{label:<18}{value}" for label, value in fields)

    def __str__(self) -> str:
        return f"{self.name} in {self.location}" if self.location else ""

    def localize_datetime(self, dt: datetime) -> datetime:
        """Return ``dt`` in this instrument's time zone.

        A naive ``dt`` is taken to be local time at the instrument; an aware
        one is converted. Without a zone, a warning is logged and ``dt`` is
        returned unchanged.
        """
        zone = self.timezone
        if zone is None:
            logger.warning(
                "Tried to localize a datetime with instrument %s, but its "
                "timezone was None; returning the datetime unchanged",
                self.name,
            )
            return dt
        return localize(dt, zone) if dt.tzinfo is None else dt.astimezone(zone)

    def localize_datetime_str(self, dt: datetime, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
        """Return :meth:`localize_datetime` of ``dt`` formatted with ``fmt``."""
        return self.localize_datetime(dt).strftime(fmt)

    def to_row(self) -> dict[str, Optional[str]]:
        """Return the instrument as a row of the ``instruments`` table, column by column."""
        row: dict[str, Optional[str]] = {
            column: getattr(self, attribute)
            for column, attribute in zip(INSTRUMENTS.column_names, _ATTRIBUTES)
        }
        row["timezone"] = None if self.timezone is None else str(self.timezone)
        return row


def zone_named(name: str) -> tzinfo:
    """Return the ``pytz`` zone called ``name`` (as an instrument's ``timezone`` becomes).

    Raises
    ------
    pytz.UnknownTimeZoneError
        No zone has that name.
    """
    return pytz.timezone(name)


def _instrument(row: Row) -> Instrument:
    values = dict(zip(_ATTRIBUTES, row))
    try:
        return Instrument(**values)
    except pytz.UnknownTimeZoneError:
        raise ValueError(
            f"Instrument {values['name']!r} in the instruments table has an unknown "
            f"timezone {values['timezone']!r}; set it to an IANA name such as "
            f"{DEFAULT_TIMEZONE!r}"
        ) from None


class _Registry:
    """The instruments last read from one database, for object identity across reads.

    With the instruments, the registry keeps the database's change counter
    (see :meth:`~nexusLIMS.db.databases.Database.data_version`) when they
    were read: while it has not moved, nothing can have changed and the same
    dict is returned without reading the table.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[Row, Instrument]] = {}
        self._current: Optional[tuple[Version, dict[str, Instrument]]] = None

    def resolve(self, rows: list[Row]) -> dict[str, Instrument]:
        """Return the instruments of ``rows``, reusing the object of every unchanged row."""
        with self._lock:
            known = self._rows
            fresh: dict[str, tuple[Row, Instrument]] = {}
            for row in rows:
                cached = known.get(row[0])
                fresh[row[0]] = cached if cached is not None and cached[0] == row else (
                    row, _instrument(row))
            self._rows = fresh
        return {pid: instrument for pid, (_, instrument) in fresh.items()}

    def kept(self, db: Database) -> tuple[Optional[dict[str, Instrument]], Optional[Version]]:
        """Return the instruments read last if nothing changed since (else None), and the version.

        Give the version to :meth:`store` with the rows read, if they must be read.
        """
        version = db.data_version()  # before reading: a change meanwhile shows next time
        kept = self._current
        if version is not None and kept is not None and kept[0] == version:
            return kept[1], version
        return None, version

    def store(self, rows: list[Row], version: Optional[Version]) -> dict[str, Instrument]:
        """Return the instruments of ``rows`` (read after ``version`` was taken), kept for reuse."""
        instruments = self.resolve(rows)
        if version is not None:
            self._current = (version, instruments)
        return instruments

    def current(self, db: Database) -> dict[str, Instrument]:
        """Return the instruments of ``db`` as they are now (read again only if changed)."""
        instruments, version = retrying(lambda: self.kept(db))  # (the watch may reconnect)
        if instruments is None:
            instruments = self.store(retrying(lambda: _read_rows(db.location)), version)
        return instruments


def _registry(db: Database) -> _Registry:
    return db.state(_REGISTRY, _Registry)


def _rows(conn: Connection) -> list[Row]:
    return [tuple(row) for row in conn.fetchall(queries.INSTRUMENT_ROWS)]


def _read_rows(database: Optional[DatabaseRef]) -> list[Row]:
    with transaction(database, begin=None) as conn:  # one statement: one snapshot
        return _rows(conn)


def read_instruments(conn: Connection) -> dict[str, Instrument]:
    """Return every instrument of the open database, keyed by PID."""
    return _registry(conn.database).resolve(_rows(conn))


def reading_instruments(
    conn: Connection,
) -> tuple[Optional[dict[str, Instrument]], Callable[[list[Row]], dict[str, Instrument]]]:
    """Return the open database's instruments if they need no read, and what makes them of rows.

    For a caller that reads in one round trip: when the first value is None,
    it adds :data:`~nexusLIMS.db.queries.INSTRUMENT_ROWS` to its reads and
    gives the rows to the second.
    """
    registry = _registry(conn.database)
    instruments, version = registry.kept(conn.database)
    return instruments, lambda rows: registry.store([tuple(row) for row in rows], version)


def load_instruments(database: Optional[DatabaseRef] = None) -> dict[str, Instrument]:
    """Return the instruments of the database, keyed by PID.

    Parameters
    ----------
    database
        The database; by default from ``nexusLIMS_db_path``.
    """
    def read() -> dict[str, Instrument]:
        with transaction(database, begin=None) as conn:  # one statement: one snapshot
            return read_instruments(conn)

    return retrying(read)


def current_instruments() -> dict[str, Instrument]:
    """Return the instruments of the database configured at this moment.

    A database whose change counter has not moved since its instruments were
    last read is not read again: look-ups in a loop cost one cheap check each,
    and still see a row another process added or changed before the call.
    """
    db = configured_database_state()
    return _registry(db).current(db)


class InstrumentDB(dict[str, Instrument]):
    """A read-only ``dict`` of PID to :class:`Instrument` that follows the database.

    Every read (``[]``, ``in``, ``len``, iteration, ``get``, ``items``, …)
    shows the ``instruments`` table of the database configured at that
    moment, so it never goes stale. Views returned by ``keys()``,
    ``values()`` and ``items()`` are snapshots of that read.
    """

    def _current(self) -> dict[str, Instrument]:
        return current_instruments()

    def __getitem__(self, pid: str) -> Instrument:
        return current_instruments()[pid]  # (the look-up of a loop: one frame fewer)

    def __contains__(self, pid: object) -> bool:
        return pid in self._current()

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._current()))

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self._current()))

    def __eq__(self, other: object) -> bool:
        return self._current() == other

    def __ne__(self, other: object) -> bool:
        return self._current() != other

    def __or__(self, other: Any) -> Any:
        return self._current() | other

    def __ror__(self, other: Any) -> Any:
        return other | self._current()

    def __repr__(self) -> str:
        # help(), pydoc and Sphinx show module data by its repr: without a
        # database configured that must not raise (nor open anything).
        if configured_database() is None:
            return _UNCONFIGURED_REPR
        return repr(self._current())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._current(),))

    __hash__ = None

    def get(self, pid: str, default: Any = None) -> Any:
        """Return the instrument of ``pid``, or ``default``."""
        return self._current().get(pid, default)

    def keys(self) -> dict_keys[str, Instrument]:
        """Return the PIDs (a snapshot)."""
        return self._current().keys()

    def values(self) -> dict_values[str, Instrument]:
        """Return the instruments (a snapshot)."""
        return self._current().values()

    def items(self) -> dict_items[str, Instrument]:
        """Return ``(pid, instrument)`` pairs (a snapshot)."""
        return self._current().items()

    def copy(self) -> dict[str, Instrument]:
        """Return a plain ``dict`` snapshot."""
        return self._current()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "instrument_db is a read-only view of the instruments table; use "
            "nexusLIMS.instruments.add_instrument (or edit_instrument, "
            "remove_instrument) to change the table"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is a time zone pytz knows, else raise ValueError."""
    if name not in pytz.all_timezones_set:
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name such as {DEFAULT_TIMEZONE!r})"
        )
    return name


def _normalised(values: Mapping[str, Optional[str]]) -> dict[str, Optional[str]]:
    """Return a row of the ``instruments`` table to write, validated.

    Raises
    ------
    ValueError
        Naming what is wrong: a blank or unprintable PID, a missing required
        column (blank counts as missing), an unknown time zone.
    """
    row = {column: values.get(column) for column in INSTRUMENTS.column_names}
    for column, value in row.items():
        if isinstance(value, str) and value.strip() == "":
            row[column] = None  # a blank value means "none"
    check_text(row[_PID], "instrument PID")
    missing = [c.name for c in INSTRUMENTS.columns if c.needs_value and not row[c.name]]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    row["timezone"] = validate_timezone(str(row["timezone"] or DEFAULT_TIMEZONE))
    return row


def _conflicts(conn: Connection, row: Mapping[str, Optional[str]], pid: str) -> list[str]:
    """Describe the unique values of ``row`` already used by an instrument other than ``pid``."""
    found = []
    for column in (c.name for c in INSTRUMENTS.columns if c.unique and row.get(c.name)):
        other = conn.scalar(queries.instrument_using(column), (row[column], pid))
        if other is not None:
            found.append(f"{column} {row[column]!r} is already used by instrument {other!r}")
    return found


def write_instrument(conn: Connection, instrument: Instrument) -> None:
    """Validate ``instrument`` and insert it in the open (IMMEDIATE) transaction.

    Raises
    ------
    ValueError
        As :func:`add_instrument`; nothing is written.
    """
    try:
        row = _normalised(instrument.to_row())
    except ValueError as exc:
        raise ValueError(f"Cannot add instrument {instrument.name!r}: {exc}") from None
    pid = str(row[_PID])
    if conn.scalar(queries.INSTRUMENT_EXISTS, (pid,)):
        raise ValueError(f"Cannot add instrument {pid!r}: it already exists")
    conflicts = _conflicts(conn, row, pid)
    if conflicts:
        raise ValueError(f"Cannot add instrument {pid!r}: {'; '.join(conflicts)}")
    conn.execute(queries.insert(INSTRUMENTS, tuple(row)), tuple(row.values()))


def add_instrument(instrument: Instrument, database: Optional[DatabaseRef] = None) -> None:
    """Add ``instrument`` as a new row of the ``instruments`` table.

    Raises
    ------
    ValueError
        The PID exists already, a required column is empty, the time zone is
        not a known zone name, a PID holds control characters, or another
        instrument has the same API URL, computer name or IP. Nothing is
        written.
    """
    with transaction(database, begin="IMMEDIATE") as conn:
        write_instrument(conn, instrument)
    logger.info("Added instrument %s", instrument.name)


def edit_instrument(
    pid: str, changes: Mapping[str, Optional[str]], database: Optional[DatabaseRef] = None
) -> Instrument:
    """Change columns of an instrument; a new ``instrument_pid`` renames it.

    Renaming carries the instrument's session logs along (the foreign key
    cascades the update). The new values are validated as by
    :func:`add_instrument`.

    Parameters
    ----------
    pid
        The instrument to change.
    changes
        New values by column name (``instrument_pid``, ``api_url``, ...,
        ``timezone``); an empty string clears an optional column.
    database
        The database; by default from ``nexusLIMS_db_path``.

    Returns
    -------
    Instrument
        The instrument as stored now.

    Raises
    ------
    ValueError
        No instrument has ``pid``, a column is unknown, or a value is not
        valid; nothing is written.
    """
    unknown = sorted(set(changes) - set(INSTRUMENTS.column_names))
    if unknown:
        raise ValueError(f"Cannot edit instrument {pid!r}: unknown column(s) {', '.join(unknown)}; "
                         f"columns are {', '.join(INSTRUMENTS.column_names)}")
    with transaction(database, begin="IMMEDIATE") as conn:
        current = read_instruments(conn).get(pid)
        if current is None:
            raise ValueError(f"Cannot edit instrument {pid!r}: no such instrument")
        try:
            new_row = _normalised({**current.to_row(), **changes})
        except ValueError as exc:
            raise ValueError(f"Cannot edit instrument {pid!r}: {exc}") from None
        new_pid = str(new_row[_PID])
        if new_pid != pid and conn.scalar(queries.INSTRUMENT_EXISTS, (new_pid,)):
            raise ValueError(f"Cannot rename instrument {pid!r} to {new_pid!r}: "
                             f"{new_pid!r} already exists")
        conflicts = _conflicts(conn, new_row, pid)
        if conflicts:
            raise ValueError(f"Cannot edit instrument {pid!r}: {'; '.join(conflicts)}")
        conn.execute(queries.update_instrument(tuple(new_row)), (*new_row.values(), pid))
        edited = read_instruments(conn)[new_pid]
    logger.info("Edited instrument %s%s", pid, f" (now {new_pid})" if new_pid != pid else "")
    return edited


def remove_instrument(pid: str, database: Optional[DatabaseRef] = None) -> None:
    """Remove an instrument that has no session logs.

    Raises
    ------
    ValueError
        No instrument has ``pid``, or it has session logs (their count is in
        the message): they are its history, and are never deleted with it.
    """
    with transaction(database, begin="IMMEDIATE") as conn:
        if not conn.scalar(queries.INSTRUMENT_EXISTS, (pid,)):
            raise ValueError(f"Cannot remove instrument {pid!r}: no such instrument")
        logs = int(conn.scalar(queries.COUNT_INSTRUMENT_LOGS, (pid,)))
        if logs:
            raise ValueError(
                f"Cannot remove instrument {pid!r}: it has {logs} session log"
                f"{'s' if logs != 1 else ''}, which are its history; rename it instead "
                f"(nexuslims-db instruments edit PID --new-pid NEW) if it was replaced"
            )
        conn.execute(queries.DELETE_INSTRUMENT, (pid,))
    logger.info("Removed instrument %s", pid)
