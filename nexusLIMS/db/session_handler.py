"""Classes and methods to interact with sessions from the NexusLIMS database.

This is the NexusLIMS 1.4 interface, kept name for name: :class:`SessionLog`,
:class:`Session`, :func:`db_query` and :func:`get_sessions_to_build`, and the
module names 1.4 code reaches (``instrument_db``, ``Instrument``,
``current_system_tz``, ``logger``), plus :func:`insert_logs` and
:func:`find_session_problems`. The implementations live in
:mod:`nexusLIMS.db.logs` and :mod:`nexusLIMS.db.sessions`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence, Union

from nexusLIMS.db import sessions as _sessions
from nexusLIMS.db.config import DatabaseRef
from nexusLIMS.db.legacy_sql import run_legacy_sql
from nexusLIMS.db.logs import SessionLog, insert_logs
from nexusLIMS.db.sessions import OnError, Session, SessionProblem, find_session_problems
from nexusLIMS.instruments import Instrument, instrument_db
from nexusLIMS.utils import current_system_tz

__all__ = [
    "Instrument",
    "Session",
    "SessionLog",
    "SessionProblem",
    "current_system_tz",
    "db_query",
    "find_session_problems",
    "get_sessions_to_build",
    "insert_logs",
    "instrument_db",
    "logger",
]

logger = logging.getLogger(__name__)

_LIVE_INSTRUMENT_DB = instrument_db


def db_query(
    query: str, args: Union[Sequence[Any], Mapping[str, Any], None] = None
) -> tuple[bool, list[tuple[Any, ...]]]:
    """Make a query on the NexusLIMS database.

    Parameters
    ----------
    query
        One SQL statement, with ``?`` (or ``:name``) placeholders.
    args
        The values of the placeholders: a sequence, or a mapping for named
        placeholders (``datetime`` values are passed as ISO text).

    Returns
    -------
    tuple
        ``(success, results)``: True and the rows the statement returned.
        Errors are raised, not returned.
    """
    return True, run_legacy_sql(query, args)


def get_sessions_to_build(
    *, on_error: OnError = "raise", database: Optional[DatabaseRef] = None
) -> list[Session]:
    """Get the sessions that need their record built.

    See :func:`nexusLIMS.db.sessions.get_sessions_to_build`. As in 1.4, the
    instruments are looked up in this module's ``instrument_db``, so a test
    that replaces it is honoured.
    """
    replaced = None if instrument_db is _LIVE_INSTRUMENT_DB else instrument_db
    return _sessions.get_sessions_to_build(
        on_error=on_error, database=database, instruments=replaced)
