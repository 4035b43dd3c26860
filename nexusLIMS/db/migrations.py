"""Bringing an older database up to date: numbered steps keyed on the schema version.

The schema version is stored in the database (``PRAGMA user_version`` in
SQLite). Each :class:`Step` raises it by one; the pending steps are those
above the stored version. :func:`migrate_db` checks the tables, backs a
SQLite file up, runs every pending step and records the new version in one
transaction: if anything fails, the database is left as it was. Adding a
schema version is adding one step here (and its tables in
:mod:`~nexusLIMS.db.schema`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from nexusLIMS.db import queries
from nexusLIMS.db.backends import backend_for
from nexusLIMS.db.config import DatabaseLocation, DatabaseRef, locate_database
from nexusLIMS.db.connection import Connection, connect
from nexusLIMS.db.errors import (
    DatabaseDamagedError,
    MigrationError,
    NexusLIMSDBError,
    UnsupportedDatabaseError,
)
from nexusLIMS.db.integrity import verify_integrity
from nexusLIMS.db.schema import forget, inspect
from nexusLIMS.db.tables import INDEXES, INSTRUMENTS, SCHEMA_VERSION, SESSION_LOG, TABLES

__all__ = [
    "STEPS",
    "MigrationResult",
    "Progress",
    "Step",
    "backup_path_for",
    "migrate_db",
    "pending_steps",
]

logger = logging.getLogger(__name__)

#: A progress callback: ``progress(what is being done, units done, units in all)``.
Progress = Callable[[str, int, int], None]

_INDEX_1_4 = "session_log.fk_instrument_idx"


@dataclass(frozen=True)
class Step:
    """One migration step: from ``version - 1`` to ``version``."""

    version: int
    name: str
    description: str
    apply: Callable[[Connection], None]
    rebuilds: bool = False


def _rebuild_session_log(conn: Connection) -> None:
    """Give session_log the current CHECKs and foreign key, keeping every row and id."""
    # Ours are created anew; 1.4's index on instrument is replaced by ours.
    known = {index.name for index in INDEXES} | {_INDEX_1_4}
    conn.backend.apply_constraints(conn.raw, SESSION_LOG, known)
    for index in INDEXES:
        if index.table == SESSION_LOG.name and index.since <= 2:
            conn.execute(conn.backend.ddl.index_statement(index))


def _restrict_deletes(conn: Connection) -> None:
    if conn.backend.on_delete_action(conn.raw, SESSION_LOG.name, "instrument") != "RESTRICT":
        _rebuild_session_log(conn)
    conn.backend.restrict_deletes(conn.raw)


def _add_tables(version: int) -> Callable[[Connection], None]:
    def add(conn: Connection) -> None:
        ddl = conn.backend.ddl
        for table in TABLES:
            if table.since == version:
                conn.execute(ddl.table_statement(table))
        for index in INDEXES:
            if index.since == version:
                conn.execute(ddl.index_statement(index))
    return add


#: Every migration step, in order; the last one's version is the current schema version.
STEPS = (
    Step(1, "session_log_constraints",
         "rebuild session_log so that its CHECKs allow every status (1.4's lacks NO_CONSENT, "
         "NO_RESERVATION and BUILT_NOT_EXPORTED) and deleting an instrument can never delete "
         "its logs; add the indexes",
         _rebuild_session_log, rebuilds=True),
    Step(2, "keep_logs_of_deleted_instruments",
         "make deleting an instrument that has logs an error instead of deleting its logs "
         "(rebuilds session_log if its foreign key still cascades deletes)",
         _restrict_deletes, rebuilds=True),
    Step(3, "session_claims",
         "add the session_claims table, so that several record builders can share the work",
         _add_tables(3)),
    Step(4, "session_revisions",
         "add the session_revisions table, keeping START/END times revised after a record "
         "was built",
         _add_tables(4)),
)
assert STEPS[-1].version == SCHEMA_VERSION, "each schema version needs its migration step"


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate_db` did (or, with ``dry_run``, would do).

    Attributes
    ----------
    location
        The database.
    migrated
        False when nothing was changed (already current, or a dry run).
    from_version, to_version
        The schema version before and after.
    steps
        The steps run (or pending, for a dry run).
    rows
        How many ``session_log`` rows the database holds (all of them kept).
    backup
        The backup made before migrating, if any.
    orphans
        Rows kept whose instrument is not in the ``instruments`` table.
    removed_partial_backups
        Incomplete backups of earlier, interrupted attempts that were removed.
    vacuumed
        Whether the space freed by a rebuild was given back to the disk.
    """

    location: DatabaseLocation
    migrated: bool
    from_version: int
    to_version: int
    steps: tuple[Step, ...]
    rows: int
    backup: Optional[Path] = None
    orphans: int = 0
    removed_partial_backups: tuple[Path, ...] = ()
    vacuumed: bool = False

    @property
    def path(self) -> Path:
        """The database file (SQLite only)."""
        return self.location.path


def pending_steps(version: int) -> tuple[Step, ...]:
    """Return the steps that bring a database from ``version`` to the current one."""
    return tuple(step for step in STEPS if step.version > version)


def backup_path_for(path: Path, when: Optional[datetime] = None) -> Path:
    """Return ``<file>.bak-<YYYYmmddTHHMMSS>`` for ``path``, at ``when`` (default now).

    A suffix ``-2``, ``-3``, … is added if a backup of that name exists already.
    """
    stamp = (when or datetime.now()).strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    number = 1
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        number += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{number}")
    return candidate


def _check_tables(conn: Connection) -> None:
    """Refuse tables whose columns are not NexusLIMS's: never stamp what was not verified."""
    for table in (INSTRUMENTS, SESSION_LOG):
        found = conn.backend.column_names(conn.raw, table.name)
        if set(found) != set(table.column_names):
            extra = sorted(set(found) - set(table.column_names))
            lacking = sorted(set(table.column_names) - set(found))
            raise MigrationError(
                f"{conn.location} is not a NexusLIMS 1.4 (or later) database this package can "
                f"migrate: its {table.name} table has unexpected columns (extra: "
                f"{', '.join(extra) or 'none'}; missing: {', '.join(lacking) or 'none'}); "
                f"nothing was changed"
            )


def _preflight(conn: Connection) -> None:
    """Refuse, before anything is written, a session_log that cannot be rebuilt losslessly."""
    blockers = conn.backend.blockers(conn.raw, SESSION_LOG.name)
    if blockers:
        raise MigrationError(
            f"session_log is used by {', '.join(blockers)}; drop them, migrate, recreate them")
    for column in SESSION_LOG.columns:
        if not column.allowed:
            continue
        bad = conn.fetchall(queries.values_outside(column.name, column.allowed), column.allowed)
        if bad:
            listed = ", ".join(f"{value!r} ({count} rows)" for value, count in bad)
            raise MigrationError(
                f"session_log.{column.name} holds values the current schema forbids: {listed}")


def _stages(progress: Optional[Progress], steps: tuple[Step, ...], rows: int, *,
            backup: bool, vacuum: bool) -> Callable[[Optional[str]], None]:
    """Return ``tell(stage)``: reports each stage as it starts (None: all done) to ``progress``.

    A stage that reads every row (backup, rebuild, VACUUM) weighs the row
    count; any other weighs one, so the units done estimate the time left.
    """
    weights = ([("backing up", rows)] if backup else []) + [
        (f"step {s.version}/{SCHEMA_VERSION} {s.name}", rows if s.rebuilds else 1) for s in steps
    ] + ([("compacting (VACUUM)", rows)] if vacuum else [])
    total = sum(weight for _, weight in weights)
    done = {name: sum(w for _, w in weights[:i]) for i, (name, _) in enumerate(weights)}

    def tell(stage: Optional[str]) -> None:
        if progress is not None:
            progress(stage or "done", total if stage is None else done[stage], total)
    return tell


def _remove_partial_backups(location: DatabaseLocation) -> tuple[Path, ...]:
    path = location.path
    removed = tuple(sorted(path.parent.glob(f"{path.name}.bak-*.partial*")))
    for leftover in removed:
        leftover.unlink(missing_ok=True)
    if removed:
        logger.warning("Removed %d incomplete backup file(s) of an interrupted migration: %s",
                       len(removed), ", ".join(map(str, removed)))
    return removed


def migrate_db(
    database: Optional[DatabaseRef] = None, *, backup: bool = True, dry_run: bool = False,
    progress: Optional[Progress] = None,
) -> MigrationResult:
    """Bring the database up to the current schema, keeping every row.

    Runs every pending :data:`STEPS` in one transaction and records the new
    schema version; on a current database nothing is changed and no backup
    is made. Rows whose instrument is missing from ``instruments`` are kept
    (with a warning). After a rebuild, SQLite's freed space is returned to
    the disk (``VACUUM``).

    Parameters
    ----------
    database
        The database; by default from ``nexusLIMS_db_path``. Never created.
    backup
        First copy a SQLite database, with SQLite's backup API, to
        ``<file>.bak-<YYYYmmddTHHMMSS>`` beside it (written under a temporary
        name and renamed once complete).
    dry_run
        Only report the pending steps; change nothing.
    progress
        Called as each stage starts (backup, each step, compaction) with its
        name, the units of work done and the units in all, and once at the
        end with ``"done"``: for a progress display.

    Returns
    -------
    MigrationResult
        What was done.

    Raises
    ------
    MigrationError
        The database cannot be migrated, or a step failed; the database is
        unchanged (the message names any backup made).
    UnsupportedDatabaseError
        The database is NexusLIMS 2.x's, another application's, or newer.
    DatabaseDamagedError
        The database is damaged (see :func:`~nexusLIMS.db.integrity.verify_integrity`);
        nothing was changed.
    DatabaseNotFoundError
        No database file exists at the path.
    """
    location = locate_database(database)
    backend = backend_for(location)
    removed = _remove_partial_backups(location) if backend.is_file and not dry_run else ()
    copy: Optional[Path] = None
    target: Optional[Path] = None
    try:
        with connect(location, begin="DEFERRED" if dry_run else "IMMEDIATE",
                     foreign_keys=False) as conn:
            info = inspect(conn)
            info.check_usable()
            verify_integrity(conn)
            _check_tables(conn)
            steps = pending_steps(info.version)
            rows = int(conn.scalar(queries.count(SESSION_LOG)))
            if not steps or dry_run:
                return MigrationResult(location, False, info.version, info.version, steps, rows,
                                       removed_partial_backups=removed)
            if any(step.rebuilds for step in steps):
                _preflight(conn)
            compacts = backend.is_file and any(step.rebuilds for step in steps)
            tell = _stages(progress, steps, rows, backup=backend.is_file and backup,
                           vacuum=compacts)
            if backend.is_file and backup:
                tell("backing up")
                # Our write lock is held but nothing is written yet, so the copy
                # shows exactly the state that is migrated.
                target = backup_path_for(location.path)
                with connect(location, begin=None) as source:
                    copy = backend.backup(source.raw, target)
            orphans = int(conn.scalar(queries.COUNT_ORPHAN_LOGS))
            for step in steps:
                logger.info("Migration step %d (%s): %s", step.version, step.name, step.description)
                tell(f"step {step.version}/{SCHEMA_VERSION} {step.name}")
                step.apply(conn)
            backend.set_schema_version(conn.raw, SCHEMA_VERSION)
            if int(conn.scalar(queries.count(SESSION_LOG))) != rows:
                raise MigrationError("session_log lost rows while migrating")
        forget(location)
    except Exception as exc:
        if target is not None and copy is None:  # the backup itself failed: leave no part of it
            for leftover in target.parent.glob(f"{target.name}.partial*"):
                leftover.unlink(missing_ok=True)
        if isinstance(exc, (MigrationError, UnsupportedDatabaseError, DatabaseDamagedError)) \
                and copy is None:
            raise
        where = f"; the backup {copy} was kept" if copy else "; no backup was kept"
        raise MigrationError(
            f"Could not migrate {location}; it was left unchanged{where}: {exc}") from exc
    vacuumed = False
    if compacts:
        tell("compacting (VACUUM)")
        try:
            vacuumed = backend.compact(location)
        except (NexusLIMSDBError, OSError) as exc:
            logger.warning("Migrated %s, but could not give its freed space back to the disk "
                           "(VACUUM failed: %s); it works as it is", location, exc)
    if orphans:
        logger.warning("%d session_log rows name an instrument that is not in the instruments "
                       "table; they were kept as they were", orphans)
    tell(None)
    logger.info("Migrated %s from schema version %d to %d", location, info.version, SCHEMA_VERSION)
    return MigrationResult(location, True, info.version, SCHEMA_VERSION, steps, rows, copy,
                           orphans, removed, vacuumed)

