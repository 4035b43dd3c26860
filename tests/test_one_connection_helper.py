"""Issue 2, point 8: every query goes through ``nexusLIMS.db.connection.connect``."""

from __future__ import annotations

import io
import sqlite3
import tokenize
from contextlib import closing, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

import nexusLIMS
from nexusLIMS.db import make_db_query
from nexusLIMS.db.connection import connect
from nexusLIMS.db.session_handler import (
    Session,
    SessionLog,
    db_query,
    get_sessions_to_build,
)
from nexusLIMS.instruments import Instrument, instrument_db

PACKAGE = Path(nexusLIMS.__file__).parent
TITAN = "FEI-Titan-TEM-635816"


def _connect_calls(source: str) -> int:
    """Count ``sqlite3.connect`` / ``from sqlite3 import connect`` in code (not text)."""
    tokens = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type in (tokenize.NAME, tokenize.OP)
    ]
    count = 0
    for i in range(len(tokens) - 2):
        if tokens[i : i + 3] == ["sqlite3", ".", "connect"]:
            count += 1
        if tokens[i : i + 2] == ["from", "sqlite3"] and "connect" in tokens[i + 2 : i + 12]:
            count += 1
    return count


def test_the_counter_sees_calls_and_ignores_prose() -> None:
    assert _connect_calls("import sqlite3\nsqlite3.connect('x')\n") == 1
    assert _connect_calls("c = sqlite3 . connect\n") == 1
    assert _connect_calls("from sqlite3 import connect as c\n") == 1
    assert _connect_calls('"""Never call sqlite3.connect."""\n# sqlite3.connect\n') == 0


def test_only_connection_py_calls_sqlite3_connect() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "db" / "connection.py" in sources
    callers = {
        path.relative_to(PACKAGE).as_posix()
        for path in sources
        if _connect_calls(path.read_text("utf-8"))
    }
    assert callers == {"db/connection.py"}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Record every connection the package opens."""
    connections: list[sqlite3.Connection] = []
    real = sqlite3.connect

    def spy(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        connections.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", spy)
    return connections


def _is_closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def _start_session() -> None:
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    SessionLog("s1", TITAN, "2021-05-01T11:00:00", "END", None).insert_log()


CALLS: dict[str, Callable[[], Any]] = {
    "make_db_query": lambda: make_db_query("SELECT * FROM instruments"),
    "make_db_query error": lambda: make_db_query("SELECT * FROM nowhere"),
    "db_query": lambda: db_query("SELECT ?", (1,)),
    "db_query error": lambda: db_query(
        "INSERT INTO session_log (session_identifier, instrument, event_type) "
        "VALUES ('x', 'No-Such-Instrument', 'START')"
    ),
    "insert_log": _start_session,
    "insert_log error": lambda: SessionLog(
        "s1", "No-Such-Instrument", "2021-05-01T10:00:00", "START", None
    ).insert_log(),
    "get_sessions_to_build": get_sessions_to_build,
    "instrument_db": lambda: instrument_db[TITAN],
    "update_session_status": lambda: Session(
        "s1", Instrument(name=TITAN), (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11)), None
    ).update_session_status("ERROR"),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_every_connection_is_closed(
    call: Callable[[], Any],
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    opened: list[sqlite3.Connection],
) -> None:
    with suppress(sqlite3.Error, ValueError):
        call()
    assert opened, "the call did not open the database"
    assert all(_is_closed(conn) for conn in opened)


def test_connect_commits_on_success(nexuslims_db: Path, nexuslims_instruments: Any) -> None:
    with connect() as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        conn.execute("UPDATE instruments SET location = 'Moved'")
    assert _is_closed(conn)
    with closing(sqlite3.connect(nexuslims_db)) as check:
        assert check.execute("SELECT DISTINCT location FROM instruments").fetchall() == [
            ("Moved",)
        ]


def _move_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE instruments SET location = 'Moved'")
    conn.execute("DELETE FROM instruments WHERE instrument_pid = ?", (TITAN,))
    raise RuntimeError("boom")


def _delete_then_violate_foreign_key(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM instruments WHERE instrument_pid = ?", (TITAN,))
    conn.execute(
        "INSERT INTO session_log (session_identifier, instrument, event_type) "
        "VALUES ('x', 'No-Such-Instrument', 'START')"
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [(_move_then_fail, RuntimeError), (_delete_then_violate_foreign_key, sqlite3.IntegrityError)],
)
def test_connect_rolls_back_on_error(
    body: Callable[[sqlite3.Connection], None],
    error: type[Exception],
    nexuslims_db: Path,
    nexuslims_instruments: Any,
    opened: list[sqlite3.Connection],
) -> None:
    def run() -> None:
        with connect() as conn:
            body(conn)

    with pytest.raises(error):
        run()
    assert len(opened) == 1
    assert _is_closed(opened[0])
    with closing(sqlite3.connect(nexuslims_db)) as check:
        assert check.execute(
            "SELECT count(*) FROM instruments WHERE location = 'Moved'"
        ).fetchone() == (0,)
        assert check.execute("SELECT count(*) FROM instruments").fetchone() == (3,)
