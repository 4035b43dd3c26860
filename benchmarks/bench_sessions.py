"""Benchmark of pairing session logs, looking instruments up and inserting logs.

Run after ``pip install -e ".[test,postgres]"``, from anywhere::

    python benchmarks/bench_sessions.py                      # SQLite, about 2 minutes
    python benchmarks/bench_sessions.py --quick              # smoke run, under a minute
    python benchmarks/bench_sessions.py --backend postgresql # a throwaway server of its own
    python benchmarks/bench_sessions.py --backend postgresql --url postgresql://user@host/db

Every case times the package against a baseline on the same data, the two
run alternately in one loop (the order rotating each round) after a full
garbage collection, so that the noise of a shared machine hits both alike;
the figures are medians. Ratios matter, not absolute times. Each target is
printed with PASS or MISS; the run ends with ``N targets met, M missed`` and
exits 0 (1 with ``--strict`` when a target is missed).

Data: N TO_BE_BUILT START/END pairs and N completed sessions (START, END and
RECORD_GENERATION: 3N history rows), shuffled, with the timestamp forms
found in real databases (naive or with an offset, seconds to microseconds).

The *floor* is the least any implementation must do: one raw fetch of the
TO_BE_BUILT START and END rows plus ``datetime.fromisoformat`` of each
timestamp. On SQLite it opens the file per call, as the package does, and
reads through the partial covering index ``init_db`` makes (or, on a 1.4
file, which has no such index, runs the plain query). On PostgreSQL it
connects (``psycopg.connect``) and fetches; since the package keeps a pool
and so does not connect per call, the ratio against the fetch alone on a
kept connection is printed beside it.

SQLite cases (the default backend):

1. Clean: ``get_sessions_to_build()`` / floor at 5k, 10k, 20k pairs (target
   1.5 at 10k); time(20k) / time(10k) <= 2.2; NexusLIMS 1.4's pairing (every
   START scans every END) / ours >= 25 at 5k.
2. Problems: 1, 10 and 100 broken sessions (two ENDs, an END without its
   START, a START without its END, an END before its START, an unparseable
   timestamp, an END on another instrument; all old enough to be marked)
   added to the 10k database: ``on_error`` raise, strict, skip, mark and
   ``find_session_problems()``, each / floor <= 1.5. raise and strict are
   timed until they raise; each mark run (and its floor run) gets a fresh
   copy of the file, copied outside the timed part.
3. A NexusLIMS 1.4 file (1.4's own creation script, no index of ours) at
   10k and 100k pairs: ours / plain-query floor <= 2.0; time(100k) /
   time(10k) <= 11 (``--skip-100k`` leaves the 100k size out). The 100k size
   and the 1.4 approach of case 1 run 5 times, not ``--repeats`` times.
4. Big history: 1M history rows, 1k pairs to build: ``get_sessions_to_build()``
   <= 10 ms, whatever the history (``--skip-1m`` leaves it out).
5. Memory: tracemalloc's peak during one call at 100k pairs, and what its
   result keeps (no target).
6. Look-ups: 10,000 calls of ``instrument_db[pid]`` and the
   ``get_instr_from_*`` functions against NexusLIMS 1.4's loops over a dict
   loaded once, <= 2.0 each. Ours asks SQLite whether another process
   changed the database (``PRAGMA data_version`` on a kept connection) at
   every look-up, so that the dict never goes stale; the cost of that one
   statement, and of an ``os.stat``, are printed beside the ratios: a
   look-up cannot cost less than one such check, so the look-ups that are a
   dict access or a short loop in 1.4 miss by far. Each look-up / one raw
   ``PRAGMA data_version`` on a kept connection <= 1.5 (for the look-up by
   file path, a loop over the instruments' folders as in 1.4, reported).
7. Inserts: ``insert_logs`` of 20k new logs / one raw ``executemany`` in one
   transaction <= 1.5; ``insert_log()`` per call against a raw one-row
   transaction (reported).

PostgreSQL cases (``--backend postgresql``; a schema of its own, dropped at
the end; without ``--url``, on a throwaway server started with
``nexusLIMS.db.testing.PostgresServer``):

1. ``get_sessions_to_build()`` / the floor on a kept connection at 10k and
   100k pairs (plus 3N history) <= 1.5; against the connecting floor, reported.
2. ``insert_logs`` of 20k logs / the faster of a raw COPY and a raw
   ``executemany`` of the same rows (one transaction each) <= 2.0.
3. Round trips of one ``insert_log()`` (after a warm-up call), counted by
   ``tests/roundtrips.py``'s proxy: exactly 1; and its time per call against
   a raw one-row INSERT in autocommit (reported).
4. Calls over a network, run first (5 sessions to build): every 1.4 call
   (``get_sessions_to_build``, ``update_session_status``,
   ``insert_record_generation_event``, ``insert_log`` of a new, a stored and
   a revised log, ``make_db_query``, ``db_query``, the instrument look-ups)
   through the proxy adding 0, 1 and 20 ms round trips: its round trips
   (target: 1 each, 0 for a look-up) and its time per call divided by one
   round trip, beside a raw psycopg ``SELECT 1``.

Options: ``--backend {sqlite,postgresql}``, ``--url URL``, ``--repeats N``
(default 11; 3 with ``--quick``), ``--quick``, ``--skip-100k``, ``--skip-1m``,
``--seed N``, ``--json FILE`` (every figure and raw time) and ``--strict``.
``--quick`` keeps the sizes whose ratios are targets (5k-20k pairs, 20k
inserts) but runs each measurement 3 times (the 1.4 approach once), puts
the 1.4 file at 2k and 20k pairs, the history at 100k rows, the memory case
at 20k pairs, the look-ups at 2,000 calls, and PostgreSQL at 10k pairs only.

The benchmark talks to the databases directly for its set-up and baselines
(the package itself never does). It imports ``make_legacy_db`` and
``RoundTripCounter`` from the repository's ``tests`` folder.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

from dateutil.parser import isoparse

from nexusLIMS import instruments as live
from nexusLIMS.db import make_db_query, sessions
from nexusLIMS.db.config import ENV_DATA_ROOT, ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.connection import close_watches
from nexusLIMS.db.instruments import Instrument, load_instruments
from nexusLIMS.db.samples import add_sample_instruments, sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.session_handler import SessionLog, db_query, get_sessions_to_build, insert_logs
from nexusLIMS.db.sessions import Session, find_session_problems
from nexusLIMS.utils import is_subpath

if TYPE_CHECKING:
    import psycopg

Row = tuple[str, str, str, str, str, Optional[str]]

_TESTS = Path(__file__).resolve().parent.parent / "tests"
_COLUMNS = 'session_identifier, instrument, timestamp, event_type, record_status, "user"'
_INSERT = f"INSERT INTO session_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_PG = f"INSERT INTO session_log ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
_COPY_PG = f"COPY session_log ({_COLUMNS}) FROM STDIN"
_FLOOR_SELECT = 'SELECT id_session_log, session_identifier, instrument, timestamp, event_type, ' \
                '"user"'
_FLOOR_WHERE = "WHERE record_status = 'TO_BE_BUILT' AND event_type IN ('START', 'END')"
# The partial covering index that init_db creates: the cheapest plan for these
# rows (SQLite's own choice, the status/event index plus a table look-up per
# row, is about 30% slower).
FLOOR_INDEXED = f"{_FLOOR_SELECT} FROM session_log INDEXED BY session_log_to_be_built_idx " \
                f"{_FLOOR_WHERE}"
# A NexusLIMS 1.4 file has no index on these columns (and the server plans its own).
FLOOR_PLAIN = f"{_FLOOR_SELECT} FROM session_log {_FLOOR_WHERE}"

_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", None)
_ZONES = (timezone(timedelta(hours=-5)), timezone(timedelta(hours=-4)), timezone.utc)
_DATA_ROOT = "/srv/mmfnexus"
_BATCH = 25  # insert_log calls per timed run
_MB = 1024 * 1024


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
    """Return a NEMO usage-event URL or a UUID-shaped string."""
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
    """Return the START and END (and RECORD_GENERATION) rows of one session."""
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


def new_rows(count: int, pids: list[str], seed: int, first: int) -> list[Row]:
    """Return ``count`` new TO_BE_BUILT rows (count/2 pairs) that no database holds.

    Sessions are numbered from ``first``, and the random stream depends on
    it: sets made from different ``first`` (far enough apart) share no
    identifier, with each other or with :func:`make_rows`.
    """
    rng = random.Random(f"{seed}/{first}")
    rows: list[Row] = []
    for number in range(first, first + count // 2):
        rows += _session_rows(rng, number, pids, "TO_BE_BUILT", False)
    return rows


def as_logs(rows: Iterable[Row]) -> list[SessionLog]:
    """Return ``rows`` as :class:`SessionLog` objects."""
    return [SessionLog(ident, pid, stamp, event, user, status)
            for ident, pid, stamp, event, status, user in rows]


def history_rows(count: int, pids: list[str]) -> Iterator[Row]:
    """Yield ``count`` COMPLETED rows (START, END, RECORD_GENERATION per session), cheaply."""
    events = ("START", "END", "RECORD_GENERATION")
    base = datetime(2015, 1, 1)
    for number in range(count):
        session, event = divmod(number, 3)
        when = base + timedelta(minutes=10 * session + 3 * event)
        yield (f"history-{session:08d}", pids[session % len(pids)], when.isoformat(),
               events[event], "COMPLETED", _USERS[session % len(_USERS)])


def problem_rows(count: int, pids: list[str]) -> list[Row]:
    """Return the TO_BE_BUILT rows of ``count`` broken sessions, old enough to be marked.

    The kinds cycle, the first being a START with two ENDs so that ``raise``
    always has an END-count problem to raise for. An unknown instrument is
    left out: the foreign key keeps it out of an init_db database.
    """
    rows: list[Row] = []
    for number in range(count):
        ident = f"problem-{number:05d}"
        pid, other = pids[number % len(pids)], pids[(number + 1) % len(pids)]
        day = f"2020-03-{1 + number % 28:02d}"
        start, end = f"{day}T09:00:00", f"{day}T17:30:00"
        kind = number % 6
        session: list[tuple[str, str, str]] = {
            0: [(pid, start, "START"), (pid, end, "END"), (pid, f"{day}T18:00:00", "END")],
            1: [(pid, end, "END")],  # an END without a START
            2: [(pid, end, "START"), (pid, start, "END")],  # END before START
            3: [(pid, start, "START"), (pid, "the 3rd of March", "END")],  # unparseable
            4: [(pid, start, "START"), (other, end, "END")],  # END on another instrument
            5: [(pid, start, "START")],  # a START without its END
        }[kind]
        rows += [(ident, where, stamp, event, "TO_BE_BUILT", "alice")
                 for where, stamp, event in session]
    return rows


# --------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------


def tests_helper(module: str, name: str) -> Any:
    """Return ``name`` from a helper module of the repository's ``tests`` folder."""
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    return getattr(importlib.import_module(module), name)


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` raw, in autocommit mode (set-up and baselines only)."""
    return sqlite3.connect(path, isolation_level=None)


def create_database(path: Path, *, legacy: bool = False) -> list[str]:
    """Create an init_db database (or an untouched 1.4 file) with the sample instruments.

    Returns
    -------
    list of str
        The instrument PIDs, sorted.
    """
    if legacy:
        make_legacy_db: Callable[[Path], Path] = tests_helper("legacy_schema", "make_legacy_db")
        make_legacy_db(path)
    else:
        init_db(path)
    return sorted(add_sample_instruments(path))


def fill(path: Path, rows: Iterable[Row]) -> None:
    """Insert ``rows`` raw, with one executemany in one transaction, as fast as SQLite goes."""
    with closing(sqlite_connect(path)) as conn:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MB: index inserts stay in memory
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")


def fresh_copy(template: Path, scratch: Path) -> Path:
    """Copy ``template`` over ``scratch`` (no journal left behind); return ``scratch``."""
    Path(f"{scratch}-journal").unlink(missing_ok=True)
    shutil.copyfile(template, scratch)
    return scratch


def schema_objects(path: Path) -> list[tuple[str, str]]:
    """Return the (type, name) of every table, index and trigger of ``path``."""
    with closing(sqlite_connect(path)) as conn:
        return sorted(conn.execute("SELECT type, name FROM sqlite_master").fetchall())


# --------------------------------------------------------------------------
# Baselines: the floor, NexusLIMS 1.4, raw writes
# --------------------------------------------------------------------------


def parse_rows(rows: list[tuple[Any, ...]]) -> int:
    """Parse the timestamp (4th column) of each row, as any pairing must; return the count."""
    parse = datetime.fromisoformat
    for row in rows:
        try:  # noqa: SIM105 (contextlib.suppress would slow the floor's loop down)
            parse(row[3])
        except ValueError:  # an unparseable timestamp (the problem cases)
            pass
    return len(rows)


def floor(path: Path, query: str = FLOOR_INDEXED) -> int:
    """Fetch the TO_BE_BUILT START/END rows and parse each timestamp: nothing less."""
    with closing(sqlite_connect(path)) as conn:
        rows = conn.execute(query).fetchall()
    return parse_rows(rows)


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
    found = []
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
        found.append(
            Session(
                session_identifier=start_l.session_identifier,
                instrument=instrument_db[start_l.instrument],
                dt_range=(isoparse(start_l.timestamp), isoparse(end_l.timestamp)),
                user=start_l.user,
            )
        )
    return found


def legacy_from_api_url(db: dict[str, Instrument], api_url: str) -> Optional[Instrument]:
    """NexusLIMS 1.4's ``get_instr_from_api_url``."""
    for _, v in db.items():
        if v.api_url == api_url:
            return v
    return None


def legacy_from_calendar_name(db: dict[str, Instrument], cal_name: str) -> Optional[Instrument]:
    """NexusLIMS 1.4's ``get_instr_from_calendar_name`` (a substring of the api_url)."""
    for _, v in db.items():
        if v.api_url and cal_name in v.api_url:
            return v
    return None


def legacy_from_filepath(db: dict[str, Instrument], path: str) -> Optional[Instrument]:
    """NexusLIMS 1.4's ``get_instr_from_filepath``."""
    for _, v in db.items():
        if v.filestore_path and is_subpath(
                path, Path(os.environ[ENV_DATA_ROOT]) / v.filestore_path):
            return v
    return None


def raw_executemany(path: Path, rows: list[Row]) -> None:
    """Insert ``rows`` with one executemany in one transaction (foreign keys on, as ours)."""
    with closing(sqlite_connect(path)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")


def raw_insert_one(path: Path, row: Row) -> None:
    """Insert one row in its own transaction, as a raw baseline for ``insert_log``."""
    with closing(sqlite_connect(path)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_INSERT, row)
        conn.execute("COMMIT")


def until_raises(func: Callable[[], object]) -> Callable[[], bool]:
    """Return a call of ``func`` that catches its ValueError and tells whether it raised."""
    def run() -> bool:
        try:
            func()
        except ValueError:
            return True
        return False
    return run


def loop(func: Callable[[Any], object], args: Sequence[Any], calls: int) -> Callable[[], None]:
    """Return ``calls`` calls of ``func``, cycling through ``args``."""
    count = len(args)

    def run() -> None:
        for number in range(calls):
            func(args[number % count])
    return run


def each(func: Callable[[Any], object], batches: Iterator[Sequence[Any]]) -> Callable[[], None]:
    """Return a run that calls ``func`` on every item of the next batch."""
    def run() -> None:
        for item in next(batches):
            func(item)
    return run


# --------------------------------------------------------------------------
# Timing and report
# --------------------------------------------------------------------------


@dataclass
class Candidate:
    """One thing to time: ``run``, after an untimed ``prepare``; at most ``runs`` times."""

    name: str
    run: Callable[[], object]
    prepare: Optional[Callable[[], object]] = None
    runs: Optional[int] = None


def measure(candidates: Sequence[Candidate], repeats: int) -> dict[str, list[float]]:
    """Time every candidate ``repeats`` times, interleaved; return the seconds of each run.

    Each round runs every candidate once, the order rotating from round to
    round, each run after its ``prepare`` and a full garbage collection.
    """
    times: dict[str, list[float]] = {candidate.name: [] for candidate in candidates}
    for round_number in range(repeats):
        shift = round_number % len(candidates)
        for candidate in [*candidates[shift:], *candidates[:shift]]:
            if candidate.runs is not None and len(times[candidate.name]) >= candidate.runs:
                continue
            if candidate.prepare is not None:
                candidate.prepare()
            gc.collect()
            start = time.perf_counter()
            candidate.run()
            times[candidate.name].append(time.perf_counter() - start)
    return times


@dataclass
class Figure:
    """One reported figure; with ``op`` and ``target``, a target met or missed."""

    group: str
    case: str
    value: Optional[float]  # None: not measured
    unit: str = ""  # "" for a ratio
    op: Optional[str] = None  # "<=", ">=" or "=="
    target: Optional[float] = None
    note: str = ""

    @property
    def verdict(self) -> str:
        """PASS, MISS, "" (reported only) or "skipped"."""
        if self.value is None:
            return "skipped"
        if self.op is None or self.target is None:
            return ""
        met = {"<=": self.value <= self.target, ">=": self.value >= self.target,
               "==": self.value == self.target}[self.op]
        return "PASS" if met else "MISS"


def _number(value: float, unit: str) -> str:
    """Format a value: a ratio with two decimals, a count as it is, a time with its unit."""
    if unit == "count":
        return f"{value:g}"
    digits = 0 if unit == "bytes" or abs(value) >= 100 else 2
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def size(n: int) -> str:
    """Return 5000 as 5k, 1000000 as 1M."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


class Report:
    """The figures and raw times of a run, printed as tables or written as JSON."""

    def __init__(self) -> None:
        self.machine: dict[str, str] = {}
        self.groups: dict[str, str] = {}  # title -> description
        self.figures: list[Figure] = []
        self.times: dict[str, dict[str, list[float]]] = {}

    def group(self, title: str, description: str) -> str:
        """Start a group of figures; return its title."""
        self.groups[title] = description
        print(f"  {title}", file=sys.stderr, flush=True)
        return title

    def measure(
        self, group: str, candidates: Sequence[Candidate], repeats: int
    ) -> dict[str, float]:
        """Time the candidates interleaved (see :func:`measure`); return their medians."""
        runs = measure(candidates, repeats)
        self.times.setdefault(group, {}).update(runs)
        return {name: statistics.median(values) for name, values in runs.items()}

    def medians(self, group: str) -> dict[str, float]:
        """Return the medians of every candidate timed in ``group``."""
        return {name: statistics.median(values) for name, values in self.times[group].items()}

    def add(self, group: str, case: str, value: Optional[float], unit: str = "",
            target: Optional[tuple[str, float]] = None, note: str = "") -> None:
        """Add a figure; ``target`` is ``(op, limit)`` for a figure with a target."""
        op, limit = target if target is not None else (None, None)
        self.figures.append(Figure(group, case, value, unit, op, limit, note))

    def counts(self) -> tuple[int, int]:
        """Return (targets met, targets missed)."""
        verdicts = [figure.verdict for figure in self.figures]
        return verdicts.count("PASS"), verdicts.count("MISS")

    def print(self, header: str) -> None:
        """Print the machine, ``header``, a table per group, the raw times and the summary."""
        print("; ".join(f"{key} {value}" for key, value in self.machine.items()))
        print(header)
        for title, description in self.groups.items():
            print(f"\n{title}\n  {description}")
            print(f"  {'case':<60}{'value':>15}{'target':>10}  result")
            for figure in (f for f in self.figures if f.group == title):
                value = "-" if figure.value is None else _number(figure.value, figure.unit)
                target = "" if figure.op is None or figure.target is None else \
                    f"{figure.op} {figure.target:g}"
                note = f"  ({figure.note})" if figure.note else ""
                print(f"  {figure.case:<60}{value:>15}{target:>10}  {figure.verdict}{note}")
        print("\nraw times: median [min - max] of n interleaved runs, ms")
        for title, runs in self.times.items():
            print(f"  {title}")
            for name, values in runs.items():
                print(f"    {name:<58}{statistics.median(values) * 1e3:>10.2f} "
                      f"[{min(values) * 1e3:.2f} - {max(values) * 1e3:.2f}]  n={len(values)}")
        met, missed = self.counts()
        print(f"\n{met} targets met, {missed} missed")

    def write_json(self, path: Path, options: dict[str, Any]) -> None:
        """Write every figure and raw time to ``path``."""
        document = {
            "machine": self.machine,
            "options": options,
            "groups": self.groups,
            "figures": [{**asdict(figure), "verdict": figure.verdict} for figure in self.figures],
            "times_s": {title: {name: {"median": statistics.median(values), "runs": values}
                                for name, values in runs.items()}
                        for title, runs in self.times.items()},
            "summary": dict(zip(("met", "missed"), self.counts())),
        }
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def machine() -> dict[str, str]:
    """Describe the machine: platform, CPUs, Python, SQLite."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "CPUs": f"{os.cpu_count()} ({cpu})",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "SQLite": sqlite3.sqlite_version,
    }


@contextmanager
def quiet() -> Iterator[None]:
    """Silence logging (the package warns about every broken session); restore it after."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables (and unset ``NX_DB_PATH``); restore them after."""
    names = [*values, ENV_DB_PATH_2X]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop(ENV_DB_PATH_2X, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def use_database(target: object) -> None:
    """Point ``nexusLIMS_db_path`` at ``target`` (a path or a URL)."""
    os.environ[ENV_DB_PATH] = str(target)


# --------------------------------------------------------------------------
# What to measure
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The sizes and repeats of a run (from the options)."""

    repeats: int
    slow_repeats: int  # the 1.4 approach, and the 100k sizes
    clean_sizes: tuple[int, int, int] = (5_000, 10_000, 20_000)
    problem_counts: tuple[int, ...] = (1, 10, 100)
    legacy_sizes: tuple[int, ...] = (10_000, 100_000)
    history_rows: int = 1_000_000  # 0: skipped
    history_pairs: int = 1_000
    memory_pairs: int = 100_000
    lookup_calls: int = 10_000
    insert_count: int = 20_000
    pg_sizes: tuple[int, ...] = (10_000, 100_000)
    round_trip_calls: int = 20
    seed: int = 1234
    skipped: tuple[str, ...] = field(default_factory=tuple)


def make_plan(args: argparse.Namespace) -> Plan:
    """Return the plan of a run: full sizes, or small ones with ``--quick``."""
    repeats = args.repeats or (3 if args.quick else 11)
    plan = Plan(repeats=repeats, slow_repeats=min(5, repeats), seed=args.seed)
    if args.quick:
        plan = Plan(repeats=repeats, slow_repeats=1, seed=args.seed,
                    legacy_sizes=(2_000, 20_000), history_rows=100_000, memory_pairs=20_000,
                    lookup_calls=2_000, pg_sizes=(10_000,), round_trip_calls=5)
    skipped: list[str] = []
    if args.skip_100k:
        skipped.append("--skip-100k")
        plan = replace(plan, legacy_sizes=plan.legacy_sizes[:1],
                       memory_pairs=plan.clean_sizes[-1])
    if args.skip_1m:
        skipped.append("--skip-1m")
        plan = replace(plan, history_rows=0)
    return replace(plan, skipped=tuple(skipped))


# --------------------------------------------------------------------------
# SQLite cases
# --------------------------------------------------------------------------


def bench_clean(report: Report, plan: Plan, work: Path, pids: list[str]) -> dict[int, Path]:
    """Case 1: pairing a clean init_db database at three sizes; return the databases."""
    group = report.group("1. Clean pairing (SQLite, init_db database)",
                         "N TO_BE_BUILT pairs + 3N history rows, shuffled; floor = sqlite3 "
                         "fetch through the covering index + fromisoformat; all sizes in one "
                         "interleaved loop")
    small, mid, large = plan.clean_sizes
    paths: dict[int, Path] = {}
    for n_pairs in plan.clean_sizes:
        paths[n_pairs] = work / f"clean-{n_pairs}.sqlite"
        create_database(paths[n_pairs])
        fill(paths[n_pairs], make_rows(n_pairs, pids, plan.seed))
        _check_clean(paths[n_pairs], n_pairs, with_legacy=n_pairs == small)
    legacy = Candidate("1.4 approach", partial(legacy_get_sessions_to_build, paths[small],
                                               load_instruments(paths[small])),
                       runs=plan.slow_repeats)
    ours = pairing_at_sizes(report, group, paths, FLOOR_INDEXED, repeats=plan.repeats,
                            targets={mid: ("<=", 1.5)}, extra=[legacy])
    report.add(group, f"time({size(large)}) / time({size(mid)})", ours[large] / ours[mid],
               target=("<=", 2.2))
    report.add(group, f"1.4 approach / ours at {size(small)}",
               report.medians(group)["1.4 approach"] / ours[small], target=(">=", 25))
    return paths


def pairing_at_sizes(
    report: Report, group: str, paths: dict[int, Path], query: str, *, repeats: int,
    targets: dict[int, tuple[str, float]], runs: Optional[dict[int, int]] = None,
    extra: Sequence[Candidate] = (),
) -> dict[int, float]:
    """Time ours and the floor (``query``) on each database, all in one interleaved loop.

    Adds ``get_sessions_to_build / floor`` (with its target at the sizes of
    ``targets``) and our time per size to ``group``; returns our median per
    size. ``runs`` limits the runs at some sizes; ``extra`` is timed too.
    """
    runs = runs or {}
    candidates = list(extra)
    for n_pairs, path in paths.items():
        candidates += [
            Candidate(f"floor at {size(n_pairs)}", partial(floor, path, query),
                      runs=runs.get(n_pairs)),
            Candidate(f"get_sessions_to_build at {size(n_pairs)}",
                      partial(get_sessions_to_build, database=path), runs=runs.get(n_pairs)),
        ]
    medians = report.measure(group, candidates, repeats)
    ours = {n: medians[f"get_sessions_to_build at {size(n)}"] for n in paths}
    for n_pairs, seconds in ours.items():
        report.add(group, f"get_sessions_to_build / floor at {size(n_pairs)}",
                   seconds / medians[f"floor at {size(n_pairs)}"], target=targets.get(n_pairs))
    for n_pairs, seconds in ours.items():
        report.add(group, f"get_sessions_to_build at {size(n_pairs)}", seconds * 1e3, "ms")
    return ours


def _check_clean(path: Path, n_pairs: int, *, with_legacy: bool) -> None:
    """Check (untimed) that ours, the floor and the 1.4 approach see the same sessions."""
    found = get_sessions_to_build(database=path)
    assert len(found) == n_pairs
    assert floor(path) == 2 * n_pairs
    if with_legacy:
        legacy = legacy_get_sessions_to_build(path, load_instruments(path))
        assert {_key(s) for s in legacy} == {_key(s) for s in found}


def _key(session: Session) -> tuple[str, str, datetime, datetime, Optional[str]]:
    return (session.session_identifier, str(session.instrument.name), session.dt_from,
            session.dt_to, session.user)


def bench_problems(report: Report, plan: Plan, work: Path, pids: list[str],
                   clean: Path, n_pairs: int) -> None:
    """Case 2: every ``on_error`` mode with 1, 10 and 100 broken sessions."""
    group = report.group(f"2. Problems (SQLite, {size(n_pairs)} pairs + broken sessions)",
                         "broken sessions of six kinds, all old enough to be marked; raise "
                         "and strict timed until they raise; mark (and its floor) on a "
                         "fresh copy each run")
    scratch = work / "scratch.sqlite"
    for count in plan.problem_counts:
        template = fresh_copy(clean, work / f"problems-{count}.sqlite")
        fill(template, problem_rows(count, pids))
        _check_problems(template, scratch, count, n_pairs)
        medians = report.measure(f"{group}: {count} broken",
                                 _problem_candidates(template, scratch), plan.repeats)
        for mode in ("raise (until it raises)", "strict (until it raises)", "skip",
                     "find_session_problems"):
            report.add(group, f"{mode.split(' ')[0]} / floor, {count} broken",
                       medians[mode] / medians["floor"], target=("<=", 1.5))
        report.add(group, f"mark / floor, {count} broken (fresh copies)",
                   medians["mark (fresh copy)"] / medians["floor (fresh copy)"],
                   target=("<=", 1.5))


def _problem_candidates(template: Path, scratch: Path) -> list[Candidate]:
    """Return the floor, every ``on_error`` mode and find_session_problems on ``template``.

    ``mark`` and a second floor run on ``scratch``, a fresh copy each time.
    """
    get = sessions.get_sessions_to_build
    to_scratch = partial(fresh_copy, template, scratch)
    return [
        Candidate("floor", partial(floor, template)),
        Candidate("raise (until it raises)", until_raises(partial(get, on_error="raise",
                                                                  database=template))),
        Candidate("strict (until it raises)", until_raises(partial(get, on_error="strict",
                                                                   database=template))),
        Candidate("skip", partial(get, on_error="skip", database=template)),
        Candidate("find_session_problems", partial(find_session_problems, database=template)),
        Candidate("floor (fresh copy)", partial(floor, scratch), prepare=to_scratch),
        Candidate("mark (fresh copy)", partial(get, on_error="mark", database=scratch),
                  prepare=to_scratch),
    ]


def _check_problems(template: Path, scratch: Path, count: int, n_pairs: int) -> None:
    """Check (untimed) that every mode sees the broken sessions and the clean ones."""
    found = find_session_problems(database=template)
    assert len({p.session_identifier for p in found}) == count, found
    assert until_raises(partial(sessions.get_sessions_to_build, on_error="raise",
                                database=template))()
    assert until_raises(partial(sessions.get_sessions_to_build, on_error="strict",
                                database=template))()
    assert len(sessions.get_sessions_to_build(on_error="skip", database=template)) == n_pairs
    fresh_copy(template, scratch)
    assert len(sessions.get_sessions_to_build(on_error="mark", database=scratch)) == n_pairs
    assert find_session_problems(database=scratch) == []  # every one marked ERROR


def build_big(work: Path, plan: Plan, pids: list[str]) -> dict[str, Path]:
    """Make the 1.4 files and the init_db database of ``memory_pairs`` (rows made once each)."""
    paths: dict[str, Path] = {}
    wanted = {f"legacy-{n}": (n, True) for n in plan.legacy_sizes}
    if plan.memory_pairs not in plan.clean_sizes:
        wanted[f"memory-{plan.memory_pairs}"] = (plan.memory_pairs, False)
    for n_pairs in sorted({n for n, _ in wanted.values()}):
        rows = make_rows(n_pairs, pids, plan.seed)
        for name, (count, legacy) in wanted.items():
            if count == n_pairs:
                paths[name] = work / f"{name}.sqlite"
                create_database(paths[name], legacy=legacy)
                fill(paths[name], rows)
        del rows
        gc.collect()
    return paths


def bench_legacy_file(report: Report, plan: Plan, files: dict[str, Path]) -> None:
    """Case 3: an untouched NexusLIMS 1.4 file (no index of ours) at two sizes."""
    group = report.group("3. NexusLIMS 1.4 file (SQLite, 1.4's creation script, no index of ours)",
                         "N TO_BE_BUILT pairs + 3N history rows; floor = the plain query "
                         "(no index serves it) + fromisoformat; both sizes in one loop")
    paths = {n_pairs: files[f"legacy-{n_pairs}"] for n_pairs in plan.legacy_sizes}
    before = {path: schema_objects(path) for path in paths.values()}
    for n_pairs, path in paths.items():
        assert len(get_sessions_to_build(database=path)) == n_pairs
        assert floor(path, FLOOR_PLAIN) == 2 * n_pairs
    slow = {n_pairs: plan.slow_repeats for n_pairs in paths if n_pairs >= 100_000}
    ours = pairing_at_sizes(report, group, paths, FLOOR_PLAIN, repeats=plan.repeats,
                            targets={n: ("<=", 2.0) for n in paths}, runs=slow)
    assert all(schema_objects(path) == objects for path, objects in before.items()), \
        "the 1.4 file was changed"
    small, big = plan.legacy_sizes[0], plan.legacy_sizes[-1]
    if big != small:
        report.add(group, f"time({size(big)}) / time({size(small)})", ours[big] / ours[small],
                   target=("<=", 11.0 * big / small / 10))
    else:
        report.add(group, "time(100k) / time(10k)", None, note="--skip-100k")


def bench_history(report: Report, plan: Plan, work: Path, pids: list[str]) -> None:
    """Case 4: a big history (COMPLETED rows) must not slow pairing down."""
    title = f"4. Big history (SQLite, {size(plan.history_rows or 1_000_000)} history rows)"
    group = report.group(title, f"{size(plan.history_pairs)} TO_BE_BUILT pairs; an absolute "
                                f"target: pairing must not read the history")
    case = f"get_sessions_to_build, {size(plan.history_pairs)} pairs"
    if not plan.history_rows:
        report.add(group, case, None, "ms", target=("<=", 10), note="--skip-1m")
        return
    path = work / "history.sqlite"
    create_database(path)
    rng = random.Random(plan.seed)
    pairs = [row for number in range(plan.history_pairs)
             for row in _session_rows(rng, 2 * number, pids, "TO_BE_BUILT", False)]
    started = time.perf_counter()
    fill(path, chain(history_rows(plan.history_rows, pids), pairs))
    built = time.perf_counter() - started
    use_database(path)
    assert len(get_sessions_to_build()) == plan.history_pairs
    medians = report.measure(group, [
        Candidate("floor", partial(floor, path)),
        Candidate("get_sessions_to_build", get_sessions_to_build),
    ], max(plan.repeats, 15))
    report.add(group, case, medians["get_sessions_to_build"] * 1e3, "ms", target=("<=", 10))
    report.add(group, "floor", medians["floor"] * 1e3, "ms")
    report.add(group, f"(set-up: {size(plan.history_rows)} rows inserted in)", built, "s")
    path.unlink()


def bench_memory(report: Report, path: Path, n_pairs: int) -> None:
    """Case 5: the peak Python memory of one call, and what its result keeps."""
    group = report.group(f"5. Memory (SQLite, {size(n_pairs)} pairs)",
                         "tracemalloc: peak during one call, and memory still held after it "
                         "(the result); no target")
    use_database(path)
    get_sessions_to_build()  # instruments cached, statements compiled: as in a service
    for name, call in (("get_sessions_to_build", get_sessions_to_build),
                       ("floor", partial(floor, path))):
        peak, kept, result = traced(call)
        report.add(group, f"{name}: peak", peak / _MB, "MB")
        if name == "get_sessions_to_build":
            count = len(result) if isinstance(result, list) else 1
            report.add(group, f"{name}: result ({count:,} sessions)", kept / _MB, "MB")
            report.add(group, f"{name}: result per session", kept / count, "bytes")
        del result


def traced(call: Callable[[], object]) -> tuple[int, int, object]:
    """Return the peak and the kept memory of one call (bytes), and its result."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = call()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, kept - base, result


def bench_lookups(report: Report, plan: Plan, path: Path) -> None:
    """Case 6: instrument look-ups against 1.4's loops over a dict loaded once."""
    calls = plan.lookup_calls
    group = report.group(f"6. Instrument look-ups (SQLite, {calls:,} calls each)",
                         "ours (live: checks PRAGMA data_version on every call) vs 1.4 (a "
                         "dict loaded once, never refreshed); per call")
    use_database(path)
    snapshot = load_instruments(path)
    cases = _lookup_cases(snapshot)
    candidates = []
    for name, (ours, legacy, args) in cases.items():
        assert [ours(a) for a in args] == [legacy(a) for a in args] == list(snapshot.values())
        candidates += [Candidate(name, loop(ours, args, calls)),
                       Candidate(f"{name} (1.4)", loop(legacy, args, calls))]
    with closing(sqlite_connect(path)) as watch:
        candidates += [
            Candidate("PRAGMA data_version (kept connection)",
                      loop(lambda _: watch.execute("PRAGMA data_version").fetchone(), [0],
                           calls)),
            Candidate("os.stat", loop(os.stat, [path], calls)),
        ]
        medians = report.measure(group, candidates, plan.repeats)
    per_call = {name: seconds / calls * 1e6 for name, seconds in medians.items()}
    for name in cases:
        report.add(group, f"{name}: ours / 1.4", per_call[name] / per_call[f"{name} (1.4)"],
                   target=("<=", 2.0))
        report.add(group, f"{name}: ours - 1.4, per call",
                   per_call[name] - per_call[f"{name} (1.4)"], "us",
                   note=f"{per_call[name]:.2f} vs {per_call[f'{name} (1.4)']:.2f} us")
    version = per_call["PRAGMA data_version (kept connection)"]
    for name in cases:  # a look-up costs little more than the check it makes
        looped = "filepath" in name  # (a loop over every instrument's folder besides)
        report.add(group, f"{name} / one PRAGMA data_version", per_call[name] / version,
                   target=None if looped else ("<=", 1.5))
    for name in ("PRAGMA data_version (kept connection)", "os.stat"):
        report.add(group, f"context: one raw {name}", per_call[name], "us")


Lookup = Callable[[Any], object]


def _lookup_cases(snapshot: dict[str, Instrument]) -> dict[str, tuple[Lookup, Lookup, list[str]]]:
    """Return, per look-up, ours, 1.4's on ``snapshot``, and an argument per instrument."""
    urls = [instrument.api_url or "" for instrument in snapshot.values()]
    return {
        "instrument_db[pid]": (live.instrument_db.__getitem__, snapshot.__getitem__,
                               list(snapshot)),
        "get_instr_from_filepath": (
            live.get_instr_from_filepath, partial(legacy_from_filepath, snapshot),
            [str(Path(_DATA_ROOT) / (instrument.filestore_path or ".") / "2021" / "a.dm3")
             for instrument in snapshot.values()]),
        "get_instr_from_api_url": (live.get_instr_from_api_url,
                                   partial(legacy_from_api_url, snapshot), urls),
        "get_instr_from_calendar_name": (  # a substring of the api_url, as 1.4 matches
            live.get_instr_from_calendar_name, partial(legacy_from_calendar_name, snapshot),
            [url.split("/api/", 1)[1] for url in urls]),
    }


def bench_inserts(report: Report, plan: Plan, work: Path, template: Path,
                  pids: list[str]) -> None:
    """Case 7: ``insert_logs`` vs one raw executemany; ``insert_log`` vs a raw transaction."""
    count = plan.insert_count
    group = report.group(f"7. Inserts (SQLite, into the {template.stem} database)",
                         "raw baselines: one transaction, foreign keys on, as ours; every "
                         "batch on a fresh copy")
    rows = new_rows(count, pids, plan.seed, first=10_000_000)
    logs = as_logs(rows)
    scratch = work / "scratch.sqlite"
    use_database(scratch)
    fresh_copy(template, scratch)
    assert insert_logs(logs) == count
    assert insert_logs(logs[:2]) == 0  # there already: nothing inserted
    medians = report.measure(f"{group}: {size(count)} logs", [
        Candidate("raw executemany", lambda: raw_executemany(scratch, rows),
                  prepare=lambda: fresh_copy(template, scratch)),
        Candidate("insert_logs", lambda: insert_logs(logs),
                  prepare=lambda: fresh_copy(template, scratch)),
    ], plan.repeats)
    report.add(group, f"insert_logs({size(count)}) / raw executemany",
               medians["insert_logs"] / medians["raw executemany"], target=("<=", 1.5))
    fresh_copy(template, scratch)
    singles = new_rows(2 * _BATCH * plan.repeats, pids, plan.seed, first=20_000_000)
    half = len(singles) // 2
    medians = report.measure(f"{group}: {_BATCH} single calls per run", [
        Candidate("insert_log", each(SessionLog.insert_log, _batches(as_logs(singles[:half])))),
        Candidate("raw one-row transaction",
                  each(lambda row: raw_insert_one(scratch, row), _batches(singles[half:]))),
    ], plan.repeats)
    ours, raw = medians["insert_log"] / _BATCH, medians["raw one-row transaction"] / _BATCH
    report.add(group, "insert_log / raw one-row transaction", ours / raw)
    report.add(group, "insert_log per call", ours * 1e6, "us")
    report.add(group, "raw one-row transaction per call", raw * 1e6, "us")
    scratch.unlink()


def _batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """Yield ``items`` in batches of :data:`_BATCH`."""
    for first in range(0, len(items), _BATCH):
        yield items[first:first + _BATCH]


def run_sqlite(report: Report, plan: Plan) -> None:
    """Run the SQLite cases in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="nexuslims-bench-") as tmp, \
            environment(**{ENV_DATA_ROOT: _DATA_ROOT, ENV_DB_PATH: tmp}):
        work = Path(tmp)
        pids = sorted(str(instrument.name) for instrument in sample_instruments())
        try:
            clean = bench_clean(report, plan, work, pids)
            small, mid, large = plan.clean_sizes
            bench_problems(report, plan, work, pids, clean[mid], mid)
            files = build_big(work, plan, pids)
            bench_legacy_file(report, plan, files)
            for name in [name for name in files if name.startswith("legacy-")]:
                files.pop(name).unlink()
            bench_history(report, plan, work, pids)
            memory = files.get(f"memory-{plan.memory_pairs}", clean.get(plan.memory_pairs))
            assert memory is not None
            bench_memory(report, memory, plan.memory_pairs)
            bench_lookups(report, plan, clean[small])
            bench_inserts(report, plan, work, clean[large], pids)
        finally:
            close_watches()


# --------------------------------------------------------------------------
# PostgreSQL cases
# --------------------------------------------------------------------------


def pg_connect(url: str) -> psycopg.Connection[Any]:
    """Open a raw psycopg connection in autocommit mode (set-up and baselines only)."""
    import psycopg

    return psycopg.connect(url, autocommit=True)


def _bindir() -> Path:
    """Return the folder of PostgreSQL's server programs, as the pytest plugin finds it."""
    from nexusLIMS.db.testing import postgres_bindir

    found = postgres_bindir()
    if found is None:
        raise SystemExit("PostgreSQL's initdb was not found: install PostgreSQL, or pass --url")
    return found


@contextmanager
def postgres_schema(url: Optional[str]) -> Iterator[str]:
    """Yield the URL of a new schema on the server of ``url`` (or on a throwaway server).

    The schema is dropped at the end (and the throwaway server stopped);
    nothing outside it is touched.
    """
    from nexusLIMS.db.databases import close_pools
    from nexusLIMS.db.testing import PostgresServer

    server = None
    if url is None:
        server = PostgresServer(_bindir()).start()
        url = server.url
    schema = f"nexuslims_bench_{uuid.uuid4().hex[:12]}"
    try:
        with pg_connect(url) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in url else "?"
        try:
            yield f"{url}{separator}options=-csearch_path%3D{schema}"
        finally:
            close_pools()
            with pg_connect(url) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        if server is not None:
            server.stop()


def pg_load(url: str, rows: Iterable[Row]) -> None:
    """Replace every session log with ``rows`` (COPY, one transaction), then ANALYZE."""
    with pg_connect(url) as conn:
        with conn.transaction():
            conn.execute("TRUNCATE session_log")
            pg_copy(conn, rows)
        conn.execute("ANALYZE session_log")


def pg_copy(conn: psycopg.Connection[Any], rows: Iterable[Row]) -> None:
    """Write ``rows`` with COPY in the open transaction."""
    with conn.cursor() as cursor, cursor.copy(_COPY_PG) as copy:
        for row in rows:
            copy.write_row(row)


def pg_scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    """Return the first column of the first row of ``sql``."""
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def pg_floor(conn: psycopg.Connection[Any]) -> int:
    """Fetch the TO_BE_BUILT START/END rows on a kept connection and parse each timestamp."""
    return parse_rows(conn.execute(FLOOR_PLAIN).fetchall())


def pg_floor_connecting(url: str) -> int:
    """Connect, then :func:`pg_floor`: the floor as 1.4's one-connection-per-query code pays it."""
    with pg_connect(url) as conn:
        return pg_floor(conn)


def bench_pg_pairing(report: Report, plan: Plan, url: str, conn: psycopg.Connection[Any],
                     pids: list[str]) -> None:
    """PG case 1: pairing against a raw psycopg fetch."""
    group = report.group("PG 1. Pairing (PostgreSQL)",
                         "N TO_BE_BUILT pairs + 3N history rows; floor = psycopg.connect + "
                         "one fetchall + fromisoformat; the same on a kept connection (the "
                         "package keeps a pool) for context")
    for n_pairs in plan.pg_sizes:
        pg_load(url, make_rows(n_pairs, pids, plan.seed))
        assert len(get_sessions_to_build()) == n_pairs
        assert pg_floor(conn) == 2 * n_pairs
        medians = report.measure(f"{group}: {size(n_pairs)} pairs", [
            Candidate("floor", partial(pg_floor_connecting, url)),
            Candidate("get_sessions_to_build", get_sessions_to_build),
            Candidate("floor on a kept connection", partial(pg_floor, conn)),
        ], plan.repeats)
        ours = medians["get_sessions_to_build"]
        report.add(group, f"get_sessions_to_build / floor at {size(n_pairs)}",
                   ours / medians["floor"])
        report.add(group, f"get_sessions_to_build / kept-connection floor at {size(n_pairs)}",
                   ours / medians["floor on a kept connection"], target=("<=", 1.5))
        report.add(group, f"get_sessions_to_build at {size(n_pairs)}", ours * 1e3, "ms")


def bench_pg_inserts(report: Report, plan: Plan, conn: psycopg.Connection[Any],
                     pids: list[str]) -> None:
    """PG case 2: insert_logs against the faster of COPY and executemany."""
    count = plan.insert_count
    group = report.group(f"PG 2. insert_logs (PostgreSQL, {size(count)} logs)",
                         "raw baselines on a kept connection, one transaction each; the "
                         "new rows deleted (and the table vacuumed) before each run")
    rows = new_rows(count, pids, plan.seed, first=10_000_000)
    logs = as_logs(rows)
    last = pg_scalar(conn, "SELECT coalesce(max(id_session_log), 0) FROM session_log")

    def reset() -> None:
        conn.execute("DELETE FROM session_log WHERE id_session_log > %s", (last,))
        conn.execute("VACUUM session_log")

    def copy() -> None:
        with conn.transaction():
            pg_copy(conn, rows)

    def executemany() -> None:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_INSERT_PG, rows)

    reset()
    assert insert_logs(logs) == count
    medians = report.measure(group, [
        Candidate("raw COPY", copy, prepare=reset),
        Candidate("raw executemany", executemany, prepare=reset),
        Candidate("insert_logs", lambda: insert_logs(logs), prepare=reset),
    ], plan.repeats)
    reset()
    fastest = min(("raw COPY", "raw executemany"), key=medians.__getitem__)
    report.add(group, f"insert_logs / fastest raw bulk insert ({fastest})",
               medians["insert_logs"] / medians[fastest], target=("<=", 2.0))
    for name in ("insert_logs", "raw COPY", "raw executemany"):
        report.add(group, name, medians[name] * 1e3, "ms")


def bench_pg_insert_log(report: Report, plan: Plan, url: str, conn: psycopg.Connection[Any],
                        pids: list[str]) -> None:
    """PG case 3: round trips of one insert_log, and its time against a raw INSERT."""
    from nexusLIMS.db.databases import close_pools

    group = report.group("PG 3. insert_log (PostgreSQL)",
                         "round trips counted by tests/roundtrips.py's proxy after a warm-up "
                         "call; times direct, against a raw one-row INSERT in autocommit")
    counter: Callable[[str], Any] = tests_helper("roundtrips", "RoundTripCounter")
    logs = as_logs(new_rows(2 * plan.round_trip_calls + 2, pids, plan.seed, first=30_000_000))
    trips = []
    with counter(url) as proxy:
        use_database(proxy.url)
        logs[0].insert_log()  # opens the pooled connection, checks the schema
        for log in logs[1:]:
            proxy.reset()
            log.insert_log()
            trips.append(proxy.round_trips)
        close_pools()
    use_database(url)
    seen = ", ".join(f"{calls} call(s): {count}" for count, calls in sorted(Counter(trips).items()))
    report.add(group, f"round trips per insert_log(), most of {len(trips)} calls", max(trips),
               "count", target=("==", 1), note=seen)
    singles = new_rows(2 * _BATCH * plan.repeats, pids, plan.seed, first=20_000_000)
    half = len(singles) // 2
    medians = report.measure(f"{group}: {_BATCH} single calls per run", [
        Candidate("insert_log", each(SessionLog.insert_log, _batches(as_logs(singles[:half])))),
        Candidate("raw INSERT (autocommit)",
                  each(lambda row: conn.execute(_INSERT_PG, row), _batches(singles[half:]))),
    ], plan.repeats)
    ours, raw = medians["insert_log"] / _BATCH, medians["raw INSERT (autocommit)"] / _BATCH
    report.add(group, "insert_log / raw INSERT (autocommit)", ours / raw)
    report.add(group, "insert_log per call", ours * 1e6, "us")
    report.add(group, "raw INSERT per call", raw * 1e6, "us")


# Round trips injected by the proxy, in ms (half of it each way).
LATENCIES_MS = (0.0, 1.0, 20.0)


Timed = Callable[[], object]


def _network_calls(pids: list[str], plan: Plan, first: int,
                   raw: psycopg.Connection[Any]) -> list[tuple[str, int, Callable[[], Timed]]]:
    """The calls of PG case 4: each one's name, the round trips it must cost, and a
    function that prepares one call (untimed) and returns it. New sessions are numbered
    from ``first``; ``raw`` is a psycopg connection through the same proxy (the baseline)."""
    rows = iter(new_rows(4 * plan.round_trip_calls + 4, pids, plan.seed, first))
    stored, its_end = as_logs([next(rows), next(rows)])  # a whole session: nothing to skip
    stored.insert_log()
    its_end.insert_log()
    session = get_sessions_to_build()[0]
    titan = live.instrument_db[pids[0]]
    inside = f"{_DATA_ROOT}/{titan.filestore_path}/a/file.dm3"
    api_url = titan.api_url or ""

    def revision() -> Timed:  # a log stored, then the same log with its time corrected
        ident, pid, stamp, event, status, user = next(rows)
        SessionLog(ident, pid, stamp, event, user, status).insert_log()
        corrected = (isoparse(stamp) + timedelta(minutes=1)).isoformat()
        return SessionLog(ident, pid, corrected, event, user, status).insert_log

    def same(call: Timed) -> Callable[[], Timed]:
        return lambda: call

    return [
        ("baseline: raw psycopg SELECT 1, kept connection", 1,
         same(lambda: raw.execute("SELECT 1", prepare=False).fetchone())),
        ("get_sessions_to_build()", 1, same(get_sessions_to_build)),
        ("Session.update_session_status()", 1,
         same(lambda: session.update_session_status("TO_BE_BUILT"))),
        ("Session.insert_record_generation_event()", 1,
         same(session.insert_record_generation_event)),
        ("SessionLog.insert_log(), a new log", 1, lambda: as_logs([next(rows)])[0].insert_log),
        ("SessionLog.insert_log(), a log already stored", 1, same(stored.insert_log)),
        ("SessionLog.insert_log(), a revised log", 1, revision),
        ("make_db_query()", 1, same(lambda: make_db_query("SELECT count(*) FROM session_log"))),
        ("db_query()", 1, same(lambda: db_query(
            "SELECT count(*) FROM session_log WHERE record_status = ?", ("TO_BE_BUILT",)))),
        ("instrument_db[pid]", 0, same(lambda: live.instrument_db[pids[0]])),
        ("get_instr_from_api_url()", 0, same(lambda: live.get_instr_from_api_url(api_url))),
        ("get_instr_from_filepath()", 0, same(lambda: live.get_instr_from_filepath(inside))),
    ]


def bench_pg_network(report: Report, plan: Plan, url: str, pids: list[str]) -> None:
    """PG case 4: each 1.4 call's round trips, and its time over a network per round trip."""
    from nexusLIMS.db.databases import close_pools

    calls = plan.round_trip_calls
    group = report.group(
        "PG 4. Calls over a network (PostgreSQL)",
        "through tests/roundtrips.py's proxy adding half the round trip each way (a Python "
        "thread: the baseline shows what it adds); 5 sessions to build; the median of "
        f"{calls} calls after a warm-up call: time per call / one round trip (at 0 ms: the "
        "time per call)")
    counter: Callable[..., Any] = tests_helper("roundtrips", "RoundTripCounter")
    trips: dict[str, list[int]] = {}
    expected: dict[str, int] = {}
    with environment(**{ENV_DATA_ROOT: _DATA_ROOT}):
        for number, rtt in enumerate(LATENCIES_MS):
            # The same sessions each time (the calls below leave STARTs without an END).
            pg_load(url, make_rows(5, pids, plan.seed))
            with counter(url, delay=rtt / 2000) as proxy, pg_connect(proxy.url) as raw:
                use_database(proxy.url)
                first = 40_000_000 + 100_000 * number
                for name, must, prepare in _network_calls(pids, plan, first, raw):
                    expected[name] = must
                    times = []
                    for attempt in range(calls + 1):
                        call = prepare()
                        proxy.reset()
                        start = time.perf_counter()
                        call()
                        if attempt:  # the first call warms up
                            times.append(time.perf_counter() - start)
                            trips.setdefault(name, []).append(proxy.round_trips)
                    per_call = statistics.median(times)
                    if rtt:
                        report.add(group, f"{name} at {rtt:g} ms", per_call / (rtt / 1000),
                                   note=f"{per_call * 1e3:.2f} ms per call")
                    else:
                        report.add(group, f"{name} at 0 ms", per_call * 1e3, "ms")
                close_pools()  # before the proxy goes
    use_database(url)
    for name, must in expected.items():
        seen = ", ".join(f"{count} call(s): {number}"
                         for number, count in sorted(Counter(trips[name]).items()))
        report.add(group, f"round trips of {name}", max(trips[name]), "count",
                   target=("==", must), note=seen)


def run_postgresql(report: Report, plan: Plan, url: Optional[str]) -> None:
    """Run the PostgreSQL cases in a schema of their own."""
    with postgres_schema(url) as target, environment(**{ENV_DB_PATH: target}), \
            pg_connect(target) as conn:
        report.machine["PostgreSQL"] = str(pg_scalar(conn, "SHOW server_version"))
        init_db(target)
        pids = sorted(add_sample_instruments(target))
        bench_pg_network(report, plan, target, pids)
        bench_pg_pairing(report, plan, target, conn, pids)
        bench_pg_inserts(report, plan, conn, pids)
        bench_pg_insert_log(report, plan, target, conn, pids)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="with --backend postgresql: a database on an existing "
                        "server (a schema is created there and dropped at the end); by "
                        "default a throwaway server is started")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per measurement (default 11; 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats: a smoke run of under a minute")
    parser.add_argument("--skip-100k", action="store_true",
                        help="leave out the 1.4 file at 100k pairs (memory measured at 20k)")
    parser.add_argument("--skip-1m", action="store_true",
                        help="leave out the 1M-history case")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the data")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.url and args.backend != "postgresql":
        parser.error("--url needs --backend postgresql")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark; return the exit code."""
    args = parse_args(argv)
    plan = make_plan(args)
    report = Report()
    report.machine = machine()
    started = time.perf_counter()
    with quiet():
        if args.backend == "sqlite":
            run_sqlite(report, plan)
        else:
            run_postgresql(report, plan, args.url)
    print(f"  done in {time.perf_counter() - started:.0f} s\n", file=sys.stderr)
    skipped = f"; skipped: {' '.join(plan.skipped)}" if plan.skipped else ""
    slow = f" ({plan.slow_repeats} for the 1.4 approach and the 100k sizes)" \
        if args.backend == "sqlite" else ""
    report.print(f"backend {args.backend}; medians of {plan.repeats} interleaved runs{slow}"
                 f"{'; --quick' if args.quick else ''}{skipped}")
    if args.json:
        options = {key: str(value) if isinstance(value, Path) else value
                   for key, value in vars(args).items() if key != "url"}
        report.write_json(args.json, {**options, "plan": asdict(plan)})
    missed = report.counts()[1]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
