"""Issue 3, point 1: every connection waits for a busy database, not fails.

The lock test holds a write transaction for 6.5 s, longer than sqlite3's
default timeout of 5 s, while ``insert_log`` and ``update_session_status``
wait for it in two threads.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import pytest

from nexusLIMS.db.connection import DEFAULT_TIMEOUT, ENV_TIMEOUT, connect, db_timeout
from nexusLIMS.db.errors import DatabaseConfigError
from nexusLIMS.db.session import Session
from nexusLIMS.db.session_log import SessionLog
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
HOLD_SECONDS = 6.5  # > sqlite3's default timeout of 5 s


def _busy_timeout_ms() -> int:
    with connect() as conn:
        return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


def _rows(path: Path) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT session_identifier, event_type, record_status FROM session_log "
            "ORDER BY id_session_log"
        ).fetchall()


def _session(instruments: dict[str, Instrument], identifier: str) -> Session:
    dt_range = (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11))
    return Session(identifier, instruments[TITAN], dt_range, "alice")


def _add_session(identifier: str) -> None:
    for timestamp, event in (("2021-05-01T10:00:00", "START"), ("2021-05-01T11:00:00", "END")):
        assert SessionLog(identifier, TITAN, timestamp, event, "alice").insert_log()


@contextlib.contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """Hold a write transaction on ``path`` (from another connection) in the block."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("COMMIT")


def _assert_locked(path: Path) -> None:
    """Check that no one can take the write lock of ``path`` right now."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    with contextlib.closing(probe), pytest.raises(sqlite3.OperationalError, match="locked"):
        probe.execute("BEGIN IMMEDIATE")


def test_default_timeout_is_30_seconds(
    nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    assert DEFAULT_TIMEOUT == 30
    assert db_timeout() == 30
    assert _busy_timeout_ms() == 30_000


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("2.5", 2.5), ("60", 60), (" 45 ", 45), ("0", 0), ("", 30)],
)
def test_timeout_from_environment(
    nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, raw)
    assert db_timeout() == seconds
    assert _busy_timeout_ms() == int(seconds * 1000)


@pytest.mark.parametrize("raw", ["abc", "30s", "thirty", "-1", "-0.5", "nan", "inf", "1e400"])
def test_bad_timeout_is_a_clear_error_and_writes_nothing(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
    raw: str,
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, raw)
    message = f"{ENV_TIMEOUT} must be a number of seconds (e.g. 30), not {raw!r}"
    with pytest.raises(DatabaseConfigError) as excinfo:
        db_timeout()
    assert str(excinfo.value) == message
    log = SessionLog("bad-timeout", TITAN, "2021-05-01T10:00:00", "START", None)
    with pytest.raises(DatabaseConfigError) as excinfo:
        log.insert_log()
    assert str(excinfo.value) == message
    monkeypatch.delenv(ENV_TIMEOUT)
    assert _rows(nexuslims_db) == []


def test_writers_wait_out_a_lock_held_longer_than_5_seconds(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    _add_session("held-session")
    session = _session(nexuslims_instruments, "held-session")
    new_log = SessionLog("new-session", TITAN, "2021-05-01T12:00:00", "START", None)
    released = threading.Event()

    def after_release(operation: Callable[[], bool]) -> Callable[[], tuple[bool, bool]]:
        # The result, and whether the lock had been released when it returned.
        return lambda: (operation(), released.is_set())

    with ThreadPoolExecutor(max_workers=2) as pool:
        with _write_lock(nexuslims_db):
            _assert_locked(nexuslims_db)
            inserted = pool.submit(after_release(new_log.insert_log))
            updated = pool.submit(after_release(lambda: session.update_session_status("COMPLETED")))
            time.sleep(HOLD_SECONDS)
            assert not inserted.done()
            assert not updated.done()
            released.set()
        assert inserted.result() == (True, True)
        assert updated.result() == (True, True)

    assert _rows(nexuslims_db) == [
        ("held-session", "START", "COMPLETED"),
        ("held-session", "END", "COMPLETED"),
        ("new-session", "START", "TO_BE_BUILT"),
    ]


def test_a_short_timeout_from_the_environment_gives_up(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _add_session("held-session")
    session = _session(nexuslims_instruments, "held-session")
    before = _rows(nexuslims_db)
    monkeypatch.setenv(ENV_TIMEOUT, "0.1")
    with _write_lock(nexuslims_db):
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            SessionLog("new-session", TITAN, "2021-05-01T12:00:00", "START", None).insert_log()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            session.update_session_status("COMPLETED")
    assert _rows(nexuslims_db) == before
