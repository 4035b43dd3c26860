"""A session on an instrument, as paired from its START and END logs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional, Union

from nexusLIMS.db.connection import connect
from nexusLIMS.db.enums import EventType, RecordStatus, coerce
from nexusLIMS.db.session_log import instrument_pids, require_instrument
from nexusLIMS.db.timestamps import now_local_iso
from nexusLIMS.instruments import Instrument

__all__ = ["ENV_USER", "Session", "set_session_status"]

logger = logging.getLogger(__name__)

ENV_USER = "nexusLIMS_user"

_RECORD_GENERATION_COLUMNS = ("id_session_log", "event_type", "session_identifier", "timestamp")


def set_session_status(session_identifier: str, status: Union[RecordStatus, str]) -> int:
    """Set ``record_status`` on every log of a session; return how many rows changed.

    Raises
    ------
    ValueError
        ``status`` is not an allowed status (checked before writing).
    """
    value = coerce(RecordStatus, status, "record_status").value
    with connect(begin="IMMEDIATE") as conn:
        cursor = conn.execute(
            "UPDATE session_log SET record_status = ? WHERE session_identifier = ?",
            (value, session_identifier),
        )
        return cursor.rowcount


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
