"""nexusLIMS.db.sessions: ``Session``, its status and RECORD_GENERATION logs, and pairing.

Covers ``Session`` (repr, equality and hashing, ``duration``),
``update_session_status`` / ``set_session_status``,
``insert_record_generation_event``, ``get_sessions_to_build`` under every
``on_error`` mode for every kind of problem, ``find_session_problems``, the
age rule of ``mark``, daylight-saving changes, extreme stored timestamps,
``repair_duplicate_ends`` and pairing on databases without the partial index.
Inconsistent states are built with ``helpers.insert_raw``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import pytz
from helpers import (
    END_COUNT_PREFIX,
    INCONSISTENT,
    JEOL,
    QUANTA,
    TITAN,
    Inconsistency,
    Row,
    insert_raw,
    log,
    row,
    rows,
    session_key,
    sql,
    statuses,
    warnings,
)
from legacy_schema import make_legacy_db

from nexusLIMS.db import make_db_query, session_handler
from nexusLIMS.db.cli import main
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import tracing
from nexusLIMS.db.enums import ProblemKind, RecordStatus
from nexusLIMS.db.instruments import Instrument, load_instruments
from nexusLIMS.db.logs import insert_logs, log_end, log_start
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.session_handler import SessionLog, db_query
from nexusLIMS.db.sessions import (
    Session,
    SessionProblem,
    find_session_problems,
    get_sessions_to_build,
    repair_duplicate_ends,
    set_session_status,
)
from nexusLIMS.instruments import instrument_db
from nexusLIMS.utils import current_system_tz

URL_ID = "https://nemo.example.org/api/usage_events/?id=1234567890&tool=635816"
END_COUNT_RE = "^" + re.escape(END_COUNT_PREFIX)
LOGGER = "nexusLIMS.db.session_handler"
MODES = ("raise", "strict", "skip", "mark")
NEW_YORK = pytz.timezone("America/New_York")
DENVER = pytz.timezone("America/Denver")
ALL_STATUSES = (
    "COMPLETED", "WAITING_FOR_END", "TO_BE_BUILT", "ERROR", "NO_FILES_FOUND",
    "NO_CONSENT", "NO_RESERVATION", "BUILT_NOT_EXPORTED",
)

GOOD = [row("good", "START", "2021-05-01T08:00:00"), row("good", "END", "2021-05-01T09:00:00")]
GOOD_KEY = ("good", TITAN, "2021-05-01T08:00:00", "2021-05-01T09:00:00", "alice")


@pytest.fixture
def titan(nexuslims_instruments: dict[str, Instrument]) -> Instrument:
    return nexuslims_instruments[TITAN]


def keys(sessions: list[Session]) -> list[tuple[Any, ...]]:
    return [session_key(s) for s in sessions]


def outcome(call: Callable[[], list[Session]]) -> Any:
    """What a call of get_sessions_to_build gave: its session keys, or the error it raised."""
    try:
        return keys(call())
    except ValueError as exc:
        return ("raised", str(exc))


def problem_tuples(problems: list[SessionProblem]) -> list[tuple[Any, ...]]:
    return [(p.session_identifier, p.kind, p.detail, p.log_ids, p.markable) for p in problems]


def _ago(delta: timedelta) -> datetime:
    return datetime.now(timezone.utc) - delta


# --- Session ------------------------------------------------------------------------------


def test_session_is_a_dataclass_built_from_dt_range(titan: Instrument) -> None:
    start, end = datetime(2021, 5, 1, 10, 0), datetime(2021, 5, 1, 12, 30)
    session = Session("s1", titan, (start, end), "jdoe")
    assert dataclasses.is_dataclass(session)
    init_fields = [f.name for f in dataclasses.fields(Session) if f.init]
    assert init_fields == ["session_identifier", "instrument", "dt_range", "user"]
    assert (session.dt_from, session.dt_to) == (start, end)
    assert tuple(session.dt_range) == (start, end)
    assert session.instrument is titan
    assert session.user == "jdoe"
    assert Session(session_identifier="s1", instrument=titan, dt_range=(start, end),
                   user="jdoe") == session
    listed = Session("s1", titan, [start, end], "jdoe")  # type: ignore[arg-type]
    assert (listed.dt_from, listed.dt_to) == (start, end)


def test_session_repr_is_exact(titan: Instrument) -> None:
    session = Session("s1", titan, (datetime(2021, 5, 1, 10, 0), datetime(2021, 5, 1, 12, 30)),
                      None)
    assert repr(session) == "2021-05-01T10:00:00 to 2021-05-01T12:30:00 on FEI-Titan-TEM-635816"
    offset = timezone(timedelta(hours=-4))
    aware = Session(
        URL_ID, titan,
        (datetime(2021, 5, 1, 10, 0, 0, 123456, tzinfo=offset),
         datetime(2021, 5, 1, 12, 30, tzinfo=offset)),
        None,
    )
    assert repr(aware) == (
        "2021-05-01T10:00:00.123456-04:00 to 2021-05-01T12:30:00-04:00 on FEI-Titan-TEM-635816"
    )
    other = Session("x", Instrument(name="Other-Scope"), session.dt_range, "u")
    assert repr(other) == "2021-05-01T10:00:00 to 2021-05-01T12:30:00 on Other-Scope"


def test_session_hash_agrees_with_equality(titan: Instrument) -> None:
    start, end = datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11)
    a = Session("s1", titan, (start, end), "u")
    b = Session("s1", titan, [start, end], "u")  # type: ignore[arg-type]
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    # The same instants written with other offsets are equal datetimes: equal sessions.
    utc, m4 = timezone.utc, timezone(timedelta(hours=-4))
    c = Session("s1", titan, (datetime(2021, 5, 1, 14, tzinfo=utc),
                              datetime(2021, 5, 1, 15, tzinfo=utc)), "u")
    d = Session("s1", titan, (datetime(2021, 5, 1, 10, tzinfo=m4),
                              datetime(2021, 5, 1, 11, tzinfo=m4)), "u")
    assert c == d
    assert hash(c) == hash(d)
    # Any differing field makes a different session.
    for different in (
        Session("s2", titan, (start, end), "u"),
        Session("s1", titan, (start, end + timedelta(seconds=1)), "u"),
        Session("s1", titan, (start, end), None),
        Session("s1", Instrument(name=TITAN), (start, end), "u"),  # identity equality, as 1.4
    ):
        assert different != a
    assert len({a, b, c, d, Session("s2", titan, (start, end), "u")}) == 3


def test_session_duration() -> None:
    denver = Instrument(name="X", timezone="America/Denver")
    utc = timezone.utc
    aware = Session("a", denver, (datetime(2024, 1, 1, 10, tzinfo=utc),
                                  datetime(2024, 1, 1, 11, tzinfo=utc)), None)
    naive = Session("n", denver, (datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 9)), None)
    mixed = Session("m", denver, (datetime(2024, 1, 1, 17, tzinfo=utc),
                                  datetime(2024, 1, 1, 10, 30)), None)
    no_zone = Session("z", Instrument(name="Y"), mixed.dt_range, None)
    naive_no_zone = Session("z", Instrument(name="Y"), naive.dt_range, None)
    assert aware.duration == timedelta(hours=1)
    assert naive.duration == timedelta(hours=-1)
    assert mixed.duration == timedelta(minutes=30)  # 10:30 in Denver is 17:30 UTC
    assert no_zone.duration is None
    assert naive_no_zone.duration == timedelta(hours=-1)


def test_session_duration_across_daylight_saving_changes() -> None:
    quanta = Instrument(name=QUANTA, timezone="America/New_York")
    # Clocks go back at 02:00 on 2021-11-07: 01:50 (EDT) to 01:10 (EST) is 20 minutes.
    back = Session("b", quanta, (datetime(2021, 11, 7, 1, 50), datetime(2021, 11, 7, 1, 10)), None)
    assert back.duration == timedelta(minutes=20)
    night = Session("n", quanta, (datetime(2021, 11, 7, 0, 30), datetime(2021, 11, 7, 2, 30)), None)
    assert night.duration == timedelta(hours=3)
    # Clocks go forward at 02:00 on 2021-03-14: 01:50 (EST) to 03:10 (EDT) is 20 minutes.
    forward = Session("f", quanta, (datetime(2021, 3, 14, 1, 50), datetime(2021, 3, 14, 3, 10)),
                      None)
    assert forward.duration == timedelta(minutes=20)
    ordinary = Session("o", quanta, (datetime(2021, 11, 8, 1, 50), datetime(2021, 11, 8, 1, 20)),
                       None)
    assert ordinary.duration == timedelta(minutes=-30)


def test_current_system_tz(local_zone_ist: timezone) -> None:
    zone = current_system_tz()
    assert isinstance(zone, timezone)
    assert zone == local_zone_ist


# --- update_session_status ----------------------------------------------------------------


@pytest.fixture
def two_sessions(nexuslims_database: DatabaseLocation, titan: Instrument) -> Session:
    insert_raw([
        row("s1", "START", "2021-05-01T10:00:00"), row("s1", "END", "2021-05-01T11:00:00"),
        row("s2", "START", "2021-05-01T12:00:00"), row("s2", "END", "2021-05-01T13:00:00"),
    ])
    return Session("s1", titan, (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11)), None)


def test_update_session_status_sets_every_log_of_the_session(
    two_sessions: Session, nexuslims_database: DatabaseLocation
) -> None:
    insert_raw([row("s1", "RECORD_GENERATION", "2021-05-01T11:05:00", status="COMPLETED")])
    for status in [*RecordStatus, *RecordStatus.values()]:
        assert two_sessions.update_session_status(status) is True
        assert [(r.session_identifier, r.record_status) for r in rows()] == [
            ("s1", str(status)), ("s1", str(status)),
            ("s2", "TO_BE_BUILT"), ("s2", "TO_BE_BUILT"),
            ("s1", str(status)),
        ]
        assert {type(r.record_status) for r in rows()} == {str}
    if nexuslims_database.backend == "sqlite":
        assert sql("SELECT DISTINCT typeof(record_status) FROM session_log") == [("text",)]


def test_set_session_status_returns_the_rows_changed(two_sessions: Session) -> None:
    assert set_session_status("s1", "COMPLETED") == 2
    assert set_session_status("s1", RecordStatus.ERROR) == 2
    assert set_session_status("nobody", "COMPLETED") == 0
    assert [r.record_status for r in rows()] == ["ERROR", "ERROR", "TO_BE_BUILT", "TO_BE_BUILT"]


def test_update_session_status_rejects_unknown_status_before_writing(
    two_sessions: Session,
) -> None:
    before = rows()
    for status in ["DONE", "completed", "", "COMPLETED ", None, 3]:
        with pytest.raises(ValueError, match="allowed") as info:
            two_sessions.update_session_status(status)  # type: ignore[arg-type]
        message = str(info.value)
        assert repr(status) in message
        for allowed in ALL_STATUSES:
            assert allowed in message
        with pytest.raises(ValueError, match="allowed"):
            set_session_status("s1", status)  # type: ignore[arg-type]
    assert rows() == before


def test_update_session_status_without_rows_returns_false_and_warns(
    two_sessions: Session, titan: Instrument, caplog: pytest.LogCaptureFixture
) -> None:
    before = rows()
    ghost = Session("ghost", titan, two_sessions.dt_range, None)
    with caplog.at_level(logging.WARNING):
        assert ghost.update_session_status("COMPLETED") is False
    found = warnings(caplog)
    assert len(found) == 1
    assert "ghost" in found[0]
    assert rows() == before


@pytest.mark.parametrize("status", ["NO_CONSENT", "NO_RESERVATION", "BUILT_NOT_EXPORTED"])
def test_a_1_4_database_says_to_migrate_for_the_new_statuses(
    legacy: Path, status: str
) -> None:
    SessionLog("s1", TITAN, "2024-01-01T08:00:00", "START", None).insert_log()
    SessionLog("s1", TITAN, "2024-01-01T09:00:00", "END", None).insert_log()
    session = Session("s1", instrument_db[TITAN],
                      (datetime(2024, 1, 1, 8), datetime(2024, 1, 1, 9)), None)
    before = rows()
    with pytest.raises(sqlite3.IntegrityError, match=r"CHECK.*run 'nexuslims-db migrate'"):
        session.update_session_status(status)
    with pytest.raises(sqlite3.IntegrityError, match="nexuslims-db migrate"):
        set_session_status("s1", status)
    assert rows() == before
    assert {r.record_status for r in rows()} == {"TO_BE_BUILT"}
    # The statuses 1.4's CHECK knows still work.
    assert session.update_session_status("NO_FILES_FOUND") is True
    assert {r.record_status for r in rows()} == {"NO_FILES_FOUND"}


def test_functions_take_an_explicit_database_without_any_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("nexusLIMS_db_path", raising=False)
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    path = init_db(tmp_path / "db.sqlite").path
    add_sample_instruments(path)
    log_start(TITAN, "s1", at="2024-01-01T08:00:00", database=path)
    log_end(TITAN, "s1", at="2024-01-01T09:00:00", database=path)
    log_start(TITAN, "s2", at="2024-01-01T10:00:00", database=path)
    assert set_session_status("s2", "TO_BE_BUILT", database=path) == 1
    assert [p.session_identifier for p in find_session_problems(database=path)] == ["s2"]
    sessions = get_sessions_to_build(on_error="skip", database=path)
    assert [s.session_identifier for s in sessions] == ["s1"]
    with pytest.raises(ValueError, match=END_COUNT_RE):
        get_sessions_to_build(database=path)
    assert repair_duplicate_ends(database=path) == []


# --- insert_record_generation_event -------------------------------------------------------


def _stored(log_id: int) -> Any:
    (found,) = [r for r in rows() if r.id_session_log == log_id]
    return found


def test_insert_record_generation_event_returns_its_row(
    two_sessions: Session, nexuslims_database: DatabaseLocation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("nexusLIMS_user", "builder")
    result = two_sessions.insert_record_generation_event()
    assert isinstance(result, dict)
    assert {"id_session_log", "event_type", "session_identifier", "timestamp"} <= set(result)
    assert result["event_type"] == "RECORD_GENERATION"
    assert result["session_identifier"] == "s1"
    assert result["id_session_log"] == max(r.id_session_log for r in rows())
    assert len(rows()) == 5
    stored = _stored(result["id_session_log"])
    assert stored.instrument == TITAN
    assert stored.user == "builder"
    assert stored.event_type == "RECORD_GENERATION"
    assert stored.timestamp == result["timestamp"]
    if nexuslims_database.backend == "sqlite":
        assert sql("SELECT typeof(timestamp) FROM session_log WHERE id_session_log = ?",
                   (result["id_session_log"],)) == [("text",)]


def test_record_generation_user_is_null_without_nexuslims_user(
    two_sessions: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("nexusLIMS_user", raising=False)
    result = two_sessions.insert_record_generation_event()
    assert _stored(result["id_session_log"]).user is None


def test_record_generation_returns_its_own_row_not_a_later_looking_one(
    two_sessions: Session,
) -> None:
    # Another session of the same instrument has RECORD_GENERATION rows whose
    # timestamp text sorts after anything "now" can produce.
    insert_raw([
        row("s2", "RECORD_GENERATION", "2999-12-31T23:59:59.999", status="COMPLETED"),
        row("s2", "RECORD_GENERATION", "2999-12-31 23:59:59", status="COMPLETED"),
    ])
    first = two_sessions.insert_record_generation_event()
    second = two_sessions.insert_record_generation_event()
    assert first["session_identifier"] == second["session_identifier"] == "s1"
    assert not first["timestamp"].startswith("2999")
    assert second["id_session_log"] > first["id_session_log"]
    assert make_db_query("SELECT max(id_session_log) FROM session_log") == [
        (second["id_session_log"],)
    ]
    for result in (first, second):
        stored = _stored(result["id_session_log"])
        assert (stored.session_identifier, stored.timestamp, stored.event_type) == (
            "s1", result["timestamp"], "RECORD_GENERATION")
        assert result["id_session_log"] == stored.id_session_log


def test_record_generation_timestamp_is_local_time_with_offset(
    local_zone_ist: timezone, two_sessions: Session
) -> None:
    result = two_sessions.insert_record_generation_event()
    text = result["timestamp"]
    assert isinstance(text, str)
    assert text[10] == "T"
    assert text.endswith("+05:30")
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert abs(stamp - datetime.now(timezone.utc)) < timedelta(hours=1)
    assert _stored(result["id_session_log"]).timestamp == text


def test_record_generation_row_can_be_deleted_by_id(two_sessions: Session) -> None:
    result = two_sessions.insert_record_generation_event()
    assert db_query(
        "DELETE FROM session_log WHERE id_session_log = ?", (result["id_session_log"],)
    ) == (True, [])
    assert len(rows()) == 4


def test_record_generation_for_unknown_instrument_writes_nothing(two_sessions: Session) -> None:
    before = rows()
    stranger = Instrument(name="Not-In-Table", timezone="UTC")
    session = Session("s1", stranger, two_sessions.dt_range, None)
    with pytest.raises(ValueError, match="Not-In-Table"):
        session.insert_record_generation_event()
    assert rows() == before


def test_record_generation_needs_an_identifier(
    two_sessions: Session, titan: Instrument
) -> None:
    before = rows()
    for identifier in (None, "", "  "):
        session = Session(identifier, titan, two_sessions.dt_range, None)  # type: ignore[arg-type]
        for require_logs in (False, True):
            with pytest.raises(ValueError, match=re.escape(repr(identifier))):
                session.insert_record_generation_event(require_logs=require_logs)
    assert rows() == before


def test_record_generation_of_a_session_without_logs(
    two_sessions: Session, titan: Instrument, caplog: pytest.LogCaptureFixture,
) -> None:
    insert_raw([row("other", "RECORD_GENERATION", "2021-05-01T11:05:00", status="COMPLETED")])
    before = rows()
    ghost = Session("ghost", titan, two_sessions.dt_range, None)
    # require_logs: refused, nothing written.
    with pytest.raises(ValueError, match="'ghost'"):
        ghost.insert_record_generation_event(require_logs=True)
    assert rows() == before
    # By default, as 1.4: written, with a warning naming the session.
    with caplog.at_level(logging.WARNING):
        result = ghost.insert_record_generation_event()
    (message,) = warnings(caplog)
    assert "'ghost'" in message
    assert [r.id_session_log for r in rows()] == [
        *(r.id_session_log for r in before), result["id_session_log"]]
    stored = _stored(result["id_session_log"])
    assert (stored.session_identifier, stored.event_type, stored.instrument) == (
        "ghost", "RECORD_GENERATION", TITAN)
    # A session with logs is not refused by require_logs.
    result = two_sessions.insert_record_generation_event(require_logs=True)
    assert _stored(result["id_session_log"]).session_identifier == "s1"


# --- get_sessions_to_build: the happy path --------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database")
def test_nothing_to_build_is_an_empty_list_in_every_mode() -> None:
    assert find_session_problems() == []
    for mode in MODES:
        assert get_sessions_to_build(on_error=mode) == []  # type: ignore[arg-type]
    assert get_sessions_to_build() == []
    assert session_handler.get_sessions_to_build() == []


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_only_to_be_built_start_and_end_logs_are_paired() -> None:
    insert_raw([
        row("waiting", "START", "2021-05-01T10:00:00", status="WAITING_FOR_END"),
        row("done", "START", "2021-05-01T10:00:00", status="COMPLETED"),
        row("done", "END", "2021-05-01T11:00:00", status="COMPLETED"),
        row("err", "START", "2021-05-01T10:00:00", status="ERROR"),
        row("err", "END", "2021-05-01T11:00:00", status="ERROR"),
        row("rg", "RECORD_GENERATION", "2021-05-01T11:05:00"),
    ])
    assert find_session_problems() == []
    for mode in MODES:
        assert get_sessions_to_build(on_error=mode) == []  # type: ignore[arg-type]
    assert {r.record_status for r in rows()} == {"WAITING_FOR_END", "COMPLETED", "ERROR",
                                                 "TO_BE_BUILT"}


@pytest.mark.usefixtures("nexuslims_database")
def test_pairs_start_and_end_logs(nexuslims_instruments: dict[str, Instrument]) -> None:
    insert_raw([
        row("s1", "START", "2021-05-01T10:00:00", user="alice"),
        row(URL_ID, "START", "2021-05-01T10:30:00", JEOL, user=None),
        row(URL_ID, "END", "2021-05-01T12:00:00", JEOL, user="carol"),
        row("s1", "END", "2021-05-01T11:00:00", user="bob"),
        row("s1", "RECORD_GENERATION", "2021-05-01T11:05:00"),  # not a START or END
        row("done", "START", "2021-05-01T09:00:00", status="COMPLETED"),
    ])
    sessions = get_sessions_to_build()
    assert all(type(s) is Session for s in sessions)
    assert [s.session_identifier for s in sessions] == ["s1", URL_ID]
    first, second = sessions
    assert (first.dt_from, first.dt_to) == (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11))
    assert first.dt_from.tzinfo is None
    assert first.user == "alice"  # the START's user
    assert second.user is None
    assert isinstance(first.instrument, Instrument)
    assert first.instrument.name == TITAN
    assert first.instrument is instrument_db[TITAN]
    assert first.instrument.api_url == nexuslims_instruments[TITAN].api_url
    assert second.instrument.name == JEOL
    assert second.instrument.timezone is DENVER
    assert repr(first) == "2021-05-01T10:00:00 to 2021-05-01T11:00:00 on FEI-Titan-TEM-635816"
    assert len(set(sessions)) == 2


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_sessions_come_in_order_of_their_start_logs() -> None:
    # START ids: zeta < alpha < mid; ENDs written in the reverse order.
    insert_raw([
        row("zeta", "START", "2021-05-03T10:00:00"),
        row("alpha", "START", "2021-05-01T10:00:00"),
        row("mid", "START", "2021-05-02T10:00:00", QUANTA),
        row("mid", "END", "2021-05-02T11:00:00", QUANTA),
        row("alpha", "END", "2021-05-01T11:00:00"),
        row("zeta", "END", "2021-05-03T11:00:00"),
    ])
    for mode in MODES:
        sessions = get_sessions_to_build(on_error=mode)  # type: ignore[arg-type]
        assert [s.session_identifier for s in sessions] == ["zeta", "alpha", "mid"]


OFFSET_M4 = timezone(timedelta(hours=-4))
IST = timezone(timedelta(hours=5, minutes=30))
STORED_TEXTS = [
    ("2021-05-01T10:00:00", datetime(2021, 5, 1, 10)),
    ("2021-05-01 10:00:00", datetime(2021, 5, 1, 10)),
    ("2021-05-01T10:00:00.123", datetime(2021, 5, 1, 10, 0, 0, 123000)),
    ("2021-05-01 10:00:00.123456", datetime(2021, 5, 1, 10, 0, 0, 123456)),
    ("2021-05-01T10:00:00-04:00", datetime(2021, 5, 1, 10, tzinfo=OFFSET_M4)),
    ("2021-05-01 10:00:00.500-04:00", datetime(2021, 5, 1, 10, 0, 0, 500000, OFFSET_M4)),
    ("2021-05-01T10:00:00.654321+05:30", datetime(2021, 5, 1, 10, 0, 0, 654321, IST)),
    ("2021-05-01T10:00:00+00:00", datetime(2021, 5, 1, 10, tzinfo=timezone.utc)),
    ("2021-05-01T10:00:00Z", datetime(2021, 5, 1, 10, tzinfo=timezone.utc)),
]


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
@pytest.mark.parametrize("write", ["raw", "insert_log"])
def test_timestamps_are_parsed_keeping_offsets_and_naive_stays_naive(write: str) -> None:
    for number, (text, _) in enumerate(STORED_TEXTS):
        start, end = log(f"s{number}", "START", text), log(
            f"s{number}", "END", text.replace("10:00:00", "11:30:00"))
        if write == "raw":
            insert_raw([row(f"s{number}", "START", start.timestamp),
                        row(f"s{number}", "END", end.timestamp)])
        else:
            assert insert_logs([start, end]) == 2
    sessions = get_sessions_to_build()
    assert [s.session_identifier for s in sessions] == [f"s{n}" for n in range(len(STORED_TEXTS))]
    for session, (text, expected) in zip(sessions, STORED_TEXTS):
        for parsed, wanted in (
            (session.dt_from, expected), (session.dt_to, expected + timedelta(minutes=90)),
        ):
            assert parsed == wanted, text
            assert parsed.replace(tzinfo=None) == wanted.replace(tzinfo=None)
            assert (parsed.tzinfo is None) == (wanted.tzinfo is None), text
            assert parsed.utcoffset() == wanted.utcoffset()
        assert session.duration == timedelta(minutes=90)


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_mixed_offsets_that_are_in_order_are_a_session() -> None:
    # Naive times are local time at the instrument (New York, UTC-4 in May).
    pairs = [
        ("2021-05-01T10:00:00", "2021-05-01T14:30:00+00:00"),
        ("2021-05-01T14:30:00+00:00", "2021-05-01T11:00:00"),
        ("2021-05-01T10:00:00", "2021-05-01T10:00:00"),
        ("2021-05-01T10:00:00-04:00", "2021-05-01T14:00:00+00:00"),
    ]
    for number, (start, end) in enumerate(pairs):
        insert_raw([row(f"s{number}", "START", start), row(f"s{number}", "END", end)])
    assert find_session_problems() == []
    expected = [(f"s{n}", TITAN, start, end, "alice") for n, (start, end) in enumerate(pairs)]
    for mode in MODES:
        assert keys(get_sessions_to_build(on_error=mode)) == expected  # type: ignore[arg-type]


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_sessions_are_hashable_and_equal_across_reads() -> None:
    insert_raw(GOOD)
    first, second = get_sessions_to_build(), get_sessions_to_build()
    assert first == second
    assert {hash(s) for s in first} == {hash(s) for s in second}
    assert len(set(first + second)) == 1


def test_sessions_follow_the_database(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    insert_raw([row("in-first", "START", "2021-05-01T10:00:00"),
                row("in-first", "END", "2021-05-01T11:00:00")])
    other = init_db(tmp_path / "second.sqlite")
    add_sample_instruments(other)
    monkeypatch.setenv("nexusLIMS_db_path", str(other.path))
    assert get_sessions_to_build() == []
    insert_raw([row("in-second", "START", "2021-05-01T10:00:00", QUANTA),
                row("in-second", "END", "2021-05-01T11:00:00", QUANTA)])
    assert [s.session_identifier for s in get_sessions_to_build()] == ["in-second"]
    monkeypatch.setenv("nexusLIMS_db_path", str(nexuslims_db))
    assert [s.session_identifier for s in get_sessions_to_build()] == ["in-first"]


# --- get_sessions_to_build: the 1.4 error -------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
@pytest.mark.parametrize("ends", [0, 2])
def test_start_without_exactly_one_end_raises_by_default(ends: int) -> None:
    insert_raw(GOOD)
    insert_raw([row("broken-session", "START", "2021-05-01T10:00:00", user="jdoe")])
    insert_raw([row("broken-session", "END", f"2021-05-01T11:0{m}:00") for m in range(ends)])
    before = rows()
    for call in (get_sessions_to_build, session_handler.get_sessions_to_build,
                 lambda: get_sessions_to_build(on_error="raise"),
                 lambda: get_sessions_to_build(on_error="strict")):
        with pytest.raises(ValueError, match=END_COUNT_RE) as info:
            call()
        message = str(info.value)
        assert message.startswith(END_COUNT_PREFIX)
        rest = message[len(END_COUNT_PREFIX):]
        assert rest.startswith(f"len(matching_end_logs) was {ends}; ")
        assert "id=broken-session" in rest
        assert "timestamp=2021-05-01T10:00:00" in rest
        assert "user=jdoe" in rest
    assert rows() == before


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_the_1_4_message_for_a_start_without_an_end_is_exact() -> None:
    insert_raw([*GOOD, row("bad", "START", "2021-05-01T10:00:00")])
    with pytest.raises(ValueError, match=END_COUNT_RE) as info:
        get_sessions_to_build()
    assert str(info.value) == (
        f"{END_COUNT_PREFIX}len(matching_end_logs) was 0; start log was SessionLog (id=bad, "
        f"instrument={TITAN}, timestamp=2021-05-01T10:00:00, event_type=START, user=alice, "
        f"record_status=TO_BE_BUILT); matching_end_logs was []"
    )


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_an_end_with_another_status_does_not_count() -> None:
    insert_raw([row("s1", "START", "2021-05-01T10:00:00"),
                row("s1", "END", "2021-05-01T11:00:00", status="COMPLETED")])
    with pytest.raises(ValueError, match=END_COUNT_RE) as info:
        get_sessions_to_build()
    assert "len(matching_end_logs) was 0;" in str(info.value)


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_the_start_without_an_end_is_raised_first_as_1_4_did() -> None:
    # An orphan END comes first by id, but 1.4 raised for the START.
    insert_raw([row("orphan", "END", "2024-01-01T08:00:00", user=None),
                row("mixed", "START", "2024-01-01T08:00:00"),
                row("mixed", "END", "2024-01-01T09:00:00", QUANTA),
                row("lonely", "START", "2024-01-01T09:00:00", user=None)])
    for mode in ("raise", "strict"):
        with pytest.raises(ValueError, match=END_COUNT_RE) as raised:
            get_sessions_to_build(on_error=mode)  # type: ignore[arg-type]
        assert "id=lonely" in str(raised.value)


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_other_problems_are_skipped_by_default_and_raised_by_strict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    insert_raw([row("orphan", "END", "2024-01-01T08:00:00", user=None), *GOOD])
    with caplog.at_level(logging.WARNING):
        assert keys(get_sessions_to_build()) == [GOOD_KEY]
    (message,) = warnings(caplog)
    assert "'orphan'" in message
    assert "end_without_start" in message
    with pytest.raises(ValueError, match=r"^session 'orphan' has 1 'END' log\(s\)"):
        get_sessions_to_build(on_error="strict")


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_unknown_instrument_names_the_instrument_and_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Rows a 1.4 installation could hold: its connections never enforced the FK.
    insert_raw([*GOOD,
                row("orphan-session", "START", "2021-05-01T10:00:00", "Retired-Scope-1"),
                row("orphan-session", "END", "2021-05-01T11:00:00", "Retired-Scope-1")])
    with caplog.at_level(logging.WARNING):
        assert keys(get_sessions_to_build()) == [GOOD_KEY]
    (message,) = warnings(caplog)
    assert "orphan-session" in message
    assert "Retired-Scope-1" in message
    with pytest.raises(ValueError, match="Retired-Scope-1") as info:
        get_sessions_to_build(on_error="strict")
    assert "orphan-session" in str(info.value)
    assert not isinstance(info.value, KeyError)


@pytest.mark.usefixtures("nexuslims_database")
def test_unknown_on_error_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^on_error must be one of raise, strict, skip, mark, not 'x'$"
    ):
        get_sessions_to_build(on_error="x")  # type: ignore[arg-type]


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_an_unknown_timezone_in_the_table_names_the_instrument() -> None:
    sql("UPDATE instruments SET timezone = 'US/Eastrn' WHERE instrument_pid = ?", (TITAN,))
    expected = re.escape(
        f"Instrument '{TITAN}' in the instruments table has an unknown timezone 'US/Eastrn'"
    )
    with pytest.raises(ValueError, match=expected):
        load_instruments()
    with pytest.raises(ValueError, match=expected):
        get_sessions_to_build()


# --- every problem kind under every on_error mode ---------------------------------------------


# Logs of the bad session that "mark" must leave alone: not START/END, or
# not TO_BE_BUILT.
BYSTANDERS = [
    row("bad", "RECORD_GENERATION", "2021-05-01T12:00:00"),
    row("bad", "START", "2021-04-01T10:00:00", status="COMPLETED"),
    row("bad", "END", "2021-04-01T11:00:00", status="WAITING_FOR_END"),
    row("bad", "END", "2021-04-01T11:00:00", status="ERROR"),
]


#: Every kind of inconsistent session (the suite's one catalogue, in helpers),
#: as session 'bad'.
CASES = INCONSISTENT


@dataclass
class Scenario:
    """A database holding a good session, a bad one and bystanders."""

    case: Inconsistency
    bad_ids: list[int]  # the TO_BE_BUILT START/END logs of 'bad'


@pytest.fixture(params=list(CASES), ids=list(CASES))
def scenario(
    request: pytest.FixtureRequest, nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
) -> Scenario:
    case = CASES[request.param]
    insert_raw(GOOD[:1])
    bad_ids = insert_raw(case.rows("bad"))
    insert_raw([*BYSTANDERS, *GOOD[1:]])
    return Scenario(case, bad_ids)


def test_every_problem_kind_under_every_mode(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    case = scenario.case
    before = rows()

    # find_session_problems lists every problem, raising none.
    problems = find_session_problems()
    assert [p.session_identifier for p in problems] == ["bad"] * len(case.kinds)
    assert [p.kind for p in problems] == case.kinds
    for problem, pattern in zip(problems, case.details("bad")):
        assert isinstance(problem, SessionProblem)
        assert isinstance(problem.kind, ProblemKind)
        assert re.search(pattern, problem.detail), problem.detail
        assert str(problem) == f"bad: {problem.kind.value}: {problem.detail}"
        assert problem.log_ids == tuple(scenario.bad_ids)
        assert problem.markable is True  # every timestamp is years old
    end_count = [p for p in problems if p.kind is ProblemKind.END_COUNT]

    # strict: the END-count error first, else the first problem; nothing written.
    first = (end_count or problems)[0]
    with pytest.raises(ValueError, match=f"^{re.escape(first.detail)}$"):
        get_sessions_to_build(on_error="strict")
    assert rows() == before

    # raise (the default, as 1.4): raises only for the END count; else skips with a warning.
    for call in (get_sessions_to_build, lambda: get_sessions_to_build(on_error="raise")):
        caplog.clear()
        if end_count:
            with pytest.raises(ValueError, match=f"^{re.escape(end_count[0].detail)}$"):
                call()
        else:
            assert keys(call()) == [GOOD_KEY]
            (message,) = warnings(caplog)
            assert "'bad'" in message
            for kind in case.kinds:
                assert kind.value in message
        assert rows() == before

    # skip: the good session, one warning naming the bad one and every reason.
    caplog.clear()
    assert keys(get_sessions_to_build(on_error="skip")) == [GOOD_KEY]
    (message,) = warnings(caplog)
    assert "'bad'" in message
    for kind in case.kinds:
        assert kind.value in message
    assert "mark" not in message.lower()
    assert rows() == before

    # mark: the bad session's TO_BE_BUILT START/END rows, and only those, become ERROR.
    caplog.clear()
    assert keys(get_sessions_to_build(on_error="mark")) == [GOOD_KEY]
    (message,) = warnings(caplog)
    assert "'bad'" in message
    assert "Marked" in message
    expected = {r.id_session_log: r.record_status for r in before}
    expected.update(dict.fromkeys(scenario.bad_ids, "ERROR"))
    assert statuses() == expected
    assert [r[:5] + r[6:] for r in rows()] == [r[:5] + r[6:] for r in before]
    # The bad session is gone; the good one is still there to build.
    assert find_session_problems() == []
    for mode in MODES:
        assert keys(get_sessions_to_build(on_error=mode)) == [GOOD_KEY]  # type: ignore[arg-type]


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_several_bad_sessions_are_each_reported_and_marked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad_a = insert_raw([row("a", "START", "2021-05-01T10:00:00")])
    insert_raw(GOOD)
    bad_b = insert_raw([row("b", "END", "2021-05-01T11:00:00"),
                        row("b", "END", "2021-05-01T11:00:01")])
    bad_c = insert_raw([row("c", "START", "2021-05-01T10:00:00"),
                        row("c", "START", "2021-05-01T10:00:01", "GHOST-1")])
    before = statuses()
    problems = find_session_problems()
    assert [(p.session_identifier, p.kind) for p in problems] == [
        ("a", ProblemKind.END_COUNT),
        ("b", ProblemKind.END_WITHOUT_START),
        ("c", ProblemKind.END_COUNT),
        ("c", ProblemKind.MULTIPLE_STARTS),
        ("c", ProblemKind.UNKNOWN_INSTRUMENT),
    ]
    assert [p.log_ids for p in problems] == [
        tuple(bad_a), tuple(bad_b), tuple(bad_c), tuple(bad_c), tuple(bad_c)]
    with pytest.raises(ValueError, match=re.escape(problems[0].detail)):
        get_sessions_to_build()
    with caplog.at_level(logging.WARNING):
        assert keys(get_sessions_to_build(on_error="skip")) == [GOOD_KEY]
    found = warnings(caplog)
    assert len(found) == 3
    assert ["'a'" in found[0], "'b'" in found[1], "'c'" in found[2]] == [True] * 3
    assert statuses() == before

    assert keys(get_sessions_to_build(on_error="mark")) == [GOOD_KEY]
    assert statuses() == {**before, **dict.fromkeys([*bad_a, *bad_b, *bad_c], "ERROR")}
    assert keys(get_sessions_to_build()) == [GOOD_KEY]


def test_mark_is_all_or_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    bad = insert_raw([
        row("a", "START", "2021-05-01T10:00:00"),
        row("b", "END", "2021-05-01T11:00:00"),
        row("c", "START", "yesterday"),
        row("c", "END", "2021-05-01T11:00:00"),
    ])
    insert_raw(GOOD)
    # Make the update of the last row fail, after the others ran.
    if nexuslims_database.backend == "sqlite":
        sql(f"CREATE TRIGGER refuse_error BEFORE UPDATE OF record_status ON session_log "
            f"WHEN NEW.id_session_log = {bad[-1]} BEGIN SELECT RAISE(ABORT, 'refused'); END")
        errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    else:
        psycopg = pytest.importorskip("psycopg")
        sql("CREATE FUNCTION refuse_error() RETURNS trigger LANGUAGE plpgsql AS "
            "'BEGIN RAISE EXCEPTION ''refused''; END'")
        sql(f"CREATE TRIGGER refuse_error BEFORE UPDATE OF record_status ON session_log "
            f"FOR EACH ROW WHEN (NEW.id_session_log = {bad[-1]}) EXECUTE FUNCTION refuse_error()")
        errors = (psycopg.Error,)
    before = rows()
    with pytest.raises(errors, match="refused"):
        get_sessions_to_build(on_error="mark")
    assert rows() == before


# --- mark: the age rule ------------------------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_a_recent_start_waiting_for_its_end_is_skipped_not_marked(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("nexusLIMS_db_mark_after", raising=False)  # 3 days
    start = _ago(timedelta(minutes=5))
    insert_raw([*GOOD, row("recent", "START", start.isoformat())])
    before = rows()
    (problem,) = find_session_problems()
    assert (problem.session_identifier, problem.kind, problem.markable) == (
        "recent", ProblemKind.END_COUNT, False)
    # As 1.4, the default still raises for it.
    with pytest.raises(ValueError, match=END_COUNT_RE):
        get_sessions_to_build()
    with caplog.at_level(logging.WARNING):
        assert keys(get_sessions_to_build(on_error="mark")) == [GOOD_KEY]
    (message,) = warnings(caplog)
    assert "'recent'" in message
    assert "Marked" not in message
    assert rows() == before
    # Once its END arrives, it is a session like any other.
    end = start + timedelta(minutes=1)
    insert_raw([row("recent", "END", end.isoformat())])
    assert find_session_problems() == []
    assert keys(get_sessions_to_build(on_error="mark")) == [
        GOOD_KEY, ("recent", TITAN, start.isoformat(), end.isoformat(), "alice")]
    assert set(statuses().values()) == {"TO_BE_BUILT"}


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_mark_waits_nexuslims_db_mark_after_for_sessions_a_writer_may_complete(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Far enough apart that a naive time read in the other fold of a DST change cannot flip.
    monkeypatch.setenv("nexusLIMS_db_mark_after", "3h")
    now_ny = datetime.now(NEW_YORK).replace(tzinfo=None)
    now_denver = datetime.now(DENVER).replace(tzinfo=None)
    recent, old = timedelta(minutes=30), timedelta(hours=5)
    ids = {identifier: insert_raw(logs) for identifier, logs in {
        "start-recent-aware": [row("start-recent-aware", "START", _ago(recent).isoformat())],
        # Naive times are local at the instrument (here Denver): 30 minutes ago there.
        "start-recent-naive": [row("start-recent-naive", "START",
                                   (now_denver - recent).isoformat(), JEOL)],
        "start-future": [row("start-future", "START", _ago(-recent).isoformat())],
        "start-old-aware": [row("start-old-aware", "START", _ago(old).isoformat())],
        "start-old-naive": [row("start-old-naive", "START", (now_ny - old).isoformat())],
        "end-recent": [row("end-recent", "END", _ago(recent).isoformat())],
        "end-old": [row("end-old", "END", (now_ny - old).isoformat())],
        "two-ends-recent": [row("two-ends-recent", "START", _ago(recent).isoformat()),
                            row("two-ends-recent", "END", _ago(recent / 2).isoformat()),
                            row("two-ends-recent", "END", _ago(recent / 3).isoformat())],
        "good": GOOD,
    }.items()}
    markable = {"start-recent-aware": False, "start-recent-naive": False, "start-future": False,
                "start-old-aware": True, "start-old-naive": True,
                "end-recent": False, "end-old": True, "two-ends-recent": True}
    problems = find_session_problems()
    assert {p.session_identifier: p.markable for p in problems} == markable
    assert all(p.log_ids == tuple(ids[p.session_identifier]) for p in problems)
    before = statuses()
    with caplog.at_level(logging.WARNING):
        assert keys(get_sessions_to_build(on_error="mark")) == [GOOD_KEY]
    found = warnings(caplog)
    assert len(found) == len(markable)
    for identifier, marked in markable.items():
        (message,) = [m for m in found if f"'{identifier}'" in m]
        assert ("Marked" in message) is marked, message
    assert statuses() == {**before, **{
        log_id: "ERROR" for identifier, marked in markable.items() if marked
        for log_id in ids[identifier]}}
    # The unmarked ones are still there, still not marked.
    assert {p.session_identifier for p in find_session_problems()} == {
        identifier for identifier, marked in markable.items() if not marked}


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_mark_after_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    young = insert_raw([row("half-hour", "START", _ago(timedelta(minutes=30)).isoformat())])
    old = insert_raw([row("two-hours", "START", _ago(timedelta(hours=2)).isoformat())])
    monkeypatch.setenv("nexusLIMS_db_mark_after", "3h")
    assert get_sessions_to_build(on_error="mark") == []
    assert statuses() == {young[0]: "TO_BE_BUILT", old[0]: "TO_BE_BUILT"}
    monkeypatch.setenv("nexusLIMS_db_mark_after", "1h")
    assert {p.session_identifier: p.markable for p in find_session_problems()} == {
        "half-hour": False, "two-hours": True}
    assert get_sessions_to_build(on_error="mark") == []
    assert statuses() == {young[0]: "TO_BE_BUILT", old[0]: "ERROR"}


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_mark_after_defaults_to_three_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nexusLIMS_db_mark_after", raising=False)
    young = insert_raw([row("two-days", "START", _ago(timedelta(days=2)).isoformat())])
    old = insert_raw([row("four-days", "START", _ago(timedelta(days=4)).isoformat())])
    assert {p.session_identifier: p.markable for p in find_session_problems()} == {
        "two-days": False, "four-days": True}
    assert get_sessions_to_build(on_error="mark") == []
    assert statuses() == {young[0]: "TO_BE_BUILT", old[0]: "ERROR"}


# --- daylight-saving changes (issue 8.5) --------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database")
def test_sessions_across_the_end_of_daylight_saving_time(
    nexuslims_instruments: dict[str, Instrument], caplog: pytest.LogCaptureFixture,
) -> None:
    insert_raw([
        row("back", "START", "2021-11-07T01:50:00.000", QUANTA),
        row("back", "END", "2021-11-07T01:10:00.000", QUANTA),
        row("night", "START", "2021-11-07T00:30:00", QUANTA),
        row("night", "END", "2021-11-07T02:30:00", QUANTA),
    ])
    assert find_session_problems() == []
    expected = [
        ("back", QUANTA, "2021-11-07T01:50:00", "2021-11-07T01:10:00", "alice"),
        ("night", QUANTA, "2021-11-07T00:30:00", "2021-11-07T02:30:00", "alice"),
    ]
    with caplog.at_level(logging.WARNING):
        for mode in MODES:
            sessions = get_sessions_to_build(on_error=mode)  # type: ignore[arg-type]
            assert keys(sessions) == expected
            assert [s.duration for s in sessions] == [timedelta(minutes=20), timedelta(hours=3)]
            assert sessions[0].instrument is nexuslims_instruments[QUANTA]
    assert warnings(caplog) == []
    assert set(statuses().values()) == {"TO_BE_BUILT"}


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_the_session_logger_accepts_a_session_across_the_change() -> None:
    log_start(QUANTA, "back", at="2021-11-07T01:50:00.000")
    log_end(QUANTA, "back", at="2021-11-07T01:10:00.000")
    (session,) = get_sessions_to_build()
    assert session.duration == timedelta(minutes=20)


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_an_end_before_its_start_on_an_ordinary_day_is_still_a_problem() -> None:
    ids = insert_raw([row("neg", "START", "2021-11-08T01:50:00", QUANTA),
                      row("neg", "END", "2021-11-08T01:20:00", QUANTA), *GOOD])
    (problem,) = find_session_problems()
    assert (problem.session_identifier, problem.kind) == ("neg", ProblemKind.END_BEFORE_START)
    assert problem.log_ids == tuple(ids[:2])
    with pytest.raises(ValueError, match="before it starts"):
        get_sessions_to_build(on_error="strict")
    for mode in ("raise", "skip", "mark"):
        assert keys(get_sessions_to_build(on_error=mode)) == [GOOD_KEY]  # type: ignore[arg-type]
    assert statuses()[ids[0]] == statuses()[ids[1]] == "ERROR"


# --- the Session Logger's sessions ---------------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_log_end_refuses_a_naive_end_before_an_aware_start() -> None:
    log_start(JEOL, "s1", at="2024-01-01T10:00:00-07:00")
    before = rows()
    # 09:00 local in Denver is an hour before the start.
    with pytest.raises(ValueError, match="it started later, at 2024-01-01T10:00:00-07:00"):
        log_end(JEOL, "s1", at="2024-01-01T09:00:00")
    assert rows() == before
    assert find_session_problems() == []


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_log_end_reads_a_naive_end_in_the_instruments_zone() -> None:
    log_start(JEOL, "s1", at="2024-01-01T10:00:00-07:00")
    # 10:30 in Denver: after the start, though 10:30 UTC would be before it.
    log_end(JEOL, "s1", at="2024-01-01T10:30:00")
    (session,) = get_sessions_to_build()
    assert session.duration == timedelta(minutes=30)
    assert session_key(session) == (
        "s1", JEOL, "2024-01-01T10:00:00-07:00", "2024-01-01T10:30:00", None)


# --- extreme timestamps already stored (issue 13.3) -----------------------------------------


EXTREME = [
    row("year-1", "START", "0001-01-01T00:00:00+05:00"),
    row("year-1", "END", "0001-01-01T00:30:00"),
    row("year-9999", "START", "9999-12-31T20:00:00-05:00"),
    row("year-9999", "END", "9999-12-31T23:30:00-05:00"),
    row("year-9999-naive-end", "START", "9999-12-31T22:00:00-05:00"),
    row("year-9999-naive-end", "END", "9999-12-31T23:30:00"),
    row("year-9999-naive-start", "START", "9999-12-31T20:00:00"),
    row("year-9999-naive-start", "END", "9999-12-31T23:30:00+05:00"),
]


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_extreme_timestamps_never_stop_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    insert_raw([*GOOD, *EXTREME])
    problems = find_session_problems()  # raises no OverflowError
    assert {p.session_identifier for p in problems} >= {
        "year-9999-naive-end", "year-9999-naive-start"}
    assert {p.kind for p in problems} == {ProblemKind.BAD_TIMESTAMP}
    for mode in ("raise", "skip"):
        sessions = get_sessions_to_build(on_error=mode)  # type: ignore[arg-type]
        assert GOOD_KEY in keys(sessions)
        for session in sessions:
            assert session.duration is None or isinstance(session.duration, timedelta)
    assert main(["sessions"]) == 0
    out, err = capsys.readouterr()
    assert "unexpected" not in out + err
    assert "good" in out
    assert GOOD_KEY in keys(get_sessions_to_build(on_error="mark"))


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_extreme_timestamps_are_bad_timestamp_problems(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = insert_raw([*GOOD, *EXTREME])
    problems = find_session_problems()
    assert [(p.session_identifier, p.kind) for p in problems] == [
        (identifier, ProblemKind.BAD_TIMESTAMP)
        for identifier in ("year-1", "year-9999", "year-9999-naive-end", "year-9999-naive-start")]
    for mode in ("raise", "skip", "mark"):
        assert keys(get_sessions_to_build(on_error=mode)) == [GOOD_KEY]  # type: ignore[arg-type]
    assert statuses() == {**dict.fromkeys(ids[:2], "TO_BE_BUILT"),
                          **dict.fromkeys(ids[2:], "ERROR")}
    assert main(["sessions"]) == 0
    assert "unexpected" not in "".join(capsys.readouterr())


# --- repair of old double ENDs (issue 14.1) ---------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_repair_duplicate_ends() -> None:
    insert_raw(GOOD)
    # The END written last (highest id) is the revision, whatever its time.
    start, old_end, new_end = insert_raw([row("twice", "START", "2021-05-02T10:00:00"),
                                          row("twice", "END", "2021-05-02T11:30:00"),
                                          row("twice", "END", "2021-05-02T11:00:00")])
    thrice = insert_raw([row("thrice", "START", "2021-05-03T10:00:00", QUANTA),
                         row("thrice", "END", "2021-05-03T11:00:00", QUANTA),
                         row("thrice", "END", "2021-05-03T11:10:00", QUANTA),
                         row("thrice", "END", "2021-05-03T11:20:00", QUANTA)])
    # A final-status duplicate does not count.
    insert_raw([row("done", "START", "2021-05-04T10:00:00"),
                row("done", "END", "2021-05-04T11:00:00"),
                row("done", "END", "2021-05-04T11:05:00", status="ERROR")])
    problems = find_session_problems()
    assert [(p.session_identifier, p.kind, p.log_ids) for p in problems] == [
        ("twice", ProblemKind.END_COUNT, (start, old_end, new_end)),
        ("thrice", ProblemKind.END_COUNT, tuple(thrice)),
    ]
    before = rows()
    plan = [("thrice", thrice[3], (thrice[1], thrice[2])), ("twice", new_end, (old_end,))]
    assert sorted(repair_duplicate_ends(dry_run=True)) == plan
    assert rows() == before

    events: list[tuple[str, str]] = []
    with tracing(lambda event, text: events.append((event, text))):
        assert sorted(repair_duplicate_ends()) == plan
    assert [event for event, _ in events].count("open") == 1
    assert [text for _, text in events if text.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    assert statuses() == {**{r.id_session_log: r.record_status for r in before},
                          old_end: "ERROR", thrice[1]: "ERROR", thrice[2]: "ERROR"}
    assert find_session_problems() == []
    assert keys(get_sessions_to_build()) == [
        GOOD_KEY,
        ("twice", TITAN, "2021-05-02T10:00:00", "2021-05-02T11:00:00", "alice"),
        ("thrice", QUANTA, "2021-05-03T10:00:00", "2021-05-03T11:20:00", "alice"),
        ("done", TITAN, "2021-05-04T10:00:00", "2021-05-04T11:00:00", "alice"),
    ]
    assert repair_duplicate_ends() == []
    assert repair_duplicate_ends(dry_run=True) == []


# --- whose instruments ---------------------------------------------------------------------


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_instruments_given_are_used_instead_of_the_table(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    insert_raw([*GOOD, row("q", "START", "2021-05-01T10:00:00", QUANTA),
                row("q", "END", "2021-05-01T11:00:00", QUANTA)])
    custom = Instrument(name=TITAN, timezone="America/New_York", location="elsewhere")
    with caplog.at_level(logging.WARNING):
        (session,) = get_sessions_to_build(instruments={TITAN: custom})
    assert session.instrument is custom
    (message,) = warnings(caplog)
    assert "'q'" in message
    assert "unknown_instrument" in message

    # 1.4's module: a test that replaces its instrument_db is honoured.
    caplog.clear()
    with monkeypatch.context() as patch:
        patch.setattr(session_handler, "instrument_db", {TITAN: custom})
        with caplog.at_level(logging.WARNING):
            (session,) = session_handler.get_sessions_to_build()
        assert session.instrument is custom
        assert len(warnings(caplog)) == 1
        (session,) = session_handler.get_sessions_to_build(on_error="skip")
        assert session.instrument is custom
        with pytest.raises(ValueError, match=QUANTA):
            session_handler.get_sessions_to_build(on_error="strict")
    assert [s.instrument for s in session_handler.get_sessions_to_build()] == [
        instrument_db[TITAN], instrument_db[QUANTA]]


@pytest.mark.usefixtures("nexuslims_database", "nexuslims_instruments")
def test_messages_come_from_the_1_4_logger(caplog: pytest.LogCaptureFixture) -> None:
    insert_raw([*GOOD, row("orphan", "END", "2021-05-01T11:00:00")])
    with caplog.at_level(logging.INFO):
        get_sessions_to_build()
    ours = [(r.name, r.levelno, r.getMessage()) for r in caplog.records
            if r.name.startswith("nexusLIMS") and r.levelno >= logging.INFO]
    assert (LOGGER, logging.INFO, "Found 1 new sessions to build") in ours
    pairing = [(name, level) for name, level, message in ours if "orphan" in message]
    assert pairing == [(LOGGER, logging.WARNING)]
    assert session_handler.logger.name == LOGGER


# --- databases without the partial index ----------------------------------------------------


def _mix() -> list[Row]:
    """Good sessions around every kind of problem, in an order that tests adjacency."""
    recent = _ago(timedelta(minutes=10)).isoformat()
    return [
        row("g1", "START", "2021-05-01T08:00:00"),
        row("a", "START", "2021-05-01T10:00:00"),  # no END
        row("a0", "START", "2021-05-01T10:00:00", user="bob"),
        row("b", "START", "2021-05-01T10:00:00"),
        row("b", "END", "2021-05-01T11:00:00"),
        row("b", "END", "2021-05-01T11:30:00"),
        row("c", "END", "2021-05-01T11:00:00"),  # no START
        row("c0", "START", "2021-05-01T10:00:00", JEOL),
        row("d", "START", "2021-05-01T10:00:00"),
        row("d", "START", "2021-05-01T10:05:00"),
        row("d", "END", "2021-05-01T11:00:00"),
        row("e", "START", "2021-05-01T10:00:00", "GHOST-1"),
        row("e", "END", "2021-05-01T11:00:00", "GHOST-1"),
        row("f", "START", "2021-05-01T10:00:00"),
        row("f", "END", "2021-05-01T11:00:00", QUANTA),
        row("g", "START", "yesterday"),
        row("g", "END", "2021-05-01T11:00:00"),
        row("h", "START", "2021-05-01T10:00:00"),
        row("h", "END", "2021-05-01T09:00:00"),
        row("dup", "START", "2021-05-01T10:00:00"),  # the same identifier on two instruments
        row("dup", "END", "2021-05-01T11:00:00"),
        row("dup", "START", "2021-05-01T10:00:00", QUANTA),
        row("dup", "END", "2021-05-01T11:00:00", QUANTA),
        row("x", "START", "2021-05-01T10:00:00"),
        row("x", "END", "2021-05-01T11:00:00"),
        row("x", "END", "2021-05-01T11:00:00", QUANTA),  # a lone END on another instrument
        row("w", "START", "2021-05-01T10:00:00"),
        row("w", "END", "2021-05-01T11:00:00", status="WAITING_FOR_END"),
        row("recent", "START", recent),  # not markable yet
        row("g1", "RECORD_GENERATION", "2021-05-01T09:05:00", status="COMPLETED"),
        row("a0", "END", "2021-05-01T11:00:00", user="carol"),
        row("c0", "END", "2021-05-01T11:00:00-06:00", JEOL),
        row("z", "START", "2021-05-01T10:00:00-04:00", QUANTA),
        row("g1", "END", "2021-05-01T09:00:00"),
        row("z", "END", "2021-05-01T15:00:00+00:00", QUANTA),
        row("zz", "END", "2021-05-01T11:00:00"),  # no START, last
    ]


EXPECTED_GOOD = ["g1", "a0", "c0", "z"]


def _everything(database: Any = None) -> dict[str, Any]:
    """What every read-only call gives on ``database``."""
    return {
        "problems": problem_tuples(find_session_problems(database=database)),
        **{mode: outcome(lambda mode=mode: get_sessions_to_build(on_error=mode,
                                                                  database=database))
           for mode in ("raise", "strict", "skip")},
    }


def _statements() -> list[str]:
    """The statements one get_sessions_to_build(on_error="skip") runs."""
    seen: list[str] = []
    with tracing(lambda event, text: seen.append(text) if event.startswith("execute") else None):
        get_sessions_to_build(on_error="skip")
    return seen


def _check_marks(database: Any = None) -> None:
    """``mark`` returns what ``skip`` does and marks exactly the markable problem sessions."""
    problems = find_session_problems(database=database)
    before = statuses(database)
    skipped = keys(get_sessions_to_build(on_error="skip", database=database))
    assert keys(get_sessions_to_build(on_error="mark", database=database)) == skipped
    marked = {p.session_identifier for p in problems if p.markable}
    assert statuses(database) == {**before, **{
        log_id: "ERROR" for p in problems if p.session_identifier in marked
        for log_id in p.log_ids}}


@pytest.mark.usefixtures("nexuslims_instruments")
def test_pairing_without_the_partial_index_gives_the_same_results(
    nexuslims_database: DatabaseLocation, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("nexusLIMS_db_mark_after", "1h")
    insert_raw(_mix())
    with_index = _everything()
    statements_with_index = _statements()
    assert [key[0] for key in with_index["skip"]] == EXPECTED_GOOD
    assert {p[0] for p in with_index["problems"]} == {
        "a", "b", "c", "d", "e", "f", "g", "h", "dup", "x", "w", "recent", "zz"}
    assert with_index["raise"][0] == "raised"
    sql("DROP INDEX session_log_to_be_built_idx")
    assert _everything() == with_index
    if nexuslims_database.backend == "sqlite":
        assert _statements() != statements_with_index  # the other way of pairing was taken
    else:  # PostgreSQL always pairs from one scan; the index only serves claims
        assert _statements() == statements_with_index
    _check_marks()
    assert {p.session_identifier for p in find_session_problems()} == {"recent"}
    assert [key[0] for key in keys(get_sessions_to_build(on_error="mark"))] == EXPECTED_GOOD


def test_pairing_on_an_untouched_1_4_file_gives_the_same_results(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("nexusLIMS_db_mark_after", "1h")
    legacy = make_legacy_db(tmp_path / "old.sqlite")
    add_sample_instruments(legacy)
    mix = _mix()
    assert insert_raw(mix) == insert_raw(mix, legacy)
    expected = _everything(nexuslims_db)
    assert _everything(legacy) == expected
    _check_marks(nexuslims_db)
    _check_marks(legacy)
    assert statuses(legacy) == statuses(nexuslims_db)
    assert _everything(legacy) == _everything(nexuslims_db)
