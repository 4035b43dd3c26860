"""Tracing: every connection opened and statement run, shown to callbacks.

The process-wide tracers live here; :func:`nexusLIMS.db.connection.tracing`
adds one for its block (for every database, or for one: each
:class:`~nexusLIMS.db.databases.Database` keeps its own too). It is how the
tests (and a curious admin) see the SQL and the transactions of any call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, Optional

__all__ = ["Tracer", "active_tracers", "traced"]

#: A callback given ``(event, text)``: ``("open", location)``,
#: ``("execute", sql)``, ``("executemany", sql)`` or ``("close", location)``.
Tracer = Callable[[str, str], None]

_tracers: list[Tracer] = []
_lock = threading.Lock()


@contextmanager
def traced(tracer: Tracer, tracers: Optional[list[Tracer]] = None) -> Iterator[Tracer]:
    """Add ``tracer`` to ``tracers`` (by default the process-wide ones) for this block."""
    chosen = _tracers if tracers is None else tracers
    with _lock:
        chosen.append(tracer)
    try:
        yield tracer
    finally:
        with _lock:
            chosen.remove(tracer)


def active_tracers(*more: list[Tracer]) -> list[Tracer]:
    """Return the process-wide tracers and those of ``more`` lists, as they are now (a copy)."""
    with _lock:
        return [*_tracers, *(tracer for tracers in more for tracer in tracers)]
