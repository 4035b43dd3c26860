"""Small helpers shared across NexusLIMS."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["current_system_tz"]


def current_system_tz() -> timezone:
    """Return the system's local time zone at this moment.

    Returns
    -------
    datetime.timezone
        A fixed-offset zone for the local offset now (daylight saving time
        included), as the operating system reports it.
    """
    tzinfo = datetime.now().astimezone().tzinfo
    assert isinstance(tzinfo, timezone)  # astimezone() always gives one
    return tzinfo
