"""Issue 3, point 4 (and point 5 for ``mark``): one bad session stops nothing.

Each kind of inconsistency is set up with raw SQL (the API refuses unknown
instruments and bad timestamps) next to a good session, then checked under
``find_session_problems`` and every ``on_error`` mode of
``get_sessions_to_build``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from nexusLIMS.db.enums import ProblemKind
from nexusLIMS.db.pairing import find_session_problems, get_sessions_to_build
from nexusLIMS.db.session import Session
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
JEOL = "JEOL-JEM3010-TEM-565989"  # America/Denver; the others America/New_York
END_COUNT_PREFIX = "There was not exactly one 'END' log for this 'START' log; "

# (session_identifier, instrument, timestamp, event_type, record_status, user)
Row = tuple[str, str, str, str, str, Optional[str]]


def _log(
    identifier: str, event: str, timestamp: str, instrument: str = TITAN,
    status: str = "TO_BE_BUILT", user: Optional[str] = "alice",
) -> Row:
    return (identifier, instrument, timestamp, event, status, user)


def _insert_raw(path: Path, rows: Sequence[Row]) -> list[int]:
    """Insert rows as given, foreign keys off; return their ids."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        return [
            int(conn.execute(
                "INSERT INTO session_log (session_identifier, instrument, timestamp, "
                "event_type, record_status, user) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            ).lastrowid or 0)
            for row in rows
        ]


def _table(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM session_log ORDER BY id_session_log").fetchall()


def _statuses(path: Path) -> dict[int, str]:
    return {row[0]: row[5] for row in _table(path)}


def _key(session: Session) -> tuple[Any, ...]:
    return (
        session.session_identifier, session.instrument.name,
        session.dt_from.isoformat(), session.dt_to.isoformat(), session.user,
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage() for record in caplog.records
        if record.levelno == logging.WARNING and record.name.startswith("nexusLIMS")
    ]


GOOD = [
    _log("good", "START", "2021-05-01T08:00:00"),
    _log("good", "END", "2021-05-01T09:00:00"),
]
GOOD_KEY = ("good", TITAN, "2021-05-01T08:00:00", "2021-05-01T09:00:00", "alice")
# Logs of the bad session that "mark" must leave alone: not START/END, or
# not TO_BE_BUILT.
BYSTANDERS = [
    _log("bad", "RECORD_GENERATION", "2021-05-01T12:00:00"),
    _log("bad", "START", "2021-04-01T10:00:00", status="COMPLETED"),
    _log("bad", "END", "2021-04-01T11:00:00", status="WAITING_FOR_END"),
    _log("bad", "END", "2021-04-01T11:00:00", status="ERROR"),
]


@dataclass
class Case:
    """The TO_BE_BUILT START/END logs of session 'bad' and what is wrong with them."""

    logs: list[Row]
    kinds: list[ProblemKind]
    details: list[str]  # a regular expression per problem, in order


def _case(logs: list[Row], *problems: tuple[ProblemKind, str]) -> Case:
    return Case(logs, [kind for kind, _ in problems], [detail for _, detail in problems])


START = _log("bad", "START", "2021-05-01T10:00:00")
END = _log("bad", "END", "2021-05-01T11:00:00")
END_COUNT_0 = re.escape(
    f"{END_COUNT_PREFIX}len(matching_end_logs) was 0; start log was SessionLog (id=bad, "
    f"instrument={TITAN}, timestamp=2021-05-01T10:00:00, event_type=START, user=alice, "
    f"record_status=TO_BE_BUILT); matching_end_logs was []"
)
CASES = {
    "start with zero ends": _case([START], (ProblemKind.END_COUNT, END_COUNT_0)),
    "start with two ends": _case(
        [START, END, _log("bad", "END", "2021-05-01T11:30:00")],
        (ProblemKind.END_COUNT, re.escape(f"{END_COUNT_PREFIX}len(matching_end_logs) was 2; ")
         + r".*matching_end_logs was \[SessionLog \(id=bad, .*timestamp=2021-05-01T11:00:00"
         + r".*, SessionLog \(id=bad, .*timestamp=2021-05-01T11:30:00"),
    ),
    "end without start": _case(
        [END],
        (ProblemKind.END_WITHOUT_START,
         r"session 'bad' has 1 'END' log\(s\) \(ids \d+\) but no 'START' log"),
    ),
    "two starts": _case(
        [START, _log("bad", "START", "2021-05-01T10:05:00"), END],
        (ProblemKind.MULTIPLE_STARTS, r"session 'bad' has 2 'START' logs \(ids \d+, \d+\)"),
    ),
    "two starts, no end": _case(
        [START, _log("bad", "START", "2021-05-01T10:05:00")],
        (ProblemKind.END_COUNT, re.escape(f"{END_COUNT_PREFIX}len(matching_end_logs) was 0")),
        (ProblemKind.MULTIPLE_STARTS, "session 'bad' has 2 'START' logs"),
    ),
    "end before start": _case(
        [START, _log("bad", "END", "2021-05-01T09:59:59")],
        (ProblemKind.END_BEFORE_START,
         re.escape("session 'bad' ends (2021-05-01T09:59:59) before it starts "
                   "(2021-05-01T10:00:00)")),
    ),
    "end before start, both with offsets": _case(
        [_log("bad", "START", "2021-05-01T10:00:00-04:00"),
         _log("bad", "END", "2021-05-01T15:30:00+02:00")],
        (ProblemKind.END_BEFORE_START, "ends .* before it starts"),
    ),
    # 10:00 naive at the Titan (New York, UTC-4) is 14:00 UTC.
    "end before start, naive start, aware end": _case(
        [START, _log("bad", "END", "2021-05-01T13:30:00+00:00")],
        (ProblemKind.END_BEFORE_START, "ends .* before it starts"),
    ),
    "end before start, aware start, naive end": _case(
        [_log("bad", "START", "2021-05-01T14:30:00+00:00"),
         _log("bad", "END", "2021-05-01T10:00:00")],
        (ProblemKind.END_BEFORE_START, "ends .* before it starts"),
    ),
    # 10:00 naive at the JEOL (Denver, UTC-6) is 16:00 UTC, after 15:00 UTC.
    "end before start in the instrument's zone": _case(
        [_log("bad", "START", "2021-05-01T10:00:00", JEOL),
         _log("bad", "END", "2021-05-01T15:00:00+00:00", JEOL)],
        (ProblemKind.END_BEFORE_START, "ends .* before it starts"),
    ),
    "unknown instrument": _case(
        [_log("bad", "START", "2021-05-01T10:00:00", "GHOST-1"),
         _log("bad", "END", "2021-05-01T11:00:00", "GHOST-1")],
        (ProblemKind.UNKNOWN_INSTRUMENT,
         "session 'bad' is on instrument 'GHOST-1', which is not in the instruments table"),
    ),
    "two unknown instruments": _case(
        [_log("bad", "START", "2021-05-01T10:00:00", "GHOST-1"),
         _log("bad", "END", "2021-05-01T11:00:00", "GHOST-2")],
        (ProblemKind.UNKNOWN_INSTRUMENT, "instrument 'GHOST-1', which is not"),
        (ProblemKind.UNKNOWN_INSTRUMENT, "instrument 'GHOST-2', which is not"),
    ),
    "unknown instrument and bad timestamp": _case(
        [_log("bad", "START", "yesterday", "GHOST-1"), END],
        (ProblemKind.UNKNOWN_INSTRUMENT, "instrument 'GHOST-1', which is not"),
    ),
    "different instruments": _case(
        [START, _log("bad", "END", "2021-05-01T11:00:00", QUANTA)],
        (ProblemKind.INSTRUMENT_MISMATCH,
         f"session 'bad' starts on '{TITAN}' but ends on '{QUANTA}'"),
    ),
    "unparseable start": _case(
        [_log("bad", "START", "yesterday"), END],
        (ProblemKind.BAD_TIMESTAMP, r"log \d+ has timestamp 'yesterday', not ISO 8601"),
    ),
    "unparseable start and end": _case(
        [_log("bad", "START", "2021-13-01T00:00:00"), _log("bad", "END", "")],
        (ProblemKind.BAD_TIMESTAMP, "has timestamp '2021-13-01T00:00:00', not ISO 8601"),
        (ProblemKind.BAD_TIMESTAMP, "has timestamp '', not ISO 8601"),
    ),
}


@dataclass
class Scenario:
    """A database holding a good session, a bad one and bystanders."""

    path: Path
    case: Case
    bad_ids: list[int]  # the TO_BE_BUILT START/END logs of 'bad'


@pytest.fixture(params=list(CASES), ids=list(CASES))
def scenario(
    request: pytest.FixtureRequest, nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
) -> Scenario:
    case = CASES[request.param]
    _insert_raw(nexuslims_db, GOOD[:1])
    bad_ids = _insert_raw(nexuslims_db, case.logs)
    _insert_raw(nexuslims_db, [*BYSTANDERS, *GOOD[1:]])
    return Scenario(nexuslims_db, case, bad_ids)


def test_find_session_problems_reports_each_kind(scenario: Scenario) -> None:
    problems = find_session_problems()
    assert [p.session_identifier for p in problems] == ["bad"] * len(scenario.case.kinds)
    assert [p.kind for p in problems] == scenario.case.kinds
    for problem, pattern in zip(problems, scenario.case.details):
        assert isinstance(problem.kind, ProblemKind)
        assert re.search(pattern, problem.detail), problem.detail
        assert str(problem) == f"bad: {problem.kind.value}: {problem.detail}"
        assert problem.log_ids == tuple(scenario.bad_ids)


def test_raise_is_the_default_and_writes_nothing(scenario: Scenario) -> None:
    before = _table(scenario.path)
    first = find_session_problems()[0]
    with pytest.raises(ValueError, match=f"^{re.escape(first.detail)}$"):
        get_sessions_to_build()
    with pytest.raises(ValueError, match=f"^{re.escape(first.detail)}$"):
        get_sessions_to_build(on_error="raise")
    assert _table(scenario.path) == before


def test_skip_warns_once_per_session_and_returns_the_good_ones(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    before = _table(scenario.path)
    with caplog.at_level(logging.WARNING):
        sessions = get_sessions_to_build(on_error="skip")
    assert [_key(s) for s in sessions] == [GOOD_KEY]
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "bad" in warnings[0]
    for kind in scenario.case.kinds:
        assert kind.value in warnings[0]
    assert _table(scenario.path) == before


def test_mark_sets_the_bad_sessions_logs_to_error_and_nothing_else(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    before = _statuses(scenario.path)
    with caplog.at_level(logging.WARNING):
        sessions = get_sessions_to_build(on_error="mark")
    assert [_key(s) for s in sessions] == [GOOD_KEY]
    assert len(_warnings(caplog)) == 1
    expected = {**before, **dict.fromkeys(scenario.bad_ids, "ERROR")}
    assert _statuses(scenario.path) == expected
    # The bad session is gone; the good one is still there to build.
    assert find_session_problems() == []
    assert [_key(s) for s in get_sessions_to_build()] == [GOOD_KEY]


def test_the_contract_message_for_a_start_without_exactly_one_end(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _insert_raw(nexuslims_db, [*GOOD, START, END, _log("bad", "END", "2021-05-01T11:30:00")])
    with pytest.raises(ValueError, match=f"^{re.escape(END_COUNT_PREFIX)}") as excinfo:
        get_sessions_to_build()
    assert "len(matching_end_logs) was 2;" in str(excinfo.value)


def test_several_bad_sessions_are_each_reported_and_marked(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad_a = _insert_raw(nexuslims_db, [_log("a", "START", "2021-05-01T10:00:00")])
    _insert_raw(nexuslims_db, GOOD)
    bad_b = _insert_raw(nexuslims_db, [
        _log("b", "END", "2021-05-01T11:00:00"),
        _log("b", "END", "2021-05-01T11:00:01"),
    ])
    bad_c = _insert_raw(nexuslims_db, [
        _log("c", "START", "2021-05-01T10:00:00"),
        _log("c", "START", "2021-05-01T10:00:01", "GHOST-1"),
    ])
    before = _statuses(nexuslims_db)
    problems = find_session_problems()
    assert [(p.session_identifier, p.kind) for p in problems] == [
        ("a", ProblemKind.END_COUNT),
        ("b", ProblemKind.END_WITHOUT_START),
        ("c", ProblemKind.END_COUNT),
        ("c", ProblemKind.MULTIPLE_STARTS),
        ("c", ProblemKind.UNKNOWN_INSTRUMENT),
    ]
    with caplog.at_level(logging.WARNING):
        assert [_key(s) for s in get_sessions_to_build(on_error="skip")] == [GOOD_KEY]
    warnings = _warnings(caplog)
    assert len(warnings) == 3
    assert ["'a'" in warnings[0], "'b'" in warnings[1], "'c'" in warnings[2]] == [True] * 3
    assert _statuses(nexuslims_db) == before

    assert [_key(s) for s in get_sessions_to_build(on_error="mark")] == [GOOD_KEY]
    assert _statuses(nexuslims_db) == {
        **before, **dict.fromkeys([*bad_a, *bad_b, *bad_c], "ERROR")
    }


def test_mark_is_all_or_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    bad = _insert_raw(nexuslims_db, [
        _log("a", "START", "2021-05-01T10:00:00"),
        _log("b", "END", "2021-05-01T11:00:00"),
        _log("c", "START", "yesterday"),
        _log("c", "END", "2021-05-01T11:00:00"),
    ])
    _insert_raw(nexuslims_db, GOOD)
    # Make the last of the four updates fail, after the first three ran.
    with contextlib.closing(sqlite3.connect(nexuslims_db)) as conn, conn:
        conn.execute(
            f"CREATE TRIGGER refuse_error BEFORE UPDATE OF record_status ON session_log "
            f"WHEN NEW.id_session_log = {bad[-1]} BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    before = _table(nexuslims_db)
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        get_sessions_to_build(on_error="mark")
    assert _table(nexuslims_db) == before


def test_nothing_to_build(nexuslims_db: Path) -> None:
    assert find_session_problems() == []
    for mode in ("raise", "skip", "mark"):
        assert get_sessions_to_build(on_error=mode) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # Naive times are local time at the instrument (New York, UTC-4).
        ("2021-05-01T10:00:00", "2021-05-01T14:30:00+00:00"),
        ("2021-05-01T14:30:00+00:00", "2021-05-01T11:00:00"),
        ("2021-05-01T10:00:00", "2021-05-01T10:00:00"),
        ("2021-05-01T10:00:00-04:00", "2021-05-01T14:00:00+00:00"),
    ],
)
def test_mixed_offsets_that_are_in_order_are_a_session(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], start: str, end: str
) -> None:
    _insert_raw(nexuslims_db, [_log("s", "START", start), _log("s", "END", end)])
    assert find_session_problems() == []
    assert [_key(s) for s in get_sessions_to_build()] == [("s", TITAN, start, end, "alice")]


def test_unknown_on_error_is_refused(nexuslims_db: Path) -> None:
    with pytest.raises(ValueError, match=r"^on_error must be one of raise, skip, mark, not 'x'$"):
        get_sessions_to_build(on_error="x")  # type: ignore[arg-type]
