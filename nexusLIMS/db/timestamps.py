"""Reading and writing the ISO 8601 timestamps stored in ``session_log``.

Timestamps are stored as text exactly as written. Reading uses
:meth:`datetime.fromisoformat` (fast, in C) and falls back to
:func:`dateutil.parser.isoparse` only for forms the running Python rejects,
such as a ``Z`` suffix or a seven-digit fraction on Python < 3.11.
"""

from __future__ import annotations

import re
from datetime import datetime

from dateutil.parser import isoparse

__all__ = ["now_local_iso", "parse_timestamp", "to_text", "validate_timestamp"]

# A date followed by a time: "2021-05-01T10:00", "2021-05-01 10:00", "20210501T1000".
_HAS_TIME = re.compile(r"^\d{4}-?\d{2}-?\d{2}[T ]\d{2}")


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


def validate_timestamp(value: object) -> str:
    """Return ``value`` if it is the text of an ISO 8601 date-time.

    Raises
    ------
    ValueError
        The value is not a string holding a date and a time of day that
        :func:`parse_timestamp` can read; the message names the value.
    """
    if isinstance(value, str) and _HAS_TIME.match(value):
        try:
            parse_timestamp(value)
        except ValueError:
            pass
        else:
            return value
    raise ValueError(
        f"Invalid timestamp {value!r}; expected an ISO 8601 date-time "
        f"such as '2021-05-01T13:45:00.000' or '2021-05-01T13:45:00-04:00'"
    )


def to_text(value: object) -> object:
    """Return a :class:`datetime` as ISO text; anything else unchanged.

    sqlite3's default datetime adapter is deprecated since Python 3.12, so
    every datetime the package writes goes through this first.
    """
    return value.isoformat() if isinstance(value, datetime) else value


def now_local_iso() -> str:
    """Return the current time in the system's zone, ISO text with its offset."""
    return datetime.now().astimezone().isoformat()
