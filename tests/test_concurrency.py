"""Issue 3, points 2 and 5: several writer processes at once lose nothing.

Six processes run 30 rounds; in each they leave a barrier together, all
insert that round's log and the one shared log (both with a NULL user) at
once, then 10 distinct logs of their own, one ``insert_log`` at a time:
1,800 distinct logs, 180 racing inserts of the shared log and 180 of the
round logs. 1.4's check-then-insert in two transactions duplicates round logs
under this race, and its ``user = ?`` never matches NULL.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from nexusLIMS.db.connection import ENV_DB_PATH
from nexusLIMS.db.session_log import SessionLog

N_PROCESSES = 6
N_ROUNDS = 30  # all writers meet at a barrier, then race on the same logs
PER_ROUND = 10  # distinct logs each writer inserts per round
N_DISTINCT = N_ROUNDS * PER_ROUND  # distinct logs per process
TITAN = "FEI-Titan-TEM-635816"
SHARED = ("shared-session", TITAN, "2021-05-01T10:00:00.000", "START")


def _distinct_log(writer: int, i: int) -> SessionLog:
    return SessionLog(
        f"writer-{writer}-{i}", TITAN, f"2021-05-01T11:{i // 60:02d}:{i % 60:02d}.000",
        "END", f"user{writer}",
    )


def _round_log(round_: int) -> SessionLog:
    return SessionLog(f"round-{round_}", TITAN, "2021-05-01T12:00:00.000", "START", None)


def _insert(log: SessionLog) -> None:
    if log.insert_log() is not True:
        raise AssertionError(f"insert_log of {log!r} did not return True")


def _writer(path: str, writer: int, barrier: Any, errors: Any) -> None:
    """Insert this writer's logs and the shared ones; report any exception.

    In each round the writers leave a barrier together and at once insert
    that round's log and the shared log, then their own distinct logs.
    """
    os.environ[ENV_DB_PATH] = path
    try:
        shared = SessionLog(*SHARED, user=None)
        for round_ in range(N_ROUNDS):
            barrier.wait(timeout=60)
            _insert(_round_log(round_))
            _insert(shared)
            for i in range(round_ * PER_ROUND, (round_ + 1) * PER_ROUND):
                _insert(_distinct_log(writer, i))
    except BaseException:
        errors.put(f"writer {writer}:\n{traceback.format_exc()}")
        raise


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT session_identifier, instrument, timestamp, event_type, "
            "record_status, user FROM session_log"
        ).fetchall()


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_concurrent_writers_insert_every_log_exactly_once(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Any]
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    errors = ctx.Queue()
    processes = [
        ctx.Process(target=_writer, args=(str(nexuslims_db), writer, barrier, errors))
        for writer in range(N_PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    reports: list[str] = []
    while not errors.empty():
        reports.append(errors.get())
    errors.close()
    errors.join_thread()
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert reports == []
    assert [process.exitcode for process in processes] == [0] * N_PROCESSES

    counts = Counter(_rows(nexuslims_db))
    shared = SessionLog(*SHARED, user=None).to_row()
    rounds = [_round_log(round_).to_row() for round_ in range(N_ROUNDS)]
    distinct = [
        _distinct_log(writer, i).to_row()
        for writer in range(N_PROCESSES)
        for i in range(N_DISTINCT)
    ]
    assert counts[shared] == 1
    assert [counts[row] for row in rounds] == [1] * N_ROUNDS
    assert [row for row in distinct if counts[row] != 1] == []
    assert set(counts) == {shared, *rounds, *distinct}  # nothing else
    assert sum(counts.values()) == N_PROCESSES * N_DISTINCT + N_ROUNDS + 1
    assert _integrity(nexuslims_db) == "ok"
