"""Issue 2, points 1, 5 and 6: ``SessionLog`` and ``insert_log``."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from nexusLIMS.db.enums import EventType, RecordStatus
from nexusLIMS.db.session_handler import SessionLog
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
DUPLICATE = "SessionLog already existed in DB, so no row was added:"
URL_ID = "https://nemo.example.org/api/usage_events/?id=1234567890&tool=635816"


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT session_identifier, instrument, timestamp, event_type, record_status, user "
            "FROM session_log ORDER BY id_session_log"
        ).fetchall()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- the dataclass ------------------------------------------------------------


def test_is_a_dataclass_with_the_fields_of_1_4_in_order() -> None:
    assert dataclasses.is_dataclass(SessionLog)
    assert [f.name for f in dataclasses.fields(SessionLog)] == [
        "session_identifier",
        "instrument",
        "timestamp",
        "event_type",
        "user",
        "record_status",
    ]


def test_positional_and_keyword_construction_are_equal() -> None:
    positional = SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe", "WAITING_FOR_END")
    keyword = SessionLog(
        session_identifier="s1",
        instrument=TITAN,
        timestamp="2021-05-01T10:00:00",
        event_type="START",
        user="jdoe",
        record_status="WAITING_FOR_END",
    )
    assert positional == keyword
    assert positional.record_status == "WAITING_FOR_END"


def test_repr_is_exact() -> None:
    log = SessionLog("abc-123", TITAN, "2021-05-01T10:00:00.000", "START", "jdoe")
    assert repr(log) == (
        "SessionLog (id=abc-123, instrument=FEI-Titan-TEM-635816, "
        "timestamp=2021-05-01T10:00:00.000, event_type=START, user=jdoe, "
        "record_status=TO_BE_BUILT)"
    )


def test_repr_with_no_user() -> None:
    log = SessionLog("x", TITAN, "2021-05-01T10:00:00", "END", None, "ERROR")
    assert repr(log) == (
        "SessionLog (id=x, instrument=FEI-Titan-TEM-635816, timestamp=2021-05-01T10:00:00, "
        "event_type=END, user=None, record_status=ERROR)"
    )


@pytest.mark.parametrize("falsy", [None, ""])
def test_falsy_record_status_means_to_be_built(falsy: str | None) -> None:
    log = SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None, falsy)
    assert log.record_status == "TO_BE_BUILT"


def test_enum_members_are_stored_as_plain_strings() -> None:
    log = SessionLog(
        "s1", TITAN, "2021-05-01T10:00:00", EventType.START, None, RecordStatus.WAITING_FOR_END
    )
    assert type(log.event_type) is str
    assert type(log.record_status) is str
    assert log.event_type == "START"
    assert log.record_status == "WAITING_FOR_END"
    assert "event_type=START," in repr(log)
    assert "record_status=WAITING_FOR_END)" in repr(log)


def test_datetime_timestamp_becomes_iso_text() -> None:
    log = SessionLog("s1", TITAN, datetime(2021, 5, 1, 10, 0, 0, 123000), "START", None)
    assert log.timestamp == "2021-05-01T10:00:00.123000"
    aware = datetime(2021, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-4)))
    assert SessionLog("s1", TITAN, aware, "START", None).timestamp == (
        "2021-05-01T10:00:00-04:00"
    )


# --- insert_log ---------------------------------------------------------------


def test_insert_log_returns_true_and_writes_the_row(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    log = SessionLog(URL_ID, TITAN, "2021-05-01T10:00:00.000", "START", "jdoe")
    assert log.insert_log() is True
    assert _rows(nexuslims_db) == [
        (URL_ID, TITAN, "2021-05-01T10:00:00.000", "START", "TO_BE_BUILT", "jdoe")
    ]


def test_url_identifier_longer_than_36_characters_is_kept_whole(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    identifier = URL_ID + "&" + "x" * 200
    assert len(identifier) > 36
    SessionLog(identifier, TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    assert _rows(nexuslims_db)[0][0] == identifier


def test_enum_members_are_inserted_as_their_values(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    SessionLog(
        "s1", TITAN, "2021-05-01T10:00:00", EventType.END, "u", RecordStatus.NO_CONSENT
    ).insert_log()
    assert _rows(nexuslims_db) == [("s1", TITAN, "2021-05-01T10:00:00", "END", "NO_CONSENT", "u")]


def test_datetime_timestamp_is_stored_as_iso_text(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    aware = datetime(2021, 5, 1, 10, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-4)))
    SessionLog("s1", TITAN, aware, "START", None).insert_log()
    with closing(sqlite3.connect(nexuslims_db)) as conn:
        stored = conn.execute("SELECT timestamp, typeof(timestamp) FROM session_log").fetchall()
    assert stored == [("2021-05-01T10:00:00.250000-04:00", "text")]


def test_duplicate_is_not_inserted_and_warns(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe")
    with caplog.at_level(logging.WARNING):
        assert log.insert_log() is True
        assert _warnings(caplog) == []
        again = SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe")
        assert again.insert_log() is True
    assert len(_rows(nexuslims_db)) == 1
    messages = _warnings(caplog)
    assert len(messages) == 1
    assert DUPLICATE in messages[0]
    assert repr(again) in messages[0]


def test_duplicate_with_null_user_is_not_inserted_twice(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert SessionLog("s1", TITAN, "2021-05-01T10:00:00", "END", None).insert_log()
    assert _rows(nexuslims_db) == [("s1", TITAN, "2021-05-01T10:00:00", "END", "TO_BE_BUILT", None)]
    assert len([m for m in _warnings(caplog) if DUPLICATE in m]) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"session_identifier": "s2"},
        {"instrument": QUANTA},
        {"timestamp": "2021-05-01T10:00:01"},
        {"event_type": "END"},
        {"record_status": "WAITING_FOR_END"},
        {"user": "someone-else"},
        {"user": None},
    ],
)
def test_a_log_differing_in_one_field_is_inserted(
    changes: dict[str, Any],
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    values: dict[str, Any] = {
        "session_identifier": "s1",
        "instrument": TITAN,
        "timestamp": "2021-05-01T10:00:00",
        "event_type": "START",
        "user": "jdoe",
        "record_status": "TO_BE_BUILT",
    }
    SessionLog(**values).insert_log()
    with caplog.at_level(logging.WARNING):
        assert SessionLog(**{**values, **changes}).insert_log() is True
    assert len(_rows(nexuslims_db)) == 2
    assert _warnings(caplog) == []


def test_null_user_does_not_match_a_named_user(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe").insert_log()
    assert [row[5] for row in _rows(nexuslims_db)] == [None, "jdoe"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"instrument": "No-Such-Instrument"}, "No-Such-Instrument"),
        ({"event_type": "STOP"}, "event_type"),
        ({"record_status": "DONE"}, "record_status"),
        ({"timestamp": "yesterday"}, "timestamp"),
    ],
)
def test_invalid_log_raises_and_writes_nothing(
    changes: dict[str, Any],
    message: str,
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    values: dict[str, Any] = {
        "session_identifier": "s1",
        "instrument": TITAN,
        "timestamp": "2021-05-01T10:00:00",
        "event_type": "START",
        "user": "jdoe",
    }
    log = SessionLog(**{**values, **changes})
    with pytest.raises(ValueError, match=message) as info:
        log.insert_log()
    assert "s1" in str(info.value)
    assert _rows(nexuslims_db) == []
