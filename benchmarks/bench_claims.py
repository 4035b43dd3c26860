"""Benchmark of claiming sessions for record builders (issue 12), on SQLite and PostgreSQL.

Run after ``pip install -e ".[test,postgres]"``::

    python benchmarks/bench_claims.py                       # SQLite, in a temporary folder
    python benchmarks/bench_claims.py --tmpfs               # SQLite in /dev/shm
    python benchmarks/bench_claims.py --backend postgresql  # a throwaway PostgreSQL server
    python benchmarks/bench_claims.py --backend postgresql --url postgresql://user@host/db

Every run gets a fresh database: ``init_db`` + the sample instruments, then N
TO_BE_BUILT sessions (START and END) and N completed ones (START, END and
RECORD_GENERATION: 3N history rows), shuffled, loaded raw (``executemany`` /
``COPY``). Builders are spawned processes started behind a barrier, once
warmed up (imports, first connection) as a long-running builder is; each
loops ``claim_sessions(limit=B)`` and ``finish("COMPLETED")`` on every
session it got, until none is left. Measured, interleaved so that the noise
of a shared machine hits all alike, medians of ``--repeats`` runs:

1. one builder, no build time: the time per session in ``claim_sessions``
   and in ``finish``, against a raw baseline: one single-row UPDATE of
   ``session_log`` per session, each in its own transaction, on one kept
   connection (the least a "mark this session done" costs on the backend);
2. eight builders, no build time: wall time, sessions per second, time per
   session, claims that came back empty while sessions were left (others
   held them), and a check that every session was finished exactly once;
3. a simulated build (a 10 ms sleep per session, N=400): the speed-up of
   eight builders over one, target >= 4x (SQLite in /dev/shm, ``--tmpfs``,
   and PostgreSQL; on a disk each commit's fsync caps it). The test suite
   runs the same builders (``nexusLIMS.db.testing.run_builders``) but
   checks only that every session is built exactly once: a speed-up is a
   figure of the machine, and a busy machine must not fail the suite. The
   suite's former check was ``--tmpfs --batches 5 --build-sessions 2000``.

Three more measurements on PostgreSQL (issue 19), each run alone:

``--versus pgqueuer``
    side by side with the job queue pgqueuer (a benchmark-only dependency:
    ``pip install pgqueuer``) on the same server: N sessions (default 5,000,
    plus 3N history rows) against N no-op jobs, 1 and 8 builders (workers),
    claiming 1 and 10 at a time; wall time from the barrier to the last
    outcome committed, and exactly once checked for both. Target: ours /
    pgqueuer at most 1.0 in all four cases.
``--latency MS``
    the builders through an in-process proxy that holds every packet MS/2
    each way (MS round trips): 8 builders against 1, target at least 6x.
``--backlog N``
    one builder claiming through a backlog of N sessions (default 50,000)
    behind 3N history rows (150,000), the history first as in a facility's
    database, with the planner's statistics fresh, stale (taken while the
    backlog was large) or missing, and autovacuum off for the table (so they
    stay as they are, and so do the dead rows of the sessions built): the
    time of the first claims, the last ones and claims that find nothing,
    target at most 2x the first; and the claim's plan (EXPLAIN).

The benchmark sets up its data and runs its baseline with the drivers
directly; the package itself does not. It exits 2 when a run did not finish
every session exactly once; else 1 with ``--strict`` when a figure missed
its target; else 0, whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from nexusLIMS.db import testing
from nexusLIMS.db.config import ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.testing import BuilderReport, PostgresServer, postgres_bindir

Row = tuple[str, str, str, str, str, Optional[str]]

#: The longest a run of builders may take, in seconds (only to catch a hang).
RUN_TIMEOUT = 900.0
#: The speed-up of the builders over one builder, with a simulated build.
SPEEDUP_TARGET = 4.0
#: Our wall time over pgqueuer's, at most (--versus).
VERSUS_TARGET = 1.0
#: Eight builders' throughput over one builder's with ~20 ms round trips, at least (--latency).
LATENCY_TARGET = 6.0
#: A claim late in a backlog (or one that finds nothing) over an early one, at most (--backlog).
BACKLOG_TARGET = 2.0
_COLUMNS = 'session_identifier, instrument, timestamp, event_type, record_status, "user"'
_MARK_DONE = "UPDATE session_log SET record_status = 'COMPLETED' WHERE id_session_log = ?"
_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
_USERS = ("alice", "bob", "carol", "dave", None)
_ZONES = (None, timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4)), timezone.utc)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _session_rows(rng: random.Random, number: int, pids: list[str], status: str) -> list[Row]:
    """Return a session's START and END (and RECORD_GENERATION unless TO_BE_BUILT)."""
    identifier = (f"https://nemo.example.org/api/usage_events/?id={number}" if number % 2
                  else str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    pid, user, zone = pids[number % len(pids)], rng.choice(_USERS), rng.choice(_ZONES)
    spec = rng.choice(("seconds", "milliseconds", "microseconds"))
    start = datetime(2021, 1, 1, tzinfo=zone) + timedelta(minutes=7 * number)
    end = start + timedelta(minutes=rng.randrange(10, 480), seconds=rng.randrange(60))
    rows: list[Row] = [
        (identifier, pid, start.isoformat(timespec=spec), "START", status, user),
        (identifier, pid, end.isoformat(timespec=spec), "END", status, user),
    ]
    if status != "TO_BE_BUILT":
        made = end.replace(tzinfo=_ZONES[1]) + timedelta(minutes=30)
        rows.append((identifier, pid, made.isoformat(), "RECORD_GENERATION", status, "nexus"))
    return rows


def make_rows(sessions: int, pids: list[str], seed: int) -> list[Row]:
    """Return ``sessions`` TO_BE_BUILT sessions and as many completed ones, shuffled."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for number in range(sessions):
        rows += _session_rows(rng, 2 * number, pids, "TO_BE_BUILT")
        rows += _session_rows(rng, 2 * number + 1, pids, "COMPLETED")
    rng.shuffle(rows)
    return rows


@dataclass
class Database:
    """A fresh benchmark database: what ``nexusLIMS_db_path`` names, and its sessions."""

    target: str
    identifiers: list[str]  # the TO_BE_BUILT sessions
    start_ids: list[int]  # id_session_log of their STARTs


# --------------------------------------------------------------------------
# The two backends
# --------------------------------------------------------------------------


class Store(ABC):
    """Where the runs' databases live; the driver-level work both backends share."""

    backend = ""
    begin = "BEGIN"  # a raw write transaction
    mark = "?"  # the driver's placeholder
    analyze = True  # gather the planner's statistics once loaded

    @abstractmethod
    def describe(self) -> str:
        """Return the database software and its settings, for the machine line."""

    @abstractmethod
    def raw(self, target: str) -> AbstractContextManager[Any]:
        """Return a raw autocommit driver connection to ``target``, as a context manager."""

    @abstractmethod
    def drop(self, target: str) -> None:
        """Remove a run's database."""

    @abstractmethod
    def close(self) -> None:
        """Remove whatever is left (databases, folders, servers)."""

    @abstractmethod
    def _new_target(self) -> str: ...

    @abstractmethod
    def _load(self, conn: Any, rows: list[Row]) -> None: ...

    def sql(self, text: str) -> str:
        """Return ``text`` with the driver's placeholders."""
        return text.replace("?", self.mark)

    def fresh(self, sessions: int, seed: int) -> Database:
        """Create a database of ``sessions`` TO_BE_BUILT sessions and 3N history rows."""
        target = self._new_target()
        init_db(target)
        rows = make_rows(sessions, sorted(add_sample_instruments(target)), seed)
        with self.raw(target) as conn:
            self._load(conn, rows)
            if self.analyze:
                conn.execute("ANALYZE")
            start_ids = [row[0] for row in conn.execute(
                "SELECT id_session_log FROM session_log WHERE event_type = 'START' "
                "AND record_status = 'TO_BE_BUILT' ORDER BY id_session_log").fetchall()]
        identifiers = [row[0] for row in rows if row[3] == "START" and row[4] == "TO_BE_BUILT"]
        return Database(target, identifiers, start_ids)

    def mark_done(self, database: Database) -> float:
        """Return the seconds of one raw single-row UPDATE per session, each committed alone."""
        update = self.sql(_MARK_DONE)
        with self.raw(database.target) as conn:
            began = time.perf_counter()
            for log_id in database.start_ids:
                conn.execute(self.begin)
                conn.execute(update, (log_id,))
                conn.execute("COMMIT")
            return time.perf_counter() - began

    def problems(self, database: Database, finished: Counter[str]) -> str:
        """Return what shows a session not finished exactly once ('' when none does)."""
        count = len(database.identifiers)
        with self.raw(database.target) as conn:
            statuses = dict(((event, status), number) for event, status, number in conn.execute(
                "SELECT event_type, record_status, count(*) FROM session_log "
                "GROUP BY event_type, record_status").fetchall())
            claims = conn.execute("SELECT count(*) FROM session_claims").fetchone()[0]
        found = []
        if statuses != {(event, "COMPLETED"): 2 * count if event != "RECORD_GENERATION"
                        else count for event in ("START", "END", "RECORD_GENERATION")}:
            found.append(f"statuses {sorted(statuses.items())}")
        if claims:
            found.append(f"{claims} claim rows left")
        twice = sum(1 for number in finished.values() if number != 1)
        if twice or set(finished) != set(database.identifiers):
            found.append(f"{len(finished)} sessions finished of {count}, {twice} not once")
        return "; ".join(found)


class SqliteStore(Store):
    """Database files in a temporary folder (in /dev/shm with ``tmpfs``)."""

    backend = "sqlite"
    begin = "BEGIN IMMEDIATE"

    def __init__(self, tmpfs: bool, analyze: bool) -> None:
        self.analyze = analyze  # SQLite never gathers statistics by itself
        self.folder = Path(tempfile.mkdtemp(prefix="nexuslims-bench-claims-",
                                            dir="/dev/shm" if tmpfs else None))
        self.runs = 0

    def describe(self) -> str:
        probe = self.folder / "probe.sqlite"
        init_db(probe)
        with self.raw(str(probe)) as conn:
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            synchronous = _SYNCHRONOUS[conn.execute("PRAGMA synchronous").fetchone()[0]]
        self.drop(str(probe))
        stats = "ANALYZE run after loading" if self.analyze else "no ANALYZE, as init_db"
        return (f"SQLite (journal_mode {journal}, synchronous {synchronous}; files in "
                f"{self.folder.parent}, {_filesystem(self.folder)}; {stats})")

    def _new_target(self) -> str:
        self.runs += 1
        return str(self.folder / f"run-{self.runs}.sqlite")

    @contextmanager
    def raw(self, target: str) -> Iterator[Any]:
        with closing(sqlite3.connect(target, isolation_level=None)) as conn:
            conn.execute("PRAGMA foreign_keys = ON")  # as the package's connections
            yield conn

    def _load(self, conn: Any, rows: list[Row]) -> None:
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO session_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    def drop(self, target: str) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(target + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresStore(Store):
    """A schema per run on a given server, or on a throwaway one started here."""

    backend = "postgresql"
    mark = "%s"

    def __init__(self, url: Optional[str]) -> None:
        self.server: Optional[PostgresServer] = None  # a throwaway server started here
        if url is None:
            self.server = _start_server()
            url = self.server.url
        self.url = url
        self.schemas: list[str] = []

    @contextmanager
    def raw(self, target: str) -> Iterator[Any]:
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            yield conn

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        with self.raw(self.url) as conn:
            version, fsync, synchronous = (conn.execute(f"SHOW {name}").fetchone()[0] for name in
                                           ("server_version", "fsync", "synchronous_commit"))
        info = conninfo_to_dict(self.url)
        where = "a throwaway server" if self.server else \
            f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
        return f"PostgreSQL {version} (fsync {fsync}, synchronous_commit {synchronous}; {where})"

    def _new_target(self) -> str:
        schema = f"nexuslims_bench_{uuid.uuid4().hex[:12]}"
        with self.raw(self.url) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}options=-csearch_path%3D{schema}"

    def _load(self, conn: Any, rows: list[Row]) -> None:
        with conn.cursor() as cursor, cursor.copy(
                f"COPY session_log ({_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def drop(self, target: str) -> None:
        self._drop_schema(target.rsplit("%3D", 1)[1])

    def _drop_schema(self, schema: str) -> None:
        from nexusLIMS.db.databases import close_pools

        close_pools()  # this process's idle connections (to the schema among others)
        with self.raw(self.url) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.schemas.remove(schema)

    def close(self) -> None:
        try:
            for schema in list(self.schemas):
                self._drop_schema(schema)
        finally:
            if self.server is not None:
                self.server.stop()


def _start_server() -> PostgresServer:
    """Start a throwaway PostgreSQL server (its programs from ``pg_config --bindir``)."""
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb was not found: install PostgreSQL, or pass --url")
    return PostgresServer(bindir).start()  # removes what it made if it fails


def _filesystem(folder: Path) -> str:
    """Return the type of the file system ``folder`` is on (Linux; else 'unknown')."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                point, fs_type = line.split()[1:3]
                if folder.is_relative_to(point) and len(point) > len(best):
                    best, kind = point, fs_type
    except OSError:
        pass
    return kind


# --------------------------------------------------------------------------
# Builders: nexusLIMS.db.testing.run_builders (the test suite runs the same)
# --------------------------------------------------------------------------


def run_builders(count: int, batch: int, build_seconds: float) -> list[BuilderReport]:
    """Run ``count`` builder processes on the database the environment names; return reports.

    Raises
    ------
    RuntimeError
        A builder failed or did not report in time.
    """
    reports = testing.run_builders(count, batch, build_seconds, timeout=RUN_TIMEOUT)
    errors = [report.error for report in reports if report.error]
    if errors:
        raise RuntimeError("a builder failed:\n" + "\n".join(errors))
    return reports


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------


@dataclass
class Run:
    """One run of ``builders`` builders over a fresh database of ``sessions`` sessions."""

    builders: int
    batch: int
    build_ms: float
    sessions: int
    wall: float
    claim: float  # seconds all builders spent in claim_sessions
    finish: float  # ... and in finish
    claim_calls: int
    contended: int
    problems: str


def _pointing_at(target: str) -> None:
    os.environ[ENV_DB_PATH] = target
    os.environ.pop(ENV_DB_PATH_2X, None)


def measure(store: Store, builders: int, batch: int, build_ms: float, sessions: int,
            seed: int) -> Run:
    """Run the builders on a fresh database, check the outcome, drop the database."""
    database = store.fresh(sessions, seed)
    try:
        _pointing_at(database.target)
        reports = run_builders(builders, batch, build_ms / 1000)
        finished = Counter(name for report in reports for name in report.finished)
        problems = store.problems(database, finished)
    finally:
        store.drop(database.target)
    return Run(
        builders, batch, build_ms, sessions,
        wall=max(r.last_finish for r in reports) - min(r.started for r in reports),
        claim=sum(r.claim_seconds for r in reports),
        finish=sum(r.finish_seconds for r in reports),
        claim_calls=sum(r.claim_calls for r in reports),
        contended=sum(r.contended for r in reports),
        problems=problems,
    )


def baseline(store: Store, sessions: int, seed: int) -> float:
    """Return the seconds per session of the raw single-row UPDATE, on a fresh database."""
    database = store.fresh(sessions, seed)
    try:
        return store.mark_done(database) / sessions
    finally:
        store.drop(database.target)


@dataclass
class Results:
    """Every run and baseline measured."""

    runs: list[Run] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)

    def median(self, attribute: str, builders: int, batch: int, build_ms: float) -> float:
        """Median of a :class:`Run` attribute over the runs of one kind."""
        return float(statistics.median(
            getattr(run, attribute) for run in self.runs
            if (run.builders, run.batch, run.build_ms) == (builders, batch, build_ms)))

    def problems(self) -> list[str]:
        """The problems found, one line per run that had some."""
        return [f"{run.builders} builders, B={run.batch}, build {run.build_ms:g} ms: "
                f"{run.problems}" for run in self.runs if run.problems]


def bench(store: Store, args: argparse.Namespace) -> Results:
    """Measure every case, the kinds of runs interleaved within each repeat."""
    results = Results()
    counts = (1, args.builders)
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        results.baselines.append(baseline(store, args.sessions, seed))
        for batch in args.batches:
            for builders in counts:
                results.runs.append(measure(store, builders, batch, 0.0, args.sessions, seed))
        for batch in args.batches:
            for builders in counts:
                results.runs.append(measure(store, builders, batch, args.build_ms,
                                            args.build_sessions, seed))
        _progress(f"repeat {repeat + 1} of {args.repeats} done")
    return results


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def machine(store: Store) -> str:
    """Return the machine line: platform, CPUs, Python and the database software."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.platform()}; {os.cpu_count()} CPUs ({cpu}); Python "
            f"{platform.python_version()}; SQLite library {sqlite3.sqlite_version}\n"
            f"database: {store.describe()}")


def _row(label: str, cells: list[str], width: int = 12) -> str:
    return f"{label:<44}" + "".join(f"{cell:>{width}}" for cell in cells)


def table_one_builder(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    """Print case 1 and return its figures (microseconds per session)."""
    us = 1e6 / args.sessions
    raw = statistics.median(results.baselines) * 1e6
    figures: dict[str, Any] = {"raw_update_us": raw}
    print(f"1. one builder, no build time: claim_sessions(limit=B), then finish('COMPLETED') "
          f"on each; N={args.sessions}")
    print(_row("us per session", [f"B={batch}" for batch in args.batches]))
    for name in ("claim", "finish", "claim + finish"):
        cells = []
        for batch in args.batches:
            value = sum(results.median(part, 1, batch, 0.0) for part in name.split(" + ")) * us
            figures.setdefault(name.replace(" + ", "_"), {})[batch] = value
            cells.append(f"{value:.0f}")
        print(_row(f"  {name}", cells))
    print(_row("  raw UPDATE of one row, own transaction", [f"{raw:.0f}"] * len(args.batches)))
    print(_row("  (claim + finish) / raw UPDATE",
               [f"{figures['claim_finish'][batch] / raw:.1f}" for batch in args.batches]))
    print()
    return figures


def table_many_builders(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    """Print case 2 and return its figures."""
    many, n = args.builders, args.sessions
    figures: dict[int, dict[str, Any]] = {}
    for batch in args.batches:
        walls = {count: results.median("wall", count, batch, 0.0) for count in (1, many)}
        runs = [run for run in results.runs if (run.builders, run.batch, run.build_ms)
                == (many, batch, 0.0)]
        figures[batch] = {
            "wall_s": walls[many], "sessions_per_s": n / walls[many],
            "wall_ms_per_session": walls[many] / n * 1e3,
            "claim_ms_per_session": results.median("claim", many, batch, 0.0) / n * 1e3,
            "finish_ms_per_session": results.median("finish", many, batch, 0.0) / n * 1e3,
            "claim_calls": results.median("claim_calls", many, batch, 0.0),
            "empty_claims": results.median("contended", many, batch, 0.0),
            "finished_once": all(not run.problems for run in runs),
            "one_builder_sessions_per_s": n / walls[1],
            "throughput_ratio": walls[1] / walls[many],
        }
    print(f"2. {many} builders (spawned processes, started behind a barrier), no build time; "
          f"N={n}")
    print(_row("", [f"B={batch}" for batch in args.batches]))
    lines = (
        ("wall (s)", "wall_s", "{:.2f}"),
        ("sessions per second", "sessions_per_s", "{:.0f}"),
        ("wall per session (ms)", "wall_ms_per_session", "{:.3f}"),
        ("in claim_sessions per session (ms, summed)", "claim_ms_per_session", "{:.3f}"),
        ("in finish per session (ms, summed)", "finish_ms_per_session", "{:.3f}"),
        ("claim calls", "claim_calls", "{:.0f}"),
        ("empty claims while sessions were left", "empty_claims", "{:.0f}"),
        ("1 builder: sessions per second", "one_builder_sessions_per_s", "{:.0f}"),
        (f"throughput, {many} builders / 1 builder", "throughput_ratio", "{:.2f}"),
    )
    for label, key, form in lines:
        print(_row(f"  {label}", [form.format(figures[batch][key]) for batch in args.batches]))
    print(_row("  every session finished exactly once",
               ["yes" if figures[batch]["finished_once"] else "NO" for batch in args.batches]))
    print("  (no build time: the builders do nothing but write transactions. SQLite lets one\n"
          "   writer in at a time, so its ratio measures lock contention; on PostgreSQL no\n"
          "   builder waits for another's claim, and the ratio is what the cores allow.)")
    print()
    return {str(batch): values for batch, values in figures.items()}


def table_build(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    """Print case 3 and return its figures, with the speed-up verdicts."""
    many = args.builders
    figures: dict[str, Any] = {}
    print(f"3. simulated build of {args.build_ms:g} ms per session; N={args.build_sessions}")
    walls = {batch: {count: results.median("wall", count, batch, args.build_ms)
                     for count in (1, many)} for batch in args.batches}
    print(_row("", [f"B={batch}" for batch in args.batches]))
    print(_row("  wall, 1 builder (s)", [f"{walls[b][1]:.2f}" for b in args.batches]))
    print(_row(f"  wall, {many} builders (s)", [f"{walls[b][many]:.2f}" for b in args.batches]))
    print(_row("  speed-up", [f"{walls[b][1] / walls[b][many]:.2f}" for b in args.batches]))
    for batch in args.batches:
        speedup = walls[batch][1] / walls[batch][many]
        verdict = "PASS" if speedup >= SPEEDUP_TARGET else "MISS"
        figures[str(batch)] = {"wall_1_s": walls[batch][1], f"wall_{many}_s": walls[batch][many],
                               "speedup": speedup, "verdict": verdict}
        print(f"{verdict}  speed-up of {many} builders >= {SPEEDUP_TARGET:g}x, B={batch}: "
              f"{speedup:.2f}x")
    print("  (the target is for SQLite in /dev/shm (--tmpfs) and for PostgreSQL; the test\n"
          "   suite checks only that every session is built exactly once)")
    return figures


def report(store: Store, results: Results, args: argparse.Namespace) -> dict[str, Any]:
    """Print the machine line and the three tables; return everything for ``--json``."""
    header = machine(store)
    print(header)
    print(f"medians of {args.repeats} run(s), interleaved, each on a fresh database: N "
          f"TO_BE_BUILT sessions + 3N history rows, shuffled")
    print()
    figures = {
        "machine": header,
        "options": vars(args),
        "one_builder": table_one_builder(results, args),
        "many_builders": table_many_builders(results, args),
        "simulated_build": table_build(results, args),
        "runs": [asdict(run) for run in results.runs],
        "raw_update_s_per_session": results.baselines,
        "problems": results.problems(),
    }
    for line in figures["problems"]:
        print(f"FAIL  {line}")
    return figures


# --------------------------------------------------------------------------
# Issue 19: side by side with pgqueuer, over a slow network, through a backlog
# --------------------------------------------------------------------------


def _pgqueuer() -> Any:
    """Return the pgqueuer package, or exit saying how to install it (benchmark only)."""
    try:
        import pgqueuer
    except ImportError:
        raise SystemExit("--versus pgqueuer needs pgqueuer: pip install pgqueuer "
                         "(a benchmark-only dependency)") from None
    return pgqueuer


def pgqueuer_worker(name: str, batch: int, target: str, barrier_timeout: float, barrier: Any,
                    results: Any) -> None:
    """A pgqueuer worker in a spawned process: run no-op jobs, B at a time, until none is left.

    Warmed up before the barrier as a builder is (its connection, its check of
    the tables); its event loop is uvloop's, as pgqueuer's own command line
    runs it. Puts a :class:`BuilderReport` on ``results``: the jobs' ids as
    ``finished``, ``last_finish`` when its last outcomes were committed.
    """
    import asyncio

    report = BuilderReport(name)

    async def work() -> None:
        import psycopg

        pgqueuer = _pgqueuer()
        from pgqueuer.types import QueueExecutionMode

        conn = await psycopg.AsyncConnection.connect(target, autocommit=True)
        try:
            queries = pgqueuer.Queries(pgqueuer.PsycopgDriver(conn))
            log_jobs = queries.log_jobs

            async def logged(*args: Any, **kwargs: Any) -> Any:
                # The jobs' outcomes are committed here (in batches): the worker's
                # last is its last finish, as ours is; what it does on its way out is not.
                result = await log_jobs(*args, **kwargs)
                report.last_finish = time.time()
                return result

            queries.log_jobs = logged  # type: ignore[method-assign]
            manager = pgqueuer.QueueManager(queries)

            @manager.entrypoint("build")
            async def build(job: Any) -> None:
                report.finished.append(str(job.id))

            await manager.verify_structure()
            barrier.wait(timeout=barrier_timeout)
            report.started = report.last_finish = time.time()
            await manager.run(batch_size=batch, mode=QueueExecutionMode.drain,
                              dequeue_timeout=timedelta(milliseconds=50))
        finally:
            await conn.close()

    try:
        try:
            import uvloop

            runner: Callable[[Any], Any] = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(work())
    except BaseException:  # reported, whatever it was
        report.error = f"pgqueuer worker {name}:\n{traceback.format_exc()}"
    results.put(report)


def run_pgqueuer(count: int, batch: int, target: str) -> list[BuilderReport]:
    """Run ``count`` pgqueuer workers (spawned, behind a barrier) until the queue is drained."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(count), spawn.Queue()
    processes = [spawn.Process(target=pgqueuer_worker, daemon=True,
                               args=(f"worker-{n}", batch, target, RUN_TIMEOUT, barrier, results))
                 for n in range(count)]
    reports: list[BuilderReport] = []
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(reports) < count and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=1.0))
            except Exception:  # queue.Empty
                if not any(process.is_alive() for process in processes):
                    break
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    errors = [report.error for report in reports if report.error]
    if errors or len(reports) < count:
        raise RuntimeError("a pgqueuer worker failed:\n" + "\n".join(errors or ["no report"]))
    return reports


def pgqueuer_fresh(store: PostgresStore, jobs: int) -> str:
    """Return a new schema holding pgqueuer's tables and ``jobs`` queued no-op jobs."""
    import asyncio

    import psycopg

    pgqueuer = _pgqueuer()
    target = store._new_target()

    async def setup() -> None:
        conn = await psycopg.AsyncConnection.connect(target, autocommit=True)
        try:
            queries = pgqueuer.Queries(pgqueuer.PsycopgDriver(conn))
            await queries.install()
            await queries.enqueue(["build"] * jobs, [None] * jobs, [0] * jobs)
            await conn.execute("ANALYZE")  # as ours is, once loaded
        finally:
            await conn.close()

    asyncio.run(setup())
    return target


@dataclass
class VersusRun:
    """One run of ``builders`` builders of one system over a fresh database."""

    system: str  # "ours" or "pgqueuer"
    builders: int
    batch: int
    wall: float
    problems: str


def measure_pgqueuer(store: PostgresStore, builders: int, batch: int, jobs: int) -> VersusRun:
    """Drain ``jobs`` no-op jobs with pgqueuer's workers; check each ran exactly once."""
    target = pgqueuer_fresh(store, jobs)
    try:
        reports = run_pgqueuer(builders, batch, target)
        done = Counter(job for report in reports for job in report.finished)
        with store.raw(target) as conn:
            left = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()[0]
            logged = conn.execute("SELECT count(*) FROM pgqueuer_log "
                                  "WHERE status = 'successful'").fetchone()[0]
    finally:
        store.drop(target)
    problems = []
    if len(done) != jobs or any(count != 1 for count in done.values()):
        problems.append(f"{len(done)} jobs run of {jobs}, "
                        f"{sum(count != 1 for count in done.values())} not once")
    if left or logged != jobs:
        problems.append(f"{left} jobs left in the queue, {logged} logged successful")
    return VersusRun("pgqueuer", builders, batch,
                     max(r.last_finish for r in reports) - min(r.started for r in reports),
                     "; ".join(problems))


def bench_versus(store: PostgresStore, args: argparse.Namespace) -> list[VersusRun]:
    """Ours and pgqueuer, interleaved (which goes first alternates), every case per repeat."""
    runs: list[VersusRun] = []
    for repeat in range(args.repeats):
        for batch in args.batches:
            for builders in (1, args.builders):
                for system in (("ours", "pgqueuer") if repeat % 2 == 0
                               else ("pgqueuer", "ours")):
                    runs.append(measure_pgqueuer(store, builders, batch, args.versus_sessions)
                                if system == "pgqueuer" else _as_versus(measure(
                                    store, builders, batch, 0.0, args.versus_sessions,
                                    args.seed + repeat)))
        _progress(f"side by side: repeat {repeat + 1} of {args.repeats} done")
    return runs


def _as_versus(run: Run) -> VersusRun:
    return VersusRun("ours", run.builders, run.batch, run.wall, run.problems)


def table_versus(runs: list[VersusRun], args: argparse.Namespace) -> dict[str, Any]:
    """Print the side-by-side table and return its figures, with the verdicts."""
    print(f"ours / pgqueuer on the same server: N={args.versus_sessions} sessions (plus "
          f"{3 * args.versus_sessions} history rows) / jobs, no-op build; wall time from the "
          f"barrier to the last outcome committed, medians of {args.repeats}")
    print(_row("builders, claiming B at a time", ["ours (s)", "pgqueuer", "ours/pgq"]))
    figures: dict[str, Any] = {}
    for builders in (1, args.builders):
        for batch in args.batches:
            walls = {system: statistics.median(
                run.wall for run in runs if (run.system, run.builders, run.batch)
                == (system, builders, batch)) for system in ("ours", "pgqueuer")}
            ratio = walls["ours"] / walls["pgqueuer"]
            verdict = "PASS" if ratio <= VERSUS_TARGET else "MISS"
            figures[f"{builders}x{batch}"] = {**walls, "ratio": ratio, "verdict": verdict}
            print(_row(f"  {builders} builder(s), B={batch}",
                       [f"{walls['ours']:.2f}", f"{walls['pgqueuer']:.2f}", f"{ratio:.2f}"]))
    for case, values in figures.items():
        print(f"{values['verdict']}  ours / pgqueuer <= {VERSUS_TARGET:g}, {case}: "
              f"{values['ratio']:.2f}")
    return figures


def _proxied(proxy_url: str, target: str, url: str) -> str:
    """Return ``target`` (``url`` plus a query) as reached through the proxy at ``proxy_url``."""
    rest = target[len(url):]
    return proxy_url + ("&" + rest[1:] if rest.startswith("?") else rest)


def _round_trip(target: str) -> float:
    """Return the median seconds of a ``SELECT 1`` on one connection to ``target``."""
    with closing(_psycopg_connect(target)) as conn:
        times = []
        for _ in range(21):
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            times.append(time.perf_counter() - began)
    return float(statistics.median(times))


def _psycopg_connect(target: str) -> Any:
    import psycopg

    return psycopg.connect(target, autocommit=True)


def bench_latency(store: PostgresStore, args: argparse.Namespace) -> dict[str, Any]:
    """The builders through the latency proxy: 1 and 8, claiming 1 and 10 at a time."""
    runs: list[Run] = []
    # The tests' proxy, holding every chunk half a round trip in each direction
    # (found as bench_sessions finds it, beside this script).
    from bench_sessions import tests_helper

    proxy_class: Callable[..., Any] = tests_helper("roundtrips", "RoundTripCounter")
    with proxy_class(store.url, delay=args.latency / 2000) as proxy:
        probe = store._new_target()
        try:
            round_trip = _round_trip(_proxied(proxy.url, probe, store.url))
        finally:
            store.drop(probe)
        for repeat in range(args.repeats):
            for batch in args.batches:
                for builders in (1, args.builders):
                    database = store.fresh(args.latency_sessions, args.seed + repeat)
                    try:
                        _pointing_at(_proxied(proxy.url, database.target, store.url))
                        reports = run_builders(builders, batch, 0.0)
                        finished = Counter(n for report in reports for n in report.finished)
                        problems = store.problems(database, finished)
                    finally:
                        store.drop(database.target)
                    runs.append(Run(builders, batch, 0.0, args.latency_sessions,
                                    wall=max(r.last_finish for r in reports)
                                    - min(r.started for r in reports),
                                    claim=sum(r.claim_seconds for r in reports),
                                    finish=sum(r.finish_seconds for r in reports),
                                    claim_calls=sum(r.claim_calls for r in reports),
                                    contended=sum(r.contended for r in reports),
                                    problems=problems))
            _progress(f"latency: repeat {repeat + 1} of {args.repeats} done")
    results = Results(runs)
    n, many = args.latency_sessions, args.builders
    print(f"over a network with {round_trip * 1e3:.1f} ms round trips (an in-process proxy "
          f"holding each packet {args.latency / 2:g} ms each way), N={n}, no-op build; "
          f"medians of {args.repeats}")
    print(_row("", [f"B={batch}" for batch in args.batches]))
    figures: dict[str, Any] = {"round_trip_ms": round_trip * 1e3}
    for batch in args.batches:
        walls = {count: results.median("wall", count, batch, 0.0) for count in (1, many)}
        per_session = walls[1] / n / round_trip
        figures[str(batch)] = {"wall_1_s": walls[1], f"wall_{many}_s": walls[many],
                               "speedup": walls[1] / walls[many],
                               "round_trips_per_session_1_builder": per_session}
    for label, key, form in (("wall, 1 builder (s)", "wall_1_s", "{:.2f}"),
                             (f"wall, {many} builders (s)", f"wall_{many}_s", "{:.2f}"),
                             ("1 builder: time per session / round trip",
                              "round_trips_per_session_1_builder", "{:.2f}"),
                             (f"speed-up of {many} builders", "speedup", "{:.2f}")):
        print(_row(f"  {label}", [form.format(figures[str(b)][key]) for b in args.batches]))
    for batch in args.batches:
        speedup = figures[str(batch)]["speedup"]
        figures[str(batch)]["verdict"] = verdict = \
            "PASS" if speedup >= LATENCY_TARGET else "MISS"
        print(f"{verdict}  speed-up of {many} builders >= {LATENCY_TARGET:g}x at "
              f"{round_trip * 1e3:.0f} ms, B={batch}: {speedup:.2f}x")
    figures["problems"] = results.problems()
    return figures


def _backlog_rows(backlog: int, history: int, pids: list[str], seed: int) -> list[Row]:
    """History first (completed sessions, 3 rows each), then the backlog, in time order."""
    rng = random.Random(seed)
    rows: list[Row] = []
    sessions = history // 3
    for number in range(sessions):
        rows += _session_rows(rng, number, pids, "COMPLETED")
    for number in range(backlog):
        rows += _session_rows(rng, sessions + number, pids, "TO_BE_BUILT")
    return rows


def _claim_plan(conn: Any) -> list[str]:
    """Return the plan of one claim (EXPLAIN ANALYZE, BUFFERS), rolled back."""
    from nexusLIMS.db import queries
    from nexusLIMS.db.backends.postgresql import POSTGRESQL
    from nexusLIMS.db.backends.translate import native_sql

    conn.execute("BEGIN")
    try:
        if hasattr(queries, "claim_sessions_statement"):
            for statement in getattr(POSTGRESQL, "ordered_reads", ()):
                conn.execute(statement)
            clock = POSTGRESQL.ddl.clock
            sql = queries.claim_sessions_statement(1, now=clock(), expires=clock("?"),
                                                   skip_locked=POSTGRESQL.skip_locked)
            params: tuple[Any, ...] = ([], "explain", "explain", 60.0)
        else:  # the claims before issue 19 (to measure them with this script)
            sql = f"{queries.CLAIM_CANDIDATES} LIMIT ?"
            params = (datetime.now(timezone.utc).isoformat(), 0, 9)
        return [line for (line,) in conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + native_sql(sql), params).fetchall()]
    finally:
        conn.execute("ROLLBACK")


def _timed_claims(count: int, finish: bool) -> list[float]:
    """Claim one session ``count`` times (finishing each); return each claim's seconds."""
    from nexusLIMS.db.claims import claim_sessions

    times = []
    for _ in range(count):
        began = time.perf_counter()
        claimed = claim_sessions(1, worker="bench")
        times.append(time.perf_counter() - began)
        if finish:
            if not claimed:
                raise RuntimeError("the backlog ran out early")
            claimed[0].finish("COMPLETED")
    return times


def bench_backlog(store: PostgresStore, args: argparse.Namespace) -> dict[str, Any]:
    """Claim latency early in a backlog, late in it and once it is empty, per statistics."""
    import nexusLIMS

    figures: dict[str, Any] = {"package": str(Path(nexusLIMS.__file__).parent)}
    probes, empties = args.backlog_probes, max(args.backlog_probes // 4, 10)
    print(f"one builder claiming one session at a time through a backlog of {args.backlog} "
          f"sessions behind {args.history} history rows (package: {figures['package']}); "
          f"medians of {probes} claims (finish not counted), {empties} empty claims")
    print(_row("statistics", ["first (ms)", "last (ms)", "empty (ms)", "last/first",
                              "empty/first"], 12))
    for stats in ("fresh", "stale", "missing"):
        target = store._new_target()
        try:
            init_db(target)
            rows = _backlog_rows(args.backlog, args.history, sorted(add_sample_instruments(target)),
                                 args.seed)
            with store.raw(target) as conn:
                store._load(conn, rows)
                for table in ("session_log", "session_claims"):  # the statistics stay as set
                    conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
                if stats != "missing":
                    conn.execute("ANALYZE")
            _pointing_at(target)
            _timed_claims(3, finish=True)  # warm: the pool, the checks, the statement prepared
            first = _timed_claims(probes, finish=True)
            with store.raw(target) as conn:
                # The backlog worked through (one transaction per 1,000 sessions), as
                # builders would leave it: every row updated, its old version dead.
                while True:
                    done = conn.execute(
                        "UPDATE session_log SET record_status = 'COMPLETED' "
                        "WHERE record_status = 'TO_BE_BUILT' AND session_identifier IN ("
                        "SELECT session_identifier FROM session_log WHERE event_type = 'START' "
                        "AND record_status = 'TO_BE_BUILT' ORDER BY id_session_log "
                        "LIMIT LEAST(1000, GREATEST((SELECT count(*) FROM session_log WHERE "
                        "event_type = 'START' AND record_status = 'TO_BE_BUILT') - %s, 0)))",
                        (probes + 3,)).rowcount
                    if not done:
                        break
                if stats == "fresh":
                    conn.execute("ANALYZE")
            last = _timed_claims(probes, finish=True)
            _timed_claims(3, finish=True)  # the backlog is empty now
            empty = _timed_claims(empties, finish=False)
            with store.raw(target) as conn:
                plan = _claim_plan(conn)
        finally:
            store.drop(target)
        medians = [statistics.median(times) * 1e3 for times in (first, last, empty)]
        figures[stats] = {"first_ms": medians[0], "last_ms": medians[1], "empty_ms": medians[2],
                          "last_over_first": medians[1] / medians[0],
                          "empty_over_first": medians[2] / medians[0], "plan": plan}
        print(_row(f"  {stats}", [f"{value:.2f}" for value in medians]
                   + [f"{medians[1] / medians[0]:.2f}", f"{medians[2] / medians[0]:.2f}"], 12))
        _progress(f"backlog: statistics {stats} done")
    for stats in ("fresh", "stale", "missing"):
        worst = max(figures[stats]["last_over_first"], figures[stats]["empty_over_first"])
        figures[stats]["verdict"] = verdict = "PASS" if worst <= BACKLOG_TARGET else "MISS"
        print(f"{verdict}  a late or empty claim <= {BACKLOG_TARGET:g}x the first, statistics "
              f"{stats}: {worst:.2f}x")
    print("\nthe plan of a claim that finds nothing (EXPLAIN ANALYZE), statistics missing:")
    for line in figures["missing"]["plan"]:
        if any(word in line for word in ("Scan", "Sort", "Limit", "Execution", "Buffers: shared",
                                         "Index Cond")):
            print(f"  {line}")
    return figures


def run_issue_19(store: PostgresStore, args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Run the measurements asked for; return their figures and whether one missed."""
    figures: dict[str, Any] = {"machine": machine(store), "options": vars(args)}
    print(figures["machine"])
    print()
    missed = False
    if args.versus:
        runs = bench_versus(store, args)
        figures["versus"] = table_versus(runs, args)
        figures["versus_runs"] = [asdict(run) for run in runs]
        figures["problems"] = [f"{run.system}, {run.builders} builders, B={run.batch}: "
                               f"{run.problems}" for run in runs if run.problems]
        missed |= any(v["verdict"] != "PASS" for v in figures["versus"].values())
        print()
    if args.latency:
        figures["latency"] = latency = bench_latency(store, args)
        figures.setdefault("problems", []).extend(latency["problems"])
        missed |= any(latency[str(batch)]["verdict"] != "PASS" for batch in args.batches)
        print()
    if args.backlog:
        figures["backlog"] = backlog = bench_backlog(store, args)
        missed |= any(backlog[stats]["verdict"] != "PASS"
                      for stats in ("fresh", "stale", "missing"))
    for line in figures.get("problems", []):
        print(f"FAIL  {line}")
    return figures, missed


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """Read the command line; ``--quick`` sets small sizes and one repeat."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL server to use (a schema of its own is created "
                                      "and dropped); default: start a throwaway server")
    parser.add_argument("--tmpfs", action="store_true",
                        help="SQLite: put the databases in /dev/shm (no fsync cost)")
    parser.add_argument("--analyze", action="store_true",
                        help="SQLite: run ANALYZE once the rows are loaded (PostgreSQL always "
                             "does, as its autovacuum would)")
    parser.add_argument("--sessions", type=int, default=2000,
                        help="TO_BE_BUILT sessions without build time (default 2000)")
    parser.add_argument("--build-sessions", type=int, default=400,
                        help="TO_BE_BUILT sessions with the simulated build (default 400)")
    parser.add_argument("--build-ms", type=float, default=10.0,
                        help="simulated build time per session (default 10 ms)")
    parser.add_argument("--builders", type=int, default=8, help="concurrent builders (default 8)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10],
                        help="claim_sessions limits B (default 1 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="200 and 80 sessions, 1 repeat (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--strict", action="store_true",
                        help=f"exit 1 when a speed-up misses its target ({SPEEDUP_TARGET:g}x)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--versus", choices=("pgqueuer",),
                        help="PostgreSQL: only the side-by-side run against this job queue")
    parser.add_argument("--versus-sessions", type=int, default=5000,
                        help="sessions (and jobs) of --versus (default 5000)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS",
                        help="PostgreSQL: only 1 and 8 builders with MS ms round trips (try 20)")
    parser.add_argument("--latency-sessions", type=int, default=400,
                        help="sessions of --latency (default 400)")
    parser.add_argument("--backlog", type=int, default=0, metavar="N",
                        help="PostgreSQL: only claims through a backlog of N sessions (try 50000)")
    parser.add_argument("--history", type=int, default=0,
                        help="history rows before the --backlog (default 3N)")
    parser.add_argument("--backlog-probes", type=int, default=200,
                        help="claims timed early and late in the --backlog (default 200)")
    args = parser.parse_args(argv)
    args.history = args.history or 3 * args.backlog
    if args.quick:
        args.sessions, args.build_sessions, args.repeats = 200, 80, 1
    if args.url and args.backend != "postgresql":
        parser.error("--url needs --backend postgresql")
    if args.tmpfs and (args.backend != "sqlite" or not os.access("/dev/shm", os.W_OK)):
        parser.error("--tmpfs needs --backend sqlite and a writable /dev/shm")
    if (args.versus or args.latency or args.backlog) and args.backend != "postgresql":
        parser.error("--versus, --latency and --backlog need --backend postgresql")
    if args.analyze and args.backend != "sqlite":
        parser.error("--analyze is for --backend sqlite (PostgreSQL is always analyzed)")
    if min(args.sessions, args.build_sessions, args.builders, args.repeats, *args.batches) < 1:
        parser.error("sizes, builders, batches and repeats must be at least 1")
    return args


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a SIGTERM cleans up as a Ctrl-C does


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark; return its exit status (see the module's docstring)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    saved = {var: os.environ.get(var) for var in (ENV_DB_PATH, ENV_DB_PATH_2X)}
    store: Optional[Store] = None
    try:
        try:
            store = PostgresStore(args.url) if args.backend == "postgresql" \
                else SqliteStore(args.tmpfs, args.analyze)
            if args.versus or args.latency or args.backlog:
                assert isinstance(store, PostgresStore)
                figures, missed_19 = run_issue_19(store, args)
            else:
                results = bench(store, args)
                print()
                figures = report(store, results, args)
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            if store is not None:
                store.close()
    except KeyboardInterrupt:
        print("interrupted (cleaned up)", file=sys.stderr)
        return 130
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    if figures.get("problems"):
        return 2
    if "simulated_build" not in figures:
        return 1 if args.strict and missed_19 else 0
    missed = [batch for batch, values in figures["simulated_build"].items()
              if values["verdict"] != "PASS"]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
