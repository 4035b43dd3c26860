"""The one way to the NexusLIMS database.

Every query of the package goes through :func:`connect`: it resolves the path
from the environment at call time, refuses to create a missing file, turns
foreign keys on, waits for locks, runs one transaction and always closes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Iterator, Literal, Optional, Union
from urllib.parse import quote

from nexusLIMS.db.errors import DatabaseConfigError, DatabaseNotFoundError

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_DB_PATH",
    "ENV_DB_PATH_2X",
    "ENV_TIMEOUT",
    "Begin",
    "backup_database",
    "connect",
    "db_timeout",
    "resolve_db_path",
    "sqlite_uri",
]

logger = logging.getLogger(__name__)

ENV_DB_PATH = "nexusLIMS_db_path"
ENV_DB_PATH_2X = "NX_DB_PATH"
ENV_TIMEOUT = "nexusLIMS_db_timeout"
DEFAULT_TIMEOUT = 30.0

PathLike = Union[str, "os.PathLike[str]"]
Begin = Optional[Literal["DEFERRED", "IMMEDIATE"]]


def resolve_db_path(path: Optional[PathLike] = None, *, must_exist: bool = True) -> Path:
    """Return the database path: ``path`` if given, else from the environment.

    The environment is read at every call: ``nexusLIMS_db_path``, or
    ``NX_DB_PATH`` when the former is unset or empty.

    Parameters
    ----------
    path
        An explicit path, which takes precedence over the environment.
    must_exist
        Raise :class:`DatabaseNotFoundError` when the file does not exist.

    Raises
    ------
    DatabaseConfigError
        Neither an explicit path nor either variable is set.
    DatabaseNotFoundError
        ``must_exist`` and no file exists at the path.
    """
    source = "the path given"
    if path is None or str(path) == "":
        for var in (ENV_DB_PATH, ENV_DB_PATH_2X):
            value = os.environ.get(var)
            if value:
                path, source = value, var
                break
        else:
            raise DatabaseConfigError(
                f"No NexusLIMS database configured: set the environment variable "
                f"{ENV_DB_PATH} (or {ENV_DB_PATH_2X}) to the path of the SQLite file"
            )
    resolved = Path(path)
    if must_exist and not resolved.is_file():
        what = "is not a file" if resolved.exists() else "does not exist"
        raise DatabaseNotFoundError(
            f"NexusLIMS database {str(resolved)!r} (from {source}) {what}; "
            f"no database was created (use init_db or 'nexuslims-db init' to make one)"
        )
    return resolved


def db_timeout() -> float:
    """Return how many seconds a connection waits for a lock.

    ``nexusLIMS_db_timeout`` (seconds) when set, else :data:`DEFAULT_TIMEOUT`.

    Raises
    ------
    DatabaseConfigError
        The variable is set to something that is not a non-negative number.
    """
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise DatabaseConfigError(
            f"{ENV_TIMEOUT} must be a number of seconds (e.g. 30), not {raw!r}"
        )
    return value


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


def _open(path: Path, *, create: bool, foreign_keys: bool = True) -> sqlite3.Connection:
    # mode=rw makes SQLite itself refuse to create the file, even if it was
    # removed after resolve_db_path looked; mode=rwc is used only by init_db.
    mode = "rwc" if create else "rw"
    uri = f"{sqlite_uri(path.absolute())}?mode={mode}"
    conn = sqlite3.connect(uri, uri=True, timeout=db_timeout(), isolation_level=None)
    try:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def connect(
    path: Optional[PathLike] = None,
    *,
    begin: Begin = "DEFERRED",
    create: bool = False,
    foreign_keys: bool = True,
) -> Iterator[sqlite3.Connection]:
    """Open the database, run one transaction, and always close it.

    Parameters
    ----------
    path
        The database file; by default from the environment (see
        :func:`resolve_db_path`).
    begin
        ``"DEFERRED"`` (reads, or one-statement writes), ``"IMMEDIATE"``
        (takes the write lock at once: use it for any read-then-write) or
        ``None`` for autocommit, where each statement is its own transaction
        (what :func:`~nexusLIMS.db.make_db_query` needs to run any statement).
    create
        Allow creating the file (only :func:`~nexusLIMS.db.init_db` does).
    foreign_keys
        Enforce foreign keys (the default). Only a table rebuild that must
        keep rows whose instrument is missing turns this off (see
        :func:`~nexusLIMS.db.migrate_db`); SQLite ignores the setting inside
        a transaction, so it is set here, before ``BEGIN``.

    Yields
    ------
    sqlite3.Connection
        The open connection. The transaction is committed when the block
        ends normally and rolled back when it raises.
    """
    db_path = resolve_db_path(path, must_exist=not create)
    if create:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = _open(db_path, create=create, foreign_keys=foreign_keys)
    try:
        if begin is not None:
            conn.execute(f"BEGIN {begin}")
        yield conn
        if conn.in_transaction:
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    finally:
        conn.close()


def backup_database(path: Optional[PathLike], target: PathLike) -> Path:
    """Copy the database to ``target`` with SQLite's online backup API.

    The copy is consistent even while other processes write to the source.

    Raises
    ------
    FileExistsError
        ``target`` already exists (a backup never overwrites anything).
    """
    target_path = Path(target)
    if target_path.exists():
        raise FileExistsError(f"Backup target {str(target_path)!r} already exists")
    with connect(path, begin=None) as source:
        destination = _open(target_path, create=True)
        try:
            source.backup(destination)
        finally:
            destination.close()
    logger.info("Backed up the database to %s", target_path)
    return target_path
