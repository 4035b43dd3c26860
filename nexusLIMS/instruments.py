"""The instruments of a NexusLIMS facility (the NexusLIMS 1.4 interface).

:data:`instrument_db` is a ``dict`` of instrument PID to :class:`Instrument`
that always shows the ``instruments`` table of the database that
``nexusLIMS_db_path`` names at the moment it is read: nothing is loaded at
import, and an instrument added to the table (or a test fixture pointing at
another file) is seen at the next access. An instrument whose row has not
changed is the same object at every look-up, as in 1.4.

The ``get_instr_from_*`` look-ups search this module's ``instrument_db`` as
it is when they are called (so a test that replaces it is honoured).
"""

from __future__ import annotations

# 1.4's module imported datetime, so "from nexusLIMS.instruments import *"
# gave it to 1.4's callers (and tests), which use it.
import datetime
import os
from pathlib import Path, PurePath
from typing import Optional, Union

from nexusLIMS.db.config import data_root
from nexusLIMS.db.instruments import (
    DEFAULT_TIMEZONE,
    Instrument,
    InstrumentDB,
    add_instrument,
    edit_instrument,
    load_instruments,
    remove_instrument,
    validate_timezone,
)
from nexusLIMS.utils import is_subpath

__all__ = [
    "DEFAULT_TIMEZONE",
    "Instrument",
    "InstrumentDB",
    "add_instrument",
    "datetime",
    "edit_instrument",
    "get_instr_from_api_url",
    "get_instr_from_calendar_name",
    "get_instr_from_filepath",
    "instrument_db",
    "is_subpath",
    "load_instruments",
    "remove_instrument",
    "validate_timezone",
]

#: PID -> :class:`Instrument` for the database configured at the moment of access.
instrument_db = InstrumentDB()


def get_instr_from_api_url(api_url: str) -> Optional[Instrument]:
    """Return the instrument whose ``api_url`` is exactly ``api_url``, or None."""
    for instrument in instrument_db.values():
        if instrument.api_url == api_url:
            return instrument
    return None


def get_instr_from_calendar_name(cal_name: str) -> Optional[Instrument]:
    """Return the first instrument whose ``api_url`` contains ``cal_name``, or None."""
    for instrument in instrument_db.values():
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
    root = data_root()
    target = Path(os.path.normpath(path))
    for instrument in instrument_db.values():
        if instrument.filestore_path and is_subpath(
            target, os.path.normpath(Path(root) / instrument.filestore_path)
        ):
            return instrument
    return None
