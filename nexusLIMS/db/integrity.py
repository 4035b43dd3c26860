"""Finding a damaged database before anything relies on it.

:func:`verify_integrity` runs the database's own check (SQLite's ``PRAGMA
quick_check``, or ``integrity_check`` when ``full``; on PostgreSQL, what the
catalogue tells at once: invalid indexes) and raises
:class:`~nexusLIMS.db.errors.DatabaseDamagedError` naming the database, the
first problem and what to do. ``nexuslims-db check`` and ``info`` run it;
``migrate`` and ``copy`` refuse a damaged source with it.
"""

from __future__ import annotations

from typing import Optional

from nexusLIMS.db.backends import translated
from nexusLIMS.db.config import DatabaseRef
from nexusLIMS.db.connection import Connection
from nexusLIMS.db.errors import DatabaseDamagedError
from nexusLIMS.db.schema import transaction

__all__ = ["check_integrity", "integrity_problems", "verify_integrity"]


def integrity_problems(conn: Connection, *, full: bool = False) -> list[str]:
    """Return what the database's own check finds damaged, first problem first ([]: none)."""
    with translated(conn.backend, conn.location):
        return conn.backend.integrity_problems(conn.raw, full=full)


def verify_integrity(conn: Connection, *, full: bool = False) -> None:
    """Raise :class:`DatabaseDamagedError` if the open database is damaged.

    Parameters
    ----------
    conn
        The open database.
    full
        On SQLite, run ``PRAGMA integrity_check`` (which also matches every
        index to its table) instead of ``quick_check``.
    """
    problems = integrity_problems(conn, full=full)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DatabaseDamagedError(
            f"{conn.location} is damaged: {problems[0]}{more}; "
            f"{conn.backend.damage_advice(conn.location)}", problems)


def check_integrity(database: Optional[DatabaseRef] = None, *, full: bool = False) -> None:
    """Raise :class:`DatabaseDamagedError` if the database is damaged (:func:`verify_integrity`).

    Raises
    ------
    DatabaseDamagedError
        The database is damaged; the message says what to do.
    UnsupportedDatabaseError
        The database is not one this package can use.
    """
    with transaction(database) as conn:
        verify_integrity(conn, full=full)
