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
import shlex
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any, Callable, Hashable, Optional, Sequence, TypeVar, Union
from urllib.parse import quote as quote_url

from nexusLIMS.db import timestamps
from nexusLIMS.db.backends.base import (
    Pool,
    Result,
    insert_statement,
    translated,
    writes_to_parent,
)
from nexusLIMS.db.backends.ddl import CLOCK_FUNCTION, SQLITE_DDL, Dialect
from nexusLIMS.db.config import ENV_TIMEOUT, DatabaseLocation, lock_timeout
from nexusLIMS.db.config import Backend as BackendName
from nexusLIMS.db.errors import (
    ConstraintError,
    ConstraintKind,
    DatabaseDamagedError,
    DatabaseLockedError,
    MigrationError,
    NexusLIMSDBError,
)
from nexusLIMS.db.tables import KEEP_LOGS_MESSAGE, KEEPS_LOGS_SINCE, Table, quoted_columns

__all__ = ["SQLITE", "sqlite_uri"]

logger = logging.getLogger(__name__)

#: How long SQLite's own busy handler may wait: not at all, until a transaction
#: holds the writers' lock (see _retry_busy); then only readers are waited for.
BUSY_SLICE = 0.0
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0005, 0.01
_MAX_MS = 2**31 - 1  # the largest wait SQLite takes, in milliseconds
_IN_LIST = 500  # values per IN list, below the oldest SQLite limit of 999 parameters
T = TypeVar("T")

# SQLite's primary result codes (the low byte of an extended code).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26
# Extended codes of SQLITE_CONSTRAINT (19).
_CONSTRAINTS = {
    275: ConstraintKind.CHECK, 787: ConstraintKind.FOREIGN_KEY, 1299: ConstraintKind.NOT_NULL,
    1555: ConstraintKind.UNIQUE, 2067: ConstraintKind.UNIQUE, 2579: ConstraintKind.UNIQUE,
}
# Python before 3.11 gives no result code: the message's words, SQLite's own (English).
_CODE_WORDS = (
    ("database is locked", _BUSY), ("database table is locked", _LOCKED),
    ("file is not a database", _NOTADB), ("malformed", _CORRUPT),
    ("unable to open database file", _CANTOPEN), ("readonly database", _READONLY),
    ("disk is full", _FULL), ("disk I/O error", _IOERR),
)
_CONSTRAINT_WORDS = (
    ("FOREIGN KEY constraint failed", 787), ("CHECK constraint failed", 275),
    ("NOT NULL constraint failed", 1299), ("UNIQUE constraint failed", 2067),
)


class _ConstraintError(ConstraintError, sqlite3.IntegrityError):
    """A constraint SQLite enforces was broken (also a ``sqlite3.IntegrityError``)."""


class _LockedError(DatabaseLockedError, sqlite3.OperationalError):
    """Another program held the file's lock too long (also a ``sqlite3.OperationalError``)."""


class _DamagedError(DatabaseDamagedError, sqlite3.DatabaseError):
    """SQLite found the file damaged (also a ``sqlite3.DatabaseError``, as 1.4 raised)."""


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
    return prefix + quote_url(posix, safe="/:")


def _code(exc: sqlite3.Error) -> int:
    """Return SQLite's extended result code of ``exc`` (from its words before Python 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code)
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return next((number for words, number in _CONSTRAINT_WORDS if words in text), 19)
    return next((number for words, number in _CODE_WORDS if words in text), 1)


def _is_busy(exc: sqlite3.Error) -> bool:
    return _code(exc) & 0xFF in (_BUSY, _LOCKED)


def _retry_busy(run: Callable[[], T], timeout: Union[float, Callable[[], float]]) -> T:
    """Call ``run`` until it is not refused for a lock, for at most ``timeout`` s.

    The waits are short and grow (0.5 ms to 10 ms, jittered): writers hold
    the lock for about a millisecond, and SQLite's own busy handler would
    sleep up to 100 ms at a time. The sleeps are in Python, where a Ctrl-C
    is raised at once. A callable ``timeout`` is asked only if ``run`` is
    refused (the environment is not read for a call that needs no wait).
    """
    started = time.monotonic()
    deadline: Optional[float] = None
    pause = _FIRST_PAUSE
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if deadline is None:
                deadline = started + (timeout() if callable(timeout) else timeout)
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, _LONGEST_PAUSE)


def _open(path: Path, *, create: bool, same_thread: bool = True) -> sqlite3.Connection:
    # mode=rw makes SQLite itself refuse to create the file, even if it was
    # removed after the location was resolved; only init_db uses rwc.
    uri = f"{sqlite_uri(path)}?mode={'rwc' if create else 'rw'}"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_SLICE, isolation_level=None,
                           check_same_thread=same_thread)


def _builders_clock(seconds: float) -> str:
    """SQLite's clock in SQL (``Dialect.clock``): the builder's own, ``seconds`` from now.

    Read through :func:`~nexusLIMS.db.timestamps.utc_now` at every call, so a
    test can set a builder's clock in the process.
    """
    return timestamps.utc_text(timestamps.utc_now() + timedelta(seconds=seconds))


def _new_file(path: Path, like: Optional[Path] = None) -> None:
    """Create the empty file ``path``, which must not exist, for SQLite to fill.

    Its mode is ``0666`` less the umask (SQLite's own would be ``0644``
    whatever the umask allows), and for a copy of the file ``like`` no more
    than ``like``'s: a backup of a private database is private too. SQLite
    gives its journal the same mode.
    """
    mode = 0o666 if like is None else stat.S_IMODE(like.stat().st_mode) & 0o666
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     mode))


def _main_file(raw: sqlite3.Connection) -> Optional[Path]:
    """Return the file of the open database (None for one in memory)."""
    for _, name, file in raw.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return Path(file) if file else None
    return None  # pragma: no cover - every connection has a main database


def _checked(raw: sqlite3.Connection, pragma: str) -> tuple[list[str], bool]:
    """Return the problems ``PRAGMA <pragma>`` (an integrity check) reports, and whether it stopped.

    It stops early on a page too damaged to read; its error is then the last problem.
    """
    problems: list[str] = []
    stopped = False
    # Rows that break a CHECK (1.4's lacks statuses it wrote) are not damage:
    # migrating refuses them, naming their values.
    raw.execute("PRAGMA ignore_check_constraints = ON")
    try:
        # Some versions put several problems in one row, under a heading.
        for (text,) in _retry_busy(lambda: raw.execute(f"PRAGMA {pragma}"), lock_timeout):
            problems += [line.strip() for line in str(text).splitlines()
                         if line.strip() and not line.startswith("*** ")]
    except sqlite3.DatabaseError as exc:
        if _code(exc) & 0xFF not in (_CORRUPT, _NOTADB):
            raise
        problems.append(str(exc))
        stopped = True
    finally:
        raw.execute("PRAGMA ignore_check_constraints = OFF")
    return ([] if problems == ["ok"] else problems), stopped


def _rows(raw: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(_retry_busy(lambda: raw.execute(sql, params).fetchall(), lock_timeout))


class _Files:
    """Connections to one file: a new one for every transaction (opening one is cheap)."""

    def __init__(self, location: DatabaseLocation) -> None:
        self.path = location.path

    def take(self, *, create: bool, foreign_keys: bool) -> Any:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with suppress(FileExistsError):
                _new_file(self.path)
        raw = _open(self.path, create=create)
        try:
            raw.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            # REPLACE's implicit deletes fire delete triggers only with this on.
            raw.execute("PRAGMA recursive_triggers = ON")
            raw.create_function(CLOCK_FUNCTION, 1, _builders_clock)
        except BaseException:
            raw.close()
            raise
        return raw

    def give(self, raw: Any) -> None:
        raw.close()

    def close(self) -> None:
        """Nothing is kept."""

    def stats(self) -> dict[str, int]:
        return {}


class _SQLite:
    """The SQLite backend (see :class:`~nexusLIMS.db.backends.Backend`)."""

    name: BackendName = "sqlite"
    ddl: Dialect = SQLITE_DDL
    driver_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    #: A write transaction already keeps every other writer out.
    lock_rows = ""
    #: One writer at a time: a claim reads and writes in a write transaction.
    skip_locked = ""
    ordered_reads: tuple[str, ...] = ()
    pairs_through_index = True
    is_file = True

    # --- connections -----------------------------------------------------------

    def pool(self, location: DatabaseLocation) -> Pool:
        return _Files(location)

    def open_watch(self, location: DatabaseLocation) -> Any:
        # Never writes, but may have to roll back a crashed writer's journal.
        return _open(location.path, create=False, same_thread=False)

    def data_version(self, raw: Any) -> Optional[int]:
        # SQLite's own change counter: it moves when any other connection commits.
        return int(_retry_busy(lambda: raw.execute("PRAGMA data_version").fetchone()[0],
                               lock_timeout))

    def begin(self, raw: Any, mode: str, timeout: float) -> str:
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

    def execute(self, raw: Any, sql: str, params: Any, timeout: float) -> Any:
        if raw.in_transaction:
            return raw.execute(sql, params)
        return _retry_busy(lambda: raw.execute(sql, params), timeout)

    def queue(self, raw: Any, sql: str, params: Any, many: bool) -> None:
        if many:
            raw.executemany(sql, params)
        else:
            self.execute(raw, sql, params, lock_timeout())

    def write_alone(
        self, raw: Any, sql: str, params: Any, mode: str, timeout: float
    ) -> tuple[str, int]:
        began, ((_, count),) = self.write_batch(raw, [(sql, params)], mode, timeout)
        return began, count

    def write_batch(
        self, raw: Any, statements: Sequence[tuple[Any, ...]], mode: str, timeout: float
    ) -> tuple[str, list[Result]]:
        began = self.begin(raw, mode, timeout)
        results: list[Result] = []
        for sql, params, *key in statements:
            cursor = raw.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else None
            if key:  # the id of the one row inserted
                rows = [(cursor.lastrowid,)] if cursor.rowcount == 1 else []
            results.append((rows, int(cursor.rowcount)))
        raw.execute("COMMIT")
        return began, results

    def read_batch(
        self, raw: Any, statements: Sequence[tuple[str, Any]], timeout: float
    ) -> tuple[list[str], list[list[tuple[Any, ...]]]]:
        if len(statements) == 1 or raw.in_transaction:
            return [], [list(self.execute(raw, sql, params, timeout).fetchall())
                        for sql, params in statements]
        began = self.begin(raw, "DEFERRED", timeout)  # one snapshot for them all
        try:
            rows = [list(raw.execute(sql, params).fetchall()) for sql, params in statements]
        finally:
            raw.execute("COMMIT")
        return [began, "COMMIT"], rows

    def executemany(self, raw: Any, sql: str, rows: Sequence[Any]) -> None:
        raw.executemany(sql, rows)

    def insert_rows(
        self, raw: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        raw.executemany(insert_statement(table, columns), rows)

    def insert_id(self, raw: Any, sql: str, params: Any, key: str, timeout: float) -> int:
        cursor = self.execute(raw, sql, params, timeout)
        assert cursor.lastrowid is not None  # an INSERT of one row always sets it
        return int(cursor.lastrowid)

    def in_values(self, column: str, values: Sequence[Any]) -> list[tuple[str, Sequence[Any]]]:
        chunks = [values[first:first + _IN_LIST] for first in range(0, len(values), _IN_LIST)]
        return [(f"{column} IN ({', '.join('?' * len(chunk))})", chunk) for chunk in chunks]

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.in_transaction)

    def commit(self, raw: Any) -> None:
        raw.execute("COMMIT")

    def rollback(self, raw: Any) -> None:
        raw.execute("ROLLBACK")

    def translate(
        self, exc: BaseException, location: DatabaseLocation, statement: str = ""
    ) -> Optional[BaseException]:
        if isinstance(exc, NexusLIMSDBError) or not isinstance(exc, sqlite3.Error):
            return None
        code = _code(exc)
        text = str(exc)
        where = location.describe()
        better: sqlite3.Error
        if isinstance(exc, sqlite3.IntegrityError):
            kind = _CONSTRAINTS.get(code, ConstraintKind.OTHER)
            if text == KEEP_LOGS_MESSAGE or (kind is ConstraintKind.FOREIGN_KEY
                                             and writes_to_parent(statement)):
                kind = ConstraintKind.RESTRICT  # an instrument with logs, deleted or replaced
            better = _ConstraintError(text).classified(kind)
        elif code & 0xFF in (_BUSY, _LOCKED):
            better = _LockedError(
                f"database is locked: another program kept {where} locked for longer than "
                f"{ENV_TIMEOUT} ({lock_timeout():g} s); try again, or raise {ENV_TIMEOUT}")
        # A file that cannot be used: the driver's own class (as NexusLIMS 1.4
        # raised), in words that name the file and what to do.
        elif code & 0xFF == _NOTADB:
            better = type(exc)(f"{where} is not a SQLite database (file is not a database)")
        elif code & 0xFF == _CORRUPT:
            better = _DamagedError(f"{where} is damaged: {text}; {self.damage_advice(location)}",
                                   [text])
        elif code & 0xFF == _CANTOPEN:
            better = type(exc)(
                f"cannot open {where}: {text} (check the file and its folder's permissions)")
        elif code & 0xFF == _READONLY:
            better = type(exc)(f"{where} is read-only: {text}")
        elif code & 0xFF in (_FULL, _IOERR):
            better = type(exc)(f"{where}: {text}")
        else:
            return None
        for attribute in ("sqlite_errorcode", "sqlite_errorname"):
            if hasattr(exc, attribute):
                setattr(better, attribute, getattr(exc, attribute))
        return better

    def from_sqlite_sql(self, sql: str) -> str:
        return sql

    # --- the catalogue ---------------------------------------------------------

    def table_names(self, raw: Any) -> set[str]:
        return {name for (name,) in _rows(
            raw, "SELECT name FROM sqlite_master WHERE type = 'table'")}

    def column_names(self, raw: Any, table: str) -> list[str]:
        return [name for (name,) in _rows(
            raw, "SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,))]

    def index_names(self, raw: Any, table: str) -> set[str]:
        return {name for name, _ in self._indexes(raw, table)}

    def _indexes(self, raw: Any, table: str) -> list[tuple[str, str]]:
        """Return ``(name, sql)`` of the indexes made for ``table`` (not its constraints')."""
        return [(name, sql) for name, sql in _rows(
            raw, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                 "AND sql IS NOT NULL", (table,))]

    def on_delete_action(self, raw: Any, table: str, column: str) -> Optional[str]:
        found = _rows(raw, 'SELECT on_delete FROM pragma_foreign_key_list(?) WHERE "from" = ?',
                      (table, column))
        return str(found[0][0]).upper() if found else None

    def id_counter(self, raw: Any, table: str, column: str) -> Optional[int]:
        if "sqlite_sequence" not in self.table_names(raw):
            return None
        found = _rows(raw, "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return int(found[0][0]) if found and found[0][0] is not None else None

    def set_id_counter(self, raw: Any, table: str, column: str, value: int) -> None:
        # AUTOINCREMENT keeps its counter in sqlite_sequence (made with the table).
        if raw.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?",
                       (int(value), table)).rowcount == 0:
            raw.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                        (table, int(value)))

    def schema_version(self, raw: Any) -> int:
        return int(_rows(raw, "PRAGMA user_version")[0][0])

    def set_schema_version(self, raw: Any, version: int) -> None:
        raw.execute(f"PRAGMA user_version = {int(version)}")

    def size(self, raw: Any, location: DatabaseLocation) -> Optional[int]:
        return location.path.stat().st_size

    def server_version(self, raw: Any) -> str:
        return f"SQLite {sqlite3.sqlite_version} (a library: no server)"

    # --- migration mechanics -----------------------------------------------------

    def guard_old_schema(self, raw: Any, version: int) -> None:
        if version < KEEPS_LOGS_SINCE:
            raw.execute(SQLITE_DDL.keep_logs_trigger(temporary=True))

    def blockers(self, raw: Any, table: str) -> list[str]:
        return [f"{kind} {name}" for kind, name in _rows(
            raw, "SELECT type, name FROM sqlite_master WHERE (type = 'trigger' AND tbl_name = ?) "
                 "OR (type = 'view' AND sql LIKE ?)", (table, f"%{table}%"))]

    def apply_constraints(self, raw: Any, table: Table, known_indexes: set[str]) -> None:
        # SQLite cannot change a constraint: the rows move into a new table.
        old = f"_{table.name}_before_migration"
        key = table.columns[0].name
        rows = int(_rows(raw, f"SELECT count(*) FROM {table.name}")[0][0])
        sequence = self.id_counter(raw, table.name, key)
        own_indexes = [sql for name, sql in self._indexes(raw, table.name)
                       if name not in known_indexes]
        columns = ", ".join(quoted_columns(table))
        raw.execute(f"ALTER TABLE {table.name} RENAME TO {old}")
        raw.execute(SQLITE_DDL.table_statement(table))
        raw.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {old} "
                    f"ORDER BY {key}")
        raw.execute(f"DROP TABLE {old}")
        # Keep the AUTOINCREMENT counter, which may exceed the largest id.
        if sequence is not None and sequence > (self.id_counter(raw, table.name, key) or 0):
            self.set_id_counter(raw, table.name, key, sequence)
        for sql in own_indexes:
            raw.execute(sql)
        after = int(_rows(raw, f"SELECT count(*) FROM {table.name}")[0][0])
        if after != rows:
            raise MigrationError(f"Rebuilt {table.name} has {after} rows, not {rows}")

    def restrict_deletes(self, raw: Any) -> None:
        raw.execute(SQLITE_DDL.keep_logs_trigger())

    def backup(self, raw: Any, target: Path) -> Optional[Path]:
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
        leftovers = (partial, partial.with_name(partial.name + "-journal"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        try:
            _new_file(partial, like=_main_file(raw))
            destination = _open(partial, create=False)
            try:
                raw.backup(destination)
            finally:
                destination.close()
            os.replace(partial, target)
        except BaseException:
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
            raise
        logger.info("Backed up the database to %s", target)
        return target

    def compact(self, location: DatabaseLocation) -> bool:
        raw = _open(location.path, create=False)
        try:
            with translated(self, location):
                _retry_busy(lambda: raw.execute("VACUUM"), lock_timeout)
        finally:
            raw.close()
        return True

    def removed_if_failed(self, location: DatabaseLocation) -> AbstractContextManager[None]:
        return _removed_if_failed(location.path)

    def staged(self, location: DatabaseLocation,
               like: Optional[Path]) -> AbstractContextManager[DatabaseLocation]:
        return _staged(location, like)

    # --- integrity and identity ----------------------------------------------------

    def integrity_problems(self, raw: Any, *, full: bool) -> list[str]:
        # quick_check reads every page and checks the b-trees' structure;
        # integrity_check also checks that every index matches its table.
        if not full:
            return _checked(raw, "quick_check")[0]
        problems, stopped = _checked(raw, "integrity_check")
        if stopped and len(problems) == 1:  # it stopped at once: quick_check may say where
            return _checked(raw, "quick_check")[0] or problems
        return problems

    def damage_advice(self, location: DatabaseLocation) -> str:
        path = location.path
        return (f"restore it from a backup (such as a {path.name}.bak-* file that "
                f"'nexuslims-db migrate' made beside it), or recover what can be read into a "
                f"new file: sqlite3 {shlex.quote(str(path))} .recover | sqlite3 "
                f"{shlex.quote(str(path.with_name(path.stem + '-recovered.sqlite')))}")

    def identity(self, raw: Any, location: DatabaseLocation) -> Hashable:
        # The file itself, whatever name (symbolic or hard link, relative path) it is reached by.
        found = os.stat(location.path)
        return found.st_dev, found.st_ino


@contextmanager
def _removed_if_failed(path: Path) -> Iterator[None]:
    """Remove the file the block creates (and its journal) if the block fails.

    A failed ``init`` or ``copy`` must not leave a file behind that later
    commands would take for a database.
    """
    new_file = not path.exists()
    try:
        yield
    except BaseException:
        if new_file:
            for leftover in (path, path.with_name(path.name + "-journal")):
                leftover.unlink(missing_ok=True)
        raise


@contextmanager
def _staged(location: DatabaseLocation, like: Optional[Path]) -> Iterator[DatabaseLocation]:
    """Yield where to write a whole copy of a database that goes to ``location``.

    An existing file is written in place (in one transaction: a failure or a
    kill leaves it as it was). A new one is written as ``<file>.partial``
    beside it, no more readable than ``like``, and renamed to ``<file>`` only
    when the block succeeds: a failure or a kill at any moment leaves no
    ``<file>``. A ``.partial`` left by a killed copy is removed first, unless
    another copy is still writing it.
    """
    path = location.path
    if path.exists():
        yield location
        return
    partial = path.with_name(f"{path.name}.partial")
    leftovers = (partial, partial.with_name(partial.name + "-journal"))
    _remove_interrupted_copy(path, partial, leftovers)
    path.parent.mkdir(parents=True, exist_ok=True)
    _new_file(partial, like)
    try:
        yield DatabaseLocation("sqlite", str(partial), location.source)
        if path.exists():
            raise FileExistsError(f"{path} was created by another program during the copy; "
                                  f"it was left as it is, and nothing was copied")
        os.replace(partial, path)
    except BaseException:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        raise


def _remove_interrupted_copy(path: Path, partial: Path, leftovers: Sequence[Path]) -> None:
    """Remove what a killed copy to ``path`` left; refuse if a copy is writing it now."""
    if not any(leftover.exists() for leftover in leftovers):
        return
    if partial.exists():
        probe = _open(partial, create=False)
        try:  # a copy that runs holds the file's writers' lock
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise _LockedError(
                    f"another copy to {path} is running (it writes {partial}); wait for it to "
                    f"end") from None
        finally:
            probe.close()
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    logger.warning("Removed %s, left by a copy to %s that was interrupted", partial, path)


#: The SQLite backend.
SQLITE = _SQLite()
