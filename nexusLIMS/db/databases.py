"""What the package keeps for each database it uses: one :class:`Database` per location.

A :class:`Database` is made on first use of its location and holds
everything kept between calls: its connection pool (a server's connections
are reused; a file's are opened per call), its change watch (a kept
connection that tells whether the database changed since a moment), its
own tracers, and the state the layers above keep for it (the instrument registry, what was
verified of its schema) under names of their own (:meth:`Database.state`).
All are closed at exit, or by :func:`close_databases`.
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict
from typing import Any, Callable, Optional, TypeVar

from nexusLIMS.db.backends import Backend, Pool, backend_for, translated
from nexusLIMS.db.config import DatabaseLocation, configured_database, locate_database
from nexusLIMS.db.trace import Tracer, active_tracers

__all__ = [
    "Database",
    "Version",
    "close_databases",
    "close_pools",
    "close_watches",
    "configured_database_state",
    "database_at",
]

T = TypeVar("T")
#: What :meth:`Database.data_version` returns: equal values mean nothing changed.
Version = tuple[int, int, int]

#: How many change watches stay open at once (one per recently used database).
KEEP_WATCHES = 8
# Locations of the configured variable's recent values, so that a look-up in a
# loop does not resolve the same text again.
_KEEP_NAMES = 64


class Database:
    """One database's pool, change watch and kept state (see :mod:`nexusLIMS.db.databases`)."""

    def __init__(self, location: DatabaseLocation, backend: Backend) -> None:
        self.location = location
        self.backend = backend
        self._lock = threading.RLock()
        self._pool: Optional[Pool] = None
        self._watch: Any = None
        self._watchless = False  # the backend cannot watch this database
        self._generation = 0  # watches opened so far
        self._changes = 0  # changes this process made
        self._state: dict[str, Any] = {}
        #: Tracers of this database alone (see :func:`nexusLIMS.db.connection.tracing`).
        self.tracers: list[Tracer] = []

    def __repr__(self) -> str:
        return f"<Database {self.location.describe()}>"

    # --- connections ---------------------------------------------------------------

    def take(self, *, create: bool = False, foreign_keys: bool = True) -> Any:
        """Return a raw connection (from the pool, or new)."""
        with self._lock:
            if self._pool is None:
                self._pool = self.backend.pool(self.location)
            pool = self._pool
        return pool.take(create=create, foreign_keys=foreign_keys)

    def give(self, raw: Any) -> None:
        """Take back a connection :meth:`take` returned."""
        with self._lock:
            pool = self._pool
        if pool is None:  # closed meanwhile
            raw.close()
        else:
            pool.give(raw)

    def pool_stats(self) -> dict[str, int]:
        """Return figures of the connections the pool keeps (empty: it keeps none)."""
        with self._lock:
            pool = self._pool
        return {} if pool is None else pool.stats()

    def close_pool(self) -> None:
        """Close the pool's kept connections."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # --- the change watch -------------------------------------------------------------

    def data_version(self) -> Optional[Version]:
        """Return a value that changes whenever the database changed; None: cannot tell.

        Another connection's commit changes it (SQLite's change counter, or a
        PostgreSQL server's announcement of a change of ``instruments``), and
        so does :meth:`changed`. The watch is opened on first use and kept
        while the database is among the :data:`KEEP_WATCHES` most recently
        watched; one that broke is opened again (changes meanwhile are assumed).
        """
        with self._lock:
            if self._watchless:
                return None
            opened = self._watch is not None
            if opened:
                version = self._version()
        if not opened:  # opened outside the lock: connecting to a server may take a while
            if not self._open_watch():
                return None
            with self._lock:
                version = self._version()
        if version is None:  # the watch broke: open another next time
            self.close_watch()
            return None
        _watched(self)  # outside this database's lock: it may close another's watch
        return version

    def _version(self) -> Optional[Version]:
        """Ask the watch for the database's change count (under the lock); None: it broke."""
        backend = self.backend
        if self._watch is None:  # closed meanwhile
            return None
        try:  # (asked at every instrument look-up: nothing set up unless it fails)
            counted = backend.data_version(self._watch)
        except BaseException:
            self.close_watch()
            with translated(backend, self.location):
                raise
        return None if counted is None else (self._generation, self._changes, counted)

    def _open_watch(self) -> bool:
        """Open the change watch; return False when this database cannot be watched."""
        with translated(self.backend, self.location):
            watch = self.backend.open_watch(self.location)
        with self._lock:
            if watch is None:
                self._watchless = True
                return False
            spare = None
            if self._watch is None:
                self._watch = watch
                self._generation += 1
            else:  # another thread opened one meanwhile
                spare = watch
        if spare is not None:
            spare.close()
        else:
            self._emit("open")
        return True

    def watch_again(self) -> None:
        """Open a new watch next time, even where none could be opened (the schema changed)."""
        self.close_watch()
        with self._lock:
            self._watchless = False
            self._changes += 1

    def changed(self) -> None:
        """Note that this process changed the database (seen by :meth:`data_version` at once)."""
        with self._lock:
            self._changes += 1

    def close_watch(self) -> None:
        """Close the change watch, if open."""
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
            self._emit("close")

    def _emit(self, event: str) -> None:
        for tracer in active_tracers(self.tracers):
            tracer(event, f"{self.location.describe()} (change watch)")

    # --- state of the layers above -----------------------------------------------------

    def state(self, name: str, make: Callable[[], T]) -> T:
        """Return the state kept under ``name``, made by ``make()`` on first use."""
        with self._lock:
            if name not in self._state:
                self._state[name] = make()
            return self._state[name]  # type: ignore[no-any-return]

    def forget(self, name: str) -> None:
        """Drop the state kept under ``name`` (it is made again when next asked for)."""
        with self._lock:
            self._state.pop(name, None)

    def close(self) -> None:
        """Close the pool and the watch (the kept state stays)."""
        self.close_watch()
        self.close_pool()


_lock = threading.Lock()
_databases: dict[DatabaseLocation, Database] = {}
_watching: OrderedDict[DatabaseLocation, Database] = OrderedDict()
_latest: Optional[Database] = None  # the last of _watching
_names: dict[str, Database] = {}


def database_at(location: DatabaseLocation) -> Database:
    """Return the :class:`Database` of ``location``, made on first use."""
    with _lock:
        found = _databases.get(location)
        if found is None:
            found = _databases[location] = Database(location, backend_for(location))
        return found


def configured_database_state() -> Database:
    """Return the :class:`Database` the environment names at this moment.

    The variable's text is resolved once per value (a file's existence is
    checked then; the change watch notices a file removed later).
    """
    name = configured_database()
    found = _names.get(name) if name else None
    if found is None:
        found = database_at(locate_database())
        if name and len(_names) < _KEEP_NAMES:
            _names[name] = found
    return found


def _watched(db: Database) -> None:
    """Note ``db``'s watch as the most recently used; close the oldest beyond the limit."""
    global _latest
    if _latest is db:  # a look-up in a loop: already the most recent, nothing to do
        return
    with _lock:
        _latest = db
        _watching[db.location] = db
        _watching.move_to_end(db.location)
        evicted = []
        while len(_watching) > KEEP_WATCHES:
            evicted.append(_watching.popitem(last=False)[1])
    for old in evicted:
        old.close_watch()


def _all() -> list[Database]:
    with _lock:
        return list(_databases.values())


def close_watches() -> None:
    """Close every kept change-watch connection (test fixtures call it when done)."""
    global _latest
    with _lock:
        _latest = None
        _watching.clear()
    for db in _all():
        db.close_watch()


def close_pools() -> None:
    """Close every pooled connection (test fixtures call it when done)."""
    for db in _all():
        db.close_pool()


def close_databases() -> None:
    """Close every pool and watch of every database (at exit)."""
    close_watches()
    close_pools()


atexit.register(close_databases)
