"""nexusLIMS.db.connection: the one way to the database.

Ported from test_one_connection_helper.py (issue 2, point 8: one connection
helper; commit on success, rollback on error, every connection closed) and
the lock half of test_timeout.py (issue 3, point 1: writers wait for a busy
database, bounded by nexusLIMS_db_timeout). Plus: Ctrl-C while waiting for a
lock, error messages that name the file, and the SQL each operation runs as
seen through :func:`nexusLIMS.db.connection.tracing`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import JEOL, TITAN, log, rows, sql, with_ctrl_c

from nexusLIMS.db import DatabaseNotFoundError, init_db, make_db_query
from nexusLIMS.db.backends import backend_for
from nexusLIMS.db.config import DatabaseLocation, lock_timeout
from nexusLIMS.db.connection import close_watches, connect, retrying, tracing
from nexusLIMS.db.errors import DatabaseUnavailableError
from nexusLIMS.db.instruments import add_instrument, edit_instrument, remove_instrument
from nexusLIMS.db.logs import SessionLog, insert_logs, log_end, log_start
from nexusLIMS.db.samples import sample_instruments
from nexusLIMS.db.session_handler import db_query, get_sessions_to_build
from nexusLIMS.db.sessions import Session, set_session_status
from nexusLIMS.instruments import Instrument, instrument_db

ENV_TIMEOUT = "nexusLIMS_db_timeout"
ROOT = Path(__file__).resolve().parents[1]


class Trace:
    """What :func:`tracing` showed: every ``(event, text)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: str, text: str) -> None:
        self.events.append((event, text))

    def kinds(self, *kinds: str) -> list[tuple[str, str]]:
        return [e for e in self.events if e[0] in kinds]

    @property
    def statements(self) -> list[str]:
        return [text for kind, text in self.events if kind in ("execute", "executemany")]

    def assert_connections_paired(self) -> None:
        """Every open is followed by its close; none is left open.

        The one connection the package keeps on purpose, a database's change
        watch (for instrument look-ups), is closed by ``close_watches()``.
        """
        with tracing(self):
            close_watches()
        depth = 0
        for kind, text in self.events:
            if text.endswith("(change watch)"):
                continue
            depth += {"open": 1, "close": -1}.get(kind, 0)
            assert depth >= 0, self.events
        assert depth == 0, f"a connection was left open: {self.events}"
        # Every watch opened is closed (one opened before the trace may close in it).
        watches = [(kind, text) for kind, text in self.events if text.endswith("(change watch)")]
        assert [kind for kind, _ in watches].count("open") <= \
            [kind for kind, _ in watches].count("close"), watches

    def assert_one_write_transaction(self, end: str, begin: str = "BEGIN IMMEDIATE") -> None:
        """One connection, one ``begin`` ... ``end`` holding every write."""
        assert len(self.kinds("open")) == 1, self.events
        self.assert_connections_paired()
        statements = [s.strip().upper() for s in self.statements]
        begins = [i for i, s in enumerate(statements) if s.startswith("BEGIN")]
        assert [statements[i] for i in begins] == [begin], statements
        ends = [i for i, s in enumerate(statements) if s in ("COMMIT", "ROLLBACK")]
        assert [statements[i] for i in ends] == [end], statements
        assert ends[0] == len(statements) - 1, statements  # nothing after the transaction
        writes = [i for i, s in enumerate(statements)
                  if s.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE"))]
        assert all(begins[0] < i < ends[0] for i in writes), statements


def _errors(location: DatabaseLocation) -> tuple[type[BaseException], ...]:
    """The driver's error classes of ``location``'s backend."""
    return backend_for(location).driver_errors


def _integrity(location: DatabaseLocation) -> tuple[type[BaseException], ...]:
    return backend_for(location).integrity_errors


def _instruments_moved() -> int:
    return int(sql("SELECT count(*) FROM instruments WHERE location = 'Moved'")[0][0])


def _instrument_count() -> int:
    return int(sql("SELECT count(*) FROM instruments")[0][0])


def _session(identifier: str = "s1") -> Session:
    dt_range = (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11))
    return Session(identifier, Instrument(name=TITAN), dt_range, "alice")


def _add_session(identifier: str) -> None:
    assert insert_logs([log(identifier, "START", "2021-05-01T10:00:00"),
                        log(identifier, "END", "2021-05-01T11:00:00")]) == 2


def _raw_rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM session_log ORDER BY id_session_log").fetchall()


# --- connect(): backend-neutral behaviour -----------------------------------------

def test_connect_commits_on_success(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with connect() as conn:
        assert conn.location.target == nexuslims_database.target
        assert conn.dialect == nexuslims_database.backend
        assert conn.in_transaction
        conn.execute("UPDATE instruments SET location = 'Moved'")
    assert _instruments_moved() == 3


def _move_then_fail(conn: Any) -> None:
    conn.execute("UPDATE instruments SET location = 'Moved'")
    conn.execute("DELETE FROM instruments WHERE instrument_pid = ?", (TITAN,))
    raise RuntimeError("boom")


def _delete_then_violate_foreign_key(conn: Any) -> None:
    conn.execute("UPDATE instruments SET location = 'Moved'")
    conn.execute("DELETE FROM instruments WHERE instrument_pid = ?", (TITAN,))
    conn.execute(
        "INSERT INTO session_log (session_identifier, instrument, event_type) "
        "VALUES ('x', 'No-Such-Instrument', 'START')"
    )


def _move_then_interrupt(conn: Any) -> None:
    conn.execute("UPDATE instruments SET location = 'Moved'")
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "body", [_move_then_fail, _delete_then_violate_foreign_key, _move_then_interrupt]
)
def test_connect_rolls_back_on_error(
    body: Callable[[Any], None],
    nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    error: Any = {
        _move_then_fail: RuntimeError,
        _delete_then_violate_foreign_key: _integrity(nexuslims_database),
        _move_then_interrupt: KeyboardInterrupt,
    }[body]
    trace = Trace()
    with tracing(trace), pytest.raises(error), connect() as conn:
        body(conn)
    assert len(trace.kinds("open")) == 1
    trace.assert_connections_paired()
    assert trace.statements[-1] == "ROLLBACK"
    assert _instruments_moved() == 0
    assert _instrument_count() == 3
    # The next connection works normally.
    with connect() as conn:
        assert conn.scalar("SELECT count(*) FROM instruments") == 3


def test_autocommit_keeps_each_statement(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    def update_then_fail() -> None:
        with connect(begin=None) as conn:
            assert not conn.in_transaction
            conn.execute("UPDATE instruments SET location = 'Moved'")
            raise RuntimeError("after the statement")

    with pytest.raises(RuntimeError):
        update_then_fail()
    assert _instruments_moved() == 3


def test_insert_returns_the_new_ids_as_ints(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert = ("INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
              "record_status) VALUES (?, ?, ?, ?, ?)")
    trace = Trace()
    with tracing(trace), connect(begin="IMMEDIATE") as conn:
        ids = [conn.insert(insert, (f"s{i}", TITAN, "2021-05-01T10:00:00", "START",
                                    "TO_BE_BUILT"), key="id_session_log") for i in range(3)]
    assert [s for s in trace.statements if s.startswith("INSERT")] == [insert] * 3  # once each
    assert all(type(i) is int for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert [(r.id_session_log, r.session_identifier) for r in rows()] == list(
        zip(ids, ["s0", "s1", "s2"]))


@pytest.mark.parametrize("plain", [0, 150], ids=["a few rows", "a bulk of rows"])
def test_insert_rows_stores_any_text_exactly_and_is_traced_as_an_insert(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    plain: int,
) -> None:
    # Text that a bulk path (PostgreSQL's COPY, for many rows) must escape: tabs,
    # newlines, backslashes, the text \N (not NULL), quotes, non-ASCII; and real NULLs.
    awkward = ["tab\there", "two\nlines", "back\\slash", "\\N", "it's \"quoted\"",
               "Zürich µm 電子", "", *(f"user {n}" for n in range(plain))]
    columns = ["session_identifier", "instrument", "timestamp", "event_type", "record_status",
               '"user"']
    batch = [(f"s{n}", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", user)
             for n, user in enumerate([*awkward, None])]
    trace = Trace()
    with tracing(trace), connect(begin="IMMEDIATE") as conn:
        conn.insert_rows("session_log", columns, batch)
        conn.insert_rows("session_log", columns, [])  # nothing to do: no statement
    assert trace.kinds("executemany") == [(
        "executemany", 'INSERT INTO session_log (session_identifier, instrument, timestamp, '
                       'event_type, record_status, "user") VALUES (?, ?, ?, ?, ?, ?)')]
    assert [(r.session_identifier, r.user) for r in rows()] == [(b[0], b[5]) for b in batch]


@pytest.mark.parametrize("good", [1, 150], ids=["a few rows", "a bulk of rows"])
def test_insert_rows_refused_by_the_database_raises_as_an_insert_would(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    good: int,
) -> None:
    columns = ["session_identifier", "instrument", "event_type"]
    batch = [*((f"s{n}", TITAN, "START") for n in range(good)), ("ghost", "GHOST", "START")]
    with pytest.raises(_integrity(nexuslims_database)), connect(begin="IMMEDIATE") as conn:
        conn.insert_rows("session_log", columns, batch)
    with pytest.raises(_integrity(nexuslims_database)), connect(begin="IMMEDIATE") as conn:
        conn.executemany("INSERT INTO session_log (session_identifier, instrument, event_type) "
                         "VALUES (?, ?, ?)", batch)
    assert rows() == []
    insert_logs([log("after", "START", "2021-05-01T10:00:00")])  # the pool's connection works
    assert [r.session_identifier for r in rows()] == ["after"]


def test_fetch_helpers_and_placeholders(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with connect() as conn:
        assert conn.fetchone("SELECT instrument_pid FROM instruments WHERE 1 = 0") is None
        assert conn.scalar("SELECT instrument_pid FROM instruments WHERE 1 = 0") is None
        assert conn.scalar("SELECT count(*) FROM instruments WHERE instrument_pid = ?",
                           (TITAN,)) == 1
        assert conn.scalar("SELECT count(*) FROM instruments WHERE instrument_pid = :pid",
                           {"pid": TITAN}) == 1
        assert conn.fetchall(
            "SELECT instrument_pid FROM instruments WHERE instrument_pid IN (?, ?) "
            "ORDER BY instrument_pid", (TITAN, "nothing")) == [(TITAN,)]
        # Literal '?', ':name' and '%' are text, not placeholders; % is also modulo.
        assert conn.fetchone("SELECT '?', ':pid', 'a%', 7 % 3") == ("?", ":pid", "a%", 1)
        assert conn.scalar("SELECT count(*) FROM instruments WHERE instrument_pid LIKE ?",
                           ("FEI-%",)) == 2
        assert conn.scalar("SELECT count(*) FROM instruments WHERE instrument_pid LIKE 'FEI-%'"
                           ) == 2
        conn.executemany("DELETE FROM instruments WHERE instrument_pid = ?", [])
    assert _instrument_count() == 3


def test_foreign_keys_are_enforced(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with pytest.raises(_integrity(nexuslims_database)), connect() as conn:
        conn.execute("INSERT INTO session_log (session_identifier, instrument, event_type) "
                     "VALUES ('x', 'GHOST', 'START')")
    assert rows() == []


# --- connect(): SQLite specifics ------------------------------------------------------

def test_sqlite_connection_is_closed_after_the_block(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with connect() as conn:
        assert conn.scalar("PRAGMA foreign_keys") == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.raw.execute("SELECT 1")
    with pytest.raises(RuntimeError), connect() as failing:
        raise RuntimeError
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        failing.raw.execute("SELECT 1")


def test_sqlite_foreign_keys_can_be_turned_off(nexuslims_db: Path) -> None:
    with connect(foreign_keys=False) as conn:
        assert conn.scalar("PRAGMA foreign_keys") == 0


def test_connect_never_creates_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(DatabaseNotFoundError, match=r"missing\.sqlite"), connect(missing):
        pass
    assert list(tmp_path.iterdir()) == []
    with connect(missing, create=True) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert missing.is_file()


# --- locks ------------------------------------------------------------------------------

@contextlib.contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """Hold the write lock of ``path`` (from another connection) in the block."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def _assert_locked(path: Path) -> None:
    """Check that no one can take the write lock of ``path`` right now."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    with contextlib.closing(probe), pytest.raises(sqlite3.OperationalError, match="locked"):
        probe.execute("BEGIN IMMEDIATE")


def _busy_timeout_ms() -> tuple[int, float]:
    """SQLite's busy timeout in a (deferred) transaction, and the milliseconds the call took.

    The busy timeout is what is left of the lock timeout when it is set:
    never less than the lock timeout minus the time the call took, however
    busy the machine is.
    """
    began = time.monotonic()
    with connect() as conn:
        busy = int(conn.scalar("PRAGMA busy_timeout"))
    return busy, (time.monotonic() - began) * 1000


def _assert_busy_timeout_is(seconds: float) -> None:
    busy, took_ms = _busy_timeout_ms()
    assert seconds * 1000 - took_ms - 1 <= busy <= seconds * 1000


def test_default_lock_timeout_is_30_seconds(
    nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    assert lock_timeout() == 30
    _assert_busy_timeout_is(30)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("2.5", 2.5), ("60", 60), (" 45 ", 45), ("90m", 5400), ("12h", 43200), ("3d", 259200)],
)
def test_busy_timeout_in_a_transaction_is_the_lock_timeout(
    nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, raw)
    assert lock_timeout() == seconds
    _assert_busy_timeout_is(seconds)


def test_a_very_long_lock_timeout_still_waits(
    nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, "30d")
    assert _busy_timeout_ms()[0] >= 2**31 - 1 - 1000


@pytest.mark.slow
def test_writers_wait_for_a_lock_and_then_succeed(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Far longer than the lock is held (1.5 s): only a writer that never got
    # the lock would run into it, however busy the machine is.
    monkeypatch.setenv(ENV_TIMEOUT, "120")
    _add_session("held-session")
    new_log = SessionLog("new-session", TITAN, "2021-05-01T12:00:00", "START", None)
    released = threading.Event()
    results: dict[str, Any] = {}

    def run(name: str, operation: Callable[[], object]) -> None:
        try:
            # The result, and whether the lock had been released when it returned.
            results[name] = (operation(), released.is_set())
        except BaseException as exc:  # reported by the assertion below
            results[name] = exc

    threads = [
        threading.Thread(target=run, args=("insert_log", new_log.insert_log)),
        threading.Thread(target=run, args=(
            "update_session_status", lambda: _session("held-session")
            .update_session_status("COMPLETED"))),
    ]
    with _write_lock(nexuslims_db):
        _assert_locked(nexuslims_db)
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        released.set()
    for thread in threads:
        thread.join()
    assert results == {"insert_log": (True, True), "update_session_status": (True, True)}
    assert [(r.session_identifier, r.event_type, r.record_status) for r in rows()] == [
        ("held-session", "START", "COMPLETED"),
        ("held-session", "END", "COMPLETED"),
        ("new-session", "START", "TO_BE_BUILT"),
    ]


@pytest.mark.slow
def test_a_writer_gives_up_after_the_lock_timeout_naming_the_file(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _add_session("held-session")
    before = _raw_rows(nexuslims_db)
    # A relative path in the variable: the message still names the absolute one.
    monkeypatch.chdir(nexuslims_db.parent)
    monkeypatch.setenv("nexusLIMS_db_path", nexuslims_db.name)
    new_log = SessionLog("new-session", TITAN, "2021-05-01T12:00:00", "START", None)
    with _write_lock(nexuslims_db):
        monkeypatch.setenv(ENV_TIMEOUT, "1")
        with pytest.raises(sqlite3.OperationalError) as info:
            new_log.insert_log()
        monkeypatch.setenv(ENV_TIMEOUT, "0.2")
        with pytest.raises(sqlite3.OperationalError) as info_status:
            _session("held-session").update_session_status("COMPLETED")
    for error in (info.value, info_status.value):
        message = str(error)
        assert "database is locked" in message
        assert str(nexuslims_db) in message
        assert ENV_TIMEOUT in message
    assert _raw_rows(nexuslims_db) == before


_CHILD = textwrap.dedent("""
    from nexusLIMS.db.logs import SessionLog, insert_logs

    print("ready", flush=True)
    insert_logs([SessionLog("child", "FEI-Titan-TEM-635816", "2021-05-01T12:00:00",
                            "START", None)])
    print("written", flush=True)
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX only")
def test_ctrl_c_while_waiting_for_a_lock_interrupts_at_once(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _add_session("held-session")
    before = _raw_rows(nexuslims_db)
    # The child would wait a day for the lock: only the Ctrl-C can end its
    # wait, so the bound on communicate() below only catches a hang.
    monkeypatch.setenv(ENV_TIMEOUT, "1d")
    with _write_lock(nexuslims_db):
        child = subprocess.Popen(
            with_ctrl_c([sys.executable, "-c", _CHILD]), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            time.sleep(0.5)  # now waiting for the lock
            assert child.poll() is None
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode != 0
    assert "KeyboardInterrupt" in err
    assert "written" not in out
    assert _raw_rows(nexuslims_db) == before


# --- error messages that name the file --------------------------------------------------

READS: dict[str, Callable[[], object]] = {
    "make_db_query": lambda: make_db_query("SELECT count(*) FROM session_log"),
    "get_sessions_to_build": get_sessions_to_build,
    "instrument_db": lambda: len(instrument_db),
    "insert_logs": lambda: insert_logs([log("new", "START", "2021-05-01T12:00:00")]),
}


def _point_relative(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("nexusLIMS_db_path", path.name)


@pytest.mark.parametrize("call", READS.values(), ids=READS.keys())
def test_a_file_that_is_not_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]
) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("These are my notes, not a database.\n" * 200)
    content = path.read_bytes()
    _point_relative(monkeypatch, path)
    with pytest.raises(sqlite3.DatabaseError) as info:
        call()
    assert type(info.value) is sqlite3.DatabaseError
    assert "file is not a database" in str(info.value)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]


@pytest.fixture
def damaged_db(nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]) -> Path:
    """A database whose pages after the first (the schema's) are overwritten."""
    insert_logs([log(f"s{i}", "START", "2021-05-01T10:00:00", user="u" * 40)
                 for i in range(1000)])
    data = bytearray(nexuslims_db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 10 * page
    data[page:] = b"\xff" * (len(data) - page)
    nexuslims_db.write_bytes(bytes(data))
    return nexuslims_db


@pytest.mark.parametrize("call", READS.values(), ids=READS.keys())
def test_a_damaged_database(
    damaged_db: Path, monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]
) -> None:
    content = damaged_db.read_bytes()
    _point_relative(monkeypatch, damaged_db)
    with pytest.raises(sqlite3.DatabaseError) as info:
        call()
    assert isinstance(info.value, sqlite3.DatabaseError)
    assert "malformed" in str(info.value)
    assert str(damaged_db) in str(info.value)
    assert damaged_db.read_bytes() == content


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make ``path`` read-only, even for root (who ignores permission bits)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True,
                                        check=False).returncode != 0:
        pytest.skip("running as root, which ignores permissions, and chattr +i is unavailable")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_a_read_only_database(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _add_session("earlier")
    before = _raw_rows(nexuslims_db)
    _point_relative(monkeypatch, nexuslims_db)
    with _read_only(nexuslims_db):
        assert make_db_query("SELECT count(*) FROM session_log") == [(2,)]  # reads work
        with pytest.raises(sqlite3.OperationalError) as info:
            insert_logs([log("new", "START", "2021-05-01T12:00:00")])
        assert type(info.value) is sqlite3.OperationalError
        assert "read-only" in str(info.value) or "readonly" in str(info.value)
        assert str(nexuslims_db) in str(info.value)
        with pytest.raises(sqlite3.OperationalError, match="read"):
            set_session_status("earlier", "COMPLETED")
    assert _raw_rows(nexuslims_db) == before


# --- tracing: every connection closed, one transaction per write -------------------------

def _start_session() -> None:
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    SessionLog("s1", TITAN, "2021-05-01T11:00:00", "END", None).insert_log()


CALLS: dict[str, Callable[[], Any]] = {
    "make_db_query": lambda: make_db_query("SELECT * FROM instruments"),
    "make_db_query missing table": lambda: make_db_query("SELECT * FROM nowhere"),
    "db_query": lambda: db_query("SELECT ?", (1,)),
    "db_query foreign key": lambda: db_query(
        "INSERT INTO session_log (session_identifier, instrument, event_type) "
        "VALUES ('x', 'No-Such-Instrument', 'START')"
    ),
    "insert_log": _start_session,
    "insert_log unknown instrument": lambda: SessionLog(
        "s1", "No-Such-Instrument", "2021-05-01T10:00:00", "START", None
    ).insert_log(),
    "insert_log bad timestamp": lambda: SessionLog(
        "s1", TITAN, "yesterday", "START", None).insert_log(),
    "get_sessions_to_build": get_sessions_to_build,
    "get_sessions_to_build error": lambda: (
        SessionLog("lone", TITAN, "2021-05-01T10:00:00", "START", None).insert_log(),
        get_sessions_to_build()),
    "instrument_db": lambda: instrument_db[TITAN],
    "instrument_db missing": lambda: instrument_db["GHOST"],
    "update_session_status": lambda: _session().update_session_status("ERROR"),
    "update_session_status invalid status": lambda: _session().update_session_status("BOGUS"),
    "insert_record_generation_event": lambda: (
        _start_session(), _session().insert_record_generation_event()),
    "insert_record_generation_event no logs": lambda: (
        _session("nothing").insert_record_generation_event()),
    "remove_instrument unknown": lambda: remove_instrument("GHOST"),
}


REFUSED_BEFORE_CONNECTING = {"update_session_status invalid status", "insert_log bad timestamp"}


@pytest.mark.parametrize("name", CALLS)
def test_every_connection_is_closed(
    name: str,
    nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    trace = Trace()
    with tracing(trace), contextlib.suppress(ValueError, KeyError, *_errors(nexuslims_database)):
        CALLS[name]()
    if name not in REFUSED_BEFORE_CONNECTING:
        assert trace.kinds("open")
    trace.assert_connections_paired()


def test_an_invalid_status_is_refused_before_connecting(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    trace = Trace()
    with tracing(trace), pytest.raises(ValueError, match="BOGUS"):
        set_session_status("s1", "BOGUS")
    assert trace.events == []


def test_a_bad_lock_timeout_leaves_no_connection_open(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, "abc")
    trace = Trace()
    with tracing(trace), pytest.raises(Exception, match=ENV_TIMEOUT):
        make_db_query("SELECT 1")
    trace.assert_connections_paired()


WRITES: dict[str, Callable[[], object]] = {
    "insert_logs": lambda: insert_logs([log("w", "START", "2021-05-01T10:00:00"),
                                        log("w", "END", "2021-05-01T11:00:00")]),
    "insert_log": lambda: log("w", "START", "2021-05-01T10:00:00").insert_log(),
    "insert_log revision": lambda: log("s0", "END", "2021-05-01T11:30:00").insert_log(),
    "set_session_status": lambda: set_session_status("s0", "COMPLETED"),
    "update_session_status": lambda: _session("s0").update_session_status("ERROR"),
    "insert_record_generation_event": lambda: _session("s0").insert_record_generation_event(),
    "log_start": lambda: log_start(TITAN, "w", "alice", "2021-05-01T10:00:00"),
    "log_end": lambda: log_end(TITAN, "waiting", "alice", "2021-05-01T11:00:00"),
    "add_instrument": lambda: add_instrument(Instrument(
        name="NEW-PID", api_url="https://nemo.example.org/api/tools/?id=99",
        calendar_name="new", calendar_url="https://nemo.example.org/calendar/99/",
        location="B1", schema_name="New", property_tag="000099", filestore_path="./new",
        timezone="America/New_York")),
    "edit_instrument": lambda: edit_instrument(TITAN, {"location": "Moved"}),
    "remove_instrument": lambda: remove_instrument(JEOL),
}


@pytest.fixture
def some_logs(nexuslims_instruments: dict[str, Instrument]) -> None:
    """A finished session s0 and a session 'waiting' that has only begun."""
    insert_logs([log("s0", "START", "2021-05-01T10:00:00"),
                 log("s0", "END", "2021-05-01T11:00:00"),
                 log("waiting", "START", "2021-05-01T10:00:00", status="WAITING_FOR_END")])


#: Writes that read nothing another writer could change before they write:
#: PostgreSQL runs them without the writers' lock (SQLite has one writer anyway).
UNSERIALIZED = {"set_session_status", "update_session_status", "insert_record_generation_event",
                "insert_record_generation_event without logs"}


def _begin(name: str, database: DatabaseLocation) -> str:
    return "BEGIN" if database.backend == "postgresql" and name in UNSERIALIZED \
        else "BEGIN IMMEDIATE"


@pytest.mark.parametrize(("name", "write"), WRITES.items(), ids=WRITES.keys())
def test_a_write_is_one_immediate_transaction(
    name: str,
    write: Callable[[], object],
    nexuslims_database: DatabaseLocation,
    some_logs: None,
) -> None:
    before = sql("SELECT * FROM instruments ORDER BY instrument_pid"), rows()
    trace = Trace()
    with tracing(trace):
        write()
    trace.assert_one_write_transaction("COMMIT", _begin(name, nexuslims_database))
    after = sql("SELECT * FROM instruments ORDER BY instrument_pid"), rows()
    assert after != before
    if name == "insert_log revision":  # revised in place: the attempt inserted nothing
        assert len(after[1]) == len(before[1])


FAILED_WRITES: dict[str, tuple[Callable[[], object], str]] = {
    "insert_logs unknown instrument": (
        lambda: insert_logs([log("w", "START", "2021-05-01T10:00:00"),
                             log("w", "END", "2021-05-01T11:00:00", instrument="GHOST")]),
        "GHOST"),
    "insert_logs bad timestamp": (
        lambda: insert_logs([log("w", "START", "2021-05-01T10:00:00"),
                             log("w", "END", "tomorrow")]), "tomorrow"),
    "insert_record_generation_event without logs": (
        lambda: _session("nothing").insert_record_generation_event(require_logs=True),
        "nothing"),
    "log_start twice": (lambda: log_start(TITAN, "waiting", "alice", "2021-05-01T12:00:00"),
                        "already has a START"),
    "log_end without start": (lambda: log_end(TITAN, "nothing", "alice", "2021-05-01T11:00:00"),
                              "nothing"),
    "add_instrument existing": (lambda: add_instrument(sample_instruments()[0]),
                                "already exists"),
    "edit_instrument unknown": (lambda: edit_instrument("GHOST", {"location": "x"}), "GHOST"),
    "remove_instrument with logs": (lambda: remove_instrument(TITAN), "session log"),
}


@pytest.mark.parametrize(("name", "case"), FAILED_WRITES.items(), ids=FAILED_WRITES.keys())
def test_a_failed_write_is_rolled_back(
    name: str,
    case: tuple[Callable[[], object], str],
    nexuslims_database: DatabaseLocation,
    some_logs: None,
) -> None:
    write, message = case
    before = sql("SELECT * FROM instruments ORDER BY instrument_pid"), rows()
    trace = Trace()
    with tracing(trace), pytest.raises(ValueError, match=message):
        write()
    trace.assert_one_write_transaction("ROLLBACK", _begin(name, nexuslims_database))
    assert (sql("SELECT * FROM instruments ORDER BY instrument_pid"), rows()) == before


def test_a_write_refused_by_the_database_is_rolled_back(
    nexuslims_db: Path, some_logs: None
) -> None:
    with contextlib.closing(sqlite3.connect(nexuslims_db)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON session_log "
            "WHEN NEW.session_identifier = 'refused' BEGIN SELECT RAISE(ABORT, 'no'); END")
    before = _raw_rows(nexuslims_db)
    trace = Trace()
    with tracing(trace), pytest.raises(sqlite3.IntegrityError, match="no"):
        insert_logs([log("fine", "START", "2021-05-01T10:00:00"),
                     log("refused", "START", "2021-05-01T10:00:00")])
    trace.assert_one_write_transaction("ROLLBACK")
    assert _raw_rows(nexuslims_db) == before


def test_tracing_sees_only_its_block(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    outer, inner, own = Trace(), Trace(), Trace()
    with tracing(outer) as given:
        assert given is outer
        with tracing(inner):
            make_db_query("SELECT 1")
        with connect(trace=own) as conn:
            conn.execute("SELECT 2")
    make_db_query("SELECT 3")
    described = nexuslims_database.describe()
    assert inner.events[0] == ("open", described)
    assert inner.events[-1] == ("close", described)
    assert any("SELECT 1" in s for s in inner.statements)
    assert not any("SELECT 2" in s for s in inner.statements)
    assert own.events == [("open", described), ("execute", "BEGIN DEFERRED"),
                          ("execute", "SELECT 2"), ("execute", "COMMIT"), ("close", described)]
    assert any("SELECT 1" in s for s in outer.statements)
    assert "SELECT 2" in outer.statements
    assert not any("SELECT 3" in s for s in outer.statements)
    outer.assert_connections_paired()


# --- only the backends open connections (ruff's TID251) -----------------------------------

def _ruff() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed")
    return [found]


def test_only_the_backends_call_the_drivers_connect() -> None:
    result = subprocess.run([*_ruff(), "check", "--no-cache", "--select", "TID251", "nexusLIMS"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


BAD_SNIPPET = """\
import sqlite3
import sqlite3 as lite
from sqlite3 import connect as open_db

import psycopg

sqlite3.connect("a.db")
lite.connect("b.db")
open_db("c.db")
psycopg.connect("postgresql://localhost/nexus")
"""

PROSE_SNIPPET = '''\
"""Never call sqlite3.connect or psycopg.connect here."""

# sqlite3.connect("x") would be wrong
TEXT = "sqlite3.connect"
'''


def test_ruff_flags_direct_connect_calls(tmp_path: Path) -> None:
    bad, prose = tmp_path / "bad.py", tmp_path / "prose.py"
    bad.write_text(BAD_SNIPPET)
    prose.write_text(PROSE_SNIPPET)
    command = [*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
               "--select", "TID251", "--output-format", "concise"]
    flagged = subprocess.run([*command, str(bad)], cwd=ROOT, capture_output=True, text=True,
                             check=False)
    assert flagged.returncode == 1, flagged.stdout + flagged.stderr
    lines = [line for line in flagged.stdout.splitlines() if "TID251" in line]
    assert len(lines) >= 4, flagged.stdout
    for line_number in (3, 7, 8, 10):
        assert any(f"bad.py:{line_number}:" in line for line in lines), flagged.stdout
    clean = subprocess.run([*command, str(prose)], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_tracing_one_database_sees_only_that_database(tmp_path: Path) -> None:
    first, second = init_db(tmp_path / "first.sqlite"), init_db(tmp_path / "second.sqlite")
    mine = Trace()
    with tracing(mine, database=first.path):
        make_db_query_on(first, "SELECT 'first'")
        make_db_query_on(second, "SELECT 'second'")
    make_db_query_on(first, "SELECT 'after'")
    assert "SELECT 'first'" in mine.statements
    assert not any("second" in s or "after" in s for s in mine.statements)
    assert mine.kinds("open") == [("open", first.describe())]


def make_db_query_on(location: DatabaseLocation, query: str) -> None:
    with connect(location) as conn:
        conn.execute(query)


# --- retrying a call whose connection was lost ------------------------------------------


@pytest.mark.parametrize("timeout", ["0.01", "0.06", "0.3"])
def test_a_write_that_may_have_landed_is_never_sent_again_unread(
    timeout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attempt after the first follows a read of what the one before did, however the
    pauses fall against the deadline; in the end, the connection's error."""
    monkeypatch.setenv(ENV_TIMEOUT, timeout)
    events: list[str] = []

    def write() -> None:
        events.append("write")
        raise DatabaseUnavailableError("the answer was lost", sent=True)

    def settle() -> None:
        events.append("settle")

    with pytest.raises(DatabaseUnavailableError, match="the answer was lost"):
        retrying(write, resend=False, settle=settle)
    assert events[0] == "write"
    assert events == ["write", *["settle", "write"] * ((len(events) - 1) // 2)]
