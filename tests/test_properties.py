"""Pairing agrees with a small model on random databases (property tests, ``hypothesis``).

``hypothesis`` draws random mixes of START, END and RECORD_GENERATION logs
over a handful of session identifiers, statuses, instruments (two of them
missing from the ``instruments`` table) and timestamps (three unparseable,
some in the hour repeated when daylight-saving time ends). The model below
states the rules of ``nexusLIMS.db.sessions`` directly: it groups the
TO_BE_BUILT START/END logs by identifier and checks each group.
``find_session_problems`` and ``get_sessions_to_build`` under every
``on_error`` mode must agree with it, and ``mark`` must mark exactly the
problem sessions. Every generated timestamp is years old, so the age rule
of ``mark`` never holds a session back; a second property checks that rule
with recent timestamps. Each example gets a fresh SQLite file; a smaller run
goes to PostgreSQL. Also: stored timestamps read back as written.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo

import pytest
from dateutil.parser import isoparse
from helpers import (
    END_COUNT_PREFIX,
    JEOL,
    QUANTA,
    TITAN,
    Row,
    Templates,
    insert_raw,
    log,
    session_key,
    sql,
    statuses,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from legacy_schema import make_legacy_db

from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.enums import ProblemKind
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.sessions import find_session_problems, get_sessions_to_build

pytestmark = pytest.mark.slow

ZONES = {TITAN: "America/New_York", QUANTA: "America/New_York", JEOL: "America/Denver"}
UNKNOWN = ["GHOST-1", "GHOST-2"]
IDENTIFIERS = ["s1", "s2", "s3", "https://nemo.example.org/api/usage_events/?id=4", "s5", "s6"]
MAY_TIMES = [
    "2021-05-01T09:00:00",
    "2021-05-01T10:00:00.250",
    "2021-05-01T12:30:00",
    "2021-05-01T14:30:00+00:00",
    "2021-05-01T10:15:00-04:00",
    "2021-05-01T16:45:00.5-06:00",
]
# Clocks go back at 02:00 local time on 2021-11-07 in New York and Denver: 01:xx twice.
NOVEMBER_TIMES = [
    "2021-11-07T00:30:00",
    "2021-11-07T01:10:00",
    "2021-11-07T01:50:00.000",
    "2021-11-07T02:30:00",
    "2021-11-07T06:20:00+00:00",
    "2021-11-07T01:40:00-04:00",
]
GOOD_TIMES = MAY_TIMES + NOVEMBER_TIMES
BAD_TIMES = ["yesterday", "2021-13-01T00:00:00", ""]
STATUSES = ["TO_BE_BUILT", "TO_BE_BUILT", "WAITING_FOR_END", "COMPLETED", "ERROR"]
EVENTS = ["START", "END", "START", "END", "RECORD_GENERATION"]
USERS = [None, "alice", "bob"]
ZERO = timedelta(0)
EXAMPLE_SETTINGS = {"derandomize": True, "database": None, "deadline": None}


# --- the model -------------------------------------------------------------------------


@dataclass
class Group:
    """The TO_BE_BUILT START and END logs of one identifier, by id."""

    starts: list[tuple[int, Row]] = field(default_factory=list)
    ends: list[tuple[int, Row]] = field(default_factory=list)


def _readings(text: str, zone: str) -> list[datetime]:
    """The instants a good timestamp can mean: naive ones are local at the instrument."""
    value = isoparse(text)
    if value.tzinfo is not None:
        return [value]
    return [value.replace(tzinfo=ZoneInfo(zone), fold=fold).astimezone(timezone.utc)
            for fold in (0, 1)]


def model_span(start: str, end: str, zone: str) -> timedelta:
    """The shortest non-negative reading of the session, else the least negative one."""
    spans = [e - s for s in _readings(start, zone) for e in _readings(end, zone)]
    lengths = [length for length in spans if length >= ZERO]
    return min(lengths) if lengths else max(spans)


@dataclass
class Expected:
    """What the model says: sessions (with durations), problems and each group's log ids."""

    sessions: list[tuple[Any, ...]]
    durations: list[timedelta]
    problems: list[tuple[str, ProblemKind, str]]
    ids: dict[str, list[int]]

    @property
    def bad(self) -> list[str]:
        return list(dict.fromkeys(identifier for identifier, _, _ in self.problems))


def model(logs: list[tuple[int, Row]]) -> Expected:
    """Return the expected outcome for the stored ``(id, row)`` pairs.

    Sessions are ``(identifier, instrument, start, end, user)`` in order of
    their START's id; problems ``(identifier, kind, text the detail names)``
    with groups in order of their first id.
    """
    groups: dict[str, Group] = {}
    for log_id, values in sorted(logs):
        identifier, _, _, event_type, status, _ = values
        if status == "TO_BE_BUILT" and event_type in ("START", "END"):
            group = groups.setdefault(identifier, Group())
            (group.starts if event_type == "START" else group.ends).append((log_id, values))

    sessions: list[tuple[int, tuple[Any, ...], timedelta]] = []
    problems: list[tuple[str, ProblemKind, str]] = []
    for identifier, group in groups.items():
        found: list[tuple[ProblemKind, str]] = []
        if group.starts and len(group.ends) != 1:
            found.append((ProblemKind.END_COUNT, f"was {len(group.ends)};"))
        if len(group.starts) > 1:
            found.append((ProblemKind.MULTIPLE_STARTS, f"has {len(group.starts)} 'START'"))
        if not group.starts:
            found.append((ProblemKind.END_WITHOUT_START, "no 'START'"))
        instruments = {values[1] for _, values in group.starts + group.ends}
        found += [(ProblemKind.UNKNOWN_INSTRUMENT, repr(pid))
                  for pid in instruments if pid not in ZONES]
        if not found:
            # Exactly one START and one END, on known instruments.
            (start_id, start), (end_id, end) = group.starts[0], group.ends[0]
            if start[1] != end[1]:
                found.append((ProblemKind.INSTRUMENT_MISMATCH, f"ends on {end[1]!r}"))
            found += [(ProblemKind.BAD_TIMESTAMP, f"log {log_id} ")
                      for log_id, values in ((start_id, start), (end_id, end))
                      if values[2] in BAD_TIMES]
            if not found:
                length = model_span(start[2], end[2], ZONES[start[1]])
                if length < ZERO:
                    found.append((ProblemKind.END_BEFORE_START, "before it starts"))
                else:
                    sessions.append((start_id, (
                        identifier, start[1], isoparse(start[2]).isoformat(),
                        isoparse(end[2]).isoformat(), start[5]), length))
        problems += [(identifier, kind, text) for kind, text in found]
    ids = {identifier: sorted(log_id for log_id, _ in group.starts + group.ends)
           for identifier, group in groups.items()}
    sessions.sort(key=lambda item: item[0])
    return Expected([s for _, s, _ in sessions], [d for _, _, d in sessions], problems, ids)


# --- random databases ------------------------------------------------------------------

_row = st.tuples(
    st.sampled_from(IDENTIFIERS[:4]),
    st.sampled_from([TITAN, TITAN, *ZONES, *UNKNOWN]),
    st.sampled_from(GOOD_TIMES * 3 + BAD_TIMES),
    st.sampled_from(EVENTS),
    st.sampled_from(STATUSES),
    st.sampled_from(USERS),
)


@st.composite
def databases(draw: st.DrawFn, max_rows: int = 6, max_pairs: int = 5) -> list[Row]:
    """A shuffled mix of random logs and START/END pairs of TO_BE_BUILT logs.

    Most pairs are on one instrument, with both times on one day; in any
    order, so pairs can end before they start, mix naive and aware times,
    straddle a daylight-saving change or have unparseable times. Some have a
    second START or END.
    """
    rows: list[Row] = draw(st.lists(_row, max_size=max_rows))
    for identifier in draw(st.lists(st.sampled_from(IDENTIFIERS), max_size=max_pairs,
                                    unique=True)):
        instrument = draw(st.sampled_from([TITAN, *ZONES, JEOL, UNKNOWN[0]]))
        end_instrument = draw(st.sampled_from([instrument] * 8 + [*ZONES, UNKNOWN[1]]))
        day = draw(st.sampled_from([MAY_TIMES, NOVEMBER_TIMES]))
        start, end = draw(st.lists(st.sampled_from(day * 4 + BAD_TIMES), min_size=2,
                                   max_size=2))
        user = draw(st.sampled_from(USERS))
        rows += [(identifier, instrument, start, "START", "TO_BE_BUILT", user),
                 (identifier, end_instrument, end, "END", "TO_BE_BUILT", user)]
        # Now and then a second START or END of the pair: a valid pair plus one.
        again = draw(st.sampled_from([None] * 6 + ["START", "END"]))
        if again is not None:
            rows.append((identifier, draw(st.sampled_from([instrument, instrument, *ZONES])),
                         draw(st.sampled_from(day)), again, "TO_BE_BUILT", user))
    return list(draw(st.permutations(rows)))


# --- databases for the examples ----------------------------------------------------------


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    template = init_db(tmp_path_factory.mktemp("template") / "template.sqlite").path
    add_sample_instruments(template)
    return Templates(template, tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def legacy_templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    """An untouched NexusLIMS 1.4 file: no partial index, so pairing groups one scan."""
    template = make_legacy_db(tmp_path_factory.mktemp("legacy") / "template.sqlite")
    add_sample_instruments(template)
    return Templates(template, tmp_path_factory.mktemp("legacy_examples"))


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    handler = _Warnings()
    logger = logging.getLogger("nexusLIMS")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _keys(sessions: list[Any]) -> list[tuple[Any, ...]]:
    return [session_key(s) for s in sessions]


# --- the model-based property -------------------------------------------------------------


def check_against_model(rows: list[Row], database: Optional[DatabaseLocation] = None) -> None:
    """Insert ``rows`` into the database the environment names and compare with the model."""
    expected = model(list(zip(insert_raw(rows), rows)))
    for kind in {kind for _, kind, _ in expected.problems}:
        event(f"problem {kind.value}")  # see --hypothesis-show-statistics
    event(f"{min(len(expected.sessions), 2)}{'+' * (len(expected.sessions) > 1)} sessions")
    if any(session[2].startswith("2021-11-07") for session in expected.sessions):
        event("a session on the day daylight-saving time ends")
    bad = expected.bad
    before = statuses()

    found = find_session_problems()
    assert Counter((p.session_identifier, p.kind) for p in found) == Counter(
        (identifier, kind) for identifier, kind, _ in expected.problems)
    assert list(dict.fromkeys(p.session_identifier for p in found)) == bad
    for identifier, kind, text in expected.problems:
        details = [p.detail for p in found if (p.session_identifier, p.kind) == (identifier, kind)]
        assert any(text in detail for detail in details), (text, details)
    for problem in found:
        assert problem.log_ids == tuple(expected.ids[problem.session_identifier])
        assert problem.markable  # every timestamp is years old
    end_counts = [p for p in found if p.kind is ProblemKind.END_COUNT]

    # strict: the first END-count problem, failing that the first problem.
    if found:
        first = (end_counts or found)[0]
        assert end_counts or first.session_identifier == bad[0]
        with pytest.raises(ValueError, match=f"^{re.escape(first.detail)}$"):
            get_sessions_to_build(on_error="strict")
    else:
        assert _keys(get_sessions_to_build(on_error="strict")) == expected.sessions
    assert statuses() == before

    # raise (the default, as 1.4): only the END count raises; the rest is skipped.
    if end_counts:
        assert end_counts[0].detail.startswith(END_COUNT_PREFIX)
        with pytest.raises(ValueError, match=f"^{re.escape(end_counts[0].detail)}$"):
            get_sessions_to_build()
    else:
        with captured_warnings() as messages:
            sessions = get_sessions_to_build()
        assert _keys(sessions) == expected.sessions
        assert [s.duration for s in sessions] == expected.durations
        assert len(messages) == len(bad)
    assert statuses() == before

    with captured_warnings() as messages:
        assert _keys(get_sessions_to_build(on_error="skip")) == expected.sessions
    assert len(messages) == len(bad)
    for identifier, message in zip(bad, messages):
        assert repr(identifier) in message
    assert statuses() == before

    with captured_warnings() as messages:
        assert _keys(get_sessions_to_build(on_error="mark")) == expected.sessions
    assert len(messages) == len(bad)
    marked = {log_id for identifier in bad for log_id in expected.ids[identifier]}
    assert statuses() == {log_id: "ERROR" if log_id in marked else status
                          for log_id, status in before.items()}
    assert find_session_problems() == []
    assert _keys(get_sessions_to_build()) == expected.sessions


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], **EXAMPLE_SETTINGS)
@given(rows=databases())
def test_pairing_agrees_with_the_model(templates: Templates, rows: list[Row]) -> None:
    with templates.fresh():
        check_against_model(rows)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], **EXAMPLE_SETTINGS)
@given(rows=databases())
def test_pairing_agrees_with_the_model_on_a_1_4_file(
    legacy_templates: Templates, rows: list[Row],
) -> None:
    with legacy_templates.fresh():
        check_against_model(rows)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture],
          **EXAMPLE_SETTINGS)
@given(rows=databases(max_rows=4, max_pairs=3))
def test_pairing_agrees_with_the_model_on_postgresql(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    rows: list[Row],
) -> None:
    sql("DELETE FROM session_log")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("nexusLIMS_db_mark_after", raising=False)
        check_against_model(rows)


def test_the_model_reads_a_session_across_the_change() -> None:
    """The model itself: 01:50 EDT to 01:10 EST is 20 minutes."""
    assert model_span("2021-11-07T01:50:00", "2021-11-07T01:10:00", ZONES[QUANTA]) == timedelta(
        minutes=20)
    assert model_span("2021-11-08T01:50:00", "2021-11-08T01:20:00", ZONES[QUANTA]) == timedelta(
        minutes=-30)


# --- the age rule of mark -----------------------------------------------------------------

KINDS = ["lone start", "lone end", "pair", "two ends", "old start", "old end"]
MARK_AFTER = "3h"  # recent logs are at most 40 minutes old, old ones at least 5 hours


@st.composite
def recent_databases(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[Row]]:
    """Sessions of every kind with timestamps around now; returns (identifier, kind) and rows."""
    now = datetime.now(timezone.utc)
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
    groups: list[tuple[str, str]] = []
    rows: list[Row] = []
    for number, kind in enumerate(kinds):
        identifier = f"g{number}"
        instrument = draw(st.sampled_from(sorted(ZONES)))
        minutes = draw(st.integers(min_value=300, max_value=5000) if kind.startswith("old")
                       else st.integers(min_value=-10, max_value=40))
        moment = now - timedelta(minutes=minutes)

        def text(at: datetime, instrument: str = instrument) -> str:
            if draw(st.booleans()):  # naive: local time at the instrument
                return at.astimezone(ZoneInfo(ZONES[instrument])).replace(tzinfo=None).isoformat()
            return at.isoformat()

        user = draw(st.sampled_from(USERS))
        if kind in ("lone start", "old start", "pair", "two ends"):
            rows.append((identifier, instrument, text(moment), "START", "TO_BE_BUILT", user))
        ends = {"lone end": 1, "old end": 1, "pair": 1, "two ends": 2}.get(kind, 0)
        rows += [(identifier, instrument, text(moment + timedelta(minutes=1 + n)), "END",
                  "TO_BE_BUILT", user) for n in range(ends)]
        groups.append((identifier, kind))
    return groups, list(draw(st.permutations(rows)))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], **EXAMPLE_SETTINGS)
@given(database=recent_databases())
def test_recent_lone_logs_are_never_marked(
    templates: Templates, database: tuple[list[tuple[str, str]], list[Row]]
) -> None:
    groups, rows = database
    with templates.fresh(nexusLIMS_db_mark_after=MARK_AFTER):
        ids: dict[str, list[int]] = {}
        for log_id, values in zip(insert_raw(rows), rows):
            ids.setdefault(values[0], []).append(log_id)
        kinds = dict(groups)
        problems = find_session_problems()
        assert {p.session_identifier: p.markable for p in problems} == {
            identifier: kind in ("old start", "old end", "two ends")
            for identifier, kind in groups if kind != "pair"}
        before = statuses()
        sessions = get_sessions_to_build(on_error="mark")
        assert sorted(s.session_identifier for s in sessions) == sorted(
            identifier for identifier, kind in groups if kind == "pair")
        assert statuses() == {**before, **{
            log_id: "ERROR" for identifier, kind in groups
            if kind in ("old start", "old end", "two ends") for log_id in ids[identifier]}}
        # What was not marked is still there, and still not marked next time.
        assert {p.session_identifier for p in find_session_problems()} == {
            identifier for identifier, kind in kinds.items() if kind in ("lone start", "lone end")}
        get_sessions_to_build(on_error="mark")
        assert statuses() == {**before, **{
            log_id: "ERROR" for identifier, kind in groups
            if kind in ("old start", "old end", "two ends") for log_id in ids[identifier]}}


# --- stored timestamps read back as written ------------------------------------------------

_offsets = st.one_of(
    st.none(),
    st.integers(min_value=-14 * 4, max_value=14 * 4).map(
        lambda q: timezone(timedelta(minutes=15 * q))
    ),
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture],
          **EXAMPLE_SETTINGS)
@given(
    start=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2999, 12, 30)),
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)),
    zone=_offsets,
    sep=st.sampled_from(["T", " "]),
    spec=st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)
def test_stored_timestamps_round_trip(
    nexuslims_instruments: dict[str, Instrument],
    start: datetime,
    length: timedelta,
    zone: Optional[timezone],
    sep: str,
    spec: str,
) -> None:
    sql("DELETE FROM session_log")
    dt_from = start.replace(tzinfo=zone)
    dt_to = dt_from + length
    event("naive" if zone is None else "with an offset")
    insert_logs([log("s", "START", dt_from.isoformat(sep, spec)),
                 log("s", "END", dt_to.isoformat(sep, spec))])
    [session] = get_sessions_to_build()
    expected_from = datetime.fromisoformat(dt_from.isoformat(sep, spec))
    expected_to = datetime.fromisoformat(dt_to.isoformat(sep, spec))
    assert (session.dt_from, session.dt_to) == (expected_from, expected_to)
    assert session.dt_from.utcoffset() == dt_from.utcoffset()
    assert session.dt_to.utcoffset() == dt_to.utcoffset()
