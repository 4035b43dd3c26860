"""Shared helpers of the test suite: sample PIDs, a log factory, raw reads and writes.

Raw writes bypass the package's validation (and foreign keys), to set up
the inconsistent states 1.4 code or other tools can leave behind. They work on
both backends, through the package's own connection helper.
:data:`INCONSISTENT` is the one catalogue of such states (inconsistent
sessions), which the tests of pairing, diagnosis, claims and 1.4
compatibility all use.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from nexusLIMS.db.cli import main
from nexusLIMS.db.config import DatabaseRef
from nexusLIMS.db.connection import connect
from nexusLIMS.db.enums import ProblemKind
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


# --- the catalogue of inconsistent sessions ---------------------------------------------------

#: Stands for the session's identifier in an :class:`Inconsistency`'s detail patterns.
IDENT = "<id>"


@dataclass(frozen=True)
class Inconsistency:
    """A way the TO_BE_BUILT START/END logs of one session can be inconsistent.

    ``logs`` are ``(event_type, timestamp, instrument)``; each ``problems``
    item is the :class:`ProblemKind` that ``find_session_problems`` reports
    and a regular expression its detail matches (``<id>`` stands for the
    session's identifier), in the order reported.
    """

    logs: tuple[tuple[str, str, str], ...]
    problems: tuple[tuple[ProblemKind, str], ...]

    def rows(self, identifier: str = "bad") -> list[Row]:
        """The session's raw rows (for :func:`insert_raw`), under ``identifier``."""
        return [row(identifier, event, timestamp, instrument)
                for event, timestamp, instrument in self.logs]

    @property
    def kinds(self) -> list[ProblemKind]:
        """The kinds of its problems, in the order ``find_session_problems`` reports them."""
        return [kind for kind, _ in self.problems]

    def details(self, identifier: str = "bad") -> list[str]:
        """The patterns its problems' details match, for a session named ``identifier``."""
        return [pattern.replace(IDENT, re.escape(identifier)) for _, pattern in self.problems]

    @property
    def raises_in_1_4(self) -> bool:
        """Whether 1.4 raised for it (a START without exactly one END), as the default does."""
        return ProblemKind.END_COUNT in self.kinds


def _bad(*logs: tuple[str, str, str], problems: Sequence[tuple[ProblemKind, str]]
         ) -> Inconsistency:
    return Inconsistency(tuple(logs), tuple(problems))


def _start(timestamp: str = "2021-05-01T10:00:00", instrument: str = TITAN
           ) -> tuple[str, str, str]:
    return ("START", timestamp, instrument)


def _end(timestamp: str = "2021-05-01T11:00:00", instrument: str = TITAN
         ) -> tuple[str, str, str]:
    return ("END", timestamp, instrument)


_END_COUNT_0 = re.escape(
    f"{END_COUNT_PREFIX}len(matching_end_logs) was 0; start log was SessionLog (id={IDENT}, "
    f"instrument={TITAN}, timestamp=2021-05-01T10:00:00, event_type=START, user=alice, "
    f"record_status=TO_BE_BUILT); matching_end_logs was []"
)
_BEFORE = "ends .* before it starts"

#: Every kind of inconsistent session, by name. Each is years old (so
#: ``on_error="mark"`` may mark it), on the sample instruments unless it is
#: about an unknown one, and made of rows 1.4 code or other tools can write.
INCONSISTENT: dict[str, Inconsistency] = {
    "start with zero ends": _bad(_start(), problems=[(ProblemKind.END_COUNT, _END_COUNT_0)]),
    "start with two ends": _bad(
        _start(), _end(), _end("2021-05-01T11:30:00"),
        problems=[(ProblemKind.END_COUNT,
                   re.escape(f"{END_COUNT_PREFIX}len(matching_end_logs) was 2; ")
                   + rf".*matching_end_logs was \[SessionLog \(id={IDENT}, "
                   + r".*timestamp=2021-05-01T11:00:00"
                   + rf".*, SessionLog \(id={IDENT}, .*timestamp=2021-05-01T11:30:00")]),
    "end without start": _bad(
        _end(),
        problems=[(ProblemKind.END_WITHOUT_START,
                   rf"session '{IDENT}' has 1 'END' log\(s\) \(ids \d+\) but no 'START' log")]),
    "two ends without start": _bad(
        _end(), _end("2021-05-01T11:30:00"),
        problems=[(ProblemKind.END_WITHOUT_START,
                   rf"session '{IDENT}' has 2 'END' log\(s\) \(ids \d+, \d+\) but no "
                   r"'START' log")]),
    "two starts": _bad(
        _start(), _start("2021-05-01T10:05:00"), _end(),
        problems=[(ProblemKind.MULTIPLE_STARTS,
                   rf"session '{IDENT}' has 2 'START' logs \(ids \d+, \d+\)")]),
    "two starts, no end": _bad(
        _start(), _start("2021-05-01T10:05:00"),
        problems=[(ProblemKind.END_COUNT,
                   re.escape(f"{END_COUNT_PREFIX}len(matching_end_logs) was 0")),
                  (ProblemKind.MULTIPLE_STARTS, f"session '{IDENT}' has 2 'START' logs")]),
    "end before start": _bad(
        _start(), _end("2021-05-01T09:59:59"),
        problems=[(ProblemKind.END_BEFORE_START,
                   re.escape(f"session '{IDENT}' ends (2021-05-01T09:59:59) before it starts "
                             f"(2021-05-01T10:00:00)"))]),
    "end before start, both with offsets": _bad(
        _start("2021-05-01T10:00:00-04:00"), _end("2021-05-01T15:30:00+02:00"),
        problems=[(ProblemKind.END_BEFORE_START, _BEFORE)]),
    # 10:00 naive at the Titan (New York, UTC-4) is 14:00 UTC.
    "end before start, naive start, aware end": _bad(
        _start(), _end("2021-05-01T13:30:00+00:00"),
        problems=[(ProblemKind.END_BEFORE_START, _BEFORE)]),
    "end before start, aware start, naive end": _bad(
        _start("2021-05-01T14:30:00+00:00"), _end("2021-05-01T10:00:00"),
        problems=[(ProblemKind.END_BEFORE_START, _BEFORE)]),
    # 10:00 naive at the JEOL (Denver, UTC-6) is 16:00 UTC, after 15:00 UTC.
    "end before start in the instrument's zone": _bad(
        _start(instrument=JEOL), _end("2021-05-01T15:00:00+00:00", JEOL),
        problems=[(ProblemKind.END_BEFORE_START, _BEFORE)]),
    "unknown instrument": _bad(
        _start(instrument="GHOST-1"), _end(instrument="GHOST-1"),
        problems=[(ProblemKind.UNKNOWN_INSTRUMENT,
                   f"session '{IDENT}' is on instrument 'GHOST-1', which is not in the "
                   f"instruments table")]),
    "two unknown instruments": _bad(
        _start(instrument="GHOST-1"), _end(instrument="GHOST-2"),
        problems=[(ProblemKind.UNKNOWN_INSTRUMENT, "instrument 'GHOST-1', which is not"),
                  (ProblemKind.UNKNOWN_INSTRUMENT, "instrument 'GHOST-2', which is not")]),
    "unknown instrument and bad timestamp": _bad(
        _start("yesterday", "GHOST-1"), _end(),
        problems=[(ProblemKind.UNKNOWN_INSTRUMENT, "instrument 'GHOST-1', which is not")]),
    "different instruments": _bad(
        _start(), _end(instrument=QUANTA),
        problems=[(ProblemKind.INSTRUMENT_MISMATCH,
                   f"session '{IDENT}' starts on '{TITAN}' but ends on '{QUANTA}'")]),
    "unparseable start": _bad(
        _start("yesterday"), _end(),
        problems=[(ProblemKind.BAD_TIMESTAMP,
                   r"log \d+ has timestamp 'yesterday', not ISO 8601")]),
    "unparseable start and end": _bad(
        _start("2021-13-01T00:00:00"), _end(""),
        problems=[(ProblemKind.BAD_TIMESTAMP,
                   "has timestamp '2021-13-01T00:00:00', not ISO 8601"),
                  (ProblemKind.BAD_TIMESTAMP, "has timestamp '', not ISO 8601")]),
}


#: A terminal control sequence (clears the screen), to show it is never printed raw.
ESC = "\x1b[2J"


class Run:
    """``main(argv)`` with its exit code and output (the ``run`` fixture of conftest.py)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: Any) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([str(arg) for arg in argv])
        out, err = self.capsys.readouterr()
        return code, out, err


def copied_state(database: Any) -> dict[str, Any]:
    """Everything a copy must carry over (instruments, logs, schema version), backend-neutrally."""
    with connect(database) as conn:
        return {
            "instruments": conn.fetchall("SELECT * FROM instruments ORDER BY instrument_pid"),
            "logs": conn.fetchall('SELECT id_session_log, session_identifier, instrument, '
                                  'timestamp, event_type, record_status, "user" FROM session_log '
                                  "ORDER BY id_session_log"),
            "version": conn.backend.schema_version(conn.raw),
        }


def with_ctrl_c(argv: list[str]) -> list[str]:
    """Return ``argv`` run with Ctrl-C (SIGINT) at its default, as at a terminal.

    A process started with SIGINT ignored keeps it ignored, and so do its
    children: a test run in the background of a non-interactive shell would
    otherwise start children that no Ctrl-C can interrupt.
    """
    restore = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", restore, *argv]
