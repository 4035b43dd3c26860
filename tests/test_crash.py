"""Issue 3, point 5: no partial writes, no leaked connections.

A writer process is killed with SIGKILL in the middle of one ``insert_logs``
of many logs; a batch whose last row fails a constraint is rolled back; and
every failing operation closes its connection (seen through
:func:`nexusLIMS.db.connection.tracing`, the process's open files and the
absence of ResourceWarnings).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import TITAN

from nexusLIMS.db import DatabaseConfigError, make_db_query
from nexusLIMS.db.connection import close_watches, tracing
from nexusLIMS.db.logs import SessionLog, insert_logs
from nexusLIMS.db.session_handler import db_query, get_sessions_to_build
from nexusLIMS.db.sessions import Session
from nexusLIMS.instruments import Instrument

pytestmark = pytest.mark.slow

ENV_DB_PATH = "nexusLIMS_db_path"
ENV_TIMEOUT = "nexusLIMS_db_timeout"
BATCH = 30_000  # logs in the write that is killed


def _batch(count: int = BATCH) -> list[SessionLog]:
    return [
        SessionLog(
            f"batch-{i}", TITAN, f"2021-06-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}",
            "START" if i % 2 else "END", "alice",
        )
        for i in range(count)
    ]


_WRITER = textwrap.dedent(f"""
    import sys
    from nexusLIMS.db.logs import SessionLog, insert_logs

    logs = [
        SessionLog(
            f"batch-{{i}}", {TITAN!r},
            f"2021-06-01T{{i // 3600 % 24:02d}}:{{i // 60 % 60:02d}}:{{i % 60:02d}}",
            "START" if i % 2 else "END", "alice",
        )
        for i in range({BATCH})
    ]
    print("started", flush=True)
    insert_logs(logs)
    print("written", flush=True)
""")


def _query(path: Path, sql: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def _table(path: Path) -> list[tuple[Any, ...]]:
    return list(_query(path, "SELECT * FROM session_log ORDER BY id_session_log"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_writer_killed_mid_write_leaves_all_or_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert _query(nexuslims_db, "PRAGMA journal_mode") == [("delete",)]
    earlier = [
        SessionLog("earlier", TITAN, "2021-05-01T10:00:00", "START", None),
        SessionLog("earlier", TITAN, "2021-05-01T11:00:00", "END", None),
    ]
    assert insert_logs(earlier) == 2
    before = _table(nexuslims_db)
    journal = nexuslims_db.with_name(nexuslims_db.name + "-journal")

    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER], env={**os.environ, ENV_DB_PATH: str(nexuslims_db)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "started\n", child.stderr and child.stderr.read()
        # The rollback journal appears with the write's first changed page
        # and is deleted by its commit: kill the writer while it exists.
        deadline = time.monotonic() + 60
        while not journal.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert journal.exists(), "the write did not start"
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert "written" not in out
    # A journal left behind is "hot": the write was cut off before its commit.
    assert journal.exists()

    assert _query(nexuslims_db, "PRAGMA integrity_check") == [("ok",)]
    assert _table(nexuslims_db) == before  # none of the batch, all of the rest
    # The database is fully usable afterwards.
    assert insert_logs(earlier + _batch(10)) == 10
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == ["earlier"]


def test_insert_logs_failing_on_its_last_row_writes_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert SessionLog("earlier", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    with contextlib.closing(sqlite3.connect(nexuslims_db)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse_last BEFORE INSERT ON session_log "
            "WHEN NEW.session_identifier = 'batch-999' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    before = _table(nexuslims_db)
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        insert_logs(_batch(1000))
    assert _table(nexuslims_db) == before
    assert insert_logs(_batch(999)) == 999


# --- every connection is closed on every path --------------------------------

def _bad_status(instruments: dict[str, Instrument]) -> None:
    dt_range = (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11))
    session = Session("s", instruments[TITAN], dt_range, None)
    session.update_session_status("FINISHED")


def _lock_and(operation: Callable[[], object]) -> Callable[[dict[str, Instrument]], object]:
    def locked(_: dict[str, Instrument]) -> object:
        path = Path(os.environ[ENV_DB_PATH])
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
            holder.execute("BEGIN IMMEDIATE")
            try:
                return operation()
            finally:
                holder.execute("ROLLBACK")
    return locked


def _bad_timeout(operation: Callable[[], object]) -> Callable[[dict[str, Instrument]], object]:
    def with_bad_timeout(_: dict[str, Instrument]) -> object:
        os.environ[ENV_TIMEOUT] = "soon"  # restored by the test's monkeypatch
        return operation()
    return with_bad_timeout


FAILURES: dict[str, tuple[Callable[[dict[str, Instrument]], object], type[BaseException], str]] = {
    "query of a missing table": (
        lambda _: make_db_query("SELECT * FROM no_such_table"),
        sqlite3.OperationalError, "no such table",
    ),
    "syntax error": (
        lambda _: db_query("SELEC 1"), sqlite3.OperationalError, "syntax error",
    ),
    "foreign key violation": (
        lambda _: db_query(
            "INSERT INTO session_log (session_identifier, instrument, event_type) "
            "VALUES (?, ?, ?)", ["s", "GHOST", "START"],
        ),
        sqlite3.IntegrityError, "FOREIGN KEY",
    ),
    "check violation": (
        lambda _: make_db_query("UPDATE session_log SET record_status = 'BOGUS'"),
        sqlite3.IntegrityError, "CHECK",
    ),
    "validation error": (
        lambda _: SessionLog("s", TITAN, "yesterday", "START", None).insert_log(),
        ValueError, "Invalid timestamp",
    ),
    "unknown instrument": (
        lambda _: insert_logs([SessionLog("s", "GHOST", "2021-05-01T10:00:00", "START", None)]),
        ValueError, "not in the instruments table",
    ),
    "unknown status": (_bad_status, ValueError, "Invalid record_status"),
    "inconsistent session": (
        lambda _: get_sessions_to_build(), ValueError, "There was not exactly one 'END'",
    ),
    "locked database": (
        _lock_and(lambda: SessionLog("t", TITAN, "2021-05-01T10:00:00", "START", None)
                  .insert_log()),
        sqlite3.OperationalError, "database is locked",
    ),
    "bad lock timeout": (
        _bad_timeout(lambda: SessionLog("t", TITAN, "2021-05-01T10:00:00", "START", None)
                     .insert_log()),
        DatabaseConfigError, ENV_TIMEOUT,
    ),
}
# Refused before anything is opened.
NO_CONNECTION = {"unknown status", "bad lock timeout", "validation error"}


def _open_files(path: Path) -> list[str]:
    """Return this process's open files that are the database or its journal."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(path.resolve())):
                found.append(target)
    return found


@pytest.mark.parametrize("case", FAILURES)
def test_every_failing_operation_closes_its_connection(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    operation, error, message = FAILURES[case]
    assert SessionLog("s", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    before = _table(nexuslims_db)
    monkeypatch.setenv(ENV_TIMEOUT, "0.05")
    events: list[tuple[str, str]] = []

    with tracing(lambda *event: events.append(event)), pytest.raises(error, match=message):
        operation(nexuslims_instruments)

    # The change watch a database keeps for instrument look-ups is not the operation's.
    kinds = [kind for kind, text in events if not text.endswith("(change watch)")]
    if case not in NO_CONNECTION:
        assert "open" in kinds, "the operation opened no connection"
    assert kinds.count("open") == kinds.count("close"), events
    close_watches()  # (kept on purpose, between calls)
    if os.path.isdir("/proc/self/fd"):
        assert _open_files(nexuslims_db) == []  # closed now, not at garbage collection
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    monkeypatch.delenv(ENV_TIMEOUT)
    assert _table(nexuslims_db) == before
