"""Issue 4: the fast paths give the same results as the slow ones.

Point 2: ``insert_logs`` (duplicates in the database and within the batch,
NULL users, all-or-nothing validation, return count). Point 3: ``insert_log``
is one transaction. Point 1: ``get_sessions_to_build`` still pairs exactly as
NexusLIMS 1.4 does (a quadratic reference pairing written here), in START-id
order, with the same error message.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from dateutil.parser import isoparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusLIMS.db import connection, make_db_query
from nexusLIMS.db.enums import EventType
from nexusLIMS.db.session_handler import (
    Session,
    SessionLog,
    get_sessions_to_build,
    insert_logs,
)
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
JEOL = "JEOL-JEM3010-TEM-565989"
KNOWN = f"{QUANTA}, {TITAN}, {JEOL}"
PAIR_INDEX = "session_log_to_be_built_idx"

Row = tuple[str, str, str, str, str, Optional[str]]


def _rows(path: Path) -> list[Row]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT session_identifier, instrument, timestamp, event_type, record_status, user "
            "FROM session_log ORDER BY id_session_log"
        ).fetchall()


def _log(
    identifier: str = "s1",
    instrument: str = TITAN,
    timestamp: str = "2021-05-01T10:00:00.000",
    event_type: str = "START",
    user: Optional[str] = "alice",
    record_status: Optional[str] = None,
) -> SessionLog:
    return SessionLog(identifier, instrument, timestamp, event_type, user, record_status)


# --------------------------------------------------------------------------
# insert_logs
# --------------------------------------------------------------------------


def test_inserts_every_log_and_returns_the_count(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    logs = [
        _log("s1", TITAN, "2021-05-01T10:00:00.000", "START", "alice"),
        _log("s1", TITAN, "2021-05-01T12:00:00.000", "END", "alice"),
        _log("https://nemo.example.org/api/usage_events/?id=1", QUANTA,
             "2021-05-01T10:00:00-04:00", "START", None, "COMPLETED"),
    ]
    assert insert_logs(logs) == 3
    assert _rows(nexuslims_db) == [
        ("s1", TITAN, "2021-05-01T10:00:00.000", "START", "TO_BE_BUILT", "alice"),
        ("s1", TITAN, "2021-05-01T12:00:00.000", "END", "TO_BE_BUILT", "alice"),
        ("https://nemo.example.org/api/usage_events/?id=1", QUANTA,
         "2021-05-01T10:00:00-04:00", "START", "COMPLETED", None),
    ]


def test_empty_batch_returns_zero_and_writes_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert insert_logs([]) == 0
    assert insert_logs(iter(())) == 0
    assert _rows(nexuslims_db) == []


def test_accepts_a_generator(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    stamps = ("2021-05-01T10:00:00", "2021-05-01T11:00:00", "2021-05-01T12:00:00")
    assert insert_logs(_log(f"s{n}", timestamp=ts) for n, ts in enumerate(stamps)) == 3
    assert [row[0] for row in _rows(nexuslims_db)] == ["s0", "s1", "s2"]


def test_skips_logs_already_in_the_database(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    old = [_log("s1", event_type="START"), _log("s1", event_type="END", user=None)]
    assert insert_logs(old) == 2
    again = [_log("s1", event_type="START"), _log("s2"), _log("s1", event_type="END", user=None)]
    assert insert_logs(again) == 1
    assert [(row[0], row[3]) for row in _rows(nexuslims_db)] == [
        ("s1", "START"), ("s1", "END"), ("s2", "START"),
    ]
    assert insert_logs(again) == 0
    assert len(_rows(nexuslims_db)) == 3


def test_skips_duplicates_within_the_batch(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    batch = [_log("s1"), _log("s2"), _log("s1"), _log("s1", user=None), _log("s1", user=None)]
    assert insert_logs(batch) == 3
    assert [(row[0], row[5]) for row in _rows(nexuslims_db)] == [
        ("s1", "alice"), ("s2", "alice"), ("s1", None),
    ]


def test_null_user_matches_null_user_only(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert insert_logs([_log(user=None)]) == 1
    assert insert_logs([_log(user=None)]) == 0  # 1.4's "user = ?" inserted it again
    assert insert_logs([_log(user="")]) == 1  # an empty name is not NULL
    assert insert_logs([_log(user="alice")]) == 1
    assert [row[5] for row in _rows(nexuslims_db)] == [None, "", "alice"]


@pytest.mark.parametrize(
    "changes",
    [
        {"identifier": "s2"},
        {"identifier": "S1"},  # case matters, as in SQLite's BINARY collation
        {"instrument": QUANTA},
        {"timestamp": "2021-05-01T10:00:00"},  # same instant, other text: another row
        {"event_type": "END"},
        {"record_status": "COMPLETED"},
        {"user": "bob"},
        {"user": None},
    ],
    ids=lambda changes: next(iter(changes)) + "=" + repr(next(iter(changes.values()))),
)
def test_a_log_differing_in_one_field_is_not_a_duplicate(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], changes: dict[str, Any]
) -> None:
    assert insert_logs([_log()]) == 1
    assert insert_logs([_log(), _log(**changes)]) == 1
    assert len(_rows(nexuslims_db)) == 2


def test_duplicates_are_found_across_many_look_ups(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # More sessions than one look-up of stored rows takes (the identifiers
    # are looked up in chunks); the duplicates sit in every chunk.
    old = [_log(f"s{n}", user=None if n % 3 else "alice") for n in range(1234)]
    assert insert_logs(old) == 1234
    new = [_log(f"s{n}", event_type="END") for n in range(0, 1234, 100)]
    mixed = [log for pair in zip(old[::-1], old) for log in pair] + new + old[:7]
    assert insert_logs(mixed) == len(new)
    assert len(_rows(nexuslims_db)) == 1234 + len(new)


def test_enum_and_datetime_fields_are_stored_as_text(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    when = datetime(2021, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-4)))
    log = SessionLog("s1", TITAN, when, EventType.START, None)  # type: ignore[arg-type]
    assert insert_logs([log, _log("s1", timestamp=when.isoformat(), user=None)]) == 1
    assert _rows(nexuslims_db) == [
        ("s1", TITAN, "2021-05-01T10:00:00-04:00", "START", "TO_BE_BUILT", None),
    ]


BAD_LOGS = {
    "unknown instrument": (
        _log("bad", instrument="NOPE"),
        f"instrument 'NOPE' is not in the instruments table (known: {KNOWN})",
    ),
    "timestamp not ISO": (
        _log("bad", timestamp="yesterday"),
        "Invalid timestamp 'yesterday'; expected an ISO 8601 date-time",
    ),
    "date without time": (
        _log("bad", timestamp="2021-05-01"),
        "Invalid timestamp '2021-05-01'",
    ),
    "impossible date": (
        _log("bad", timestamp="2021-02-30T10:00:00"),
        "Invalid timestamp '2021-02-30T10:00:00'",
    ),
    "event type": (
        _log("bad", event_type="BEGIN"),
        "Invalid event_type 'BEGIN'; allowed values are: START, END, RECORD_GENERATION",
    ),
    "status": (
        _log("bad", record_status="DONE"),
        "Invalid record_status 'DONE'; allowed values are: COMPLETED,",
    ),
    "empty identifier": (
        _log(""),
        "Invalid session_identifier ''; expected a non-empty string",
    ),
    "user not a string": (
        _log("bad", user=42),  # type: ignore[arg-type]
        "Invalid user 42; expected a string or None",
    ),
}


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("case", list(BAD_LOGS))
def test_a_bad_log_rejects_the_whole_batch(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], case: str, position: int
) -> None:
    assert insert_logs([_log("old")]) == 1
    bad, detail = BAD_LOGS[case]
    batch = [_log("new1"), _log("new2")]
    batch.insert(position, bad)
    with pytest.raises(ValueError, match=r"^Cannot write ") as raised:
        insert_logs(batch)
    message = str(raised.value)
    assert message.startswith(f"Cannot write {bad!r}: ")
    assert detail in message
    assert [row[0] for row in _rows(nexuslims_db)] == ["old"]


def test_a_bad_log_after_duplicates_writes_nothing(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    batch = [_log("s1"), _log("s1"), _log("s2", timestamp="2021-05-01T10:00:00+25:00")]
    with pytest.raises(ValueError, match="2021-05-01T10:00:00\\+25:00"):
        insert_logs(batch)
    assert _rows(nexuslims_db) == []


# --------------------------------------------------------------------------
# insert_log: one transaction (point 3)
# --------------------------------------------------------------------------


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the SQL of every connection the package opens, one list per connection."""
    connections: list[list[str]] = []
    real_open = connection._open

    def tracing_open(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_open(*args, **kwargs)
        statements: list[str] = []
        connections.append(statements)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(connection, "_open", tracing_open)
    return connections


def _transactions(statements: list[str]) -> list[str]:
    words = [statement.split(None, 1)[0].upper() for statement in statements]
    return [word for word in words if word in ("BEGIN", "COMMIT", "ROLLBACK", "END")]


def test_insert_log_is_one_transaction(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], traced: list[list[str]]
) -> None:
    assert _log(user=None).insert_log() is True
    assert len(traced) == 1
    assert _transactions(traced[0]) == ["BEGIN", "COMMIT"]
    assert "BEGIN IMMEDIATE" in traced[0]
    writes = [s for s in traced[0] if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    assert len(writes) == 1
    assert len(_rows(nexuslims_db)) == 1


def test_insert_log_of_a_duplicate_warns_and_writes_nothing(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    traced: list[list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = _log(user=None)
    assert log.insert_log() is True
    with caplog.at_level(logging.WARNING):
        assert log.insert_log() is True
    assert len(traced) == 2
    assert _transactions(traced[1]) == ["BEGIN", "COMMIT"]
    assert f"SessionLog already existed in DB, so no row was added: {log!r}" in caplog.text
    assert len(_rows(nexuslims_db)) == 1


def test_insert_logs_of_many_is_one_transaction(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], traced: list[list[str]]
) -> None:
    assert insert_logs(_log(f"s{n}") for n in range(50)) == 50
    assert len(traced) == 1
    assert _transactions(traced[0]) == ["BEGIN", "COMMIT"]


def test_failed_batch_rolls_back_in_its_one_connection(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], traced: list[list[str]]
) -> None:
    with pytest.raises(ValueError, match="NOPE"):
        insert_logs([_log("s1"), _log("s2", instrument="NOPE")])
    assert len(traced) == 1
    assert "COMMIT" not in _transactions(traced[0])
    assert not any(s.lstrip().upper().startswith("INSERT") for s in traced[0])


# --------------------------------------------------------------------------
# get_sessions_to_build: same results as before (point 1)
# --------------------------------------------------------------------------

HISTORY = [
    _log("old-1", QUANTA, "2020-01-01T09:00:00", "START", "zed", "COMPLETED"),
    _log("old-1", QUANTA, "2020-01-01T10:00:00", "END", "zed", "COMPLETED"),
    _log("old-1", QUANTA, "2020-01-01T10:30:00-05:00", "RECORD_GENERATION", None, "COMPLETED"),
    _log("s-naive", TITAN, "2021-03-01T18:00:00-05:00", "RECORD_GENERATION", None, "TO_BE_BUILT"),
    _log("err-1", JEOL, "2020-02-01T09:00:00", "START", None, "ERROR"),
    _log("wait-1", JEOL, "2021-03-05T09:00:00", "START", "dave", "WAITING_FOR_END"),
]


def test_sessions_are_paired_in_start_order_with_offsets_kept(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    url = "https://nemo.example.org/api/usage_events/?id=77"
    logs = [
        _log("s-z", JEOL, "2021-03-03T16:00:00.1234567Z", "END", "bob"),
        _log("s-naive", TITAN, "2021-03-01T09:00:00.000", "START", "alice"),
        *HISTORY[:3],
        _log(url, QUANTA, "2021-03-02T12:15:30.250000-05:00", "END", "ignored"),
        _log("s-space", TITAN, "2021-03-04 08:00:00", "START", "carol"),
        _log(url, QUANTA, "2021-03-02T10:00:00-05:00", "START", None),
        *HISTORY[3:],
        _log("s-naive", TITAN, "2021-03-01T17:30:00.000", "END", "alice"),
        _log("s-z", JEOL, "2021-03-03T15:00:00Z", "START", "bob"),
        _log("s-space", TITAN, "2021-03-04 09:00:00", "END", "carol"),
    ]
    assert insert_logs(logs) == len(logs)

    sessions = get_sessions_to_build()

    assert [repr(s) for s in sessions] == [
        f"2021-03-01T09:00:00 to 2021-03-01T17:30:00 on {TITAN}",
        f"2021-03-04T08:00:00 to 2021-03-04T09:00:00 on {TITAN}",
        f"2021-03-02T10:00:00-05:00 to 2021-03-02T12:15:30.250000-05:00 on {QUANTA}",
        f"2021-03-03T15:00:00+00:00 to 2021-03-03T16:00:00.123456+00:00 on {JEOL}",
    ]
    assert [(s.session_identifier, s.user) for s in sessions] == [
        ("s-naive", "alice"), ("s-space", "carol"), (url, None), ("s-z", "bob"),
    ]
    assert all(isinstance(s, Session) for s in sessions)
    assert [s.instrument.name for s in sessions] == [TITAN, TITAN, QUANTA, JEOL]
    assert all(isinstance(s.instrument, Instrument) for s in sessions)
    assert all(repr(s.instrument) == repr(nexuslims_instruments[s.instrument.name])
               for s in sessions)
    assert all(s.dt_range == (s.dt_from, s.dt_to) for s in sessions)
    assert sessions[2].dt_from.utcoffset() == timedelta(hours=-5)
    assert sessions[3].dt_to.utcoffset() == timedelta(0)
    assert sessions[0].dt_from.tzinfo is None
    assert str(sessions[0].instrument.timezone) == "America/New_York"
    assert str(sessions[3].instrument.timezone) == "America/Denver"


def test_a_start_without_its_end_raises_the_14_message(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([
        _log("s-ok", TITAN, "2021-03-01T09:00:00", "START", "alice"),
        _log("s-ok", TITAN, "2021-03-01T10:00:00", "END", "alice"),
        _log("s-lonely", QUANTA, "2021-03-02T09:00:00", "START", None),
    ])
    with pytest.raises(ValueError, match=r"^There was not exactly one 'END' log") as raised:
        get_sessions_to_build()
    assert str(raised.value) == (
        "There was not exactly one 'END' log for this 'START' log; "
        "len(matching_end_logs) was 0; "
        f"start log was SessionLog (id=s-lonely, instrument={QUANTA}, "
        "timestamp=2021-03-02T09:00:00, event_type=START, user=None, "
        "record_status=TO_BE_BUILT); matching_end_logs was []"
    )
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == ["s-ok"]


def test_no_to_be_built_logs_gives_an_empty_list(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert insert_logs(HISTORY[:3] + HISTORY[4:]) == 5
    assert get_sessions_to_build() == []


def _reference_pairing(
    path: Path, instruments: dict[str, Instrument]
) -> list[tuple[Any, ...]]:
    """NexusLIMS 1.4's pairing: each START (in id order) scans every END."""
    with closing(sqlite3.connect(path)) as conn:
        query = (
            "SELECT session_identifier, instrument, timestamp, user FROM session_log "
            "WHERE record_status = 'TO_BE_BUILT' AND event_type = ? ORDER BY id_session_log"
        )
        starts = conn.execute(query, ("START",)).fetchall()
        ends = conn.execute(query, ("END",)).fetchall()
    sessions = []
    for identifier, pid, timestamp, user in starts:
        matching = [end for end in ends if end[0] == identifier]
        assert len(matching) == 1
        dt_from, dt_to = isoparse(timestamp), isoparse(matching[0][2])
        sessions.append((identifier, instruments[pid].name, dt_from, dt_to, user,
                         dt_from.utcoffset(), dt_to.utcoffset()))
    return sessions


def _key(session: Session) -> tuple[Any, ...]:
    return (session.session_identifier, session.instrument.name, session.dt_from,
            session.dt_to, session.user, session.dt_from.utcoffset(), session.dt_to.utcoffset())


FORMS = (
    lambda dt: dt.isoformat(timespec="milliseconds"),
    lambda dt: dt.isoformat(timespec="seconds"),
    lambda dt: dt.isoformat(sep=" "),
    lambda dt: dt.replace(tzinfo=timezone(timedelta(hours=-4))).isoformat(),
    lambda dt: dt.replace(tzinfo=timezone(timedelta(hours=5, minutes=30))).isoformat(
        timespec="seconds"),
    lambda dt: dt.isoformat(timespec="seconds") + "Z",
    lambda dt: dt.isoformat(timespec="microseconds") + "7",  # a seven-digit fraction
)

session_specs = st.lists(
    st.tuples(
        st.sampled_from([TITAN, QUANTA, JEOL]),
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)),
        st.integers(min_value=0, max_value=len(FORMS) - 1),
        st.one_of(st.none(), st.sampled_from(["alice", "bob", "o'brien"])),
    ),
    max_size=12,
)


@pytest.mark.parametrize("pair_index", [True, False], ids=["with index", "1.4 indexes"])
@settings(max_examples=30, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=session_specs, history=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_pairing_matches_the_14_reference(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    pair_index: bool,
    specs: list[tuple[str, datetime, timedelta, int, Optional[str]]],
    history: int,
    seed: int,
) -> None:
    make_db_query("DELETE FROM session_log")  # hypothesis reuses the fixture's database
    if not pair_index:  # a database whose indexes predate the pairing index
        make_db_query(f"DROP INDEX IF EXISTS {PAIR_INDEX}")
    logs: list[SessionLog] = []
    for number, (pid, start, length, form, user) in enumerate(specs):
        identifier = f"https://nemo.example.org/api/usage_events/?id={number}"
        render = FORMS[form]
        logs.append(_log(identifier, pid, render(start), "START", user))
        logs.append(_log(identifier, pid, render(start + length), "END", "end-user"))
        if number < history:
            logs.append(_log(identifier, pid, render(start), "START", user, "COMPLETED"))
            logs.append(_log(identifier, pid, render(start), "RECORD_GENERATION", None,
                             "COMPLETED"))
    random.Random(seed).shuffle(logs)
    assert insert_logs(logs) == len(logs)

    sessions = get_sessions_to_build()

    assert [_key(s) for s in sessions] == _reference_pairing(nexuslims_db, nexuslims_instruments)
    assert len(sessions) == len(specs)


def test_naive_and_aware_ends_are_compared_at_the_instrument(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([
        # 09:00 in New York is 14:00 UTC: the END at 10:00-05:00 is later.
        _log("mixed-ok", TITAN, "2021-03-01T09:00:00", "START", None),
        _log("mixed-ok", TITAN, "2021-03-01T10:00:00-05:00", "END", None),
    ])
    assert [repr(s) for s in get_sessions_to_build()] == [
        f"2021-03-01T09:00:00 to 2021-03-01T10:00:00-05:00 on {TITAN}",
    ]
    insert_logs([
        # 11:00 in Denver is 18:00 UTC: the END at 17:30Z is earlier.
        _log("mixed-bad", JEOL, "2021-03-02T11:00:00", "START", None),
        _log("mixed-bad", JEOL, "2021-03-02T17:30:00+00:00", "END", None),
    ])
    with pytest.raises(ValueError, match=r"'mixed-bad' ends .* before it starts"):
        get_sessions_to_build()
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == [
        "mixed-ok",
    ]


@pytest.mark.parametrize(
    "problem",
    [
        [_log("p", TITAN, "2021-03-05T09:00:00", "START")],
        [_log("p", TITAN, "2021-03-05T10:00:00", "END")],
        [_log("p", TITAN, "2021-03-05T09:00:00", "START"),
         _log("p", TITAN, "2021-03-05T10:00:00", "END"),
         _log("p", TITAN, "2021-03-05T11:00:00", "END")],
        [_log("p", TITAN, "2021-03-05T09:00:00", "START"),
         _log("p", TITAN, "2021-03-05T09:30:00", "START"),
         _log("p", TITAN, "2021-03-05T10:00:00", "END")],
        [_log("p", TITAN, "2021-03-05T09:00:00", "START"),
         _log("p", QUANTA, "2021-03-05T10:00:00", "END")],
        [_log("p", TITAN, "2021-03-05T10:00:00", "START"),
         _log("p", TITAN, "2021-03-05T09:00:00", "END")],
    ],
    ids=["no END", "no START", "two ENDs", "two STARTs", "two instruments", "END first"],
)
def test_one_bad_session_leaves_the_others_as_they_were(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], problem: list[SessionLog]
) -> None:
    good = [
        _log("g2", QUANTA, "2021-03-02T10:00:00-05:00", "END"),
        _log("g1", TITAN, "2021-03-01T09:00:00", "START"),
        _log("g2", QUANTA, "2021-03-02T09:00:00-05:00", "START"),
        _log("g1", TITAN, "2021-03-01T10:00:00", "END"),
    ]
    insert_logs(good[:2] + problem + good[2:])
    expected = [
        f"2021-03-01T09:00:00 to 2021-03-01T10:00:00 on {TITAN}",
        f"2021-03-02T09:00:00-05:00 to 2021-03-02T10:00:00-05:00 on {QUANTA}",
    ]
    assert [repr(s) for s in get_sessions_to_build(on_error="skip")] == expected
    with pytest.raises(ValueError, match=r"'p'|START"):
        get_sessions_to_build()
    make_db_query(f"DROP INDEX {PAIR_INDEX}")
    assert [repr(s) for s in get_sessions_to_build(on_error="skip")] == expected


# --------------------------------------------------------------------------
# Query plans: no quadratic look-ups (checked by SQLite's planner, not a clock)
# --------------------------------------------------------------------------


def _plan(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]


def test_pairing_reads_only_the_pairing_index(nexuslims_db: Path) -> None:
    from nexusLIMS.db import pairing

    plan = _plan(nexuslims_db, pairing._PAIRS)
    # Two index searches and nothing else: no table read, no sort (the
    # index is already in identifier order), no scan per START.
    # (The wording of plans varies a little between SQLite versions.)
    assert len(plan) == 2
    assert plan[0].startswith(f"SEARCH s USING COVERING INDEX {PAIR_INDEX} (event_type=?)")
    assert plan[1].startswith(
        f"SEARCH e USING COVERING INDEX {PAIR_INDEX} "
        "(event_type=? AND session_identifier=? AND instrument=?)"
    )


def test_duplicate_look_up_uses_the_session_identifier_index(nexuslims_db: Path) -> None:
    from nexusLIMS.db import session_log

    query = session_log._STORED.format(marks="?, ?")
    plan = _plan(nexuslims_db, query, ("a", "b"))
    assert len(plan) == 1
    assert plan[0].startswith(
        "SEARCH session_log USING INDEX session_log_session_identifier_idx "
        "(session_identifier=?)"
    )


def test_only_sessions_with_problems_take_the_slow_path(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nexusLIMS.db import pairing

    checked: list[str] = []
    real_check = pairing._check

    def spy(identifier: str, *args: Any) -> Any:
        checked.append(identifier)
        return real_check(identifier, *args)

    monkeypatch.setattr(pairing, "_check", spy)
    insert_logs([
        _log("g1", TITAN, "2021-03-01T09:00:00", "START"),
        _log("g1", TITAN, "2021-03-01T10:00:00", "END"),
    ])
    assert len(get_sessions_to_build()) == 1
    assert checked == []  # the common case never groups logs in Python
    insert_logs([_log("p", TITAN, "2021-03-05T09:00:00", "START")])
    assert len(get_sessions_to_build(on_error="skip")) == 1
    assert sorted(checked) == ["g1", "p"]


messy_logs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from([TITAN, TITAN, QUANTA, "NOT-AN-INSTRUMENT"]),
        st.sampled_from(["2021-03-01T09:00:00", "2021-03-01T10:00:00-05:00",
                         "2021-03-01T12:00:00Z", "2021-03-01T08:00:00.1234567",
                         "2021-03-01T11:00:00", "not a time"]),
        st.sampled_from(["START", "START", "END", "END", "RECORD_GENERATION"]),
        st.sampled_from(["TO_BE_BUILT", "TO_BE_BUILT", "TO_BE_BUILT", "COMPLETED"]),
        st.one_of(st.none(), st.just("alice")),
    ),
    max_size=14,
)


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=messy_logs)
def test_fast_path_and_grouping_agree_on_anything(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], rows: list[Row]
) -> None:
    from nexusLIMS.db.schema import init_db
    from nexusLIMS.db.session_handler import find_session_problems

    # Raw rows (foreign keys off): unknown instruments, unreadable times,
    # repeated STARTs and ENDs, ENDs on another instrument, all mixed.
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        conn.execute("DELETE FROM session_log")
        conn.executemany(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status, user) VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
    init_db(nexuslims_db)  # (re)creates the pairing index

    def results() -> tuple[list[tuple[Any, ...]], list[Any]]:
        return ([_key(s) for s in get_sessions_to_build(on_error="skip")],
                find_session_problems())

    with_index = results()
    make_db_query(f"DROP INDEX {PAIR_INDEX}")
    assert results() == with_index
