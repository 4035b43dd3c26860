"""Running SQL written for NexusLIMS 1.4 (SQLite's dialect), on any backend.

:func:`~nexusLIMS.db.make_db_query` and
:func:`~nexusLIMS.db.session_handler.db_query` take SQL that callers wrote for
SQLite. On SQLite it runs as written; on PostgreSQL it is translated first
(see :func:`~nexusLIMS.db.backends.translate.to_postgres`), and SQL that has
no PostgreSQL equivalent is refused with an error naming it, before anything
runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from nexusLIMS.db.backends.translate import to_postgres
from nexusLIMS.db.connection import Params, retrying
from nexusLIMS.db.schema import transaction
from nexusLIMS.db.timestamps import to_text

__all__ = ["run_legacy_sql", "to_postgres"]

_READS = re.compile(r"^\s*(?:SELECT|WITH|VALUES)\b", re.IGNORECASE)
_WRITES = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|TRUNCATE|INTO)\b",
                     re.IGNORECASE)


def _params(args: Union[Sequence[Any], Mapping[str, Any], None]) -> Params:
    """Return the placeholders' values with every ``datetime`` as ISO text."""
    if isinstance(args, Mapping):
        return {name: to_text(value) for name, value in args.items()}
    return tuple(to_text(arg) for arg in args or ())


def run_legacy_sql(
    query: str, args: Optional[Union[Sequence[Any], Mapping[str, Any]]] = None
) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction (autocommit) and return its rows.

    Parameters
    ----------
    query
        One SQL statement in SQLite's dialect, with ``?`` (or ``:name``)
        placeholders.
    args
        The values of the placeholders: a sequence, or a mapping for named
        placeholders (``datetime`` values are passed as ISO text).

    Raises
    ------
    UnsupportedSQLError
        On PostgreSQL, the SQL cannot be carried over; nothing ran.
    """
    def run() -> list[tuple[Any, ...]]:
        with transaction(begin=None, require_tables=False) as conn:
            cursor = conn.execute(conn.backend.from_sqlite_sql(query), _params(args))
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    # Over a lost connection, a read is made again; a write only if it never left.
    return retrying(run, resend=_reads_only(query))


def _reads_only(query: str) -> bool:
    """Whether ``query`` only reads (a SELECT, with no statement in it that writes)."""
    return bool(_READS.match(query)) and not _WRITES.search(query)
