"""Copying a whole NexusLIMS database between backends (and moving a facility).

:func:`copy_database` copies every NexusLIMS table from one database to
another, SQLite or PostgreSQL on either side, keeping every id and the id
counters, so that new rows continue after the old ones. The target gets the
current schema (a NexusLIMS 1.4 file is migrated on the way); the source is
only read, and refused if it is damaged or NexusLIMS 2.x's. The copy is one
transaction of the target: it is verified (row counts and a checksum of every
table, computed on both sides) before it is committed, and a failure leaves
the target as it was. A new SQLite file is written under a temporary name
beside the target, no more readable than the source, and takes the target's
name only when complete. The same database under another name (a link, a
relative path, another URL of the same server database) is refused at once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from nexusLIMS.db import queries
from nexusLIMS.db.backends import backend_for
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, locate_database
from nexusLIMS.db.connection import Connection, connect
from nexusLIMS.db.errors import UnsupportedDatabaseError
from nexusLIMS.db.integrity import verify_integrity
from nexusLIMS.db.schema import SCHEMA_VERSION, SESSION_LOG, TABLES, Table, forget, inspect
from nexusLIMS.db.tables import quoted_columns

__all__ = ["CopyResult", "Progress", "TableCopy", "copy_database"]

logger = logging.getLogger(__name__)

#: Called as rows are copied: ``(table, rows copied so far, rows in the table)``.
Progress = Callable[[str, int, int], None]
_CHUNK = 5000


@dataclass(frozen=True)
class TableCopy:
    """One table copied: its rows and the checksum both sides agreed on."""

    table: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_database` did."""

    source: DatabaseLocation
    target: DatabaseLocation
    source_version: int
    tables: tuple[TableCopy, ...]
    next_log_id: int


def _digest(rows: Any, checksum: Any) -> int:
    """Feed ``rows`` to ``checksum``, values as text whatever the backend; return the count."""
    count = 0
    for row in rows:
        checksum.update("\x1f".join("\x00" if v is None else str(v) for v in row).encode())
        checksum.update(b"\x1e")
        count += 1
    return count


def _target_tables(conn: Connection, force: bool, target: DatabaseLocation) -> None:
    """Check the target and give it empty, current NexusLIMS tables."""
    info = inspect(conn)
    info.check_usable(require_tables=False)
    where = target.describe()
    if info.foreign_tables and not force:
        raise UnsupportedDatabaseError(
            f"{where} holds tables of another application ({', '.join(info.foreign_tables)}); "
            f"not copying into it (use another target, or --force)")
    ours = [table for table in TABLES if table.name in info.tables]
    filled = [t.name for t in ours if conn.scalar(queries.count(t))]
    if filled and not force:
        raise UnsupportedDatabaseError(
            f"{where} is not empty ({', '.join(filled)} hold rows); not copying into it "
            f"(use an empty target, or --force to replace its NexusLIMS tables)")
    for table in reversed(ours):  # dependants first
        conn.execute(f"DROP TABLE {table.name}")
    for statement in conn.backend.ddl.create_statements():
        conn.execute(statement)


def copy_database(
    source: DatabaseRef,
    target: DatabaseRef,
    *,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> CopyResult:
    """Copy every NexusLIMS table of ``source`` into ``target``, ids and counters kept.

    Parameters
    ----------
    source
        The database to copy (a path or URL); only read.
    target
        Where to copy it: a SQLite file (created if missing) or a PostgreSQL
        database (which must exist). It must hold no NexusLIMS rows.
    force
        Replace the NexusLIMS tables of a target that has rows (and copy into
        a database holding other applications' tables).
    progress
        Called as rows are copied, for a progress display.

    Returns
    -------
    CopyResult
        The rows and checksum of every table.

    Raises
    ------
    UnsupportedDatabaseError
        The source is not a NexusLIMS database this package can read, or the
        target is not empty (without ``force``), or is the source (by any name).
    DatabaseDamagedError
        The source is damaged (see :func:`~nexusLIMS.db.integrity.verify_integrity`).
    ValueError
        The source has session logs of instruments it does not have, which a
        PostgreSQL target cannot hold.
    """
    origin = locate_database(source)
    destination = locate_database(target, must_exist=False)
    if origin == destination:
        raise UnsupportedDatabaseError(
            f"Cannot copy {origin} onto itself: the source and the target are the same database")
    source_backend = backend_for(origin)
    like = origin.path if source_backend.is_file else None
    copied: list[TableCopy] = []
    with backend_for(destination).staged(destination, like) as writing, \
            connect(origin, begin=None) as src, \
            connect(writing, begin=None, create=True, foreign_keys=False) as dst:
        # Before any lock is asked for: the target's would wait for the source's.
        if src.backend is dst.backend \
                and src.backend.identity(src.raw, origin) == dst.backend.identity(dst.raw, writing):
            raise UnsupportedDatabaseError(
                f"Cannot copy {origin} onto itself: {destination} is the same database "
                f"under another name; nothing was copied")
        src.begin("DEFERRED")
        info = inspect(src)
        info.check_usable()
        verify_integrity(src)
        if not dst.backend.is_file and (orphans := int(src.scalar(queries.COUNT_ORPHAN_LOGS))):
            raise ValueError(
                f"{origin} has {orphans} session logs of instruments missing from its "
                f"instruments table, which PostgreSQL cannot hold; add those instruments "
                f"(or remove their logs) first")
        dst.begin("IMMEDIATE")
        _target_tables(dst, force, destination)
        for table in TABLES:
            if table.name in info.tables:
                copied.append(_copy_table(src, dst, table, progress))
        counter = max(
            src.backend.id_counter(src.raw, SESSION_LOG.name, "id_session_log") or 0,
            int(src.scalar(queries.MAX_LOG_ID) or 0))
        dst.backend.set_id_counter(dst.raw, SESSION_LOG.name, "id_session_log", counter)
        dst.backend.set_schema_version(dst.raw, SCHEMA_VERSION)
    forget(destination)
    logger.info("Copied %s to %s (%s)", origin, destination,
                ", ".join(f"{c.table}: {c.rows} rows" for c in copied))
    return CopyResult(origin, destination, info.version, tuple(copied), counter + 1)


def _copy_table(src: Connection, dst: Connection, table: Table,
                progress: Optional[Progress]) -> TableCopy:
    """Copy one table in chunks, then check the target's rows against the source's."""
    total = int(src.scalar(queries.count(table)))
    columns = quoted_columns(table)
    sent = hashlib.sha256()
    done = 0
    cursor = src.execute(queries.select_all(table))
    while rows := cursor.fetchmany(_CHUNK):
        _digest(rows, sent)
        dst.insert_rows(table.name, columns, [tuple(row) for row in rows])
        done += len(rows)
        if progress is not None:
            progress(table.name, done, total)
    stored = hashlib.sha256()
    count = _digest(dst.execute(queries.select_all(table)).fetchall(), stored)
    if (count, stored.hexdigest()) != (done, sent.hexdigest()) or done != total:
        raise RuntimeError(
            f"The copy of {table.name} does not match its source ({count} of {total} rows, "
            f"checksum {stored.hexdigest()[:12]} against {sent.hexdigest()[:12]}); "
            f"nothing was copied")
    return TableCopy(table.name, done, sent.hexdigest())
