"""Issue 12: several record builders at once: claims, leases and fencing (both backends)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import claim_workers
import pytest
from helpers import TITAN

from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.logs import SessionLog, insert_logs
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db

ENV_DB_PATH = "nexusLIMS_db_path"
SPAWN = multiprocessing.get_context("spawn")  # children read nexusLIMS_db_path themselves


def add_sessions(names: list[str], instrument: str = TITAN) -> None:
    """Store a buildable session (TO_BE_BUILT START and END) per name, in this order."""
    logs = []
    for number, name in enumerate(names):
        hour, minute = divmod(number % 1200, 60)
        logs += [SessionLog(name, instrument, f"2021-05-01T{hour % 20:02d}:{minute:02d}:00",
                            "START", "alice"),
                 SessionLog(name, instrument, f"2021-05-01T{hour % 20:02d}:{minute:02d}:30",
                            "END", "alice")]
    assert insert_logs(logs) == len(logs)


def run_builders(count: int, batch: int, build_seconds: float, lease_seconds: float,
                 timeout: float = 120) -> list[tuple[str, list[str], float, float]]:
    """Run ``count`` builder processes until nothing is left to build; return their reports."""
    barrier, results = SPAWN.Barrier(count), SPAWN.Queue()
    processes = [SPAWN.Process(target=claim_workers.builder,
                               args=(f"builder-{n}", batch, build_seconds, lease_seconds,
                                     barrier, results))
                 for n in range(count)]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=timeout) for _ in processes]
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    assert [error for *_, error in reports if error] == []
    assert [process.exitcode for process in processes] == [0] * count
    return [report[:4] for report in reports]


def rate(reports: list[tuple[str, list[str], float, float]]) -> float:
    """Sessions built per second by these builders together."""
    built = sum(len(finished) for _, finished, _, _ in reports)
    return built / (max(r[3] for r in reports) - min(r[2] for r in reports))


def shm_database(monkeypatch: pytest.MonkeyPatch) -> Any:
    folder = Path(tempfile.mkdtemp(prefix="nexuslims-claims-", dir="/dev/shm"))
    location = init_db(folder / "nexuslims.sqlite")
    add_sample_instruments(location)
    monkeypatch.setenv(ENV_DB_PATH, str(location.path))
    return folder


@pytest.mark.slow
def test_eight_builders(nexuslims_database: DatabaseLocation, nexuslims_instruments: Any,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = None
    if nexuslims_database.backend == "sqlite" and os.access("/dev/shm", os.W_OK):
        folder = shm_database(monkeypatch)
    try:
        solo = [f"solo-{n:04d}" for n in range(250)]
        add_sessions(solo)
        t = time.time()
        one = run_builders(1, 5, 0.005, 3600)
        print("one", time.time() - t, rate(one))
        many = [f"many-{n:04d}" for n in range(2000)]
        add_sessions(many)
        t = time.time()
        eight = run_builders(8, 5, 0.005, 3600)
        print("eight", time.time() - t, rate(eight), rate(eight) / rate(one))
        finished = Counter(name for _, done, _, _ in eight for name in done)
        assert set(finished) == set(many)
        assert max(finished.values()) == 1
    finally:
        if folder:
            shutil.rmtree(folder)
