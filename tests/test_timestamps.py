"""nexusLIMS.db.timestamps: reading, storing and comparing session_log timestamps.

Issue 4.1: text is read by ``datetime.fromisoformat``, with ``dateutil``'s
``isoparse`` only as the fallback for forms the running Python rejects (the
fallback is spied on in ``nexusLIMS.db.timestamps``). Which forms those are
depends on the version: 3.9 and 3.10 reject a ``Z`` suffix and seven fraction
digits; 3.11 accepts both but still rejects ``24:00`` or a lower-case ``z``.

Issues 13.2 and 13.3: one canonical stored spelling per form, and durations
that are right across daylight-saving changes.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytz
from dateutil.parser import isoparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusLIMS.db import timestamps
from nexusLIMS.db.timestamps import (
    MAX_YEAR,
    MIN_YEAR,
    canonical_timestamp,
    now_local_iso,
    parse_timestamp,
    same_instant,
    span,
    to_text,
)

UTC = timezone.utc
EST = timezone(timedelta(hours=-5))
IST = timezone(timedelta(hours=5, minutes=30))


def invalid_message(value: Any) -> str:
    return (f"Invalid timestamp {value!r}; expected an ISO 8601 date-time "
            f"such as '2021-05-01T13:45:00.000' or '2021-05-01T13:45:00-04:00'")


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Spy on the fallback parser: returns the list of texts it was called with."""
    calls: list[Any] = []

    def spy(text: Any) -> datetime:
        calls.append(text)
        return isoparse(text)

    monkeypatch.setattr(timestamps, "isoparse", spy)
    return calls


def _fromisoformat_rejects(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return True
    return False


# --- parse_timestamp: fromisoformat first, isoparse only as the fallback ------

# Forms fromisoformat reads on every supported Python (3.9+).
ORDINARY = {
    "2021-05-01T13:45:00": datetime(2021, 5, 1, 13, 45),
    "2021-05-01T13:45:00.123": datetime(2021, 5, 1, 13, 45, 0, 123000),
    "2021-05-01T13:45:00.123456": datetime(2021, 5, 1, 13, 45, 0, 123456),
    "2021-05-01 13:45:00": datetime(2021, 5, 1, 13, 45),
    "2021-05-01T13:45": datetime(2021, 5, 1, 13, 45),
    "2021-05-01T13:45:00-05:00": datetime(2021, 5, 1, 13, 45, tzinfo=EST),
    "2021-05-01T13:45:00.500000+05:30": datetime(2021, 5, 1, 13, 45, 0, 500000, tzinfo=IST),
    "2021-05-01T13:45:00+00:00": datetime(2021, 5, 1, 13, 45, tzinfo=UTC),
}

# Forms that need the fallback on some supported Python.
UNUSUAL = {
    "2021-05-01T13:45:00Z": datetime(2021, 5, 1, 13, 45, tzinfo=UTC),
    "2021-05-01T13:45:00.1234567": datetime(2021, 5, 1, 13, 45, 0, 123456),
    "2021-05-01T13:45:00.1234567-05:00": datetime(2021, 5, 1, 13, 45, 0, 123456, tzinfo=EST),
    "2021-05-01T13:45:00.123Z": datetime(2021, 5, 1, 13, 45, 0, 123000, tzinfo=UTC),
    "2021-05-01T24:00:00": datetime(2021, 5, 2, 0, 0),
    "2021-05-01T13:45:00z": datetime(2021, 5, 1, 13, 45, tzinfo=UTC),
}


@pytest.mark.parametrize(("text", "expected"), ORDINARY.items(), ids=list(ORDINARY))
def test_ordinary_forms_never_use_the_fallback(
    fallback: list[Any], text: str, expected: datetime
) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert fallback == []


@pytest.mark.parametrize(("text", "expected"), UNUSUAL.items(), ids=list(UNUSUAL))
def test_unusual_forms_use_the_fallback_exactly_when_fromisoformat_rejects_them(
    fallback: list[Any], text: str, expected: datetime
) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert fallback == ([text] if _fromisoformat_rejects(text) else [])


def test_the_fallback_is_reached_on_this_python(fallback: list[Any]) -> None:
    # Guard for the test above: on every Python some unusual forms need the
    # fallback, so its path is really exercised.
    needing = [text for text in UNUSUAL if _fromisoformat_rejects(text)]
    assert needing
    for text in needing:
        assert parse_timestamp(text) == UNUSUAL[text]
    assert fallback == needing


def test_z_suffix_and_seven_digits_go_to_the_fallback_when_fromisoformat_fails(
    fallback: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on Python 3.9/3.10, whatever the running version: fromisoformat
    # refuses 'Z' and seven-digit fractions.
    class OldDatetime(datetime):
        @classmethod
        def fromisoformat(cls, text: str) -> OldDatetime:
            if text.endswith("Z") or len(text.partition(".")[2].partition("-")[0]) == 7:
                raise ValueError(f"Invalid isoformat string: {text!r}")
            return super().fromisoformat(text)  # type: ignore[return-value]

    monkeypatch.setattr(timestamps, "datetime", OldDatetime)
    assert parse_timestamp("2021-05-01T13:45:00Z") == datetime(2021, 5, 1, 13, 45, tzinfo=UTC)
    assert parse_timestamp("2021-05-01T13:45:00.1234567-05:00") == datetime(
        2021, 5, 1, 13, 45, 0, 123456, tzinfo=EST
    )
    assert parse_timestamp("2021-05-01T13:45:00-05:00").utcoffset() == timedelta(hours=-5)
    assert fallback == ["2021-05-01T13:45:00Z", "2021-05-01T13:45:00.1234567-05:00"]
    assert canonical_timestamp("2021-05-01T13:45:00Z") == "2021-05-01T13:45:00+00:00"


@pytest.mark.slow
@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    when=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    offset_minutes=st.one_of(st.none(), st.integers(-23 * 60 - 59, 23 * 60 + 59)),
    timespec=st.sampled_from(["seconds", "milliseconds", "microseconds", "auto"]),
    sep=st.sampled_from(["T", " "]),
)
def test_isoformat_output_round_trips_without_the_fallback(
    fallback: list[Any], when: datetime, offset_minutes: Any, timespec: str, sep: str
) -> None:
    if offset_minutes is not None:
        when = when.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    text = when.isoformat(sep=sep, timespec=timespec)
    parsed = parse_timestamp(text)
    keep = {"seconds": 0, "milliseconds": when.microsecond // 1000 * 1000}
    assert parsed == when.replace(microsecond=keep.get(timespec, when.microsecond))
    assert parsed.utcoffset() == when.utcoffset()
    stored = canonical_timestamp(text)
    # the T form is kept as written; the space form becomes the T form
    assert stored == (text if sep == "T" else parsed.isoformat())
    assert parse_timestamp(stored) == parsed
    assert fallback == []


BAD = ["yesterday", "2021-05-01T25:00:00", "2021-02-30T10:00:00", "2021-05-01T10:00:00+25:00",
       "10:00:00", "", "2021-05-01T10:00:00 EST", "2021/05/01 10:00:00"]


@pytest.mark.parametrize("text", BAD)
def test_parse_rejects_bad_text_naming_it(text: str) -> None:
    expected = f"{text!r} is not an ISO 8601 date-time"
    with pytest.raises(ValueError, match=re.escape(expected)) as raised:
        parse_timestamp(text)
    assert str(raised.value) == expected


@pytest.mark.parametrize("value", [None, 20210501, 1.5])
def test_parse_rejects_non_text_naming_it(value: Any) -> None:
    expected = f"{value!r} is not an ISO 8601 date-time"
    with pytest.raises(ValueError, match=re.escape(expected)) as raised:
        parse_timestamp(value)
    assert str(raised.value) == expected


# --- canonical_timestamp: what is stored --------------------------------------

KEPT = [
    "2024-05-01T10:00:00",
    "2024-05-01T10:00:00.000",
    "2024-05-01T10:00:00.5",
    "2024-05-01T10:00:00.123456",
    "2024-05-01T10:00:00.000-04:00",
    "2024-05-01T10:00:00-04:00",
    "2024-05-01T10:00:00+05:30",
    "2024-05-01T10:00:00+00:00",
    f"{MIN_YEAR}-01-01T00:00:00",
    f"{MAX_YEAR}-12-31T23:59:59.999999",
]


@pytest.mark.parametrize("text", KEPT)
def test_canonical_text_is_kept_as_given(text: str) -> None:
    assert canonical_timestamp(text) == text


REWRITTEN = {
    "2024-05-01T10:00:00Z": "2024-05-01T10:00:00+00:00",
    "2024-05-01T10:00:00.250Z": "2024-05-01T10:00:00.250000+00:00",
    "20240501T1000": "2024-05-01T10:00:00",
    "20240501T100000-0400": "2024-05-01T10:00:00-04:00",
    "2024-05-01T10": "2024-05-01T10:00:00",
    "2024-05-01T10:00": "2024-05-01T10:00:00",
    "2024-05-01T10:00:00,5": "2024-05-01T10:00:00.500000",
    "2024-05-01 10:00:00": "2024-05-01T10:00:00",
    "2024-05-01 10:00:00.000-04:00": "2024-05-01T10:00:00-04:00",
    "2024-05-01T10:00:00.1234567": "2024-05-01T10:00:00.123456",
    "2024-05-01T10:00:00z": "2024-05-01T10:00:00+00:00",
}


@pytest.mark.parametrize(("text", "stored"), REWRITTEN.items(), ids=list(REWRITTEN))
def test_other_readable_forms_are_rewritten_as_isoformat(text: str, stored: str) -> None:
    assert canonical_timestamp(text) == stored
    assert parse_timestamp(stored) == parse_timestamp(text)
    assert canonical_timestamp(stored) == stored


def test_hour_24_is_rewritten_as_the_next_day() -> None:
    assert canonical_timestamp("2024-05-01T24:00:00") == "2024-05-02T00:00:00"
    assert canonical_timestamp("2024-12-31T24:00:00-05:00") == "2025-01-01T00:00:00-05:00"


@pytest.mark.parametrize(
    ("value", "stored"),
    [(datetime(2024, 5, 1, 10), "2024-05-01T10:00:00"),
     (datetime(2024, 5, 1, 10, 0, 0, 500, tzinfo=EST), "2024-05-01T10:00:00.000500-05:00")],
)
def test_datetimes_are_stored_as_isoformat(value: datetime, stored: str) -> None:
    assert canonical_timestamp(value) == stored
    assert to_text(value) == stored


def test_to_text_passes_anything_else_through() -> None:
    marker = object()
    assert to_text(marker) is marker
    assert to_text("2024-05-01") == "2024-05-01"
    assert to_text(None) is None


@pytest.mark.parametrize(
    "value",
    [*BAD, "2024-05-01", "20240501", "2024-05", "2021-W17-6T10:00", " 2024-05-01T10:00:00",
     "T10:00:00", None, 12, 1.5, b"2024-05-01T10:00:00"],
    ids=repr,
)
def test_anything_but_a_date_and_time_is_refused_naming_it(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^Invalid timestamp ") as raised:
        canonical_timestamp(value)
    assert str(raised.value) == invalid_message(value)


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00", "0001-01-01T10:00:00+05:00", "1899-12-31T23:59:59",
     "9999-01-01T00:00:00", "9999-12-31T23:59:59.999999-05:00",
     datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59)],
    ids=repr,
)
def test_years_out_of_range_are_refused_naming_value_and_range(value: Any) -> None:
    with pytest.raises(ValueError, match="must lie between") as raised:
        canonical_timestamp(value)
    message = str(raised.value)
    assert message == (f"Invalid timestamp {value!r}; it must lie between the years "
                       f"{MIN_YEAR} and {MAX_YEAR}")
    assert (MIN_YEAR, MAX_YEAR) == (1900, 9998)


def test_now_local_iso_is_canonical_local_time_with_offset(local_zone_ist: timezone) -> None:
    text = now_local_iso()
    parsed = parse_timestamp(text)
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=5)
    assert canonical_timestamp(text) == text


# --- span and same_instant: durations across daylight-saving changes ----------

NEW_YORK = pytz.timezone("America/New_York")


def _dt(text: str) -> datetime:
    return parse_timestamp(text)


# (start, end, duration) of naive local times in America/New_York
DST_SPANS = [
    # fall back, 2021-11-07: 01:00-02:00 happens twice (EDT, then EST)
    ("2021-11-07T01:50:00", "2021-11-07T01:10:00", timedelta(minutes=20)),
    ("2021-11-07T00:30:00", "2021-11-07T02:30:00", timedelta(hours=3)),
    # spring forward, 2021-03-14: 02:00-03:00 never happens
    ("2021-03-14T01:30:00", "2021-03-14T03:30:00", timedelta(hours=1)),
    ("2021-03-14T00:30:00", "2021-03-14T04:30:00", timedelta(hours=3)),
]
# Spans whose wall-clock difference is also the real one.
WALL_SPANS = [
    ("2021-11-07T01:10:00", "2021-11-07T01:50:00", timedelta(minutes=40)),
    ("2021-11-07T00:30:00", "2021-11-07T01:30:00", timedelta(hours=1)),
    ("2021-05-01T09:00:00", "2021-05-01T17:30:00", timedelta(hours=8, minutes=30)),
]


@pytest.mark.parametrize(("start", "end", "expected"), DST_SPANS + WALL_SPANS)
def test_span_of_naive_local_times_across_dst(start: str, end: str, expected: timedelta) -> None:
    assert span(_dt(start), _dt(end), NEW_YORK) == expected


@pytest.mark.parametrize(("start", "end", "expected"), WALL_SPANS)
def test_span_with_a_zoneinfo_zone(start: str, end: str, expected: timedelta) -> None:
    assert span(_dt(start), _dt(end), ZoneInfo("America/New_York")) == expected


@pytest.mark.parametrize(("start", "end", "expected"), DST_SPANS)
def test_span_across_dst_with_a_zoneinfo_zone(start: str, end: str, expected: timedelta) -> None:
    assert span(_dt(start), _dt(end), ZoneInfo("America/New_York")) == expected


def test_span_that_is_negative_in_every_reading_stays_negative() -> None:
    assert span(_dt("2021-05-01T10:00:00"), _dt("2021-05-01T09:00:00"), NEW_YORK) == \
        timedelta(hours=-1)
    assert span(_dt("2021-11-07T01:50:00"), _dt("2021-11-06T23:30:00"), NEW_YORK) < timedelta(0)


def test_span_with_offsets() -> None:
    aware_start = _dt("2021-11-07T01:50:00-04:00")
    aware_end = _dt("2021-11-07T01:10:00-05:00")
    assert span(aware_start, aware_end, None) == timedelta(minutes=20)
    assert span(aware_start, aware_end, NEW_YORK) == timedelta(minutes=20)
    # one naive, one aware: the naive one is local time in the zone
    assert span(aware_start, _dt("2021-11-07T01:10:00"), NEW_YORK) == timedelta(minutes=20)
    assert span(_dt("2021-11-07T00:30:00"), _dt("2021-11-07T02:30:00-05:00"), NEW_YORK) == \
        timedelta(hours=3)
    # without a zone they cannot be compared
    assert span(aware_start, _dt("2021-11-07T01:10:00"), None) is None
    # naive without a zone: plain wall-clock difference
    assert span(_dt("2021-11-07T01:50:00"), _dt("2021-11-07T01:10:00"), None) == \
        timedelta(minutes=-40)


def test_same_instant() -> None:
    assert same_instant("2024-05-01T10:00:00", "2024-05-01T10:00:00", None)
    assert same_instant("2024-05-01T10:00:00", "2024-05-01T10:00:00.000", None)
    assert same_instant("2024-05-01T10:00:00", "2024-05-01 10:00:00.000000", NEW_YORK)
    assert same_instant("2024-05-01T10:00:00Z", "2024-05-01T06:00:00-04:00", None)
    assert same_instant("2024-05-01T10:00:00", "2024-05-01T10:00:00-04:00", NEW_YORK)
    assert not same_instant("2024-05-01T10:00:00", "2024-05-01T10:00:00-05:00", NEW_YORK)
    assert not same_instant("2024-05-01T10:00:00", "2024-05-01T10:00:00-04:00", None)
    assert not same_instant("2024-05-01T10:00:00", "2024-05-01T10:00:01", NEW_YORK)
    # unreadable text is never the same instant as anything else
    assert not same_instant("yesterday", "2024-05-01T10:00:00", NEW_YORK)
    assert same_instant("yesterday", "yesterday", NEW_YORK)


@pytest.mark.parametrize("zone", [
    NEW_YORK, pytest.param(ZoneInfo("America/New_York"))], ids=["pytz", "zoneinfo"])
def test_same_instant_in_the_repeated_hour(zone: Any) -> None:
    # 01:30 on the fall-back night is either instant
    assert same_instant("2021-11-07T01:30:00", "2021-11-07T01:30:00-04:00", zone)
    assert same_instant("2021-11-07T01:30:00", "2021-11-07T01:30:00-05:00", zone)
    assert not same_instant("2021-11-07T01:30:00", "2021-11-07T01:30:00-06:00", zone)
