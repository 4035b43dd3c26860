"""Shared helpers of the test suite: sample PIDs, a log factory, raw reads and writes.

Raw writes bypass the package's validation (and foreign keys), to set up
the inconsistent states 1.4 code or other tools can leave behind. They work on
both backends, through the package's own connection helper.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from nexusLIMS.db.config import DatabaseRef
from nexusLIMS.db.connection import connect
from nexusLIMS.db.logs import LOG_COLUMNS, SessionLog, StoredLog
from nexusLIMS.db.sessions import Session

#: The sample instruments (see nexusLIMS.db.samples): TITAN and QUANTA are in
#: America/New_York, JEOL in America/Denver.
TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
JEOL = "JEOL-JEM3010-TEM-565989"
#: How 1.4's error for a START without exactly one END begins.
END_COUNT_PREFIX = "There was not exactly one 'END' log for this 'START' log; "


def optional_module(name: str) -> Any:
    """Return the module ``name``, or None when it is not installed (an extra's module)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


#: psycopg, or None without the postgres extra (conftest.py then skips the tests needing it).
psycopg = optional_module("psycopg")

#: (session_identifier, instrument, timestamp, event_type, record_status, user)
Row = tuple[str, str, str, str, str, Optional[str]]


def log(
    identifier: str, event: str, timestamp: str, instrument: str = TITAN,
    status: str = "TO_BE_BUILT", user: Optional[str] = "alice",
) -> SessionLog:
    """Return a SessionLog (arguments in the order tests think of them)."""
    return SessionLog(identifier, instrument, timestamp, event, user, status)


def row(
    identifier: str, event: str, timestamp: str, instrument: str = TITAN,
    status: str = "TO_BE_BUILT", user: Optional[str] = "alice",
) -> Row:
    """Return a raw ``session_log`` row for :func:`insert_raw`."""
    return (identifier, instrument, timestamp, event, status, user)


def insert_raw(rows: Sequence[Row], database: Optional[DatabaseRef] = None) -> list[int]:
    """Insert ``rows`` as given, without validation or foreign keys; return their ids."""
    columns = ", ".join(f'"{c}"' for c in LOG_COLUMNS[1:])
    with connect(database, begin="IMMEDIATE", foreign_keys=False) as conn:
        if conn.dialect == "postgresql":  # the test server's user may disable triggers
            conn.execute("SET LOCAL session_replication_role = replica")
        return [
            conn.insert(f"INSERT INTO session_log ({columns}) VALUES (?, ?, ?, ?, ?, ?)", values,
                        key="id_session_log")
            for values in rows
        ]


def sql(query: str, params: Sequence[Any] = (), database: Optional[DatabaseRef] = None
        ) -> list[tuple[Any, ...]]:
    """Run one statement (the package's own dialect: ``?`` placeholders) and return its rows."""
    with connect(database, begin="IMMEDIATE") as conn:
        cursor = conn.execute(query, params)
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []


def rows(database: Optional[DatabaseRef] = None) -> list[StoredLog]:
    """Return every ``session_log`` row, in id order."""
    quoted = ", ".join(f'"{c}"' for c in LOG_COLUMNS)
    return [StoredLog(*r) for r in sql(
        f"SELECT {quoted} FROM session_log ORDER BY id_session_log", database=database)]


def statuses(database: Optional[DatabaseRef] = None) -> dict[int, str]:
    """Return ``{id_session_log: record_status}`` of every row."""
    return {r.id_session_log: r.record_status for r in rows(database)}


def session_key(session: Session) -> tuple[Any, ...]:
    """Return what identifies a returned session: identifier, PID, start, end, user."""
    return (session.session_identifier, session.instrument.name,
            session.dt_from.isoformat(), session.dt_to.isoformat(), session.user)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the WARNING messages the package logged."""
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING and record.name.startswith("nexusLIMS")]


#: Tables a backend keeps for itself, beside the NexusLIMS ones.
BACKEND_TABLES = {"sqlite_sequence", "nexuslims_schema_version"}


def describe(database: Any) -> dict[str, Any]:
    """What a database holds, through the package's backend (both backends)."""
    with connect(database, begin=None) as conn:
        backend, raw = conn.backend, conn.raw
        tables = sorted(backend.table_names(raw) - BACKEND_TABLES)
        return {
            "tables": tables,
            "columns": {table: backend.column_names(raw, table) for table in tables},
            "indexes": {table: sorted(backend.index_names(raw, table)) for table in tables},
            "on_delete": backend.on_delete_action(raw, "session_log", "instrument"),
            "version": backend.schema_version(raw),
        }


@dataclass
class Templates:
    """A database file copied for each example of a property test."""

    template: Path
    folder: Path
    counter: Iterator[int] = field(default_factory=itertools.count)

    @contextlib.contextmanager
    def fresh(self, **env: str) -> Iterator[Path]:
        """A new copy of the template, named by the environment (plus ``env``)."""
        path = Path(shutil.copy(self.template, self.folder / f"db{next(self.counter)}.sqlite"))
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("nexusLIMS_db_path", str(path))
            patch.delenv("NX_DB_PATH", raising=False)
            patch.delenv("nexusLIMS_db_mark_after", raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            yield path
        path.unlink()
