"""``nexusLIMS.db.logs``: SessionLog, writing logs (same events, revisions, late
revisions, validation), the Session Logger's log_start/log_end, and the pairing
of what was written.

Issue 8.5, 13.2, 13.3, 13.8, 13.10 and 14.1. Everything that does not depend
on the backend runs on SQLite and on PostgreSQL (``nexuslims_database``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from dateutil.parser import isoparse
from helpers import (
    END_COUNT_PREFIX,
    INCONSISTENT,
    JEOL,
    QUANTA,
    TITAN,
    insert_raw,
    log,
    row,
    rows,
    sql,
    warnings,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from legacy_schema import file_shape
from roundtrips import RoundTripCounter

from nexusLIMS.db import make_db_query
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.connection import connect, tracing
from nexusLIMS.db.databases import close_databases
from nexusLIMS.db.enums import EventType, ProblemKind, RecordStatus
from nexusLIMS.db.logs import SessionLog, StoredLog, insert_logs, log_end, log_start, logs_of
from nexusLIMS.db.schema import init_db
from nexusLIMS.db.session_handler import get_sessions_to_build
from nexusLIMS.db.sessions import Session, find_session_problems, set_session_status
from nexusLIMS.db.timestamps import canonical_timestamp
from nexusLIMS.instruments import Instrument, instrument_db

LOGGER = "nexusLIMS.db.session_handler"
DUPLICATE = "SessionLog already existed in DB, so no row was added:"
URL_ID = "https://nemo.example.org/api/usage_events/?id=1234567890&tool=635816"
KNOWN = f"{QUANTA}, {TITAN}, {JEOL}"
EVENT_TYPES = "START, END, RECORD_GENERATION"
STATUSES = ("COMPLETED, WAITING_FOR_END, TO_BE_BUILT, ERROR, NO_FILES_FOUND, "
            "NO_CONSENT, NO_RESERVATION, BUILT_NOT_EXPORTED")
PAIR_INDEX = "session_log_to_be_built_idx"


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == level and r.name.startswith("nexusLIMS")]


def _table() -> list[StoredLog]:
    return rows()


@contextmanager
def _traced() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    with tracing(lambda event, text: events.append((event, text))):
        yield events


def _transactions(events: list[tuple[str, str]]) -> list[str]:
    words = [text.split(None, 1)[0].upper() for event, text in events if event == "execute"]
    return [word for word in words if word in ("BEGIN", "COMMIT", "ROLLBACK", "END")]


def _writes(events: list[tuple[str, str]]) -> list[str]:
    return [text for event, text in events if event in ("execute", "executemany")
            and text.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]


# --- SessionLog ---------------------------------------------------------------


def test_is_a_dataclass_with_the_fields_of_1_4_in_order() -> None:
    assert dataclasses.is_dataclass(SessionLog)
    assert [f.name for f in dataclasses.fields(SessionLog)] == [
        "session_identifier", "instrument", "timestamp", "event_type", "user", "record_status"]


def test_positional_and_keyword_construction_are_equal() -> None:
    positional = SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "jdoe", "WAITING_FOR_END")
    keyword = SessionLog(session_identifier="s1", instrument=TITAN,
                         timestamp="2021-05-01T10:00:00", event_type="START", user="jdoe",
                         record_status="WAITING_FOR_END")
    assert positional == keyword
    assert positional.record_status == "WAITING_FOR_END"


def test_repr_is_exact() -> None:
    assert repr(SessionLog("abc-123", TITAN, "2021-05-01T10:00:00.000", "START", "jdoe")) == (
        "SessionLog (id=abc-123, instrument=FEI-Titan-TEM-635816, "
        "timestamp=2021-05-01T10:00:00.000, event_type=START, user=jdoe, "
        "record_status=TO_BE_BUILT)")
    assert repr(SessionLog("x", TITAN, "2021-05-01T10:00:00", "END", None, "ERROR")) == (
        "SessionLog (id=x, instrument=FEI-Titan-TEM-635816, timestamp=2021-05-01T10:00:00, "
        "event_type=END, user=None, record_status=ERROR)")


@pytest.mark.parametrize("falsy", [None, "", 0, False])
def test_a_falsy_record_status_means_to_be_built(falsy: Any) -> None:
    assert SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None, falsy).record_status \
        == "TO_BE_BUILT"
    assert SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", None).record_status \
        == "TO_BE_BUILT"


def test_enum_members_become_plain_strings() -> None:
    entry = SessionLog("s1", TITAN, "2021-05-01T10:00:00", EventType.START, None,
                       RecordStatus.WAITING_FOR_END)  # type: ignore[arg-type]
    assert type(entry.event_type) is str
    assert type(entry.record_status) is str
    assert (entry.event_type, entry.record_status) == ("START", "WAITING_FOR_END")
    assert "event_type=START," in repr(entry)
    assert "record_status=WAITING_FOR_END)" in repr(entry)


def test_a_datetime_timestamp_becomes_iso_text() -> None:
    naive = SessionLog("s1", TITAN, datetime(2021, 5, 1, 10, 0, 0, 123000),  # type: ignore
                       "START", None)
    assert naive.timestamp == "2021-05-01T10:00:00.123000"
    aware = datetime(2021, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-4)))
    assert SessionLog("s1", TITAN, aware, "START", None).timestamp == (  # type: ignore
        "2021-05-01T10:00:00-04:00")


def test_session_log_is_hashable_consistently_with_equality() -> None:
    first = log("s1", "START", "2021-05-01T10:00:00")
    same = SessionLog("s1", TITAN, "2021-05-01T10:00:00", "START", "alice", None)
    other = log("s1", "END", "2021-05-01T10:00:00")
    assert first == same
    assert hash(first) == hash(same)
    assert first != other
    assert len({first, same, other}) == 2
    assert {first: 1}[same] == 1


def test_session_is_hashable_consistently_with_equality() -> None:
    titan = Instrument(name=TITAN, timezone="America/New_York")
    start, end = datetime(2021, 5, 1, 10), datetime(2021, 5, 1, 11)
    first = Session("s1", titan, (start, end), "alice")
    same = Session("s1", titan, [start, end], "alice")  # type: ignore[arg-type]
    other = Session("s1", titan, (start, end + timedelta(1)), "alice")
    assert first == same
    assert hash(first) == hash(same)
    assert first != other
    assert len({first, same, other}) == 2
    assert {first: "built"}[same] == "built"
    assert (same.dt_from, same.dt_to) == (start, end)


def test_sessions_of_two_reads_are_equal_and_hash_equal(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00"),
                 log("s2", "START", "2021-05-01T10:00:00-04:00", instrument=JEOL),
                 log("s2", "END", "2021-05-01T11:00:00-04:00", instrument=JEOL)])
    first, second = get_sessions_to_build(), get_sessions_to_build()
    assert first == second
    assert [hash(s) for s in first] == [hash(s) for s in second]
    built = {session: "done" for session in first}
    assert all(built[session] == "done" for session in second)


# --- insert_log ---------------------------------------------------------------


def test_insert_log_returns_true_and_writes_the_row(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert SessionLog(URL_ID, TITAN, "2021-05-01T10:00:00.000", "START", "jdoe").insert_log() \
        is True
    assert [r[1:] for r in rows()] == [
        (URL_ID, TITAN, "2021-05-01T10:00:00.000", "START", "TO_BE_BUILT", "jdoe")]
    # An identifier longer than 36 characters is kept whole.
    identifier = URL_ID + "&" + "x" * 200
    SessionLog(identifier, TITAN, "2021-05-01T10:00:00", "START", None).insert_log()
    assert rows()[-1].session_identifier == identifier
    # Enum members are inserted as their values.
    SessionLog("s1", TITAN, "2021-05-01T10:00:00", EventType.END, "u",  # type: ignore[arg-type]
               RecordStatus.NO_CONSENT).insert_log()  # type: ignore[arg-type]
    assert rows()[-1][1:] == ("s1", TITAN, "2021-05-01T10:00:00", "END", "NO_CONSENT", "u")
    # A datetime is stored as ISO text.
    aware = datetime(2021, 5, 1, 10, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-4)))
    SessionLog("s2", TITAN, aware, "START", None).insert_log()  # type: ignore[arg-type]
    assert rows()[-1].timestamp == "2021-05-01T10:00:00.250000-04:00"
    if nexuslims_database.backend == "sqlite":
        assert sql("SELECT DISTINCT typeof(timestamp) FROM session_log") == [("text",)]


def test_the_same_log_again_inserts_nothing_returns_true_and_warns(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for user in ("jdoe", None):  # 1.4 inserted a log without a user again every time
        caplog.clear()
        first = log("s1", "END", "2021-05-01T10:00:00", user=user)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert first.insert_log() is True
            assert warnings(caplog) == []
            table = _table()
            for _ in range(2):
                again = log("s1", "END", "2021-05-01T10:00:00", user=user)
                assert again.insert_log() is True
        assert _table() == table
        records = _records(caplog, logging.WARNING)
        assert len(records) == 2
        assert all(r.name == LOGGER for r in records)
        assert all(r.getMessage() == f"{DUPLICATE} {again!r}" for r in records)
        sql("DELETE FROM session_log")


def test_re_harvesting_a_built_session_inserts_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    harvest = [log("s1", "START", "2021-05-01T10:00:00", user=None),
               log("s1", "END", "2021-05-01T11:00:00.000", user=None)]
    assert insert_logs(harvest) == 2
    (session,) = get_sessions_to_build()
    session.insert_record_generation_event()
    assert session.update_session_status("COMPLETED") is True
    table = _table()
    respelled = [log("s1", "START", "2021-05-01T10:00:00.000000-04:00", user=None),
                 log("s1", "END", "2021-05-01T15:00:00Z", user=None)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert insert_logs(harvest) == 0
        assert all(entry.insert_log() for entry in harvest)
        assert insert_logs(respelled) == 0
    assert _table() == table
    assert get_sessions_to_build() == []
    assert find_session_problems() == []
    assert len(warnings(caplog)) == 6
    assert all(message.startswith(DUPLICATE) for message in warnings(caplog))


SAME_INSTANT = [
    # (instrument, stored, then), each pair one instant
    (TITAN, "2021-05-01T14:00:00Z", "2021-05-01T14:00:00+00:00"),
    (TITAN, "2021-05-01T14:00:00+00:00", "2021-05-01T14:00:00Z"),
    (TITAN, "2021-05-01T10:00:00", "2021-05-01T10:00:00.000"),
    (TITAN, "2021-05-01T10:00:00.000", "2021-05-01T10:00:00.000000"),
    (TITAN, "2021-05-01T10:00:00.5", "2021-05-01T10:00:00.500"),
    (TITAN, "2021-05-01T10:00:00", "2021-05-01T10:00:00-04:00"),  # EDT in New York
    (TITAN, "2021-05-01T10:00:00-04:00", "2021-05-01T10:00:00"),
    (TITAN, "2021-05-01T10:00:00", "2021-05-01T14:00:00Z"),
    (TITAN, "2021-05-01T10:00:00-04:00", "2021-05-01T16:00:00+02:00"),
    (TITAN, "2021-05-01 10:00:00", "20210501T100000"),
    (JEOL, "2021-01-15T10:00:00", "2021-01-15T17:00:00Z"),  # MST in Denver
    (QUANTA, "2021-11-07T01:30:00", "2021-11-07T01:30:00-05:00"),  # the repeated hour
    (QUANTA, "2021-11-07T01:30:00", "2021-11-07T01:30:00-04:00"),
    (TITAN, datetime(2021, 5, 1, 10), "2021-05-01T10:00:00"),
]


def test_the_same_instant_spelt_differently_is_the_same_event(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for number, (pid, stored, then) in enumerate(SAME_INSTANT):
        identifier = f"s{number}"
        assert insert_logs([log(identifier, "START", stored, instrument=pid)]) == 1
        table = _table()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert insert_logs([log(identifier, "START", then, instrument=pid)]) == 0
            assert log(identifier, "START", then, instrument=pid).insert_log() is True
        assert _table() == table, (stored, then)
        assert len(warnings(caplog)) == 2, (stored, then)
        assert not _records(caplog, logging.INFO), (stored, then)
    # The same wall time in another zone is another instant: a revision.
    insert_logs([log("wall", "START", "2021-05-01T10:00:00")])
    (stored_id,) = [r.id_session_log for r in rows() if r.session_identifier == "wall"]
    assert insert_logs([log("wall", "START", "2021-05-01T10:00:00+00:00")]) == 0
    assert [(r.id_session_log, r.timestamp) for r in rows() if r.session_identifier == "wall"] \
        == [(stored_id, "2021-05-01T10:00:00+00:00")]


ODD_FORMS = [
    ("2021-05-01T10:00:00Z", "2021-05-01T10:00:00+00:00"),
    ("2021-05-01T10:00:00.000000Z", "2021-05-01T10:00:00+00:00"),
    ("2021-05-01 10:00:00", "2021-05-01T10:00:00"),
    ("20210501T100000", "2021-05-01T10:00:00"),
    ("20210501T100000-0400", "2021-05-01T10:00:00-04:00"),
    ("2021-05-01T10", "2021-05-01T10:00:00"),
    ("2021-05-01T10:00", "2021-05-01T10:00:00"),
    ("2021-05-01T10:00:00,5", "2021-05-01T10:00:00.500000"),
    ("2021-05-01T10:00:00+0000", "2021-05-01T10:00:00+00:00"),
    ("2021-05-01T10:00:00.1234567", "2021-05-01T10:00:00.123456"),
    # Already canonical: kept as written.
    ("2021-05-01T10:00:00", "2021-05-01T10:00:00"),
    ("2021-05-01T10:00:00.000", "2021-05-01T10:00:00.000"),
    ("2021-05-01T10:00:00.5-04:00", "2021-05-01T10:00:00.5-04:00"),
    ("2021-05-01T10:00:00-00:00", "2021-05-01T10:00:00-00:00"),
    ("1900-01-01T00:00:00", "1900-01-01T00:00:00"),
    ("9998-12-31T23:59:59", "9998-12-31T23:59:59"),
]


def test_odd_forms_are_stored_canonically(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert insert_logs(log(f"s{n}", "START", given) for n, (given, _) in enumerate(ODD_FORMS)) \
        == len(ODD_FORMS)
    assert [r.timestamp for r in rows()] == [stored for _, stored in ODD_FORMS]


def test_hour_24_is_stored_as_midnight_of_the_next_day(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert insert_logs([log("s1", "END", "2021-05-01T24:00:00")]) == 1
    assert [r.timestamp for r in rows()] == ["2021-05-02T00:00:00"]


RANGE = "it must lie between the years 1900 and 9998"
ISO = "expected an ISO 8601 date-time"
REFUSED_TIMESTAMPS = [
    ("0001-01-01T00:00:00", RANGE), ("0001-01-01T00:00:00+14:00", RANGE),
    ("1899-12-31T23:59:59", RANGE), ("9999-12-31T23:59:59", RANGE),
    ("9999-12-31T23:59:59-12:00", RANGE), (datetime(1, 1, 1), RANGE),
    ("2021-05-01", ISO), ("yesterday", ISO), ("", ISO), (None, ISO), (20210501, ISO),
    (date(2021, 5, 1), ISO), ("2021-13-01T00:00:00", ISO), ("2021-02-30T10:00:00", ISO),
    ("2021-05-01T25:00:00", ISO), ("01/05/2021 10:00", ISO), ("2021-05-01T10:00:00+25:00", ISO),
    ("2021-05-01T10:00:00 EST", ISO),
]


def test_odd_or_extreme_timestamps_are_refused_on_write(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("old", "START", "2021-05-01T09:00:00")])
    table = _table()
    for value, reason in REFUSED_TIMESTAMPS:
        bad = log("s1", "START", value)  # type: ignore[arg-type]
        text = value.isoformat() if isinstance(value, datetime) else value
        expected = f"Cannot write {bad!r}: Invalid timestamp {text!r}; {reason}"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
            bad.insert_log()
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
            insert_logs([log("s2", "START", "2021-05-01T10:00:00"), bad])
        if value is not None:  # (None is "now")
            with pytest.raises(ValueError, match=re.escape(reason)):
                log_start(TITAN, "s3", at=value)  # type: ignore[arg-type]
        assert _table() == table, value


BAD_IDENTIFIERS = [
    ("", "expected a non-blank string"), ("   ", "expected a non-blank string"),
    ("\t\n", "expected a non-blank string"), (None, "expected a non-blank string"),
    (42, "expected a non-blank string"),
    ("\x1b[2J", "control characters are not allowed"),
    ("s1\nFAKE LOG LINE", "control characters are not allowed"),
    ("s1\r", "control characters are not allowed"),
    ("s1\x00", "control characters are not allowed"),
    ("s1\u202e", "control characters are not allowed"),  # right-to-left override
]


def test_bad_identifiers_are_refused(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("old", "START", "2021-05-01T09:00:00")])
    table = _table()
    for identifier, reason in BAD_IDENTIFIERS:
        bad = log(identifier, "START", "2021-05-01T10:00:00")  # type: ignore[arg-type]
        expected = f"Cannot write {bad!r}: Invalid session_identifier {identifier!r}; {reason}"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            bad.insert_log()
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            insert_logs([log("s2", "START", "2021-05-01T10:00:00"), bad])
        if isinstance(identifier, str) and "\x00" not in identifier:  # (see the xfails below)
            with pytest.raises(ValueError, match=re.escape(f"Invalid session_identifier "
                                                           f"{identifier!r}")):
                log_start(TITAN, identifier, at="2021-05-01T10:00:00")
        assert _table() == table, identifier


def test_log_end_refuses_a_bad_identifier_before_looking_it_up(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
) -> None:
    for identifier in ("", "\x1b[2J", "s1\x00", 42):
        with pytest.raises(ValueError, match=re.escape(f"Invalid session_identifier "
                                                       f"{identifier!r}")):
            log_end(TITAN, identifier, at="2021-05-01T10:00:00")  # type: ignore[arg-type]
    assert rows() == []


def test_log_start_refuses_a_bad_identifier_on_postgresql(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
) -> None:
    for identifier in (42, "s1\x00"):
        with pytest.raises(ValueError, match=re.escape(f"Invalid session_identifier "
                                                       f"{identifier!r}")):
            log_start(TITAN, identifier, at="2021-05-01T10:00:00")  # type: ignore[arg-type]
    assert rows() == []


# --- validation (ported from the old test_validation) -------------------------

GOOD = {"session_identifier": "good-session", "instrument": TITAN,
        "timestamp": "2021-05-01T10:00:00.000", "event_type": "START", "user": "alice",
        "record_status": "TO_BE_BUILT"}


def _bad(field: str, value: object, message: str) -> tuple[str, object, str]:
    return field, value, message


VALIDATION_CASES = [
    *(_bad("event_type", v, f"Invalid event_type {v!r}; allowed values are: {EVENT_TYPES}")
      for v in ("BEGIN", "start", "TO_BE_BUILT", "", None)),
    *(_bad("record_status", v, f"Invalid record_status {v!r}; allowed values are: {STATUSES}")
      for v in ("DONE", "completed", "START", 5)),
    *(_bad("instrument", v,
           f"instrument {v!r} is not in the instruments table (known: {KNOWN})")
      for v in ("NO-SUCH-INSTRUMENT", "fei-titan-tem-635816", "", None)),
    _bad("user", 42, "Invalid user 42; expected a string or None"),
    _bad("session_identifier", "", "Invalid session_identifier ''; expected a non-blank string"),
]


def _existing_session() -> None:
    for timestamp, event in (("2021-05-01T09:00:00", "START"), ("2021-05-01T09:30:00", "END")):
        assert SessionLog("existing", TITAN, timestamp, event, "bob").insert_log()


def test_a_bad_log_is_refused_and_rejects_its_whole_batch(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _existing_session()
    table = _table()
    good = [log(f"batch-{i}", "START", f"2021-05-02T10:0{i}:00") for i in range(4)]
    for field, value, message in VALIDATION_CASES:
        bad = SessionLog(**{**GOOD, field: value})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=re.escape(message)) as raised:
            bad.insert_log()
        assert str(raised.value) == f"Cannot write {bad!r}: {message}"
        for position in (0, 2, 4):
            batch: list[Any] = [*good]
            batch.insert(position, bad)
            with pytest.raises(ValueError, match=re.escape(message)) as raised:
                insert_logs(batch)
            assert str(raised.value) == f"Cannot write {bad!r}: {message}"
        assert _table() == table, (field, value)
    # The counterpart: GOOD itself is accepted, and a falsy status means TO_BE_BUILT.
    assert insert_logs([SessionLog(**GOOD), SessionLog(**{**GOOD, "record_status": ""})]) == 1
    assert SessionLog(**{**GOOD, "record_status": None}).insert_log() is True
    assert len(_table()) == len(table) + 1


def test_a_bad_log_after_duplicates_and_revisions_writes_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("s0", "START", "2021-05-01T09:00:00")])
    table = _table()
    batch = [log("s1", "START", "2021-05-01T10:00:00"), log("s1", "START", "2021-05-01T10:00:00"),
             log("s0", "START", "2021-05-01T09:30:00"),
             log("s2", "START", "2021-05-01T10:00:00+25:00")]
    with pytest.raises(ValueError, match=re.escape("2021-05-01T10:00:00+25:00")):
        insert_logs(batch)
    assert _table() == table


def test_update_session_status_refuses_an_unknown_status_or_session(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _existing_session()
    (session,) = get_sessions_to_build()
    table = _table()
    for status in ["DONE", "completed", "TO BE BUILT", "START", "", None]:
        message = f"Invalid record_status {status!r}; allowed values are: {STATUSES}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            session.update_session_status(status)  # type: ignore[arg-type]
        assert _table() == table
    ghost = Session("no-such-session", nexuslims_instruments[TITAN], session.dt_range, None)
    with caplog.at_level(logging.WARNING, logger="nexusLIMS.db"):
        assert ghost.update_session_status("COMPLETED") is False
    assert len(warnings(caplog)) == 1
    assert "'no-such-session'" in warnings(caplog)[0]
    assert _table() == table
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nexusLIMS.db"):
        assert session.update_session_status("COMPLETED") is True
    assert warnings(caplog) == []
    assert [r.record_status for r in rows()] == ["COMPLETED", "COMPLETED"]


# --- insert_logs --------------------------------------------------------------


def test_inserts_every_log_and_returns_the_count(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with _traced() as events:  # an empty batch opens nothing
        assert insert_logs([]) == 0
        assert insert_logs(iter(())) == 0
    assert events == []
    assert insert_logs([
        log("s1", "START", "2021-05-01T10:00:00.000"),
        log("s1", "END", "2021-05-01T12:00:00.000"),
        log(URL_ID, "START", "2021-05-01T10:00:00-04:00", QUANTA, "COMPLETED", None),
    ]) == 3
    assert [r[1:] for r in rows()] == [
        ("s1", TITAN, "2021-05-01T10:00:00.000", "START", "TO_BE_BUILT", "alice"),
        ("s1", TITAN, "2021-05-01T12:00:00.000", "END", "TO_BE_BUILT", "alice"),
        (URL_ID, QUANTA, "2021-05-01T10:00:00-04:00", "START", "COMPLETED", None),
    ]
    # Any iterable: a generator, a tuple, a set.
    stamps = ("2021-05-01T10:00:00", "2021-05-01T11:00:00", "2021-05-01T12:00:00")
    assert insert_logs(log(f"g{n}", "START", ts) for n, ts in enumerate(stamps)) == 3
    assert insert_logs((log("t1", "START", stamps[0]), log("t2", "START", stamps[0]))) == 2
    assert insert_logs({log("u1", "START", stamps[0])}) == 1
    assert [r.session_identifier for r in rows()][3:] == ["g0", "g1", "g2", "t1", "t2", "u1"]


NOT_LOGS = [
    (42, "int: 42"), (None, "NoneType: None"), ("START", "str: 'START'"),
    (b"START", "bytes: b'START'"),
    (log("s1", "START", "2021-05-01T10:00:00"), "SessionLog: SessionLog (id=s1"),
    ([log("s1", "START", "2021-05-01T10:00:00"), 42], "int: 42"),
    ([log("s1", "START", "2021-05-01T10:00:00"), ("s2", TITAN)], "tuple: ('s2', "),
    ([None], "NoneType: None"),
    (["s1"], "str: 's1'"),
]


def test_insert_logs_of_something_else_raises_type_error_naming_it(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("old", "START", "2021-05-01T09:00:00")])
    table = _table()
    for logs, named in NOT_LOGS:
        with pytest.raises(TypeError, match=re.escape(named)):
            insert_logs(logs)
        assert _table() == table, named


def test_skips_logs_already_in_the_database(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    old = [log("s1", "START", "2021-05-01T10:00:00"),
           log("s1", "END", "2021-05-01T11:00:00", user=None)]
    assert insert_logs(old) == 2
    again = [log("s1", "START", "2021-05-01T10:00:00"), log("s2", "START", "2021-05-01T10:00:00"),
             log("s1", "END", "2021-05-01T11:00:00", user=None)]
    assert insert_logs(again) == 1
    assert [(r.session_identifier, r.event_type) for r in rows()] == [
        ("s1", "START"), ("s1", "END"), ("s2", "START")]
    assert insert_logs(again) == 0
    assert len(rows()) == 3


def test_skips_the_same_event_within_the_batch(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = [log("s1", "START", "2021-05-01T10:00:00"), log("s2", "START", "2021-05-01T10:00:00"),
             log("s1", "START", "2021-05-01T10:00:00.000"),
             log("s1", "START", "2021-05-01T14:00:00Z"),
             log("s3", "END", "2021-05-01T10:00:00", user=None),
             log("s3", "END", "2021-05-01T10:00:00", user=None)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert insert_logs(batch) == 3
    assert [(r.session_identifier, r.timestamp, r.user) for r in rows()] == [
        ("s1", "2021-05-01T10:00:00", "alice"), ("s2", "2021-05-01T10:00:00", "alice"),
        ("s3", "2021-05-01T10:00:00", None)]
    assert len(warnings(caplog)) == 3


def test_a_null_user_matches_a_null_user_and_another_user_is_a_revision(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert insert_logs([log("s1", "START", "2021-05-01T10:00:00", user=None)]) == 1
    assert insert_logs([log("s1", "START", "2021-05-01T10:00:00", user=None)]) == 0
    assert [r.user for r in rows()] == [None]
    assert insert_logs([log("s1", "START", "2021-05-01T10:00:00", user="")]) == 0
    assert [(r.id_session_log, r.user) for r in rows()] == [(1, "")]  # "" is not NULL
    assert insert_logs([log("s1", "START", "2021-05-01T10:00:00", user="alice")]) == 0
    assert [(r.id_session_log, r.user) for r in rows()] == [(1, "alice")]


BASE = {"identifier": "s1", "event": "START", "timestamp": "2021-05-01T10:00:00.000",
        "instrument": TITAN, "status": "TO_BE_BUILT", "user": "alice"}


ONE_FIELD = [
    ({"identifier": "s2"}, "insert"), ({"identifier": "S1"}, "insert"),
    ({"instrument": QUANTA}, "insert"), ({"event": "END"}, "insert"),
    ({"event": "RECORD_GENERATION"}, "insert"),
    ({"timestamp": "2021-05-01T10:00:00"}, "same"),
    ({"status": "COMPLETED"}, "same"), ({"status": "WAITING_FOR_END"}, "same"),
    ({"timestamp": "2021-05-01T10:00:01"}, "revise"), ({"user": "bob"}, "revise"),
    ({"user": None}, "revise"),
]


def test_a_log_differing_in_one_field(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for changes, outcome in ONE_FIELD:
        sql("DELETE FROM session_log")
        caplog.clear()
        assert log(**BASE).insert_log() is True
        (first,) = rows()
        other = log(**{**BASE, **changes})
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert other.insert_log() is True
        table = rows()
        if outcome == "insert":
            assert len(table) == 2, changes
            assert warnings(caplog) == [], changes
        elif outcome == "same":
            assert table == [first], changes
            assert [m.split(" SessionLog (")[0] for m in warnings(caplog)] == [DUPLICATE]
        else:
            assert table == [first._replace(timestamp=other.timestamp, user=other.user)], changes
            assert warnings(caplog) == [], changes
            assert len(_records(caplog, logging.INFO)) == 1, changes


def test_duplicates_are_found_across_many_look_ups(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # More sessions than one look-up of stored rows takes (the identifiers
    # are looked up in chunks); the duplicates sit in every chunk.
    old = [log(f"s{n}", "START", "2021-05-01T10:00:00", user=None if n % 3 else "alice")
           for n in range(1234)]
    assert insert_logs(old) == 1234
    new = [log(f"s{n}", "END", "2021-05-01T11:00:00") for n in range(0, 1234, 100)]
    mixed = [entry for pair in zip(old[::-1], old) for entry in pair] + new + old[:7]
    assert insert_logs(mixed) == len(new)
    assert len(rows()) == 1234 + len(new)


def test_logs_of_finds_each_log_of_many_sessions_once(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log(f"s{n}", event, "2021-05-01T10:00:00")
                 for n in range(1234) for event in ("START", "END")])
    wanted = [f"s{n}" for n in range(0, 1234, 2)] + ["nothing-here"]
    with connect() as conn:
        found = logs_of(conn, wanted)
        assert logs_of(conn, []) == []
    assert sorted(found) == sorted(r for r in rows() if r.session_identifier in wanted)
    assert len(found) == 2 * 617


def test_enum_and_datetime_fields_are_stored_as_text(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    when = datetime(2021, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=-4)))
    entry = SessionLog("s1", TITAN, when, EventType.START, None)  # type: ignore[arg-type]
    assert insert_logs([entry, log("s1", "START", when.isoformat(), user=None)]) == 1
    assert [r[1:] for r in rows()] == [
        ("s1", TITAN, "2021-05-01T10:00:00-04:00", "START", "TO_BE_BUILT", None)]


# --- transactions -------------------------------------------------------------


def test_insert_log_is_one_immediate_transaction_whatever_it_finds(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # New, stored already, revised: one transaction (one round trip to a server),
    # whose guarded statements write only what the event calls for.
    for timestamp, stored in (("2021-05-01T10:00:00", 1), ("2021-05-01T10:00:00", 1),
                              ("2021-05-01T10:05:00", 1)):
        with _traced() as events:
            assert log("s1", "START", timestamp, user=None).insert_log() is True
        calls = [e for e, text in events if not text.endswith("(change watch)")]
        assert calls.count("open") == 1
        assert calls.count("close") == 1
        assert _transactions(events) == ["BEGIN", "COMMIT"]
        assert [text for e, text in events if text.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
        assert len(rows()) == stored
    assert rows()[0].timestamp == "2021-05-01T10:05:00"


@pytest.fixture
def proxy(
    nexuslims_postgres_db: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RoundTripCounter]:
    """The test server behind a round-trip counter, named by the environment, warmed up."""
    with RoundTripCounter(nexuslims_postgres_db.target) as counter:
        monkeypatch.setenv("nexusLIMS_db_path", counter.url)
        log("warm", "START", "2021-05-01T09:00:00").insert_log()  # connects, checks the schema
        assert instrument_db[TITAN]  # reads the instruments, opens the change watch
        try:
            yield counter
        finally:  # before the proxy goes: no pool left reconnecting through it
            close_databases()


def test_insert_log_is_one_round_trip_to_a_server(proxy: RoundTripCounter) -> None:
    for number in range(3):
        proxy.reset()
        assert log(f"s{number}", "START", "2021-05-01T10:00:00").insert_log() is True
        assert proxy.round_trips == 1
    # An event that is there already, and a revision: one round trip too.
    for timestamp in ("2021-05-01T10:00:00", "2021-05-01T10:30:00"):
        proxy.reset()
        assert log("s0", "START", timestamp).insert_log() is True
        assert proxy.round_trips == 1
    assert len(rows()) == 4
    assert [r.timestamp for r in rows() if r.session_identifier == "s0"] == [
        "2021-05-01T10:30:00"]


def test_insert_logs_takes_a_few_round_trips_whatever_the_batch(
    proxy: RoundTripCounter,
) -> None:
    counts = []
    for size in (1, 10, 99, 150):
        proxy.reset()
        assert insert_logs([log(f"b{size}-{n}", "START", "2021-05-01T10:00:00")
                            for n in range(size)]) == size
        counts.append(proxy.round_trips)
    # One to read (begun with it: the writers' lock, the stored logs of the batch;
    # the instruments are known unchanged), one for the inserts with the commit;
    # from a hundred rows the inserts are a COPY, which takes two, then the commit.
    assert counts == [2, 2, 2, 4]


def test_insert_logs_is_one_transaction_and_a_failed_one_rolls_back(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with _traced() as events:
        assert insert_logs(log(f"s{n}", "START", "2021-05-01T10:00:00") for n in range(50)) == 50
    assert [e for e, text in events if not text.endswith("(change watch)")].count("open") == 1
    assert _transactions(events) == ["BEGIN", "COMMIT"]
    with _traced() as events, pytest.raises(ValueError, match="NOPE"):
        insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                     log("s2", "START", "2021-05-01T10:00:00", instrument="NOPE")])
    assert [e for e, _ in events].count("open") == 1
    assert [e for e, _ in events].count("close") == 1
    assert "COMMIT" not in _transactions(events)
    assert _writes(events) == []
    assert len(rows()) == 50


# --- revisions (14.1) ---------------------------------------------------------


@pytest.mark.parametrize("event", ["START", "END"])
def test_a_revision_updates_the_row_in_place(
    event: str, nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument], caplog: pytest.LogCaptureFixture,
) -> None:
    for status in ("TO_BE_BUILT", "WAITING_FOR_END"):
        sql("DELETE FROM session_log")
        caplog.clear()
        insert_logs([log("other", event, "2021-05-01T08:00:00"),
                     log("s1", event, "2021-05-01T10:00:00", status=status),
                     log("s1", "RECORD_GENERATION", "2021-05-01T07:00:00")])
        before = rows()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert log("s1", event, "2021-05-01T10:05:00.000", user="bob").insert_log() is True
        after = rows()
        assert len(after) == len(before)
        assert after[1] == before[1]._replace(timestamp="2021-05-01T10:05:00.000", user="bob")
        assert after[1].record_status == status
        assert after[0] == before[0]
        assert after[2] == before[2]
        (info,) = _records(caplog, logging.INFO)
        assert info.name == LOGGER
        assert info.getMessage() == (
            f"Revised the {event} of session s1 on {TITAN} from 2021-05-01T10:00:00 to "
            f"2021-05-01T10:05:00.000 (log {before[1].id_session_log})")
        assert warnings(caplog) == []


def test_a_revised_user_alone_is_named_in_the_message(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    insert_logs([log("s1", "END", "2021-05-01T10:00:00", user=None)])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert insert_logs([log("s1", "END", "2021-05-01T10:00:00", user="bob")]) == 0
    assert [(r.id_session_log, r.user) for r in rows()] == [(1, "bob")]
    (info,) = _records(caplog, logging.INFO)
    assert "session s1" in info.getMessage()
    assert "user from None to 'bob'" in info.getMessage()


def test_a_revision_of_a_session_logger_start_keeps_it_waiting(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    started = log_start(TITAN, "s1", "alice", "2021-05-01T10:00:00")
    assert insert_logs([log("s1", "START", "2021-05-01T09:55:00")]) == 0
    (stored,) = rows()
    assert (stored.timestamp, stored.record_status) == ("2021-05-01T09:55:00", "WAITING_FOR_END")
    assert started.timestamp == "2021-05-01T10:00:00"
    log_end(TITAN, "s1", at="2021-05-01T11:00:00")
    (session,) = get_sessions_to_build()
    assert session.dt_from == datetime(2021, 5, 1, 9, 55)


def test_revisions_within_one_batch(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    insert_logs([log("stored", "END", "2021-05-01T11:00:00")])
    batch = [log("new", "START", "2021-05-01T10:00:00"),
             log("stored", "END", "2021-05-01T11:30:00"),
             log("new", "START", "2021-05-01T10:05:00"),
             log("stored", "END", "2021-05-01T11:45:00"),
             log("new", "START", "2021-05-01T10:05:00"),
             log("new", "END", "2021-05-01T12:00:00")]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert insert_logs(batch) == 2
    assert [(r.id_session_log, r.session_identifier, r.event_type, r.timestamp)
            for r in rows()] == [
        (1, "stored", "END", "2021-05-01T11:45:00"),
        (2, "new", "START", "2021-05-01T10:05:00"),
        (3, "new", "END", "2021-05-01T12:00:00")]
    assert len(_records(caplog, logging.INFO)) == 3
    assert len(warnings(caplog)) == 1


def test_a_revision_updates_the_newest_waiting_log(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # An inconsistent state 1.4 could leave: two ENDs, one already built.
    ids = insert_raw([row("s1", "END", "2021-05-01T11:00:00", status="COMPLETED"),
                      row("s1", "END", "2021-05-01T11:10:00"),
                      row("s1", "END", "2021-05-01T11:20:00"),
                      row("s1", "END", "2021-05-01T11:30:00", status="ERROR")])
    assert insert_logs([log("s1", "END", "2021-05-01T11:25:00")]) == 0
    assert [(r.id_session_log, r.timestamp) for r in rows()] == [
        (ids[0], "2021-05-01T11:00:00"), (ids[1], "2021-05-01T11:10:00"),
        (ids[2], "2021-05-01T11:25:00"), (ids[3], "2021-05-01T11:30:00")]
    # Equal to any stored END, whatever its status: the same event.
    assert insert_logs([log("s1", "END", "2021-05-01T11:00:00")]) == 0
    assert len(rows()) == 4


def test_a_log_on_another_instrument_or_a_record_generation_is_not_a_revision(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("s1", "START", "2021-05-01T10:00:00")])
    assert insert_logs([log("s1", "START", "2021-05-01T10:05:00", instrument=QUANTA)]) == 1
    assert [(r.instrument, r.timestamp) for r in rows()] == [
        (TITAN, "2021-05-01T10:00:00"), (QUANTA, "2021-05-01T10:05:00")]
    insert_logs([log("s1", "RECORD_GENERATION", "2021-05-01T10:00:00")])
    assert insert_logs([log("s1", "RECORD_GENERATION", "2021-05-01T10:00:00.000")]) == 0
    assert insert_logs([log("s1", "RECORD_GENERATION", "2021-05-02T10:00:00")]) == 1
    assert [r.event_type for r in rows()].count("RECORD_GENERATION") == 2


def test_a_late_revision_changes_nothing_warns_and_is_listed(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for status in ("COMPLETED", "ERROR", "NO_FILES_FOUND", "BUILT_NOT_EXPORTED"):
        caplog.clear()
        session_id = f"s-{status}"
        insert_logs([log(session_id, "START", "2021-05-01T10:00:00"),
                     log(session_id, "END", "2021-05-01T11:00:00")])
        (session,) = get_sessions_to_build()
        session.update_session_status(status)
        table = rows()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert log(session_id, "END", "2021-05-01T11:30:00").insert_log() is True
            # The same again: warned about again, but listed once.
            assert insert_logs([log(session_id, "END", "2021-05-01T11:30:00")]) == 0
        assert rows() == table
        assert not _records(caplog, logging.INFO)
        records = _records(caplog, logging.WARNING)
        assert len(records) == 2
        assert all(r.name == LOGGER for r in records)
        assert records[0].getMessage() == (
            f"Session {session_id} on {TITAN} was revised after its record was built (status "
            f"{status}): its END moved from 2021-05-01T11:00:00 to 2021-05-01T11:30:00; nothing "
            f"was changed (see 'nexuslims-db check')")
        (problem,) = [p for p in find_session_problems() if p.session_identifier == session_id]
        assert problem.kind is ProblemKind.LATE_REVISION
        assert problem.log_ids == (table[-1].id_session_log,)
        assert problem.markable is False
        assert "2021-05-01T11:00:00" in problem.detail
        assert "2021-05-01T11:30:00" in problem.detail
        assert get_sessions_to_build(on_error="strict") == []
    assert len(find_session_problems()) == 4


def test_late_revisions_with_other_times_are_each_listed(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00")])
    set_session_status("s1", "COMPLETED")
    insert_logs([log("s1", "START", "2021-05-01T09:00:00")])
    insert_logs([log("s1", "START", "2021-05-01T09:30:00"),
                 log("s1", "START", "2021-05-01T09:00:00")])
    problems = find_session_problems()
    assert [p.kind for p in problems] == [ProblemKind.LATE_REVISION] * 2
    assert ["09:00:00" in p.detail for p in problems] == [True, False]
    assert len(rows()) == 2


# --- log_start / log_end (the Session Logger) ---------------------------------


def test_log_start_waits_and_log_end_flips_both_logs_to_be_built_in_one_transaction(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    started = log_start(TITAN, "s-42", "erin", "2024-06-01T09:00:00-04:00")
    assert started == SessionLog("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START", "erin",
                                 "WAITING_FOR_END")
    assert [r[1:] for r in rows()] == [
        ("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START", "WAITING_FOR_END", "erin")]
    assert get_sessions_to_build() == []
    assert find_session_problems() == []
    with _traced() as events:
        ended = log_end(TITAN, "s-42", at="2024-06-01T10:15:00-04:00")
    assert ended == SessionLog("s-42", TITAN, "2024-06-01T10:15:00-04:00", "END", "erin",
                               "TO_BE_BUILT")  # the START's user
    assert [r[1:] for r in rows()] == [
        ("s-42", TITAN, "2024-06-01T09:00:00-04:00", "START", "TO_BE_BUILT", "erin"),
        ("s-42", TITAN, "2024-06-01T10:15:00-04:00", "END", "TO_BE_BUILT", "erin")]
    assert [e for e, _ in events].count("open") == 1
    assert _transactions(events) == ["BEGIN", "COMMIT"]
    assert ("execute", "BEGIN IMMEDIATE") in events
    assert [w.split(None, 1)[0].upper() for w in _writes(events)] == ["INSERT", "UPDATE"]
    (session,) = get_sessions_to_build()
    assert (session.session_identifier, session.user) == ("s-42", "erin")
    assert session.duration == timedelta(minutes=75)


def test_log_functions_take_datetimes_users_and_a_database(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("nexusLIMS_db_path")
    begin = nexuslims_instruments[TITAN].localize_datetime(datetime(2024, 6, 1, 9, 0))
    started = log_start(TITAN, "lib-1", "zoe", begin, database=nexuslims_database)
    ended = log_end(TITAN, "lib-1", "yan", begin.replace(hour=10),
                    database=nexuslims_database.target)
    assert (started.record_status, ended.record_status) == ("WAITING_FOR_END", "TO_BE_BUILT")
    assert [r[1:] for r in rows(nexuslims_database)] == [
        ("lib-1", TITAN, "2024-06-01T09:00:00-04:00", "START", "TO_BE_BUILT", "zoe"),
        ("lib-1", TITAN, "2024-06-01T10:00:00-04:00", "END", "TO_BE_BUILT", "yan")]


def test_the_log_time_defaults_to_now_with_an_offset(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    before = datetime.now().astimezone()
    log_start(QUANTA, "now")
    log_end(QUANTA, "now")
    after = datetime.now().astimezone()
    for stored in rows():
        stamp = datetime.fromisoformat(stored.timestamp)
        assert stamp.utcoffset() is not None
        assert before <= stamp <= after


def _refused(call: Any, message: str) -> str:
    table = _table()
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert _table() == table
    return str(raised.value)


def test_log_start_refusals_write_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    log_start(TITAN, "dup", at="2024-06-01T09:00:00")
    message = _refused(lambda: log_start(QUANTA, "dup"), "already has a START log")
    assert re.fullmatch(r"Session 'dup' already has a START log \(id \d+, status "
                        r"WAITING_FOR_END\); not writing another", message)
    insert_logs([log("harvested", "START", "2024-06-01T09:00:00")])
    assert "status TO_BE_BUILT" in _refused(lambda: log_start(TITAN, "harvested"),
                                            "already has a START log")
    assert "(known: " in _refused(lambda: log_start("NO-SUCH-SCOPE", "s-1"),
                                  "instrument 'NO-SUCH-SCOPE' is not in the instruments table")
    _refused(lambda: log_start(TITAN, "s-1", at="yesterday"), "Invalid timestamp 'yesterday'")
    _refused(lambda: log_start(TITAN, "s-1", user=42), "Invalid user 42")  # type: ignore


def test_log_end_refusals_write_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    log_start(TITAN, "s-1", at="2024-06-01T09:00:00-04:00")
    assert _refused(lambda: log_end(TITAN, "never-started"), "no open START") == (
        "Cannot end session 'never-started': it has no open START log (status "
        "WAITING_FOR_END); expected exactly one")
    _refused(lambda: log_end(TITAN, "s-1", at="yesterday"), "Invalid timestamp 'yesterday'")
    _refused(lambda: log_end(TITAN, "s-1", at="2024-06-01T08:00:00-04:00"),
             "it started later, at 2024-06-01T09:00:00-04:00")
    _refused(lambda: log_end(QUANTA, "s-1", at="2024-06-01T10:00:00-04:00"),
             f"Cannot end session 's-1' on {QUANTA!r}: it started on {TITAN!r}")
    _refused(lambda: log_end("NO-SUCH-SCOPE", "s-1", at="2024-06-01T10:00:00-04:00"),
             "instrument 'NO-SUCH-SCOPE' is not in the instruments table")
    log_end(TITAN, "s-1", at="2024-06-01T10:00:00-04:00")
    assert re.fullmatch(
        r"Cannot end session 's-1': it already has an END log \(id \d+, status TO_BE_BUILT\)",
        _refused(lambda: log_end(TITAN, "s-1"), "already has an END log"))
    # A START written by a harvester is not waiting for the Session Logger's END.
    insert_logs([log("harvested", "START", "2024-06-01T09:00:00")])
    _refused(lambda: log_end(TITAN, "harvested"), "no open START log")
    # Two open STARTs (an inconsistent state): which one ends is unknown.
    insert_raw([row("twice", "START", "2024-06-01T09:00:00", status="WAITING_FOR_END"),
                row("twice", "START", "2024-06-01T09:05:00", status="WAITING_FOR_END")])
    _refused(lambda: log_end(TITAN, "twice"), "it has 2 open START logs")
    # An END written by someone else blocks it too.
    log_start(TITAN, "s-2", at="2024-06-01T09:00:00")
    insert_logs([log("s-2", "END", "2024-06-01T09:30:00")])
    _refused(lambda: log_end(TITAN, "s-2"), "already has an END log")


def test_log_end_compares_a_naive_end_with_an_aware_start_in_the_instruments_zone(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    log_start(JEOL, "s1", at="2024-01-01T10:00:00-07:00")
    # 09:00 local in Denver is an hour before the start (09:00 UTC would be too,
    # but 16:30 UTC would not be: the naive time is Denver's).
    _refused(lambda: log_end(JEOL, "s1", at="2024-01-01T09:00:00"),
             "it started later, at 2024-01-01T10:00:00-07:00")
    assert find_session_problems() == []
    log_end(JEOL, "s1", at="2024-01-01T10:30:00")
    (session,) = get_sessions_to_build()
    assert session.duration == timedelta(minutes=30)


def test_log_end_on_the_dst_fall_back_night(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    # 01:50 EDT, then the clocks go back, then 01:10 EST: 20 minutes.
    log_start(QUANTA, "dst", "alice", "2021-11-07T01:50:00")
    log_end(QUANTA, "dst", at="2021-11-07T01:10:00")
    assert [(r.timestamp, r.record_status) for r in rows()] == [
        ("2021-11-07T01:50:00", "TO_BE_BUILT"), ("2021-11-07T01:10:00", "TO_BE_BUILT")]
    (session,) = get_sessions_to_build()
    assert session.duration == timedelta(minutes=20)
    assert find_session_problems() == []


# --- pairing of what was written (ported from the old test_insert_logs) -------

HISTORY = [
    row("old-1", "START", "2020-01-01T09:00:00", QUANTA, "COMPLETED", "zed"),
    row("old-1", "END", "2020-01-01T10:00:00", QUANTA, "COMPLETED", "zed"),
    row("old-1", "RECORD_GENERATION", "2020-01-01T10:30:00-05:00", QUANTA, "COMPLETED", None),
    row("s-naive", "RECORD_GENERATION", "2021-03-01T18:00:00-05:00", TITAN, "TO_BE_BUILT", None),
    row("err-1", "START", "2020-02-01T09:00:00", JEOL, "ERROR", None),
    row("wait-1", "START", "2021-03-05T09:00:00", JEOL, "WAITING_FOR_END", "dave"),
]


def test_sessions_are_paired_in_start_order_with_offsets_kept(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    url = "https://nemo.example.org/api/usage_events/?id=77"
    insert_raw(HISTORY[:3])
    logs = [
        log("s-z", "END", "2021-03-03T16:00:00.1234567Z", JEOL, user="bob"),
        log("s-naive", "START", "2021-03-01T09:00:00.000", TITAN),
        log(url, "END", "2021-03-02T12:15:30.250000-05:00", QUANTA, user="ignored"),
        log("s-space", "START", "2021-03-04 08:00:00", TITAN, user="carol"),
        log(url, "START", "2021-03-02T10:00:00-05:00", QUANTA, user=None),
        log("s-naive", "END", "2021-03-01T17:30:00.000", TITAN),
        log("s-z", "START", "2021-03-03T15:00:00Z", JEOL, user="bob"),
        log("s-space", "END", "2021-03-04 09:00:00", TITAN, user="carol"),
    ]
    assert insert_logs(logs) == len(logs)
    insert_raw(HISTORY[3:])

    sessions = get_sessions_to_build()

    assert [repr(s) for s in sessions] == [
        f"2021-03-01T09:00:00 to 2021-03-01T17:30:00 on {TITAN}",
        f"2021-03-04T08:00:00 to 2021-03-04T09:00:00 on {TITAN}",
        f"2021-03-02T10:00:00-05:00 to 2021-03-02T12:15:30.250000-05:00 on {QUANTA}",
        f"2021-03-03T15:00:00+00:00 to 2021-03-03T16:00:00.123456+00:00 on {JEOL}",
    ]
    assert [(s.session_identifier, s.user) for s in sessions] == [
        ("s-naive", "alice"), ("s-space", "carol"), (url, None), ("s-z", "bob")]
    assert all(s.instrument is instrument_db[s.instrument.name] for s in sessions)
    assert all(s.dt_range == (s.dt_from, s.dt_to) for s in sessions)
    assert sessions[2].dt_from.utcoffset() == timedelta(hours=-5)
    assert sessions[3].dt_to.utcoffset() == timedelta(0)
    assert sessions[0].dt_from.tzinfo is None


def test_a_start_without_its_end_raises_the_1_4_message(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_raw(HISTORY[:3] + HISTORY[4:])
    assert get_sessions_to_build() == []  # no TO_BE_BUILT logs: an empty list
    insert_logs([log("s-ok", "START", "2021-03-01T09:00:00"),
                 log("s-ok", "END", "2021-03-01T10:00:00"),
                 log("s-lonely", "START", "2021-03-02T09:00:00", QUANTA, user=None)])
    with pytest.raises(ValueError, match=f"^{re.escape(END_COUNT_PREFIX)}") as raised:
        get_sessions_to_build()
    assert str(raised.value) == (
        f"{END_COUNT_PREFIX}len(matching_end_logs) was 0; "
        f"start log was SessionLog (id=s-lonely, instrument={QUANTA}, "
        "timestamp=2021-03-02T09:00:00, event_type=START, user=None, "
        "record_status=TO_BE_BUILT); matching_end_logs was []")
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == ["s-ok"]


def test_naive_and_aware_ends_are_compared_at_the_instrument(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([
        # 09:00 in New York is 14:00 UTC: the END at 10:00-05:00 is later.
        log("mixed-ok", "START", "2021-03-01T09:00:00", TITAN, user=None),
        log("mixed-ok", "END", "2021-03-01T10:00:00-05:00", TITAN, user=None),
    ])
    assert [repr(s) for s in get_sessions_to_build()] == [
        f"2021-03-01T09:00:00 to 2021-03-01T10:00:00-05:00 on {TITAN}"]
    insert_logs([
        # 11:00 in Denver is 18:00 UTC: the END at 17:30Z is earlier.
        log("mixed-bad", "START", "2021-03-02T11:00:00", JEOL, user=None),
        log("mixed-bad", "END", "2021-03-02T17:30:00+00:00", JEOL, user=None),
    ])
    assert get_sessions_to_build() == get_sessions_to_build(on_error="skip")
    with pytest.raises(ValueError, match=r"'mixed-bad' ends .* before it starts"):
        get_sessions_to_build(on_error="strict")
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == ["mixed-ok"]


#: Every kind of inconsistent session (helpers' catalogue), as session 'p'.
PROBLEMS = {name: case.rows("p") for name, case in INCONSISTENT.items()}


def test_one_bad_session_leaves_the_others_as_they_were(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    good = [row("g2", "END", "2021-03-02T10:00:00-05:00", QUANTA),
            row("g1", "START", "2021-03-01T09:00:00"),
            row("g2", "START", "2021-03-02T09:00:00-05:00", QUANTA),
            row("g1", "END", "2021-03-01T10:00:00")]
    expected = [f"2021-03-01T09:00:00 to 2021-03-01T10:00:00 on {TITAN}",
                f"2021-03-02T09:00:00-05:00 to 2021-03-02T10:00:00-05:00 on {QUANTA}"]
    for name, problem in PROBLEMS.items():
        sql("DELETE FROM session_log")
        insert_raw(good[:2] + problem + good[2:])
        assert [repr(s) for s in get_sessions_to_build(on_error="skip")] == expected, name
        with pytest.raises(ValueError, match=r"'p'|START"):
            get_sessions_to_build(on_error="strict")
        assert [p.session_identifier for p in find_session_problems()] == ["p"] * len(
            find_session_problems()), name


# --- pairing property tests (SQLite: they drop the pairing index) -------------


def _reference_pairing(path: Path, instruments: dict[str, Instrument]) -> list[tuple[Any, ...]]:
    """NexusLIMS 1.4's pairing: each START (in id order) scans every END."""
    with closing(sqlite3.connect(path)) as conn:
        query = ("SELECT session_identifier, instrument, timestamp, user FROM session_log "
                 "WHERE record_status = 'TO_BE_BUILT' AND event_type = ? ORDER BY id_session_log")
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
    max_size=10,
)


@pytest.mark.slow
@pytest.mark.parametrize("pair_index", [True, False], ids=["with index", "1.4 indexes"])
@settings(max_examples=20, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(specs=session_specs, history=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_pairing_matches_the_1_4_reference(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], pair_index: bool,
    specs: list[tuple[str, datetime, timedelta, int, Optional[str]]], history: int, seed: int,
) -> None:
    make_db_query("DELETE FROM session_log")  # hypothesis reuses the fixture's database
    if not pair_index:  # a database whose indexes predate the pairing index
        make_db_query(f"DROP INDEX IF EXISTS {PAIR_INDEX}")
    logs: list[Any] = []
    for number, (pid, start, length, form, user) in enumerate(specs):
        identifier = f"https://nemo.example.org/api/usage_events/?id={number}"
        render = FORMS[form]
        logs.append(row(identifier, "START", render(start), pid, user=user))
        logs.append(row(identifier, "END", render(start + length), pid, user="end-user"))
        if number < history:  # built before, then re-opened (raw: a write would refuse it)
            logs.append(row(identifier, "START", render(start), pid, "COMPLETED", user))
            logs.append(row(identifier, "RECORD_GENERATION", render(start), pid, "COMPLETED",
                            None))
    random.Random(seed).shuffle(logs)
    # As a write stores them (the write path itself is tested above).
    insert_raw([(i, p, canonical_timestamp(t), *rest) for i, p, t, *rest in logs])

    sessions = get_sessions_to_build()

    assert [_key(s) for s in sessions] == _reference_pairing(nexuslims_db, nexuslims_instruments)
    assert len(sessions) == len(specs)


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


@pytest.mark.slow
@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=messy_logs)
def test_the_pairing_index_and_the_scan_agree_on_anything(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument], raw: list[Any]
) -> None:
    # Raw rows: unknown instruments, unreadable times, repeated STARTs and
    # ENDs, ENDs on another instrument, all mixed.
    make_db_query("DELETE FROM session_log")
    insert_raw([(i, p, t, e, s, u) for i, p, t, e, s, u in raw])
    init_db(nexuslims_db)  # (re)creates the pairing index

    def results() -> tuple[list[tuple[Any, ...]], list[Any]]:
        return ([_key(s) for s in get_sessions_to_build(on_error="skip")],
                find_session_problems())

    with_index = results()
    make_db_query(f"DROP INDEX {PAIR_INDEX}")
    assert results() == with_index


# --- a NexusLIMS 1.4 file, not migrated ---------------------------------------


def test_a_1_4_file_takes_inserts_same_events_and_revisions_without_migrating(
    legacy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shape = file_shape(legacy)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert log("s1", "START", "2021-05-01T10:00:00", user=None).insert_log() is True
        assert log("s1", "START", "2021-05-01T10:00:00.000", user=None).insert_log() is True
        assert insert_logs([log("s1", "END", "2021-05-01T11:00:00"),
                            log("s1", "END", "2021-05-01T11:00:00"),
                            log("s2", "START", "2021-05-01T12:00:00Z")]) == 2
        assert insert_logs([log("s1", "END", "2021-05-01T11:15:00")]) == 0  # a revision
    assert [(r.session_identifier, r.event_type, r.timestamp, r.user) for r in rows()] == [
        ("s1", "START", "2021-05-01T10:00:00", None), ("s1", "END", "2021-05-01T11:15:00", "alice"),
        ("s2", "START", "2021-05-01T12:00:00+00:00", "alice")]
    assert [m.split(" SessionLog (")[0] for m in warnings(caplog)] == [DUPLICATE] * 2
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == ["s1"]
    # A late revision is refused and warned about; the file has no table to keep it in.
    set_session_status("s1", "COMPLETED")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert insert_logs([log("s1", "END", "2021-05-01T11:30:00")]) == 0
    assert "was revised after its record was built" in warnings(caplog)[0]
    assert rows()[1].timestamp == "2021-05-01T11:15:00"
    assert find_session_problems() == [] or all(
        p.kind is not ProblemKind.LATE_REVISION for p in find_session_problems())
    log_start(JEOL, "s3", "zoe", "2021-05-02T09:00:00")
    log_end(JEOL, "s3", at="2021-05-02T10:00:00")
    assert file_shape(legacy) == shape
