"""Tracing: every connection opened and statement run, shown to callbacks.

:func:`tracing` is how the tests (and a curious admin) see the SQL and the
transactions of any call. A tracer sees every database the process uses
while its block runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

__all__ = ["Tracer", "active_tracers", "emit", "tracing"]

#: A callback given ``(event, text)``: ``("open", location)``,
#: ``("execute", sql)``, ``("executemany", sql)`` or ``("close", location)``.
Tracer = Callable[[str, str], None]

_tracers: list[Tracer] = []
_lock = threading.Lock()


@contextmanager
def tracing(tracer: Tracer) -> Iterator[Tracer]:
    """Show every connection opened and statement run, in this block, to ``tracer``.

    Transactions show as SQLite begins them: ``BEGIN IMMEDIATE`` holds the
    writers' lock (on PostgreSQL, an advisory lock), ``BEGIN``/``BEGIN
    DEFERRED`` does not.

    Yields
    ------
    Tracer
        ``tracer`` itself.
    """
    with _lock:
        _tracers.append(tracer)
    try:
        yield tracer
    finally:
        with _lock:
            _tracers.remove(tracer)


def active_tracers() -> list[Tracer]:
    """Return the tracers of the blocks running now (a copy)."""
    with _lock:
        return list(_tracers)


def emit(event: str, text: str) -> None:
    """Show one event to every active tracer."""
    for tracer in active_tracers():
        tracer(event, text)
