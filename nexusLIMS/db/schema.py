"""The database schema: reading ``schema.sql`` and creating databases from it."""

from __future__ import annotations

import logging
import sqlite3
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Optional

from nexusLIMS.db.connection import PathLike, connect, resolve_db_path

__all__ = ["SCHEMA_VERSION", "init_db", "run_statements", "schema_statements"]

logger = logging.getLogger(__name__)

#: Stored in ``PRAGMA user_version``; 0 means NexusLIMS 1.4 (or unknown).
SCHEMA_VERSION = 1


@cache
def schema_statements() -> tuple[str, ...]:
    """Return the statements of the packaged ``schema.sql``, in order."""
    text = resources.files("nexusLIMS.db").joinpath("schema.sql").read_text("utf-8")
    statements: list[str] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = "\n".join(
                part for part in pending.strip().splitlines()
                if not part.lstrip().startswith("--")
            ).strip()
            if statement.rstrip(";").strip():
                statements.append(statement)
            pending = ""
    if pending.strip():
        raise RuntimeError("schema.sql ends with an incomplete statement")
    return tuple(statements)


def run_statements(conn: sqlite3.Connection, kind: str) -> None:
    """Run the schema statements that start with ``kind`` (e.g. ``"CREATE INDEX"``)."""
    for statement in schema_statements():
        if statement.upper().startswith(kind):
            conn.execute(statement)


def _table_names(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows}


def init_db(path: Optional[PathLike] = None) -> Path:
    """Create the NexusLIMS database, or add what an existing one lacks.

    Creates the file (and its folder) if needed, then the ``instruments`` and
    ``session_log`` tables and their indexes where missing. Existing tables
    and rows are never dropped or changed; to update the CHECKs of an older
    database use :func:`~nexusLIMS.db.migrate_db`.

    Parameters
    ----------
    path
        Where the database is; by default from ``nexusLIMS_db_path``.

    Returns
    -------
    pathlib.Path
        The path of the database.
    """
    db_path = resolve_db_path(path, must_exist=False)
    with connect(db_path, begin="IMMEDIATE", create=True) as conn:
        had_session_log = "session_log" in _table_names(conn)
        run_statements(conn, "CREATE TABLE")
        run_statements(conn, "CREATE INDEX")
        if not had_session_log:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    logger.info("Initialised NexusLIMS database at %s", db_path)
    return db_path
