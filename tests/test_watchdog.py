"""The watchdog that bounds every wait for a server costs no thread switch per round trip.

Every round trip arms it (issue 18.3); a claim or an outcome is one round
trip of several statements, each a wait psycopg makes (issue 19.4: eight
builders on two cores spent a quarter of their time waking its thread).
Its thread is woken only when a wait's deadline comes before the one it
sleeps until; it still ends a wait that outlives its deadline.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytestmark = pytest.mark.extra("postgres")


class _Cut:
    """A stand-in for a connection: notes that the watchdog cut it."""

    def __init__(self) -> None:
        self.cut_event = threading.Event()

    def cut(self) -> None:
        self.cut_event.set()


def _counting(watchdog: Any) -> list[int]:
    """Count the notifications the watchdog's thread gets."""
    notified = [0]
    original = watchdog._cond.notify

    def notify(n: int = 1) -> None:
        notified[0] += 1
        original(n)

    watchdog._cond.notify = notify
    return notified


def test_round_trips_do_not_wake_the_watchdogs_thread() -> None:
    from nexusLIMS.db.backends.pg_connections import _Watchdog

    watchdog = _Watchdog()
    notified = _counting(watchdog)
    conn = _Cut()
    for _ in range(1000):  # waits with the same bound, each over before the next
        watchdog.disarm(watchdog.arm(conn, 3600))  # type: ignore[arg-type]
    assert notified[0] <= 2  # the first wait, and one after the thread found none left
    assert not conn.cut_event.is_set()


def test_a_wait_that_outlives_its_deadline_is_still_cut() -> None:
    from nexusLIMS.db.backends.pg_connections import _Watchdog

    watchdog = _Watchdog()
    notified = _counting(watchdog)
    idle = _Cut()
    long_wait = watchdog.arm(idle, 3600)  # the thread sleeps towards an hour from now...
    deadline = watchdog._deadlines[long_wait][0]
    settled = threading.Event()
    for _ in range(6000):  # (bounded only to catch a hang)
        with watchdog._cond:
            if watchdog._wake_at == deadline:
                settled.set()
                break
        settled.wait(0.01)
    assert settled.is_set()
    stalled = _Cut()
    watchdog.arm(stalled, 0.01)  # ... and is woken for this one, which comes first
    assert notified[0] == 2
    assert stalled.cut_event.wait(timeout=60)  # bounded only to catch a hang
    assert not idle.cut_event.is_set()
