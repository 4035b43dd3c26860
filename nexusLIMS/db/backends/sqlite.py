"""The SQLite backend: one file, opened so that it is never created by accident.

Lock waits are cut into short slices so that Ctrl-C is noticed while waiting
for another writer: SQLite's own busy handler sleeps in C, where Python
cannot deliver a KeyboardInterrupt. Inside a transaction (whose writers'
lock is already held) statements wait in C, for the few readers only.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar
from urllib.parse import quote

from nexusLIMS.db.backends import insert_statement
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout
from nexusLIMS.db.config import Backend as BackendName

if TYPE_CHECKING:  # pragma: no cover
    from nexusLIMS.db.connection import Connection

__all__ = ["SQLITE", "backup_file", "sqlite_uri"]

logger = logging.getLogger(__name__)

#: How long SQLite's own busy handler may wait: not at all, until a transaction
#: holds the writers' lock (see _retry_busy); then only readers are waited for.
BUSY_SLICE = 0.0
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0005, 0.01
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_MAX_MS = 2**31 - 1  # the largest wait SQLite takes, in milliseconds
_IN_LIST = 500  # values per IN list, below the oldest SQLite limit of 999 parameters
T = TypeVar("T")


def sqlite_uri(path: PurePath) -> str:
    """Return the SQLite ``file:`` URI of an absolute path (query string not included).

    Unlike :meth:`pathlib.Path.as_uri`, a Windows UNC path (a share on a file
    server) gives an empty authority, ``file:////server/share/...``, which
    SQLite accepts; ``?``, ``#`` and ``%`` in names are percent-encoded.
    """
    posix = path.as_posix()
    if not posix.startswith("/"):  # a drive path: C:/data -> /C:/data
        posix = "/" + posix
    prefix = "file://" if posix.startswith("//") else "file:"
    return prefix + quote(posix, safe="/:")


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def _retry_busy(run: Callable[[], T], timeout: float) -> T:
    """Call ``run`` until it is not refused for a lock, for at most ``timeout`` s.

    The waits are short and grow (0.5 ms to 10 ms, jittered): writers hold
    the lock for about a millisecond, and SQLite's own busy handler would
    sleep up to 100 ms at a time. The sleeps are in Python, where a Ctrl-C
    is raised at once.
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, _LONGEST_PAUSE)


def _open(path: Path, *, create: bool) -> sqlite3.Connection:
    # mode=rw makes SQLite itself refuse to create the file, even if it was
    # removed after the location was resolved; only init_db uses rwc.
    uri = f"{sqlite_uri(path)}?mode={'rwc' if create else 'rw'}"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_SLICE, isolation_level=None)


class _SQLite:
    """The SQLite backend (see :class:`~nexusLIMS.db.backends.Backend`)."""

    name: BackendName = "sqlite"
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    #: What locks the rows a SELECT reads until the transaction ends (SQLite: its
    #: write transaction already keeps every other writer out).
    lock_rows = ""
    driver_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def open(self, location: DatabaseLocation, *, create: bool, foreign_keys: bool) -> Any:
        path = location.path
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        raw = _open(path, create=create)
        try:
            raw.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            # REPLACE's implicit deletes fire delete triggers only with this on.
            raw.execute("PRAGMA recursive_triggers = ON")
        except BaseException:
            raw.close()
            raise
        return raw

    def release(self, location: DatabaseLocation, raw: Any) -> None:
        raw.close()

    def open_watch(self, location: DatabaseLocation) -> Any:
        # Never writes, but may have to roll back a crashed writer's journal.
        uri = f"{sqlite_uri(location.path)}?mode=rw"
        return sqlite3.connect(uri, uri=True, timeout=BUSY_SLICE, isolation_level=None,
                               check_same_thread=False)

    def data_version(self, raw: Any) -> Optional[int]:
        # SQLite's own change counter: it moves when any other connection commits.
        return int(_retry_busy(lambda: raw.execute("PRAGMA data_version").fetchone()[0],
                               lock_timeout()))

    def begin(self, conn: Connection, mode: str, timeout: float) -> str:
        raw: sqlite3.Connection = conn.raw
        # A write must hold the write lock from the start: a reader that later
        # wants to write can deadlock against another writer.
        statement = "BEGIN DEFERRED" if mode == "DEFERRED" else "BEGIN IMMEDIATE"
        started = time.monotonic()
        _retry_busy(lambda: raw.execute(statement), timeout)
        # The writers' lock is held (or not needed): from now on only readers
        # can make a statement wait, briefly, so SQLite may wait in C.
        remaining = max(timeout - (time.monotonic() - started), 0.1)
        raw.execute(f"PRAGMA busy_timeout = {min(int(remaining * 1000), _MAX_MS)}")
        return statement

    def execute(self, conn: Connection, sql: str, params: Any, timeout: float) -> Any:
        raw: sqlite3.Connection = conn.raw
        if raw.in_transaction:
            return raw.execute(sql, params)
        return _retry_busy(lambda: raw.execute(sql, params), timeout)

    def write_alone(
        self, conn: Connection, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        began = self.begin(conn, mode, timeout)
        count = conn.raw.execute(sql, params).rowcount
        conn.raw.execute("COMMIT")
        return began, int(count)

    def executemany(self, conn: Connection, sql: str, rows: Sequence[Any]) -> None:
        conn.raw.executemany(sql, rows)

    def insert_rows(
        self, conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        conn.raw.executemany(insert_statement(table, columns), rows)

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        chunks = [values[first:first + _IN_LIST] for first in range(0, len(values), _IN_LIST)]
        return [(f"{column} IN ({', '.join('?' * len(chunk))})", chunk) for chunk in chunks]

    def insert_id(self, conn: Connection, sql: str, params: Any, key: str, timeout: float) -> int:
        cursor = self.execute(conn, sql, params, timeout)
        assert cursor.lastrowid is not None  # an INSERT of one row always sets it
        return int(cursor.lastrowid)

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.in_transaction)

    def explain(self, exc: BaseException, location: DatabaseLocation) -> Optional[BaseException]:
        if not isinstance(exc, sqlite3.Error):
            return None
        text = str(exc)
        where = location.describe()
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            message = (
                f"database is locked: another program kept {where} locked for longer than "
                f"{ENV_TIMEOUT} ({lock_timeout():g} s); try again, or raise {ENV_TIMEOUT}"
            )
        elif "file is not a database" in text:
            message = f"{where} is not a SQLite database (file is not a database)"
        elif "malformed" in text:
            message = f"{where} is damaged ({text}); restore it from a backup"
        elif "unable to open database file" in text:
            message = f"cannot open {where}: {text} (check the file and its folder's permissions)"
        elif "readonly database" in text:
            message = f"{where} is read-only: {text}"
        elif "disk is full" in text or "disk I/O error" in text:
            message = f"{where}: {text}"
        else:
            return None
        better = type(exc)(message)
        for attribute in ("sqlite_errorcode", "sqlite_errorname"):
            if hasattr(exc, attribute):
                setattr(better, attribute, getattr(exc, attribute))
        return better

    def table_names(self, conn: Connection) -> set[str]:
        return {name for (name,) in conn.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}

    def column_names(self, conn: Connection, table: str) -> list[str]:
        return [name for (name,) in conn.fetchall(
            "SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,))]

    def index_names(self, conn: Connection, table: str) -> set[str]:
        return {name for (name,) in conn.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL", (table,))}

    def on_delete_action(self, conn: Connection, table: str, column: str) -> Optional[str]:
        row = conn.fetchone(
            'SELECT on_delete FROM pragma_foreign_key_list(?) WHERE "from" = ?', (table, column))
        return None if row is None else str(row[0]).upper()

    def id_counter(self, conn: Connection, table: str, column: str) -> Optional[int]:
        if "sqlite_sequence" not in self.table_names(conn):
            return None
        value = conn.scalar("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return None if value is None else int(value)

    def set_id_counter(self, conn: Connection, table: str, column: str, value: int) -> None:
        # AUTOINCREMENT keeps its counter in sqlite_sequence (made with the table).
        if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?",
                        (int(value), table)).rowcount == 0:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                         (table, int(value)))

    def schema_version(self, conn: Connection) -> int:
        return int(conn.scalar("PRAGMA user_version"))

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version)}")


#: The SQLite backend.
SQLITE = _SQLite()


def backup_file(conn: Connection, target: Path) -> Path:
    """Copy the open database to ``target`` with SQLite's online backup API.

    The copy is written under a temporary name beside ``target`` and renamed
    only once complete, so ``target`` is either a whole backup or absent; on
    failure nothing is left behind. The copy is consistent even while other
    programs write to the database.

    Raises
    ------
    FileExistsError
        ``target`` already exists (a backup never overwrites anything).
    """
    if target.exists():
        raise FileExistsError(f"Backup target {str(target)!r} already exists")
    partial = target.with_name(f"{target.name}.partial")
    for leftover in (partial, partial.with_name(partial.name + "-journal")):
        leftover.unlink(missing_ok=True)
    try:
        destination = _open(partial, create=True)
        try:
            conn.raw.backup(destination)
        finally:
            destination.close()
        os.replace(partial, target)
    except BaseException:
        for leftover in (partial, partial.with_name(partial.name + "-journal")):
            leftover.unlink(missing_ok=True)
        raise
    logger.info("Backed up the database to %s", target)
    return target
