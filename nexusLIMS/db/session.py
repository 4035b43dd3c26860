"""A session on an instrument, as paired from its START and END logs."""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional, Union

from nexusLIMS.db.connection import PathLike, connect
from nexusLIMS.db.enums import EventType, RecordStatus, coerce
from nexusLIMS.db.session_log import instrument_pids, require_instrument
from nexusLIMS.db.timestamps import now_local_iso
from nexusLIMS.instruments import Instrument

__all__ = ["ENV_USER", "Session", "session_span", "set_session_status"]

logger = logging.getLogger(__name__)

ENV_USER = "nexusLIMS_user"

_RECORD_GENERATION_COLUMNS = ("id_session_log", "event_type", "session_identifier", "timestamp")


def set_session_status(
    session_identifier: str,
    status: Union[RecordStatus, str],
    *,
    path: Optional[PathLike] = None,
) -> int:
    """Set ``record_status`` on every log of a session; return how many rows changed.

    Parameters
    ----------
    session_identifier
        The session whose logs to update.
    status
        The new status (a :class:`~nexusLIMS.db.enums.RecordStatus` or its value).
    path
        The database; by default from ``nexusLIMS_db_path``.

    Raises
    ------
    ValueError
        ``status`` is not an allowed status (checked before writing).
    sqlite3.IntegrityError
        The database's CHECK predates ``status`` (a NexusLIMS 1.4 file); the
        message says to migrate it.
    """
    value = coerce(RecordStatus, status, "record_status").value
    try:
        with connect(path, begin="IMMEDIATE") as conn:
            cursor = conn.execute(
                "UPDATE session_log SET record_status = ? WHERE session_identifier = ?",
                (value, session_identifier),
            )
            return cursor.rowcount
    except sqlite3.IntegrityError as exc:
        if "CHECK constraint failed" not in str(exc):
            raise
        # Same type as 1.4 raised, with the remedy added.
        raise sqlite3.IntegrityError(
            f"{exc}: this database does not allow record_status {value!r}; it was "
            f"probably made by NexusLIMS 1.4: run 'nexuslims-db migrate' "
            f"(or nexusLIMS.db.migrate_db()) to update it"
        ) from exc


def session_span(dt_from: datetime, dt_to: datetime, instrument: Instrument) -> Optional[timedelta]:
    """Return ``dt_to - dt_from``; None when the two cannot be compared.

    When one has a UTC offset and the other not, the naive one is read as
    local time at the instrument (as the record builder does); without an
    instrument zone such a pair cannot be compared.
    """
    if (dt_from.tzinfo is None) != (dt_to.tzinfo is None):
        dt_from = instrument.localize_datetime(dt_from)
        dt_to = instrument.localize_datetime(dt_to)
        if (dt_from.tzinfo is None) != (dt_to.tzinfo is None):
            return None
    return dt_to - dt_from


@dataclass
class Session:
    """A session in the NexusLIMS database, made of a START and an END log.

    Parameters
    ----------
    session_identifier
        The identifier shared by the session's logs.
    instrument
        The instrument the session was on.
    dt_range
        The start and end of the session, in that order; also available as
        :attr:`dt_from` and :attr:`dt_to`.
    user
        The user name of the session (may not be trustworthy).
    """

    session_identifier: str
    instrument: Instrument
    dt_range: tuple[datetime, datetime]
    user: Optional[str]
    dt_from: datetime = field(init=False, repr=False)
    dt_to: datetime = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dt_from, self.dt_to = self.dt_range

    def __repr__(self) -> str:
        return (
            f"{self.dt_from.isoformat()} to {self.dt_to.isoformat()} "
            f"on {self.instrument.name}"
        )

    @property
    def duration(self) -> Optional[timedelta]:
        """The session's length; None if its start and end cannot be compared."""
        return session_span(self.dt_from, self.dt_to, self.instrument)

    def update_session_status(self, status: Union[RecordStatus, str]) -> bool:
        """Set ``record_status`` on every log of this session.

        Parameters
        ----------
        status
            One of the :class:`~nexusLIMS.db.enums.RecordStatus` values (the
            member or its string).

        Returns
        -------
        bool
            True when rows were updated; False (with a warning logged) when no
            log has this session's identifier.

        Raises
        ------
        ValueError
            ``status`` is not allowed; the message lists the allowed values.
            Nothing is written.
        """
        updated = set_session_status(self.session_identifier, status)
        if updated == 0:
            logger.warning(
                "No session_log rows have session_identifier %r; status %s not set",
                self.session_identifier,
                status,
            )
            return False
        return True

    def insert_record_generation_event(self) -> dict[str, Any]:
        """Insert a RECORD_GENERATION log for this session and return that row.

        The log has this session's identifier and instrument, the user from
        ``nexusLIMS_user`` (NULL when unset) and the current time in the
        system's zone, stored as ISO text with its UTC offset.

        Returns
        -------
        dict
            The inserted row (found by its id): ``id_session_log``,
            ``event_type``, ``session_identifier`` and ``timestamp``.

        Raises
        ------
        ValueError
            The session's instrument is not in the ``instruments`` table.
        """
        logger.debug("Logging RECORD_GENERATION for %s", self.session_identifier)
        with connect(begin="IMMEDIATE") as conn:
            require_instrument(self.instrument.name, instrument_pids(conn), self)
            cursor = conn.execute(
                "INSERT INTO session_log "
                "(instrument, event_type, session_identifier, user, timestamp) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    self.instrument.name,
                    EventType.RECORD_GENERATION.value,
                    self.session_identifier,
                    os.environ.get(ENV_USER),
                    now_local_iso(),
                ),
            )
            row = conn.execute(
                f"SELECT {', '.join(_RECORD_GENERATION_COLUMNS)} FROM session_log "
                f"WHERE id_session_log = ?",
                (cursor.lastrowid,),
            ).fetchone()
        return dict(zip(_RECORD_GENERATION_COLUMNS, row))
