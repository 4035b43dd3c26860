"""Bringing a database made by NexusLIMS 1.4 (or an older version of ours) up to date.

:func:`migrate_db` rebuilds ``session_log`` with the CHECKs of ``schema.sql``
inside one transaction, keeping every row, every ``id_session_log`` and the
``AUTOINCREMENT`` counter, adds the indexes and records the schema version in
``PRAGMA user_version``. ``instruments`` is never touched. A database that is
already current is left exactly as it is.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from nexusLIMS.db.connection import PathLike, backup_database, connect, resolve_db_path
from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.errors import NexusLIMSDBError
from nexusLIMS.db.schema import SCHEMA_VERSION, run_statements, schema_statements

__all__ = ["MigrationError", "MigrationResult", "backup_path_for", "migrate_db", "pending_changes"]

logger = logging.getLogger(__name__)

_TABLE = "session_log"
_OLD_TABLE = "_session_log_before_migration"
_COLUMNS = (
    "id_session_log",
    "session_identifier",
    "instrument",
    "timestamp",
    "event_type",
    "record_status",
    "user",
)
_CHECKED = (("event_type", EventType.values()), ("record_status", RecordStatus.values()))
_INDEX_NAME = re.compile(r"CREATE\s+INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)


class MigrationError(NexusLIMSDBError):
    """The database cannot be migrated; it was left unchanged."""


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate_db` did.

    Attributes
    ----------
    path
        The database file.
    migrated
        False when the database was already current and nothing was changed.
    from_version, to_version
        ``PRAGMA user_version`` before and after.
    reasons
        Why the database needed migrating (empty when it did not).
    rows
        How many ``session_log`` rows the database holds (all of them kept).
    backup
        The backup made before migrating, if any.
    orphans
        Rows kept whose instrument is not in the ``instruments`` table.
    """

    path: Path
    migrated: bool
    from_version: int
    to_version: int
    reasons: tuple[str, ...]
    rows: int
    backup: Optional[Path] = None
    orphans: int = 0


def _check_values(table_sql: str, column: str) -> Optional[frozenset[str]]:
    """Return the values a ``CHECK (column IN (...))`` allows, or None if there is none."""
    match = re.search(
        rf"CHECK\s*\(\s*[\"`\[]?{column}[\"`\]]?\s*IN\s*\(([^)]*)\)",
        table_sql,
        re.IGNORECASE,
    )
    if match is None:
        return None
    return frozenset(value.replace("''", "'") for value in re.findall(r"'((?:[^']|'')*)'",
                                                                     match.group(1)))


def _schema_index_names() -> list[str]:
    names = []
    for statement in schema_statements():
        match = _INDEX_NAME.match(statement)
        if match:
            names.append(match.group(1))
    return names


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def pending_changes(conn: sqlite3.Connection) -> list[str]:
    """Return why the open database needs migrating; empty when it is current.

    Raises
    ------
    MigrationError
        The database lacks the NexusLIMS tables, or its schema version is
        newer than this package's.
    """
    tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    missing = [name for name in ("instruments", _TABLE) if name not in tables]
    if missing:
        raise MigrationError(
            f"Not a NexusLIMS database: it has no {' or '.join(missing)} table"
        )
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise MigrationError(
            f"The database has schema version {version}, newer than this package's "
            f"({SCHEMA_VERSION}); update nexusLIMS instead"
        )
    reasons = []
    if version < SCHEMA_VERSION:
        reasons.append(f"schema version {version} is older than {SCHEMA_VERSION}")
    for column, allowed in _CHECKED:
        found = _check_values(tables[_TABLE], column)
        if found is None:
            reasons.append(f"session_log.{column} has no CHECK of its values")
        elif found != frozenset(allowed):
            lacks = [value for value in allowed if value not in found]
            extra = sorted(found.difference(allowed))
            what = [f"lacks {', '.join(lacks)}"] if lacks else []
            what += [f"allows {', '.join(extra)}"] if extra else []
            reasons.append(f"the CHECK of session_log.{column} {' and '.join(what)}")
    indexes = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (_TABLE,)
        )
    }
    lacking = [name for name in _schema_index_names() if name not in indexes]
    if lacking:
        reasons.append(f"session_log lacks the index(es) {', '.join(lacking)}")
    return reasons


def _preflight(conn: sqlite3.Connection) -> None:
    """Refuse, before anything is written, a table that cannot be rebuilt losslessly."""
    dependants = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE (type = 'trigger' AND tbl_name = ?) "
        "OR (type = 'view' AND sql LIKE ?)",
        (_TABLE, f"%{_TABLE}%"),
    ).fetchall()
    if dependants:
        listed = ", ".join(f"{kind} {name}" for kind, name in dependants)
        raise MigrationError(f"session_log is used by {listed}; drop them, migrate, recreate them")
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")]
    if sorted(columns) != sorted(_COLUMNS):
        extra = sorted(set(columns).difference(_COLUMNS))
        lacking = sorted(set(_COLUMNS).difference(columns))
        raise MigrationError(
            f"session_log has unexpected columns (extra: {', '.join(extra) or 'none'}; "
            f"missing: {', '.join(lacking) or 'none'}); cannot rebuild it without loss"
        )
    for column, allowed in _CHECKED:
        marks = ", ".join("?" * len(allowed))
        bad = conn.execute(
            f"SELECT {column}, count(*) FROM {_TABLE} WHERE {column} IS NULL "
            f"OR {column} NOT IN ({marks}) GROUP BY {column}",
            allowed,
        ).fetchall()
        if bad:
            listed = ", ".join(f"{value!r} ({count} rows)" for value, count in bad)
            raise MigrationError(
                f"session_log.{column} holds values the current schema forbids: {listed}"
            )


def backup_path_for(path: Path, when: Optional[datetime] = None) -> Path:
    """Return ``<file>.bak-<YYYYmmddTHHMMSS>`` for ``path``, at ``when`` (default now).

    A suffix ``-2``, ``-3``, … is added if a backup of that name exists already.
    """
    stamp = (when or datetime.now()).strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{number}")
    return candidate


def _sequence(conn: sqlite3.Connection, table: str) -> Optional[int]:
    has_sequence = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    if not has_sequence:
        return None
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return None if row is None else int(row[0])


def _copy_rows(conn: sqlite3.Connection) -> None:
    """Move the rows into a new ``session_log`` made from ``schema.sql``."""
    conn.execute(f"ALTER TABLE {_TABLE} RENAME TO {_OLD_TABLE}")
    run_statements(conn, "CREATE TABLE")
    columns = ", ".join(_COLUMNS)
    conn.execute(
        f"INSERT INTO {_TABLE} ({columns}) SELECT {columns} FROM {_OLD_TABLE} "
        f"ORDER BY id_session_log"
    )
    conn.execute(f"DROP TABLE {_OLD_TABLE}")


def _restore_sequence(conn: sqlite3.Connection, old: Optional[int]) -> None:
    """Keep the AUTOINCREMENT counter, which may exceed the largest id left."""
    if old is None:
        return
    current = _sequence(conn, _TABLE)
    if current is None:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (_TABLE, old))
    elif current < old:
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (old, _TABLE))


def _orphan_ids(conn: sqlite3.Connection) -> set[int]:
    return {
        log_id
        for (log_id,) in conn.execute(
            f"SELECT id_session_log FROM {_TABLE} "
            f"WHERE instrument NOT IN (SELECT instrument_pid FROM instruments)"
        )
    }


def _rebuild(conn: sqlite3.Connection) -> tuple[int, int]:
    """Rebuild ``session_log`` in the open transaction; return (rows, orphans)."""
    rows = int(conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()[0])
    sequence = _sequence(conn, _TABLE)
    orphans = _orphan_ids(conn)
    schema_indexes = set(_schema_index_names())
    own_indexes = [
        sql
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (_TABLE,),
        )
        if name not in schema_indexes
    ]

    _copy_rows(conn)
    _restore_sequence(conn, sequence)
    run_statements(conn, "CREATE INDEX")
    for sql in own_indexes:
        conn.execute(sql)

    after = int(conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()[0])
    violations = {row[1] for row in conn.execute(f"PRAGMA foreign_key_check({_TABLE})")}
    if after != rows or not violations <= orphans:
        raise MigrationError(
            f"Rebuilt session_log does not match the original ({after} of {rows} rows, "
            f"{len(violations - orphans)} new foreign key violations)"
        )
    return rows, len(orphans)


def migrate_db(path: Optional[PathLike] = None, *, backup: bool = True) -> MigrationResult:
    """Bring the database up to the current schema, keeping every row.

    Rebuilds ``session_log`` with the CHECKs of the current schema (1.4's
    lacks ``NO_CONSENT`` and ``NO_RESERVATION``) in one transaction, keeping
    every row, every ``id_session_log`` and the ``AUTOINCREMENT`` counter;
    adds the indexes; sets ``PRAGMA user_version``. Rows whose instrument is
    missing from ``instruments`` are kept (with a warning). On a current
    database nothing is changed and no backup is made.

    Parameters
    ----------
    path
        The database; by default from ``nexusLIMS_db_path``. Never created.
    backup
        First copy the database, with SQLite's backup API, to
        ``<file>.bak-<YYYYmmddTHHMMSS>`` beside it.

    Returns
    -------
    MigrationResult
        What was done.

    Raises
    ------
    MigrationError
        The database cannot be migrated, or the rebuild failed; the database
        file is unchanged.
    DatabaseNotFoundError
        No database file exists at the path.
    """
    db_path = resolve_db_path(path)
    try:
        with connect(db_path, begin="IMMEDIATE", foreign_keys=False) as conn:
            version = _user_version(conn)
            reasons = tuple(pending_changes(conn))
            if not reasons:
                rows = int(conn.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()[0])
                logger.info("%s is at schema version %d already; nothing to do", db_path, version)
                return MigrationResult(db_path, False, version, version, (), rows)
            _preflight(conn)
            # Our write lock is held but nothing is written yet, so the copy
            # shows exactly the state that is migrated.
            copy = backup_database(db_path, backup_path_for(db_path)) if backup else None
            rows, orphans = _rebuild(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        raise MigrationError(
            f"Could not migrate {str(db_path)!r}; it was left unchanged: {exc}"
        ) from exc
    if orphans:
        logger.warning(
            "%d session_log rows name an instrument that is not in the instruments "
            "table; they were kept as they were",
            orphans,
        )
    logger.info(
        "Migrated %s from schema version %d to %d (%s)",
        db_path, version, SCHEMA_VERSION, "; ".join(reasons),
    )
    return MigrationResult(db_path, True, version, SCHEMA_VERSION, reasons, rows, copy, orphans)
