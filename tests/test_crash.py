"""Issue 3, point 5: no partial writes, no leaked connections.

A writer process is killed with SIGKILL in the middle of one ``insert_logs``
of 50,000 logs; a batch whose last row fails a constraint is rolled back; and
every failing operation closes its connection.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sqlite3
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

from nexusLIMS.db import make_db_query
from nexusLIMS.db.connection import ENV_DB_PATH, ENV_TIMEOUT
from nexusLIMS.db.pairing import get_sessions_to_build
from nexusLIMS.db.session import Session
from nexusLIMS.db.session_handler import db_query
from nexusLIMS.db.session_log import SessionLog, insert_logs
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
BATCH = 50_000  # logs in the write that is killed


def _batch() -> list[SessionLog]:
    return [
        SessionLog(
            f"batch-{i}", TITAN, f"2021-06-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}",
            "START" if i % 2 else "END", "alice",
        )
        for i in range(BATCH)
    ]


def _write_batch(path: str, started: Any) -> None:
    """Insert :data:`BATCH` logs in one call, telling the parent just before."""
    os.environ[ENV_DB_PATH] = path
    logs = _batch()
    started.set()
    insert_logs(logs)


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

    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    child = ctx.Process(target=_write_batch, args=(str(nexuslims_db), started))
    child.start()
    try:
        assert started.wait(timeout=60), "the writer never started"
        # The rollback journal appears with the write's first changed page
        # and is deleted by its commit: kill the writer while it exists.
        deadline = time.monotonic() + 60
        while not journal.exists() and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert journal.exists(), "the write did not start"
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == -signal.SIGKILL
    # A journal left behind is "hot": the write was cut off before its commit.
    assert journal.exists()

    assert _query(nexuslims_db, "PRAGMA integrity_check") == [("ok",)]
    assert _table(nexuslims_db) == before  # none of the batch, all of the rest
    # The database is fully usable afterwards.
    assert insert_logs(earlier + _batch()[:10]) == 10
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
        insert_logs(_batch()[:1000])
    assert _table(nexuslims_db) == before
    assert insert_logs(_batch()[:999]) == 999


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
}


def _open_files(path: Path) -> list[str]:
    """Return this process's open files that are the database or its journal."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(path.resolve())):
                found.append(target)
    return found


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
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
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def spy(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        if "mode=rw" in str(args[0]):  # the library's connections, not the lock holder
            opened.append(conn)
        return conn

    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", spy)
        with pytest.raises(error, match=message):
            operation(nexuslims_instruments)

    if case != "unknown status":  # refused before any connection is opened
        assert opened, "the operation opened no connection"
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    if os.path.isdir("/proc/self/fd"):
        assert _open_files(nexuslims_db) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert _table(nexuslims_db) == before
