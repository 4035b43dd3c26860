"""Issue 4, point 1: timestamps are read by ``datetime.fromisoformat``, with
``dateutil``'s ``isoparse`` only as the fallback for forms it rejects.

The fallback is spied on in ``nexusLIMS.db.timestamps`` to show which path
each form takes on the running Python. Which forms ``fromisoformat`` rejects
depends on the version: Python 3.9 and 3.10 reject a ``Z`` suffix and a
seven-digit fraction, 3.11 accepts both but still rejects, e.g., ``24:00``
or a lower-case ``z``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from dateutil.parser import isoparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexusLIMS.db import timestamps
from nexusLIMS.db.timestamps import parse_timestamp, validate_timestamp

UTC = timezone.utc
EST = timezone(timedelta(hours=-5))
IST = timezone(timedelta(hours=5, minutes=30))


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
    assert validate_timestamp(text) == text
    assert fallback == []


@pytest.mark.parametrize(("text", "expected"), UNUSUAL.items(), ids=list(UNUSUAL))
def test_unusual_forms_use_the_fallback_exactly_when_fromisoformat_rejects_them(
    fallback: list[Any], text: str, expected: datetime
) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert fallback == ([text] if _fromisoformat_rejects(text) else [])
    assert validate_timestamp(text) == text


def test_the_fallback_is_reached_on_this_python(fallback: list[Any]) -> None:
    # Guard for the test above: on every Python some of the unusual forms
    # need the fallback, so its path is really exercised.
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


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
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
    assert validate_timestamp(text) == text
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


def validation_message(value: Any) -> str:
    return (
        f"Invalid timestamp {value!r}; expected an ISO 8601 date-time "
        f"such as '2021-05-01T13:45:00.000' or '2021-05-01T13:45:00-04:00'"
    )


@pytest.mark.parametrize(
    "value",
    [*BAD, "2021-05-01", "20210501", None, 42, datetime(2021, 5, 1, 10, 0),
     b"2021-05-01T10:00:00",
     "2021-W17-6T10:00", " 2021-05-01T10:00:00"],
    ids=repr,
)
def test_validate_rejects_anything_but_a_date_and_time(value: Any) -> None:
    expected = validation_message(value)
    with pytest.raises(ValueError, match=re.escape(expected)) as raised:
        validate_timestamp(value)
    assert str(raised.value) == expected
