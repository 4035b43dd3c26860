"""Issue 2, points 1, 4, 5 and 6: ``Session`` and ``get_sessions_to_build``."""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
import pytz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusLIMS.db import make_db_query
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.session_handler import Session, SessionLog, db_query, get_sessions_to_build
from nexusLIMS.instruments import Instrument, instrument_db
from nexusLIMS.utils import current_system_tz

TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
JEOL = "JEOL-JEM3010-TEM-565989"
URL_ID = "https://nemo.example.org/api/usage_events/?id=1234567890&tool=635816"
END_COUNT_PREFIX = "There was not exactly one 'END' log for this 'START' log; "
END_COUNT_RE = "^" + re.escape(END_COUNT_PREFIX)
IST = timezone(timedelta(hours=5, minutes=30))


def _log(
    identifier: str,
    event: str,
    timestamp: str,
    user: Optional[str] = None,
    status: str = "TO_BE_BUILT",
    instrument: str = TITAN,
) -> None:
    assert SessionLog(identifier, instrument, timestamp, event, user, status).insert_log()


def _statuses(path: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT session_identifier, event_type, record_status FROM session_log "
            "ORDER BY id_session_log"
        ).fetchall()


def _row(path: Path, id_session_log: int) -> dict[str, Any]:
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT *, typeof(timestamp) AS timestamp_type FROM session_log "
            "WHERE id_session_log = ?",
            (id_session_log,),
        ).fetchone()
    assert row is not None
    return dict(row)


@pytest.fixture
def titan(nexuslims_instruments: dict[str, Instrument]) -> Instrument:
    return nexuslims_instruments[TITAN]


# --- Session ------------------------------------------------------------------


def test_session_is_a_dataclass_built_from_dt_range(titan: Instrument) -> None:
    start, end = datetime(2021, 5, 1, 10, 0), datetime(2021, 5, 1, 12, 30)
    session = Session("s1", titan, (start, end), "jdoe")
    assert dataclasses.is_dataclass(session)
    init_fields = [f.name for f in dataclasses.fields(Session) if f.init]
    assert init_fields == ["session_identifier", "instrument", "dt_range", "user"]
    assert session.dt_from == start
    assert session.dt_to == end
    assert tuple(session.dt_range) == (start, end)
    assert session.instrument is titan
    assert session.user == "jdoe"
    assert Session(session_identifier="s1", instrument=titan, dt_range=(start, end),
                   user="jdoe") == session


def test_session_repr_is_exact(titan: Instrument) -> None:
    session = Session("s1", titan, (datetime(2021, 5, 1, 10, 0), datetime(2021, 5, 1, 12, 30)),
                      None)
    assert repr(session) == "2021-05-01T10:00:00 to 2021-05-01T12:30:00 on FEI-Titan-TEM-635816"
    offset = timezone(timedelta(hours=-4))
    aware = Session(
        URL_ID,
        titan,
        (datetime(2021, 5, 1, 10, 0, 0, 123456, tzinfo=offset),
         datetime(2021, 5, 1, 12, 30, tzinfo=offset)),
        None,
    )
    assert repr(aware) == (
        "2021-05-01T10:00:00.123456-04:00 to 2021-05-01T12:30:00-04:00 on FEI-Titan-TEM-635816"
    )


# --- update_session_status ----------------------------------------------------


@pytest.fixture
def two_sessions(titan: Instrument, nexuslims_db: Path) -> Session:
    _log("s1", "START", "2021-05-01T10:00:00")
    _log("s1", "END", "2021-05-01T11:00:00")
    _log("s2", "START", "2021-05-01T12:00:00")
    _log("s2", "END", "2021-05-01T13:00:00")
    return Session("s1", titan, (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11)), None)


@pytest.mark.parametrize(
    "status", [*RecordStatus, *RecordStatus.values()], ids=lambda s: repr(s)
)
def test_update_session_status_sets_every_row_of_the_session(
    status: Any, two_sessions: Session, nexuslims_db: Path
) -> None:
    assert two_sessions.update_session_status(status) is True
    assert _statuses(nexuslims_db) == [
        ("s1", "START", str(status)),
        ("s1", "END", str(status)),
        ("s2", "START", "TO_BE_BUILT"),
        ("s2", "END", "TO_BE_BUILT"),
    ]
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        types = conn.execute("SELECT DISTINCT typeof(record_status) FROM session_log").fetchall()
    assert types == [("text",)]


@pytest.mark.parametrize("status", ["DONE", "completed", "", "COMPLETED ", None])
def test_update_session_status_rejects_unknown_status_before_writing(
    status: Any, two_sessions: Session, nexuslims_db: Path
) -> None:
    before = _statuses(nexuslims_db)
    with pytest.raises(ValueError, match="allowed") as info:
        two_sessions.update_session_status(status)
    message = str(info.value)
    assert repr(status) in message
    for allowed in (
        "COMPLETED", "WAITING_FOR_END", "TO_BE_BUILT", "ERROR", "NO_FILES_FOUND",
        "NO_CONSENT", "NO_RESERVATION", "BUILT_NOT_EXPORTED",
    ):
        assert allowed in message
    assert _statuses(nexuslims_db) == before


def test_update_session_status_without_rows_returns_false_and_warns(
    two_sessions: Session, titan: Instrument, nexuslims_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _statuses(nexuslims_db)
    ghost = Session("ghost", titan, two_sessions.dt_range, None)
    with caplog.at_level(logging.WARNING):
        assert ghost.update_session_status("COMPLETED") is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ghost" in warnings[0]
    assert _statuses(nexuslims_db) == before


# --- insert_record_generation_event -------------------------------------------


def test_insert_record_generation_event_returns_its_row(
    two_sessions: Session, nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("nexusLIMS_user", "builder")
    result = two_sessions.insert_record_generation_event()
    assert isinstance(result, dict)
    assert {"id_session_log", "event_type", "session_identifier", "timestamp"} <= set(result)
    assert result["event_type"] == "RECORD_GENERATION"
    assert result["session_identifier"] == "s1"
    row = _row(nexuslims_db, result["id_session_log"])
    assert row["id_session_log"] == 5
    assert row["instrument"] == TITAN
    assert row["user"] == "builder"
    assert row["event_type"] == "RECORD_GENERATION"
    assert row["timestamp"] == result["timestamp"]
    assert row["timestamp_type"] == "text"


def test_record_generation_user_is_null_without_nexuslims_user(
    two_sessions: Session, nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("nexusLIMS_user", raising=False)
    result = two_sessions.insert_record_generation_event()
    assert _row(nexuslims_db, result["id_session_log"])["user"] is None


def test_record_generation_returns_its_own_row_not_a_later_one(
    two_sessions: Session, titan: Instrument, nexuslims_db: Path
) -> None:
    # Another session of the same instrument has a RECORD_GENERATION row whose
    # timestamp text sorts after anything "now" can produce.
    _log("s2", "RECORD_GENERATION", "2999-12-31T23:59:59.999", status="COMPLETED")
    _log("s2", "RECORD_GENERATION", "2999-12-31 23:59:59", status="COMPLETED")
    first = two_sessions.insert_record_generation_event()
    second = two_sessions.insert_record_generation_event()
    assert first["session_identifier"] == second["session_identifier"] == "s1"
    assert not first["timestamp"].startswith("2999")
    assert second["id_session_log"] == first["id_session_log"] + 1
    assert make_db_query("SELECT max(id_session_log) FROM session_log") == [
        (second["id_session_log"],)
    ]
    for result in (first, second):
        row = _row(nexuslims_db, result["id_session_log"])
        assert (row["session_identifier"], row["timestamp"]) == (
            "s1", result["timestamp"],
        )


def test_record_generation_timestamp_is_local_time_with_offset(
    local_zone_ist: timezone, two_sessions: Session, nexuslims_db: Path
) -> None:
    result = two_sessions.insert_record_generation_event()
    text = result["timestamp"]
    assert isinstance(text, str)
    assert text[10] == "T"
    assert text.endswith("+05:30")
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert abs(stamp - datetime.now(timezone.utc)) < timedelta(hours=1)
    assert _row(nexuslims_db, result["id_session_log"])["timestamp"] == text


def test_current_system_tz(local_zone_ist: timezone) -> None:
    zone = current_system_tz()
    assert isinstance(zone, timezone)
    assert zone == local_zone_ist


def test_record_generation_row_can_be_deleted_by_id(
    two_sessions: Session, nexuslims_db: Path
) -> None:
    result = two_sessions.insert_record_generation_event()
    assert db_query(
        "DELETE FROM session_log WHERE id_session_log = ?", (result["id_session_log"],)
    ) == (True, [])
    assert len(_statuses(nexuslims_db)) == 4


def test_record_generation_for_unknown_instrument_writes_nothing(
    two_sessions: Session, nexuslims_db: Path
) -> None:
    stranger = Instrument(name="Not-In-Table", timezone="UTC")
    session = Session("s1", stranger, two_sessions.dt_range, None)
    with pytest.raises(ValueError, match="Not-In-Table"):
        session.insert_record_generation_event()
    assert len(_statuses(nexuslims_db)) == 4


# --- get_sessions_to_build ----------------------------------------------------


def test_no_sessions_is_an_empty_list(nexuslims_instruments: dict[str, Instrument]) -> None:
    assert get_sessions_to_build() == []


def test_only_to_be_built_logs_are_paired(nexuslims_instruments: dict[str, Instrument]) -> None:
    _log("waiting", "START", "2021-05-01T10:00:00", status="WAITING_FOR_END")
    _log("done", "START", "2021-05-01T10:00:00", status="COMPLETED")
    _log("done", "END", "2021-05-01T11:00:00", status="COMPLETED")
    _log("err", "START", "2021-05-01T10:00:00", status="ERROR")
    _log("err", "END", "2021-05-01T11:00:00", status="ERROR")
    assert get_sessions_to_build() == []


def test_pairs_start_and_end_logs(nexuslims_instruments: dict[str, Instrument]) -> None:
    _log("s1", "START", "2021-05-01T10:00:00", user="alice")
    _log(URL_ID, "START", "2021-05-01T10:30:00", user=None, instrument=JEOL)
    _log(URL_ID, "END", "2021-05-01T12:00:00", user="carol", instrument=JEOL)
    _log("s1", "END", "2021-05-01T11:00:00", user="bob")
    _log("s1", "RECORD_GENERATION", "2021-05-01T11:05:00")  # not a START or END
    _log("done", "START", "2021-05-01T09:00:00", status="COMPLETED")

    sessions = get_sessions_to_build()
    assert all(type(s) is Session for s in sessions)
    assert [s.session_identifier for s in sessions] == ["s1", URL_ID]
    first, second = sessions
    assert (first.dt_from, first.dt_to) == (datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11))
    assert first.user == "alice"
    assert second.user is None
    assert isinstance(first.instrument, Instrument)
    assert first.instrument.name == TITAN
    assert first.instrument.api_url == instrument_db[TITAN].api_url
    assert second.instrument.name == JEOL
    assert second.instrument.timezone is pytz.timezone("America/Denver")
    assert repr(first) == "2021-05-01T10:00:00 to 2021-05-01T11:00:00 on FEI-Titan-TEM-635816"


OFFSET_M4 = timezone(timedelta(hours=-4))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-05-01T10:00:00", datetime(2021, 5, 1, 10)),
        ("2021-05-01 10:00:00", datetime(2021, 5, 1, 10)),
        ("2021-05-01T10:00:00.123", datetime(2021, 5, 1, 10, 0, 0, 123000)),
        ("2021-05-01 10:00:00.123456", datetime(2021, 5, 1, 10, 0, 0, 123456)),
        ("2021-05-01T10:00:00-04:00", datetime(2021, 5, 1, 10, tzinfo=OFFSET_M4)),
        ("2021-05-01 10:00:00.500-04:00", datetime(2021, 5, 1, 10, 0, 0, 500000, OFFSET_M4)),
        ("2021-05-01T10:00:00.654321+05:30", datetime(2021, 5, 1, 10, 0, 0, 654321, IST)),
        ("2021-05-01T10:00:00+00:00", datetime(2021, 5, 1, 10, tzinfo=timezone.utc)),
        ("2021-05-01T10:00:00Z", datetime(2021, 5, 1, 10, tzinfo=timezone.utc)),
    ],
)
def test_timestamps_are_parsed_keeping_offsets(
    text: str, expected: datetime, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _log("s1", "START", text)
    _log("s1", "END", text.replace("10:00:00", "11:30:00"))
    [session] = get_sessions_to_build()
    for parsed, wanted in (
        (session.dt_from, expected),
        (session.dt_to, expected + timedelta(minutes=90)),
    ):
        assert parsed == wanted
        assert parsed.replace(tzinfo=None) == wanted.replace(tzinfo=None)
        if wanted.tzinfo is None:
            assert parsed.tzinfo is None
        else:
            assert parsed.tzinfo is not None
            assert parsed.utcoffset() == wanted.utcoffset()


_offsets = st.one_of(
    st.none(),
    st.integers(min_value=-14 * 4, max_value=14 * 4).map(
        lambda q: timezone(timedelta(minutes=15 * q))
    ),
)


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
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
    make_db_query("DELETE FROM session_log")
    dt_from = start.replace(tzinfo=zone)
    dt_to = dt_from + length
    _log("s", "START", dt_from.isoformat(sep, spec))
    _log("s", "END", dt_to.isoformat(sep, spec))
    [session] = get_sessions_to_build()
    expected_from = datetime.fromisoformat(dt_from.isoformat(sep, spec))
    expected_to = datetime.fromisoformat(dt_to.isoformat(sep, spec))
    assert (session.dt_from, session.dt_to) == (expected_from, expected_to)
    assert session.dt_from.utcoffset() == dt_from.utcoffset()
    assert session.dt_to.utcoffset() == dt_to.utcoffset()


def _insert_without_foreign_keys(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    # Rows a 1.4 installation could hold: its connections never enforced the FK.
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
            "record_status) VALUES (?, ?, ?, ?, 'TO_BE_BUILT')",
            rows,
        )


def test_unknown_instrument_is_an_error_naming_instrument_and_session(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _log("good", "START", "2021-05-01T10:00:00")
    _log("good", "END", "2021-05-01T11:00:00")
    _insert_without_foreign_keys(
        nexuslims_db,
        [
            ("orphan-session", "Retired-Scope-1", "2021-05-01T10:00:00", "START"),
            ("orphan-session", "Retired-Scope-1", "2021-05-01T11:00:00", "END"),
        ],
    )
    with pytest.raises(ValueError, match="Retired-Scope-1") as info:
        get_sessions_to_build()
    assert "orphan-session" in str(info.value)
    assert not isinstance(info.value, KeyError)


@pytest.mark.parametrize("ends", [0, 2])
def test_start_without_exactly_one_end_raises(
    ends: int, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _log("ok", "START", "2021-05-01T08:00:00")
    _log("ok", "END", "2021-05-01T09:00:00")
    _log("broken-session", "START", "2021-05-01T10:00:00", user="jdoe")
    for minute in range(ends):
        _log("broken-session", "END", f"2021-05-01T11:0{minute}:00")
    with pytest.raises(ValueError, match=END_COUNT_RE) as info:
        get_sessions_to_build()
    message = str(info.value)
    assert message.startswith(END_COUNT_PREFIX)
    rest = message[len(END_COUNT_PREFIX):]
    assert f"was {ends}" in rest
    assert "broken-session" in rest
    assert "2021-05-01T10:00:00" in rest


def test_end_with_another_status_does_not_count(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    _log("s1", "START", "2021-05-01T10:00:00")
    _log("s1", "END", "2021-05-01T11:00:00", status="COMPLETED")
    with pytest.raises(ValueError, match=END_COUNT_RE) as info:
        get_sessions_to_build()
    assert str(info.value).startswith(END_COUNT_PREFIX)


def test_sessions_follow_the_database(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nexusLIMS.db import init_db
    from nexusLIMS.db.samples import add_sample_instruments

    _log("in-first", "START", "2021-05-01T10:00:00")
    _log("in-first", "END", "2021-05-01T11:00:00")
    other = init_db(tmp_path / "second.sqlite")
    add_sample_instruments(other)
    monkeypatch.setenv("nexusLIMS_db_path", str(other))
    assert get_sessions_to_build() == []
    _log("in-second", "START", "2021-05-01T10:00:00", instrument=QUANTA)
    _log("in-second", "END", "2021-05-01T11:00:00", instrument=QUANTA)
    assert [s.session_identifier for s in get_sessions_to_build()] == ["in-second"]
    monkeypatch.setenv("nexusLIMS_db_path", str(nexuslims_db))
    assert [s.session_identifier for s in get_sessions_to_build()] == ["in-first"]
