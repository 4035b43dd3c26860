"""Classes and methods to interact with sessions from the NexusLIMS database.

This is the NexusLIMS 1.4 interface, kept name for name: :class:`SessionLog`,
:class:`Session`, :func:`db_query` and :func:`get_sessions_to_build`, plus
:func:`insert_logs` and :func:`find_session_problems`. The implementations
live in the neighbouring modules.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from nexusLIMS.db.connection import connect
from nexusLIMS.db.pairing import SessionProblem, find_session_problems, get_sessions_to_build
from nexusLIMS.db.session import Session
from nexusLIMS.db.session_log import SessionLog, insert_logs
from nexusLIMS.db.timestamps import to_text

__all__ = [
    "Session",
    "SessionLog",
    "SessionProblem",
    "db_query",
    "find_session_problems",
    "get_sessions_to_build",
    "insert_logs",
]


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
    params: Union[tuple[Any, ...], dict[str, Any]] = ()
    if isinstance(args, Mapping):
        params = {name: to_text(value) for name, value in args.items()}
    elif args:
        params = tuple(to_text(arg) for arg in args)
    with connect(begin=None) as conn:
        return True, conn.execute(query, params).fetchall()
