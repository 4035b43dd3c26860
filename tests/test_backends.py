"""nexusLIMS.db.backends: what differs between SQLite and PostgreSQL.

The PostgreSQL backend: placeholders rewritten for psycopg, clear errors for
a server that cannot be reached (never showing the password, never creating
anything), the connection pool, and lock waits bounded by
nexusLIMS_db_timeout as on SQLite.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from helpers import log, psycopg, rows, sql

from nexusLIMS.db import (
    DatabaseUnavailableError,
    NexusLIMSDBError,
    init_db,
    make_db_query,
)
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import connect, tracing
from nexusLIMS.db.errors import ConstraintError
from nexusLIMS.db.instruments import Instrument, load_instruments
from nexusLIMS.db.logs import insert_logs

try:  # the postgres extra: without it, conftest.py skips the tests that need it
    from nexusLIMS.db.backends.postgresql import WRITERS_LOCK, native_sql
except ImportError:
    WRITERS_LOCK = native_sql = None
from nexusLIMS.db.databases import close_pools

ENV_TIMEOUT = "nexusLIMS_db_timeout"
PASSWORD = "s3cr3t-Pa55"


# --- native_sql: ? and :name for psycopg ------------------------------------------

@pytest.mark.parametrize(
    ("sql_text", "native"),
    [
        ("SELECT ?", "SELECT %s"),
        ("INSERT INTO t (a, b) VALUES (?,?)", "INSERT INTO t (a, b) VALUES (%s,%s)"),
        ("SELECT * FROM t WHERE a = ? AND b IN (?, ?)",
         "SELECT * FROM t WHERE a = %s AND b IN (%s, %s)"),
        ("SELECT * FROM t WHERE a = :name", "SELECT * FROM t WHERE a = %(name)s"),
        ("SELECT :a, :b_2, :a", "SELECT %(a)s, %(b_2)s, %(a)s"),
        # Inside literals and quoted names, ? and :x are text.
        ("SELECT '?', ':x', 'a ? b :y'", "SELECT '?', ':x', 'a ? b :y'"),
        ("SELECT 'it''s ?' , ?", "SELECT 'it''s ?' , %s"),
        ('SELECT "odd?name", "col:x" FROM t', 'SELECT "odd?name", "col:x" FROM t'),
        # PostgreSQL's casts are not placeholders.
        ("SELECT x::text, (?)::integer, :a::text FROM t",
         "SELECT x::text, (%s)::integer, %(a)s::text FROM t"),
        pytest.param("SELECT ?::integer", "SELECT %s::integer"),
        pytest.param("SELECT ?||?", "SELECT %s||%s"),
        ("SELECT ? || ?, ? & 1", "SELECT %s || %s, %s & 1"),
        ("SELECT $$a?b%$$, ?", "SELECT $$a?b%%$$, %s"),
        # Every other % is doubled, as psycopg requires.
        ("SELECT * FROM t WHERE a LIKE 'a%'", "SELECT * FROM t WHERE a LIKE 'a%%'"),
        ("SELECT 7 % 3", "SELECT 7 %% 3"),
        ("SELECT a%b FROM t", "SELECT a%%b FROM t"),
        ("SELECT '100%', ? % 2", "SELECT '100%%', %s %% 2"),
        ('SELECT "50%" FROM t', 'SELECT "50%%" FROM t'),
        ("SELECT 1 -- 100% sure?\n, ?", "SELECT 1 -- 100%% sure?\n, %s"),
        ("SELECT '%s', '%(x)s'", "SELECT '%%s', '%%(x)s'"),
        ("SELECT 1", "SELECT 1"),
        ("", ""),
    ],
)
@pytest.mark.extra("postgres")
def test_native_sql(sql_text: str, native: str) -> None:
    assert native_sql(sql_text) == native


def test_native_sql_runs_on_the_server(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with connect() as conn:
        assert conn.fetchone("SELECT '?', ':x', 'a%', 7 % 3, ? || '%'", ("p",)) == (
            "?", ":x", "a%", 1, "p%")
        assert conn.fetchone("SELECT :v::text, '%' || :v::text", {"v": "named"}) == (
            "named", "%named")
        assert conn.scalar(
            "SELECT count(*) FROM instruments WHERE instrument_pid LIKE 'FEI-%' "
            "AND instrument_pid <> ?", ("?",)) == 2


def test_a_commit_after_a_failed_statement_raises_and_writes_nothing(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    """On PostgreSQL a failed statement ends its transaction: a block that caught the
    error and went on is told at its end, instead of its COMMIT rolling back in silence."""
    insert = ("INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
              "record_status) VALUES (?, ?, '2021-05-01T10:00:00', 'START', 'TO_BE_BUILT')")
    def carry_on_after_an_error() -> None:
        with connect(begin="WRITE") as conn:
            conn.execute(insert, ("kept?", "FEI-Titan-TEM-635816"))
            with pytest.raises(ConstraintError):
                conn.execute(insert, ("bad", "no-such-instrument"))

    with pytest.raises(psycopg.errors.InFailedSqlTransaction, match="not committed"):
        carry_on_after_an_error()
    assert rows() == []


def test_session_limits_hold_after_a_first_call_that_failed(
    nexuslims_postgres_db: DatabaseLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's settings go with a new connection's first statements; when those fail,
    the settings are undone with them, and sent again with the next call."""
    close_pools()  # a new connection
    monkeypatch.setenv(ENV_TIMEOUT, "7")
    with pytest.raises(psycopg.errors.DivisionByZero), connect(begin=None) as conn:
        conn.execute("SELECT 1 / 0")  # fails on the server, with the SETs sent before it
    assert make_db_query("SELECT current_setting('statement_timeout'), "
                         "current_setting('idle_in_transaction_session_timeout')") == \
        [("9s", "7s")]


# --- a server that cannot be used ---------------------------------------------------

def _url(server: str, *, user: str = "postgres", port: int | None = None,
         database: str = "postgres", query: str = "") -> str:
    parts = urlsplit(server)
    host = f"{parts.hostname}:{port or parts.port}"
    return urlunsplit((parts.scheme, f"{user}:{PASSWORD}@{host}", f"/{database}", query, ""))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_rows(server: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(server, autocommit=True) as admin:
        return list(admin.execute(query, params).fetchall())


ENTRY_POINTS: dict[str, Callable[[str], object]] = {
    "connect": lambda url: connect(url).__enter__(),
    "init_db": init_db,
    "insert_logs": lambda url: insert_logs([log("s", "START", "2021-05-01T10:00:00")], url),
    "load_instruments": load_instruments,
}


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
@pytest.mark.parametrize("case", ["closed port", "missing database", "wrong user"])
def test_an_unusable_server_is_a_clear_error_without_the_password(
    nexuslims_postgres_server: str, entry: Callable[[str], object], case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A closed port may be a server restarting: tried again within the timeout.
    monkeypatch.setenv(ENV_TIMEOUT, "1")
    name = f"nexuslims_missing_{uuid.uuid4().hex[:8]}"
    port = urlsplit(nexuslims_postgres_server).port
    url = {
        "closed port": _url(nexuslims_postgres_server, port=_closed_port(), database="nexus"),
        "missing database": _url(nexuslims_postgres_server, database=name,
                                 query=f"password={PASSWORD}&application_name=x"),
        "wrong user": _url(nexuslims_postgres_server, user=name),
    }[case]
    trace: list[tuple[str, str]] = []
    with tracing(lambda *event: trace.append(event)), \
            pytest.raises(DatabaseUnavailableError) as info:
        entry(url)
    message = str(info.value)
    assert PASSWORD not in message
    assert PASSWORD not in repr(info.value)
    assert "127.0.0.1" in message
    if case == "closed port":
        assert "'nexus'" in message
        assert str(port) not in message
    elif case == "missing database":
        assert repr(name) in message
        assert f":{port}" in message
    else:
        assert "'postgres'" in message
        assert name in message
    assert info.value.__cause__ is None or PASSWORD not in str(info.value.__cause__)
    assert trace == []  # no connection was opened
    # Nothing was created: no database, no role.
    assert _server_rows(nexuslims_postgres_server,
                        "SELECT datname FROM pg_database WHERE datname = %s", (name,)) == []
    assert _server_rows(nexuslims_postgres_server,
                        "SELECT rolname FROM pg_roles WHERE rolname = %s", (name,)) == []


def test_an_unusable_server_named_by_the_environment(
    nexuslims_postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("nexusLIMS_db_path", _url(nexuslims_postgres_server, database="nowhere"))
    with pytest.raises(DatabaseUnavailableError, match="'nowhere'") as info:
        make_db_query("SELECT 1")
    assert PASSWORD not in str(info.value)
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize("query", ["bogus_option=1", "password"])
def test_a_malformed_server_url_is_a_clear_error(
    nexuslims_postgres_server: str, query: str
) -> None:
    url = _url(nexuslims_postgres_server, query=query)
    with pytest.raises(NexusLIMSDBError) as info:
        init_db(url)
    assert PASSWORD not in str(info.value)
    assert "'postgres'" in str(info.value)


def test_the_postgres_scheme_works_too(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    url = nexuslims_postgres_db.target.replace("postgresql://", "postgres://", 1)
    assert url.startswith("postgres://")
    assert sorted(load_instruments(url)) == sorted(nexuslims_instruments)


# --- the pool ------------------------------------------------------------------------

def _backend_pid() -> int:
    with connect() as conn:
        return int(conn.scalar("SELECT pg_backend_pid()"))


def _server_pids(server: str) -> set[int]:
    return {pid for (pid,) in _server_rows(
        server, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid()")}


def _eventually(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` becomes true (the server ends closed sessions asynchronously).

    It usually takes milliseconds; the 60 s bound only catches a session that
    is never closed, however busy the machine is.
    """
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _gone(server: str, pids: set[int]) -> bool:
    return _eventually(lambda: not pids & _server_pids(server))


def test_the_pool_reuses_connections_and_close_pools_closes_them(
    nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    nexuslims_postgres_server: str,
) -> None:
    trace: list[tuple[str, str]] = []
    with tracing(lambda *event: trace.append(event)):
        pids = {_backend_pid() for _ in range(10)}
        for i in range(10):
            insert_logs([log(f"s{i}", "START", "2021-05-01T10:00:00")])
    calls = [e for e, text in trace if not text.endswith("(change watch)")]
    assert calls.count("open") == 20
    assert calls.count("close") == 20
    assert len(pids) == 1  # one after another: always the same server connection
    server_connections = _server_pids(nexuslims_postgres_server)
    assert pids <= server_connections
    assert len(server_connections) <= 4
    close_pools()
    assert _gone(nexuslims_postgres_server, pids)
    # The next call opens a new connection.
    assert _backend_pid() not in pids
    assert len(rows()) == 10


def test_concurrent_connections_are_pooled_up_to_a_limit(
    nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    nexuslims_postgres_server: str,
) -> None:
    close_pools()
    barrier = threading.Barrier(8)
    pids: list[int] = []

    def hold() -> None:
        with connect() as conn:
            pids.append(int(conn.scalar("SELECT pg_backend_pid()")))
            barrier.wait(timeout=60)  # only to catch a hang

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == 8  # all at once: 8 server connections
    # Once released, at most 4 stay open for reuse; the others are closed.
    assert _eventually(lambda: len(set(pids) & _server_pids(nexuslims_postgres_server)) <= 4)
    kept = set(pids) & _server_pids(nexuslims_postgres_server)
    assert kept
    assert _backend_pid() in kept
    close_pools()
    assert _gone(nexuslims_postgres_server, kept)


def _raise(error: BaseException) -> Callable[[Any], None]:
    def body(conn: Any) -> None:
        conn.execute("UPDATE instruments SET location = 'Moved'")
        raise error
    return body


def _bad_sql(conn: Any) -> None:
    conn.execute("UPDATE instruments SET location = 'Moved'")
    conn.execute("SELECT * FROM no_such_table")


def _violate(conn: Any) -> None:
    conn.execute("UPDATE instruments SET location = 'Moved'")
    conn.execute("INSERT INTO session_log (session_identifier, instrument, event_type) "
                 "VALUES ('x', 'GHOST', 'START')")


@pytest.mark.parametrize(
    "body", [_raise(RuntimeError("boom")), _raise(KeyboardInterrupt()), _bad_sql, _violate],
    ids=["exception", "KeyboardInterrupt", "bad SQL", "foreign key"],
)
@pytest.mark.parametrize("begin", ["DEFERRED", "IMMEDIATE"])
def test_a_failed_transaction_leaves_a_usable_pool(
    nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    nexuslims_postgres_server: str,
    body: Callable[[Any], None],
    begin: str,
) -> None:
    close_pools()
    first = _backend_pid()  # now idle in the pool
    used: list[int] = []

    def fail() -> None:
        with connect(begin=begin) as conn:
            used.append(int(conn.scalar("SELECT pg_backend_pid()")))
            body(conn)

    with pytest.raises((RuntimeError, KeyboardInterrupt, psycopg.Error)):
        fail()
    assert used == [first]  # the pooled connection was the one that failed
    # Rolled back, and the next calls work (on a healthy connection).
    with connect() as conn:
        assert conn.scalar("SELECT count(*) FROM instruments WHERE location = 'Moved'") == 0
    # No session still holds the writers' lock.
    assert _server_rows(nexuslims_postgres_server,
                        "SELECT pg_try_advisory_lock(%s), pg_advisory_unlock(%s)",
                        (WRITERS_LOCK, WRITERS_LOCK)) == [(True, True)]
    assert insert_logs([log("after", "START", "2021-05-01T10:00:00")]) == 1
    assert [r.session_identifier for r in rows()] == ["after"]


def test_a_failed_autocommit_statement_leaves_a_usable_pool(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with pytest.raises(psycopg.Error):
        make_db_query("SELECT * FROM no_such_table")
    assert make_db_query("SELECT count(*) FROM instruments") == [(3,)]


def test_a_transaction_left_open_in_autocommit_mode_is_committed(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with connect(begin=None) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE instruments SET location = 'Moved'")
    assert sql("SELECT count(*) FROM instruments WHERE location = 'Moved'") == [(3,)]
    assert make_db_query("SELECT count(*) FROM instruments") == [(3,)]


def test_a_pooled_connection_closed_by_the_server_is_replaced(
    nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    nexuslims_postgres_server: str,
) -> None:
    pid = _backend_pid()
    _server_rows(nexuslims_postgres_server, "SELECT pg_terminate_backend(%s)", (pid,))
    assert _gone(nexuslims_postgres_server, {pid})
    assert make_db_query("SELECT count(*) FROM instruments") == [(3,)]


# --- lock waits --------------------------------------------------------------------------

class _AdvisoryLock:
    """The writers' lock, held by another session of the server."""

    def __init__(self, server: str) -> None:
        self.conn = psycopg.connect(server, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", (WRITERS_LOCK,))

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (WRITERS_LOCK,))
            self.conn.close()


@pytest.fixture
def writers_lock(nexuslims_postgres_server: str) -> Iterator[_AdvisoryLock]:
    lock = _AdvisoryLock(nexuslims_postgres_server)
    try:
        yield lock
    finally:
        lock.release()


@pytest.mark.slow
def test_a_postgres_writer_gives_up_after_the_lock_timeout(
    nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
    writers_lock: _AdvisoryLock,
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, "0.5")
    with pytest.raises(psycopg.errors.LockNotAvailable) as info:
        insert_logs([log("s", "START", "2021-05-01T10:00:00")])
    message = str(info.value)
    assert "database is locked" in message
    assert ENV_TIMEOUT in message
    assert nexuslims_postgres_db.describe() in message
    writers_lock.release()
    assert rows() == []
    assert insert_logs([log("s", "START", "2021-05-01T10:00:00")]) == 1  # the pool is fine


@pytest.mark.slow
def test_a_zero_lock_timeout_does_not_wait_forever(
    nexuslims_postgres_db: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
    writers_lock: _AdvisoryLock,
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, "0")
    outcome: list[object] = []

    def write() -> None:
        try:
            outcome.append(insert_logs([log("s", "START", "2021-05-01T10:00:00")]))
        except Exception as exc:  # the expected LockNotAvailable
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    # A zero timeout gives up while the lock is still held; the bound only
    # catches a writer that waits for the lock's release (for ever here).
    writer.join(timeout=60)
    waited = writer.is_alive()
    writers_lock.release()
    writer.join()
    assert not waited
    assert isinstance(outcome[0], psycopg.errors.LockNotAvailable)


def test_a_very_long_lock_timeout_works(
    nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, "30d")
    assert insert_logs([log("s", "START", "2021-05-01T10:00:00")]) == 1
    assert [r.session_identifier for r in rows()] == ["s"]



@pytest.mark.parametrize("case", ["closed port", "wrong user", "missing database"])
def test_only_a_server_that_may_come_back_is_asked_again(
    nexuslims_postgres_server: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_TIMEOUT, "1")
    name = f"nexuslims_missing_{uuid.uuid4().hex[:8]}"
    url = {"closed port": _url(nexuslims_postgres_server, port=_closed_port()),
           "wrong user": _url(nexuslims_postgres_server, user=name),
           "missing database": _url(nexuslims_postgres_server, database=name)}[case]
    with pytest.raises(DatabaseUnavailableError) as raised:
        load_instruments(url)
    # A refused login or a missing database is said at once (no login tried again).
    assert raised.value.transient is (case == "closed port")
    assert raised.value.sent is False
