"""Reading, writing and comparing the ISO 8601 timestamps of ``session_log``.

Timestamps are written in one canonical form so that the text sorts in time
order (for a given UTC offset) and one instant has one spelling:
``YYYY-MM-DDTHH:MM:SS[.ffffff][±HH:MM]``, as :meth:`datetime.isoformat`
writes it. Text already in that form (with 1 to 6 fraction digits) is kept
as given, so what a caller writes is what it reads back.

Reading uses :meth:`datetime.fromisoformat` (fast, in C) and falls back to
:func:`dateutil.parser.isoparse` only for forms the running Python rejects,
such as a ``Z`` suffix on Python < 3.11.

A naive timestamp is local time at its instrument. Around a daylight-saving
change such a time can mean two instants (or none); :func:`span` takes the
reading that makes a session shortest without being negative.

Times the package writes for itself (claims, revisions) are UTC text of one
fixed width (:func:`utc_text`), so that their text sorts as the time does.
This module is the one home of every timestamp text format and of putting
a naive time in a zone (:func:`localize`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Optional, Union

from dateutil.parser import isoparse

__all__ = [
    "MAX_YEAR",
    "MIN_YEAR",
    "age",
    "canonical_timestamp",
    "localize",
    "now_local_iso",
    "parse_timestamp",
    "same_instant",
    "span",
    "to_text",
    "utc_now",
    "utc_text",
]

#: The years a written timestamp may lie in; far enough from the limits of
#: ``datetime`` that no UTC offset or time zone can push it out of range.
MIN_YEAR, MAX_YEAR = 1900, 9998

# A date followed by a time: "2021-05-01T10:00", "2021-05-01 10:00", "20210501T1000".
_HAS_TIME = re.compile(r"^\d{4}-?\d{2}-?\d{2}[T ]\d{2}")
# The canonical form, kept as written.
_CANONICAL = re.compile(
    r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?([+-]\d{2}:\d{2})?$")
_ZERO = timedelta(0)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 date-time, keeping its UTC offset when it has one.

    Raises
    ------
    ValueError
        ``text`` is not an ISO 8601 date-time.
    """
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        pass
    try:
        return isoparse(text)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{text!r} is not an ISO 8601 date-time") from None


def canonical_timestamp(value: Union[str, datetime]) -> str:
    """Return the text to store for a timestamp given as ISO text or ``datetime``.

    Raises
    ------
    ValueError
        The value is not a date with a time of day, or lies outside the years
        :data:`MIN_YEAR` to :data:`MAX_YEAR`; the message names the value.
    """
    parsed: Optional[datetime] = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _HAS_TIME.match(value):
        try:
            parsed = parse_timestamp(value)
        except ValueError:
            parsed = None
    if parsed is None:
        raise ValueError(
            f"Invalid timestamp {value!r}; expected an ISO 8601 date-time "
            f"such as '2021-05-01T13:45:00.000' or '2021-05-01T13:45:00-04:00'"
        )
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise ValueError(
            f"Invalid timestamp {value!r}; it must lie between the years {MIN_YEAR} and {MAX_YEAR}"
        )
    if isinstance(value, str) and _CANONICAL.match(value):
        return value
    return parsed.isoformat()


def to_text(value: object) -> object:
    """Return a :class:`datetime` as ISO text; anything else unchanged.

    sqlite3's default datetime adapter is deprecated since Python 3.12, so
    every datetime the package writes goes through this first.
    """
    return value.isoformat() if isinstance(value, datetime) else value


def now_local_iso() -> str:
    """Return the current time in the system's zone, ISO text with its offset."""
    return datetime.now().astimezone().isoformat()


def utc_now() -> datetime:
    """Return the current time, aware, in UTC."""
    return datetime.now(timezone.utc)


def utc_text(moment: datetime) -> str:
    """Return an aware ``moment`` as UTC ISO text of fixed width (microseconds, ``+00:00``).

    Texts of this form sort as the times do, so a database compares them as text.
    """
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def localize(moment: datetime, zone: tzinfo, *, dst: Optional[bool] = None) -> datetime:
    """Return the naive ``moment`` as local time in ``zone`` (a ``pytz`` zone or any ``tzinfo``).

    Parameters
    ----------
    dst
        Which reading of a time that occurs twice (clocks going back) or not
        at all (clocks going forward): True the daylight-saving one (the first),
        False the standard one; None the zone library's own default (``pytz``:
        standard; ``zoneinfo``: the first).
    """
    pytz_localize = getattr(zone, "localize", None)
    if pytz_localize is not None:
        placed: datetime = pytz_localize(moment) if dst is None \
            else pytz_localize(moment, is_dst=dst)
        return placed
    return moment.replace(tzinfo=zone, fold=0 if dst is None or dst else 1)


def age(text: str, zone: Optional[tzinfo], now: datetime) -> Optional[timedelta]:
    """Return how long before the aware ``now`` the timestamp ``text`` lies.

    A naive timestamp is local time in ``zone``, or in this computer's zone
    when ``zone`` is None. None when the text cannot be placed in time.
    """
    try:
        moment = parse_timestamp(text)
        if moment.tzinfo is None:
            moment = localize(moment, zone) if zone is not None else moment.astimezone()
        return now - moment
    except (ValueError, OverflowError):
        return None


def _readings(moment: datetime, zone: Optional[tzinfo]) -> list[datetime]:
    """Return the instants a timestamp can mean: one, or two for a naive local time."""
    if moment.tzinfo is not None or zone is None:
        return [moment if moment.tzinfo is None else moment.astimezone(timezone.utc)]
    # In UTC, so that readings in one zone subtract as instants, not wall times.
    readings = [localize(moment, zone, dst=dst).astimezone(timezone.utc) for dst in (True, False)]
    return readings if readings[0] != readings[1] else readings[:1]


def span(start: datetime, end: datetime, zone: Optional[tzinfo]) -> Optional[timedelta]:
    """Return how long from ``start`` to ``end``; None when they cannot be compared.

    A naive time is local time in ``zone``. When it is ambiguous (the hour
    repeated as clocks go back) or skipped, the reading that gives the
    shortest span that is not negative is taken; a negative result means
    the end is before the start in every reading.

    Raises
    ------
    OverflowError
        A reading falls outside the range of ``datetime``.
    """
    if (start.tzinfo is None) != (end.tzinfo is None) and zone is None:
        return None
    if start.tzinfo is None and end.tzinfo is None and zone is None:
        return end - start
    spans = [e - s for s in _readings(start, zone) for e in _readings(end, zone)]
    lengths = [length for length in spans if length >= _ZERO]
    return min(lengths) if lengths else max(spans)


def same_instant(first: str, second: str, zone: Optional[tzinfo]) -> bool:
    """Whether two timestamp texts can name the same instant (naive ones in ``zone``)."""
    if first == second:
        return True
    try:
        a, b = parse_timestamp(first), parse_timestamp(second)
        return any(x == y for x in _readings(a, zone) for y in _readings(b, zone)
                   if (x.tzinfo is None) == (y.tzinfo is None))
    except (ValueError, OverflowError):
        return False
