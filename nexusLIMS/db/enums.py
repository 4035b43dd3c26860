"""The allowed values of ``session_log``: the one source of truth.

The CHECK constraints of the schema, the validation of every writing
function and the choices of the command line all come from these enums.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar, Union

__all__ = [
    "FINAL_STATUSES",
    "WAITING_STATUSES",
    "EventType",
    "ProblemKind",
    "RecordStatus",
    "coerce",
]


class _StrEnum(str, Enum):
    """A string enum whose ``str()`` and ``format()`` are its value on every Python."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Return every allowed value, in declaration order."""
        return tuple(member.value for member in cls)


class EventType(_StrEnum):
    """The ``event_type`` of a ``session_log`` row."""

    START = "START"
    END = "END"
    RECORD_GENERATION = "RECORD_GENERATION"


class RecordStatus(_StrEnum):
    """The ``record_status`` of a ``session_log`` row."""

    COMPLETED = "COMPLETED"
    WAITING_FOR_END = "WAITING_FOR_END"
    TO_BE_BUILT = "TO_BE_BUILT"
    ERROR = "ERROR"
    NO_FILES_FOUND = "NO_FILES_FOUND"
    NO_CONSENT = "NO_CONSENT"
    NO_RESERVATION = "NO_RESERVATION"
    BUILT_NOT_EXPORTED = "BUILT_NOT_EXPORTED"


#: Statuses of a session whose record is still to come: its logs may be revised.
WAITING_STATUSES = frozenset({RecordStatus.WAITING_FOR_END.value, RecordStatus.TO_BE_BUILT.value})
#: Statuses the record builder leaves: the session's outcome is decided.
FINAL_STATUSES = frozenset(RecordStatus.values()) - WAITING_STATUSES

E = TypeVar("E", bound=_StrEnum)


def coerce(enum: type[E], value: Union[E, str], what: str) -> E:
    """Return the member of ``enum`` for ``value`` (a member or its string).

    Parameters
    ----------
    enum
        :class:`EventType` or :class:`RecordStatus`.
    value
        The value to check.
    what
        What the value is, for the error message (e.g. ``"record_status"``).

    Raises
    ------
    ValueError
        If ``value`` is not one of the allowed values; the message names the
        value and lists the allowed ones.
    """
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(enum.values())
        raise ValueError(f"Invalid {what} {value!r}; allowed values are: {allowed}") from None


class ProblemKind(_StrEnum):
    """Why the TO_BE_BUILT logs of a session cannot be built into a record."""

    END_COUNT = "end_count"
    """A START whose session has zero or several ENDs."""
    MULTIPLE_STARTS = "multiple_starts"
    """Several STARTs with the same session identifier."""
    END_WITHOUT_START = "end_without_start"
    """ENDs whose session has no START."""
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    """A log names an instrument that is not in the ``instruments`` table."""
    INSTRUMENT_MISMATCH = "instrument_mismatch"
    """The START and END name different instruments."""
    BAD_TIMESTAMP = "bad_timestamp"
    """A timestamp is not an ISO 8601 date-time, or cannot be placed in time."""
    END_BEFORE_START = "end_before_start"
    """The END is earlier than the START."""
    LATE_REVISION = "late_revision"
    """A harvester revised a START or END after the session's record was built."""
    REVISED_DURING_BUILD = "revised_during_build"
    """A START or END was revised while the session's record was built (or after it was
    built and the session was set to be built again): it waits to be built with the new times."""
