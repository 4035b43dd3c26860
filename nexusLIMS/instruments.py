"""The instruments of a NexusLIMS facility, read from the ``instruments`` table.

:data:`instrument_db` is a ``dict`` of instrument PID to :class:`Instrument`
that always shows the table of the database that ``nexusLIMS_db_path`` names
at the moment it is read: nothing is loaded at import, and an instrument added
to the table (or a test fixture pointing at another file) is seen at the next
access. For many look-ups in a row, take one snapshot with
:func:`load_instruments`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from datetime import datetime, tzinfo
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Optional, Union

import pytz

from nexusLIMS.db.connection import PathLike, connect
from nexusLIMS.db.errors import DatabaseConfigError

__all__ = [
    "COLUMNS",
    "DEFAULT_TIMEZONE",
    "Instrument",
    "InstrumentDB",
    "add_instrument",
    "get_instr_from_api_url",
    "get_instr_from_calendar_name",
    "get_instr_from_filepath",
    "instrument_db",
    "load_instruments",
    "read_instruments",
    "validate_timezone",
    "write_instrument",
]

logger = logging.getLogger(__name__)

ENV_DATA_ROOT = "mmfnexus_path"
#: The ``instruments.timezone`` default of the schema.
DEFAULT_TIMEZONE = "America/New_York"

#: Columns of the ``instruments`` table, in order; ``instrument_pid`` maps to
#: :attr:`Instrument.name`, every other column to the attribute of its name.
COLUMNS = (
    "instrument_pid",
    "api_url",
    "calendar_name",
    "calendar_url",
    "location",
    "schema_name",
    "property_tag",
    "filestore_path",
    "computer_name",
    "computer_ip",
    "computer_mount",
    "harvester",
    "timezone",
)
_REQUIRED = COLUMNS[:8]


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
            pytz.timezone(timezone) if isinstance(timezone, str) else timezone
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
        if dt.tzinfo is None:
            localize = getattr(zone, "localize", None)
            return localize(dt) if localize else dt.replace(tzinfo=zone)
        return dt.astimezone(zone)

    def localize_datetime_str(
        self, dt: datetime, fmt: str = "%Y-%m-%d %H:%M:%S %Z"
    ) -> str:
        """Return :meth:`localize_datetime` of ``dt`` formatted with ``fmt``."""
        return self.localize_datetime(dt).strftime(fmt)

    def to_row(self) -> dict[str, Optional[str]]:
        """Return the instrument as a row of the ``instruments`` table."""
        row: dict[str, Optional[str]] = {
            column: getattr(self, column) for column in COLUMNS[1:-1]
        }
        row["instrument_pid"] = self.name
        row["timezone"] = None if self.timezone is None else str(self.timezone)
        return row


def read_instruments(conn: sqlite3.Connection) -> dict[str, Instrument]:
    """Return every instrument of the open database, keyed by PID."""
    query = f"SELECT {', '.join(COLUMNS)} FROM instruments"
    instruments: dict[str, Instrument] = {}
    for row in conn.execute(query):
        values = dict(zip(COLUMNS, row))
        pid = values.pop("instrument_pid")
        try:
            instruments[pid] = Instrument(name=pid, **values)
        except pytz.UnknownTimeZoneError:
            raise ValueError(
                f"Instrument {pid!r} in the instruments table has an unknown "
                f"timezone {values['timezone']!r}; set it to an IANA name such as "
                f"{DEFAULT_TIMEZONE!r}"
            ) from None
    return instruments


def load_instruments(path: Optional[PathLike] = None) -> dict[str, Instrument]:
    """Return a snapshot of the ``instruments`` table, keyed by PID.

    Parameters
    ----------
    path
        The database; by default from ``nexusLIMS_db_path``.
    """
    with connect(path) as conn:
        return read_instruments(conn)


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is a time zone pytz knows, else raise ValueError."""
    if name not in pytz.all_timezones_set:
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name such as {DEFAULT_TIMEZONE!r})"
        )
    return name


def add_instrument(instrument: Instrument, path: Optional[PathLike] = None) -> None:
    """Add ``instrument`` as a new row of the ``instruments`` table.

    Raises
    ------
    ValueError
        A required column is empty, the time zone is not a known zone name,
        or a row with the same PID, API URL, computer name or IP exists.
    """
    with connect(path, begin="IMMEDIATE") as conn:
        write_instrument(conn, instrument)
    logger.info("Added instrument %s", instrument.name)


def write_instrument(conn: sqlite3.Connection, instrument: Instrument) -> None:
    """Validate ``instrument`` and insert it in the open transaction.

    Raises
    ------
    ValueError
        As :func:`add_instrument`; nothing is written.
    """
    row = instrument.to_row()
    missing = [column for column in _REQUIRED if not row[column]]
    if missing:
        raise ValueError(
            f"Cannot add instrument {instrument.name!r}: missing {', '.join(missing)}"
        )
    if row["timezone"] is None:
        row["timezone"] = DEFAULT_TIMEZONE
    else:
        try:
            validate_timezone(row["timezone"])
        except ValueError as exc:
            raise ValueError(f"Cannot add instrument {instrument.name!r}: {exc}") from None
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    try:
        conn.execute(f"INSERT INTO instruments ({columns}) VALUES ({marks})", tuple(row.values()))
    except sqlite3.IntegrityError as exc:
        raise ValueError(f"Cannot add instrument {instrument.name!r}: {exc}") from None


def _reads_table(name: str) -> Callable[..., Any]:
    """Make a read method of :class:`InstrumentDB` that reads the table first."""
    method = getattr(dict, name)

    def fresh(self: InstrumentDB, *args: Any) -> Any:
        return method(self._reload(), *args)

    fresh.__name__ = name
    fresh.__doc__ = method.__doc__
    return fresh


def _read_only(name: str) -> Callable[..., Any]:
    def refuse(self: InstrumentDB, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"instrument_db is a read-only view of the instruments table; "
            f"{name}() is not allowed (use nexusLIMS.instruments.add_instrument "
            f"or change the table)"
        )

    refuse.__name__ = name
    return refuse


class InstrumentDB(dict):  # type: ignore[type-arg]
    """A read-only ``dict`` of PID to :class:`Instrument` that follows the database.

    Every read (``[]``, ``in``, ``len``, iteration, ``get``, ``items``, …)
    loads the ``instruments`` table of the database configured at that moment,
    so it never goes stale. Views returned by ``keys()``, ``values()`` and
    ``items()`` are snapshots of that read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def _reload(self) -> dict[str, Instrument]:
        fresh = load_instruments()
        # Mirror the rows into the dict itself, for C code that reads a dict's
        # storage directly instead of calling these methods.
        with self._lock:
            dict.clear(self)
            dict.update(self, fresh)
        return fresh

    __getitem__ = _reads_table("__getitem__")
    __contains__ = _reads_table("__contains__")
    __len__ = _reads_table("__len__")
    __eq__ = _reads_table("__eq__")
    __ne__ = _reads_table("__ne__")
    __repr__ = _reads_table("__repr__")
    __or__ = _reads_table("__or__")
    __ror__ = _reads_table("__ror__")
    get = _reads_table("get")
    keys = _reads_table("keys")
    values = _reads_table("values")
    items = _reads_table("items")
    copy = _reads_table("copy")
    __hash__ = None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._reload()))

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self._reload()))

    __setitem__ = _read_only("__setitem__")
    __delitem__ = _read_only("__delitem__")
    __ior__ = _read_only("__ior__")
    clear = _read_only("clear")
    pop = _read_only("pop")
    popitem = _read_only("popitem")
    setdefault = _read_only("setdefault")
    update = _read_only("update")

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._reload(),))


#: PID -> :class:`Instrument` for the database configured at the moment of access.
instrument_db = InstrumentDB()


def get_instr_from_api_url(api_url: str) -> Optional[Instrument]:
    """Return the instrument whose ``api_url`` is exactly ``api_url``, or None."""
    for instrument in load_instruments().values():
        if instrument.api_url == api_url:
            return instrument
    return None


def get_instr_from_calendar_name(cal_name: str) -> Optional[Instrument]:
    """Return the first instrument whose ``api_url`` contains ``cal_name``, or None."""
    for instrument in load_instruments().values():
        if instrument.api_url and cal_name in instrument.api_url:
            return instrument
    return None


def get_instr_from_filepath(path: Union[str, PurePath]) -> Optional[Instrument]:
    """Return the instrument whose data folder holds ``path``, or None.

    The data folder of an instrument is ``mmfnexus_path / filestore_path``.

    Raises
    ------
    DatabaseConfigError
        ``mmfnexus_path`` is not set.
    """
    root = os.environ.get(ENV_DATA_ROOT)
    if not root:
        raise DatabaseConfigError(
            f"Set the environment variable {ENV_DATA_ROOT} to the root folder "
            f"of the instrument data to look instruments up by file path"
        )
    target = Path(os.path.normpath(path))
    for instrument in load_instruments().values():
        if not instrument.filestore_path:
            continue
        folder = Path(os.path.normpath(Path(root) / instrument.filestore_path))
        if folder in target.parents:
            return instrument
    return None
