"""Benchmark of pairing session logs and inserting them (issue 4).

Run after ``pip install -e ".[test]"``::

    python benchmarks/bench_sessions.py

For each size N it builds a temporary database (``init_db`` + the sample
instruments) holding N TO_BE_BUILT START/END pairs and 3N history rows (N
completed sessions: START, END and RECORD_GENERATION, all COMPLETED), in
shuffled order, with a realistic mix of timestamp forms. It then times,
side by side and interleaved so that the noise of a shared machine hits all
of them alike:

- ``get_sessions_to_build()``;
- the *floor*: a raw ``sqlite3`` fetch of the same TO_BE_BUILT START/END rows
  plus ``datetime.fromisoformat`` on each timestamp;
- the *1.4 approach*: NexusLIMS 1.4's quadratic pairing, rewritten below;
- ``SessionLog.insert_log()`` per call, and ``insert_logs`` of 20k new logs
  against a raw ``executemany`` of the same rows in one transaction.

Ratios matter, not absolute times. The benchmark talks to SQLite directly
for its set-up and baselines; the package itself does not.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from dateutil.parser import isoparse

from nexusLIMS.db.config import ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.session_handler import SessionLog, get_sessions_to_build, insert_logs
from nexusLIMS.db.sessions import Session
from nexusLIMS.instruments import Instrument, load_instruments

Row = tuple[str, str, str, str, str, Optional[str]]

_INSERT = (
    "INSERT INTO session_log "
    "(session_identifier, instrument, timestamp, event_type, record_status, user) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# The floor reads the partial covering index that init_db creates: the
# cheapest plan for these rows (SQLite's own choice, the status/event index
# plus a table look-up per row, is about 30% slower).
_FLOOR_QUERY = (
    "SELECT id_session_log, session_identifier, instrument, timestamp, event_type, user "
    "FROM session_log INDEXED BY session_log_to_be_built_idx "
    "WHERE record_status = 'TO_BE_BUILT' AND event_type IN ('START', 'END')"
)
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", None)
_ZONES = (timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4)), timezone.utc)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _stamp(rng: random.Random, when: datetime, style: int, zone: timezone) -> str:
    """Return ``when`` as one of the timestamp forms found in real databases."""
    if style == 0:  # Session Logger default: milliseconds, naive
        return when.isoformat(timespec="milliseconds")
    if style == 1:  # harvester: seconds, naive
        return when.isoformat(timespec="seconds")
    if style == 2:  # microseconds, naive
        return when.replace(microsecond=rng.randrange(1_000_000)).isoformat(
            timespec="microseconds"
        )
    aware = when.replace(tzinfo=zone)
    if style == 3:  # NEMO: seconds with an offset
        return aware.isoformat(timespec="seconds")
    # now_local_iso(): microseconds with an offset
    return aware.replace(microsecond=rng.randrange(1_000_000)).isoformat()


def _identifier(rng: random.Random, number: int) -> str:
    if number % 2:
        return f"https://nemo.example.org/api/usage_events/?id={number}"
    return "%08x-%04x-4%03x-a%03x-%012x" % (  # noqa: UP031 (a UUID-shaped string)
        rng.getrandbits(32),
        rng.getrandbits(16),
        rng.getrandbits(12),
        rng.getrandbits(12),
        rng.getrandbits(48),
    )


def _session_rows(
    rng: random.Random, number: int, pids: list[str], status: str, with_generation: bool
) -> list[Row]:
    identifier = _identifier(rng, number)
    pid = pids[number % len(pids)]
    start = datetime(2021, 1, 1) + timedelta(minutes=7 * number + rng.randrange(7))
    end = start + timedelta(minutes=rng.randrange(10, 480), seconds=rng.randrange(60))
    style = rng.randrange(5)
    zone = _ZONES[rng.randrange(len(_ZONES))]
    user = _USERS[rng.randrange(len(_USERS))]
    rows: list[Row] = [
        (identifier, pid, _stamp(rng, start, style, zone), "START", status, user),
        (identifier, pid, _stamp(rng, end, style, zone), "END", status, user),
    ]
    if with_generation:
        made = (end + timedelta(minutes=30)).replace(tzinfo=_ZONES[0])
        rows.append((identifier, pid, made.isoformat(), "RECORD_GENERATION", status, "nexus"))
    return rows


def make_rows(n_pairs: int, pids: list[str], seed: int) -> list[Row]:
    """Return N TO_BE_BUILT pairs and N completed sessions (3N rows), shuffled."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for number in range(n_pairs):
        rows += _session_rows(rng, 2 * number, pids, "TO_BE_BUILT", False)
        rows += _session_rows(rng, 2 * number + 1, pids, "COMPLETED", True)
    rng.shuffle(rows)
    return rows


def new_logs(count: int, pids: list[str], seed: int) -> list[SessionLog]:
    """Return ``count`` new TO_BE_BUILT logs (count/2 pairs) not in any database."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for number in range(count // 2):
        rows += _session_rows(rng, 10_000_000 + number, pids, "TO_BE_BUILT", False)
    return [SessionLog(*row[:4], row[5], row[4]) for row in rows]


def build_database(path: Path, n_pairs: int, seed: int) -> list[str]:
    """Create a database of ``n_pairs`` TO_BE_BUILT pairs + history; return the PIDs."""
    init_db(path)
    pids = sorted(add_sample_instruments(path))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(_INSERT, make_rows(n_pairs, pids, seed))
        conn.execute("COMMIT")
    return pids


# --------------------------------------------------------------------------
# The floor and NexusLIMS 1.4's approach
# --------------------------------------------------------------------------


def floor(path: Path) -> int:
    """Fetch the TO_BE_BUILT START/END rows and parse each timestamp: nothing less."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        rows = conn.execute(_FLOOR_QUERY).fetchall()
    parse = datetime.fromisoformat
    for row in rows:
        parse(row[3])
    return len(rows)


@dataclass
class LegacySessionLog:
    """NexusLIMS 1.4's ``SessionLog``: a plain dataclass."""

    session_identifier: str
    instrument: str
    timestamp: str
    event_type: str
    user: Optional[str]
    record_status: Optional[str] = None

    def __post_init__(self) -> None:
        if self.record_status is None:
            self.record_status = "TO_BE_BUILT"


def legacy_db_query(path: Path, query: str) -> tuple[bool, list[Any]]:
    """NexusLIMS 1.4's ``db_query``: one connection per query."""
    with closing(sqlite3.connect(path)) as conn, conn:
        results = conn.execute(query).fetchall()
    return True, results


def legacy_get_sessions_to_build(
    path: Path, instrument_db: dict[str, Instrument]
) -> list[Session]:
    """NexusLIMS 1.4's ``get_sessions_to_build``: every START scans every END."""
    sessions = []
    query = (
        "SELECT session_identifier, instrument, timestamp, event_type, user "
        "FROM session_log WHERE record_status == 'TO_BE_BUILT' AND event_type == '{}'"
    )
    _, start_results = legacy_db_query(path, query.format("START"))
    _, end_results = legacy_db_query(path, query.format("END"))
    start_logs = [LegacySessionLog(*row) for row in start_results]
    end_logs = [LegacySessionLog(*row) for row in end_results]
    for start_l in start_logs:
        matching_end_logs = [
            end_l for end_l in end_logs if end_l.session_identifier == start_l.session_identifier
        ]
        if len(matching_end_logs) != 1:
            raise ValueError(
                "There was not exactly one 'END' log for this 'START' log; "
                f"len(matching_end_logs) was {len(matching_end_logs)}"
            )
        end_l = matching_end_logs[0]
        sessions.append(
            Session(
                session_identifier=start_l.session_identifier,
                instrument=instrument_db[start_l.instrument],
                dt_range=(isoparse(start_l.timestamp), isoparse(end_l.timestamp)),
                user=start_l.user,
            )
        )
    return sessions


def raw_executemany(path: Path, rows: list[Row]) -> None:
    """Insert ``rows`` with one executemany in one transaction (foreign keys on, as ours)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")


def raw_insert_one(path: Path, row: Row) -> None:
    """Insert one row in its own transaction, as a raw baseline for ``insert_log``."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_INSERT, row)
        conn.execute("COMMIT")


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def timed(func: Callable[[], object]) -> float:
    """Return the seconds one call of ``func`` takes (after a full collection)."""
    gc.collect()
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def use_database(path: Path) -> None:
    os.environ[ENV_DB_PATH] = str(path)


@dataclass
class PairingResult:
    n_pairs: int
    ours: float
    floor: float
    legacy: Optional[float]


def bench_pairing(
    work: Path, n_pairs: int, repeats: int, legacy_repeats: int, seed: int
) -> tuple[PairingResult, list[str]]:
    path = work / f"pairs-{n_pairs}.sqlite"
    pids = build_database(path, n_pairs, seed)
    use_database(path)
    instrument_db = add_instruments_snapshot(path)

    # Check once (untimed) that all three see the same rows and sessions.
    ours_sessions = get_sessions_to_build()
    assert floor(path) == 2 * n_pairs
    assert len(ours_sessions) == n_pairs

    ours: list[float] = []
    base: list[float] = []
    legacy: list[float] = []
    for run in range(repeats):
        base.append(timed(lambda: floor(path)))
        ours.append(timed(get_sessions_to_build))
        if run < legacy_repeats:
            legacy.append(timed(lambda: legacy_get_sessions_to_build(path, instrument_db)))
    if legacy_repeats:
        expected = {_key(s) for s in ours_sessions}
        assert {_key(s) for s in legacy_get_sessions_to_build(path, instrument_db)} == expected
    return PairingResult(
        n_pairs,
        statistics.median(ours),
        statistics.median(base),
        statistics.median(legacy) if legacy else None,
    ), pids


def add_instruments_snapshot(path: Path) -> dict[str, Instrument]:
    """1.4 loads ``instrument_db`` once, at import; give its approach the same."""
    return load_instruments(path)


def _key(session: Session) -> tuple[str, str, datetime, datetime, Optional[str]]:
    return (
        session.session_identifier,
        str(session.instrument.name),
        session.dt_from,
        session.dt_to,
        session.user,
    )


def _scratch(template: Path, scratch: Path) -> Path:
    for suffix in ("", "-journal"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, scratch)
    return scratch


def bench_inserts(
    work: Path, template: Path, pids: list[str], count: int, repeats: int, single_calls: int,
    seed: int,
) -> dict[str, float]:
    logs = new_logs(count, pids, seed + 1)
    rows: list[Row] = [log.to_row() for log in logs]
    scratch = work / "scratch.sqlite"
    use_database(scratch)

    batch: list[float] = []
    raw: list[float] = []
    for _ in range(repeats):
        _scratch(template, scratch)
        raw.append(timed(lambda: raw_executemany(scratch, rows)))
        _scratch(template, scratch)
        batch.append(timed(lambda: insert_logs(logs)))
        assert insert_logs(logs[:2]) == 0  # already there: nothing inserted

    _scratch(template, scratch)
    single: list[float] = []
    raw_single: list[float] = []
    for log, row in zip(logs[: 2 * single_calls : 2], rows[1 : 2 * single_calls : 2]):
        single.append(timed(log.insert_log))
        raw_single.append(timed(lambda row=row: raw_insert_one(scratch, row)))
    return {
        "insert_logs": statistics.median(batch),
        "executemany": statistics.median(raw),
        "insert_log": statistics.median(single),
        "raw_one": statistics.median(raw_single),
    }


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.platform()}; {os.cpu_count()} CPUs ({cpu})\n"
        f"Python {platform.python_version()} ({platform.python_implementation()}); "
        f"SQLite {sqlite3.sqlite_version}"
    )


def _size(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _row(label: str, cells: list[str], width: int = 10) -> str:
    return f"{label:<36}" + "".join(f"{cell:>{width}}" for cell in cells)


def report(
    results: list[PairingResult], inserts: dict[str, float], args: argparse.Namespace
) -> int:
    by_size = {result.n_pairs: result for result in results}
    sizes = [_size(result.n_pairs) for result in results]
    ms = 1000.0
    print(machine())
    print(
        f"medians of {args.repeats} runs ({args.legacy_repeats} for the 1.4 approach); "
        f"N pairs TO_BE_BUILT + 3N history rows, shuffled"
    )
    print(
        "floor = sqlite3 fetch through the covering index + fromisoformat; "
        "raw inserts: one transaction, foreign keys on, as ours"
    )
    print()
    print(_row("ratios", sizes))
    print(_row("ours / floor", [f"{r.ours / r.floor:.2f}" for r in results]))
    print(_row(
        "1.4 approach / ours",
        [f"{r.legacy / r.ours:.0f}" if r.legacy else "skipped" for r in results],
    ))
    for name in ("ours", "floor"):
        steps = [
            f"{getattr(new, name) / getattr(old, name):.2f}"
            for old, new in zip(results, results[1:])
        ]
        print(_row(f"time / time at previous size: {name}", ["-", *steps]))
    scaling: Optional[float] = None
    if 10_000 in by_size and 20_000 in by_size:
        scaling = by_size[20_000].ours / by_size[10_000].ours
    ratio_insert = inserts["insert_logs"] / inserts["executemany"]
    print(_row(f"insert_logs({_size(args.insert_count)}) / executemany", [f"{ratio_insert:.2f}"]))
    print()
    print(_row("times (ms)", sizes))
    print(_row("get_sessions_to_build", [f"{r.ours * ms:.1f}" for r in results]))
    print(_row("floor (sqlite3 + fromisoformat)", [f"{r.floor * ms:.1f}" for r in results]))
    print(_row(
        "1.4 approach (quadratic)",
        [f"{r.legacy * ms:.0f}" if r.legacy else "skipped" for r in results],
    ))
    print(_row(
        f"insert_logs({_size(args.insert_count)}), executemany",
        [f"{inserts['insert_logs'] * ms:.1f}", f"{inserts['executemany'] * ms:.1f}"],
    ))
    print(_row(
        "insert_log per call (us), raw",
        [f"{inserts['insert_log'] * 1e6:.0f}", f"{inserts['raw_one'] * 1e6:.0f}"],
    ))
    print()

    targets: list[tuple[str, Optional[float], float]] = []
    at10 = by_size.get(10_000)
    targets.append((
        "get_sessions_to_build <= 1.5x floor at 10k",
        at10.ours / at10.floor if at10 else None, 1.5,
    ))
    targets.append(("time(20k)/time(10k) <= 2.2", scaling, 2.2))
    at5 = by_size.get(5_000)
    speedup = at5.legacy / at5.ours if at5 and at5.legacy else None
    targets.append(("1.4 approach / ours >= 25 at 5k", speedup, 25.0))
    targets.append((
        f"insert_logs({_size(args.insert_count)}) <= 1.5x executemany",
        ratio_insert if args.insert_count == 20_000 else None, 1.5,
    ))
    misses = 0
    for text, value, limit in targets:
        if value is None:
            verdict, shown = "n/a ", "not measured with these options"
        else:
            ok = value >= limit if text.startswith("1.4") else value <= limit
            verdict, shown = ("PASS" if ok else "MISS"), f"{value:.2f}"
            misses += not ok
        print(f"{verdict}  {text:<44} {shown}")
    return misses


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 10_000, 20_000],
                        help="numbers of TO_BE_BUILT pairs (default: 5000 10000 20000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per measurement")
    parser.add_argument("--legacy-repeats", type=int, default=3,
                        help="runs of the (slow) 1.4 approach per size")
    parser.add_argument("--legacy-max", type=int, default=10_000,
                        help="skip the 1.4 approach above this many pairs (it is quadratic: "
                             "about 4x slower per doubling; default 10000)")
    parser.add_argument("--insert-count", type=int, default=20_000,
                        help="logs inserted by insert_logs vs executemany")
    parser.add_argument("--insert-log-calls", type=int, default=200,
                        help="single insert_log calls timed")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    saved = {var: os.environ.get(var) for var in (ENV_DB_PATH, ENV_DB_PATH_2X)}
    os.environ.pop(ENV_DB_PATH_2X, None)
    try:
        with tempfile.TemporaryDirectory(prefix="nexuslims-bench-") as tmp:
            work = Path(tmp)
            results: list[PairingResult] = []
            pids: list[str] = []
            for n_pairs in args.sizes:
                legacy_repeats = args.legacy_repeats if n_pairs <= args.legacy_max else 0
                result, pids = bench_pairing(work, n_pairs, args.repeats, legacy_repeats,
                                             args.seed)
                results.append(result)
                print(f"  measured {_size(n_pairs)} pairs", file=sys.stderr)
            template = work / f"pairs-{max(args.sizes)}.sqlite"
            inserts = bench_inserts(work, template, pids, args.insert_count, args.repeats,
                                    args.insert_log_calls, args.seed)
            print("  measured inserts", file=sys.stderr)
            for scratch in work.glob("*.sqlite"):
                scratch.unlink()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    print()
    report(results, inserts, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
