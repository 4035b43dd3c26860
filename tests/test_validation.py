"""Issue 3, point 3: bad input is refused before any write, with a clear message.

Every rejected value is a row of a table; each must raise a ``ValueError``
naming the value and what is allowed, and leave ``session_log`` unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from nexusLIMS.db.session import Session
from nexusLIMS.db.session_log import SessionLog, insert_logs
from nexusLIMS.instruments import Instrument

TITAN = "FEI-Titan-TEM-635816"
EVENT_TYPES = "START, END, RECORD_GENERATION"
STATUSES = (
    "COMPLETED, WAITING_FOR_END, TO_BE_BUILT, ERROR, NO_FILES_FOUND, "
    "NO_CONSENT, NO_RESERVATION, BUILT_NOT_EXPORTED"
)
KNOWN = "FEI-Quanta-ESEM-633137, FEI-Titan-TEM-635816, JEOL-JEM3010-TEM-565989"
GOOD = {
    "session_identifier": "good-session",
    "instrument": TITAN,
    "timestamp": "2021-05-01T10:00:00.000",
    "event_type": "START",
    "user": "alice",
    "record_status": "TO_BE_BUILT",
}


def _event_type(value: object) -> Any:
    message = f"Invalid event_type {value!r}; allowed values are: {EVENT_TYPES}"
    return pytest.param("event_type", value, message, id=f"event_type={value!r}")


def _status(value: object) -> Any:
    message = f"Invalid record_status {value!r}; allowed values are: {STATUSES}"
    return pytest.param("record_status", value, message, id=f"record_status={value!r}")


def _instrument(value: object) -> Any:
    message = f"instrument {value!r} is not in the instruments table (known: {KNOWN})"
    return pytest.param("instrument", value, message, id=f"instrument={value!r}")


def _timestamp(value: object) -> Any:
    message = f"Invalid timestamp {value!r}; expected an ISO 8601 date-time"
    return pytest.param("timestamp", value, message, id=f"timestamp={value!r}")


INSERT_CASES = [
    _event_type("BEGIN"),
    _event_type("start"),
    _event_type("TO_BE_BUILT"),
    _event_type(""),
    _event_type(None),
    _status("DONE"),
    _status("completed"),
    _status("START"),
    _status(5),
    _instrument("NO-SUCH-INSTRUMENT"),
    _instrument("fei-titan-tem-635816"),
    _instrument(""),
    _instrument(None),
    _timestamp("yesterday"),
    _timestamp("2021-13-01T00:00:00"),
    _timestamp("2021-05-01T25:00:00"),
    _timestamp("2021-01-01"),
    _timestamp("01/05/2021 10:00"),
    _timestamp(""),
    _timestamp(None),
    _timestamp(20210501),
    _timestamp(date(2021, 5, 1)),
    pytest.param(
        "session_identifier", "",
        "Invalid session_identifier ''; expected a non-empty string",
        id="session_identifier=''",
    ),
]

BAD_STATUSES = ["DONE", "completed", "TO BE BUILT", "START", "", None]


def _table(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM session_log ORDER BY id_session_log").fetchall()


@pytest.fixture
def logged(nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]) -> Session:
    """Two logs of one session already in the database; that session."""
    for timestamp, event in (("2021-05-01T09:00:00", "START"), ("2021-05-01T09:30:00", "END")):
        assert SessionLog("existing", TITAN, timestamp, event, "bob").insert_log()
    dt_range = (datetime(2021, 5, 1, 9), datetime(2021, 5, 1, 9, 30))
    return Session("existing", nexuslims_instruments[TITAN], dt_range, "bob")


def _bad_log(field: str, value: object) -> SessionLog:
    return SessionLog(**{**GOOD, field: value})


@pytest.mark.parametrize(("field", "value", "message"), INSERT_CASES)
def test_insert_log_refuses_bad_values(
    nexuslims_db: Path, logged: Session, field: str, value: object, message: str
) -> None:
    before = _table(nexuslims_db)
    log = _bad_log(field, value)
    with pytest.raises(ValueError, match=re.escape(message)) as excinfo:
        log.insert_log()
    assert str(excinfo.value).startswith(f"Cannot write {log!r}: ")
    assert _table(nexuslims_db) == before


@pytest.mark.parametrize(("field", "value", "message"), INSERT_CASES)
def test_insert_logs_with_one_bad_log_writes_nothing(
    nexuslims_db: Path, logged: Session, field: str, value: object, message: str
) -> None:
    before = _table(nexuslims_db)
    good = [
        SessionLog(f"batch-{i}", TITAN, f"2021-05-02T10:0{i}:00", "START", None)
        for i in range(6)
    ]
    bad = _bad_log(field, value)
    with pytest.raises(ValueError, match=re.escape(message)) as excinfo:
        insert_logs([*good[:3], bad, *good[3:]])
    assert str(excinfo.value).startswith(f"Cannot write {bad!r}: ")
    assert _table(nexuslims_db) == before


def test_the_same_logs_without_the_bad_one_are_written(
    nexuslims_db: Path, logged: Session
) -> None:
    # The counterpart of the tests above: GOOD itself is accepted, and a
    # falsy record_status means TO_BE_BUILT rather than an error.
    before = _table(nexuslims_db)
    assert insert_logs([SessionLog(**GOOD), _bad_log("record_status", "")]) == 1
    assert _bad_log("record_status", None).insert_log() is True
    assert len(_table(nexuslims_db)) == len(before) + 1


@pytest.mark.parametrize("status", BAD_STATUSES, ids=repr)
def test_update_session_status_refuses_unknown_status(
    nexuslims_db: Path, logged: Session, status: Any
) -> None:
    before = _table(nexuslims_db)
    message = f"Invalid record_status {status!r}; allowed values are: {STATUSES}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        logged.update_session_status(status)
    assert _table(nexuslims_db) == before


def test_update_session_status_of_unknown_session_warns_and_returns_false(
    nexuslims_db: Path,
    logged: Session,
    nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _table(nexuslims_db)
    ghost = Session("no-such-session", nexuslims_instruments[TITAN], logged.dt_range, None)
    with caplog.at_level(logging.WARNING, logger="nexusLIMS.db"):
        assert ghost.update_session_status("COMPLETED") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'no-such-session'" in warnings[0].getMessage()
    assert _table(nexuslims_db) == before

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nexusLIMS.db"):
        assert logged.update_session_status("COMPLETED") is True
    assert caplog.records == []
    statuses = [row[5] for row in _table(nexuslims_db)]
    assert statuses == ["COMPLETED", "COMPLETED"]
