"""Databases as other NexusLIMS releases made them, for compatibility tests.

:func:`make_legacy_db` builds what NexusLIMS 1.4's creation script built: the
identifiers in double quotes, ``id_session_log`` declared ``INTEGER NOT NULL``
with a separate ``UNIQUE`` constraint and ``PRIMARY KEY(... AUTOINCREMENT)``,
a foreign key that says ``ON DELETE CASCADE ON UPDATE CASCADE`` (1.4 never
turned foreign keys on, so it never cascaded), one index on
``session_log.instrument`` and a ``record_status`` CHECK that lists only five
statuses (it forgot ``NO_CONSENT`` and ``NO_RESERVATION``;
``BUILT_NOT_EXPORTED`` came with 2.x). ``PRAGMA user_version`` stays 0.

:func:`make_2x_db` builds the shape of a NexusLIMS 2.x database, which this
package must refuse: an ``alembic_version`` table, 2.x's ``instruments``
columns and 1.4's ``session_log`` columns.

:func:`make_2x_demo_db` builds what 2.x's ``nexuslims db create-demo`` makes:
its models' tables created at once (SQLModel's ``create_all``), so without
``alembic_version``: ``instruments``, ``session_log`` (no AUTOINCREMENT, so no
``sqlite_sequence`` either), and, by release, ``upload_log`` (2.4) and
``external_user_identifiers`` (2.5, which also renamed ``schema_name`` to
``display_name`` and dropped ``calendar_name`` and the ``computer_*`` columns).

Use them from a test module in ``tests/`` with::

    from legacy_schema import LEGACY_1_4_SCHEMA, make_2x_db, make_legacy_db
"""

from __future__ import annotations

import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any, Union

__all__ = [
    "LEGACY_1_4_INDEX",
    "LEGACY_1_4_SCHEMA",
    "LEGACY_1_4_STATUSES",
    "NEXUSLIMS_2X_COLUMNS",
    "NEXUSLIMS_2X_REVISION",
    "RELEASES_2X",
    "file_shape",
    "make_2x_db",
    "make_2x_demo_db",
    "make_legacy_db",
    "nexuslims_2x_demo_schema",
]

#: The statuses the 1.4 ``record_status`` CHECK allows.
LEGACY_1_4_STATUSES = ("COMPLETED", "WAITING_FOR_END", "TO_BE_BUILT", "ERROR", "NO_FILES_FOUND")

#: The one index of NexusLIMS 1.4's script (besides those of its constraints).
LEGACY_1_4_INDEX = "session_log.fk_instrument_idx"

#: The tables and index of NexusLIMS 1.4's creation script.
LEGACY_1_4_SCHEMA = """
BEGIN TRANSACTION;
CREATE TABLE IF NOT EXISTS "instruments" (
    "instrument_pid"  VARCHAR(100) NOT NULL,
    "api_url"         TEXT NOT NULL,
    "calendar_name"   TEXT NOT NULL,
    "calendar_url"    TEXT NOT NULL,
    "location"        VARCHAR(100) NOT NULL,
    "schema_name"     TEXT NOT NULL,
    "property_tag"    VARCHAR(20) NOT NULL,
    "filestore_path"  TEXT NOT NULL,
    "computer_name"   TEXT,
    "computer_ip"     VARCHAR(15),
    "computer_mount"  TEXT,
    "harvester"       TEXT,
    "timezone"        TEXT NOT NULL DEFAULT 'America/New_York',
    CONSTRAINT "instrument_pid_UNIQUE" UNIQUE("instrument_pid"),
    PRIMARY KEY("instrument_pid"),
    CONSTRAINT "computer_ip_UNIQUE" UNIQUE("computer_ip"),
    CONSTRAINT "api_url_UNIQUE" UNIQUE("api_url"),
    CONSTRAINT "computer_name_UNIQUE" UNIQUE("computer_name")
);
CREATE TABLE IF NOT EXISTS "session_log" (
    "id_session_log"      INTEGER NOT NULL,
    "session_identifier"  VARCHAR(36) NOT NULL,
    "instrument"          VARCHAR(100) NOT NULL,
    "timestamp"           DATETIME NOT NULL
                          DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now', 'localtime')),
    "event_type"          TEXT NOT NULL
                          CHECK("event_type" IN ('START', 'END', 'RECORD_GENERATION')),
    "record_status"       TEXT NOT NULL DEFAULT 'WAITING_FOR_END'
                          CHECK("record_status" IN ('COMPLETED', 'WAITING_FOR_END',
                                                    'TO_BE_BUILT', 'ERROR', 'NO_FILES_FOUND')),
    "user"                VARCHAR(50),
    CONSTRAINT "fk_instrument" FOREIGN KEY("instrument")
        REFERENCES "instruments"("instrument_pid") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "id_session_log_UNIQUE" UNIQUE("id_session_log"),
    PRIMARY KEY("id_session_log" AUTOINCREMENT)
);
CREATE INDEX IF NOT EXISTS "session_log.fk_instrument_idx" ON "session_log" ("instrument");
COMMIT;
"""

#: The alembic revision :func:`make_2x_db` stores by default.
NEXUSLIMS_2X_REVISION = "v2_5_0b"

#: The columns of NexusLIMS 2.x's ``instruments`` table (after revision v2_5_0b).
NEXUSLIMS_2X_COLUMNS = ("instrument_pid", "api_url", "calendar_url", "location", "display_name",
                        "property_tag", "filestore_path", "harvester", "timezone")

_NEXUSLIMS_2X_SCHEMA = """
CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
CREATE TABLE instruments (
    instrument_pid VARCHAR(100) NOT NULL PRIMARY KEY,
    api_url TEXT NOT NULL UNIQUE,
    calendar_url TEXT NOT NULL,
    location VARCHAR(100) NOT NULL,
    display_name TEXT NOT NULL,
    property_tag VARCHAR(20) NOT NULL,
    filestore_path TEXT NOT NULL,
    harvester TEXT,
    timezone TEXT NOT NULL DEFAULT 'America/New_York'
);
CREATE TABLE session_log (
    id_session_log INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    session_identifier VARCHAR(36) NOT NULL,
    instrument VARCHAR(100) NOT NULL REFERENCES instruments (instrument_pid),
    timestamp DATETIME NOT NULL,
    event_type TEXT NOT NULL,
    record_status TEXT NOT NULL DEFAULT 'WAITING_FOR_END',
    user VARCHAR(50)
);
"""


# The tables of NexusLIMS 2.x's models, as SQLModel's create_all makes them.
_2X_INSTRUMENTS = {
    "2.4": """
CREATE TABLE instruments (
    instrument_pid VARCHAR(100) NOT NULL, api_url VARCHAR NOT NULL,
    calendar_name VARCHAR NOT NULL, calendar_url VARCHAR NOT NULL,
    location VARCHAR(100) NOT NULL, schema_name VARCHAR NOT NULL,
    property_tag VARCHAR(20) NOT NULL, filestore_path VARCHAR NOT NULL,
    harvester VARCHAR NOT NULL, timezone VARCHAR NOT NULL, computer_name VARCHAR,
    computer_ip VARCHAR(15), computer_mount VARCHAR,
    PRIMARY KEY (instrument_pid), UNIQUE (api_url), UNIQUE (computer_name), UNIQUE (computer_ip)
);""",
    "2.5": """
CREATE TABLE instruments (
    instrument_pid VARCHAR(100) NOT NULL, api_url VARCHAR NOT NULL,
    calendar_url VARCHAR NOT NULL, location VARCHAR(100) NOT NULL,
    display_name VARCHAR NOT NULL, property_tag VARCHAR(20) NOT NULL,
    filestore_path VARCHAR NOT NULL, harvester VARCHAR NOT NULL, timezone VARCHAR NOT NULL,
    PRIMARY KEY (instrument_pid), UNIQUE (api_url)
);""",
}
_2X_SESSION_LOG = """
CREATE TABLE session_log (
    id_session_log INTEGER NOT NULL, session_identifier VARCHAR(36) NOT NULL,
    instrument VARCHAR(100) NOT NULL, timestamp VARCHAR, event_type VARCHAR(17) NOT NULL,
    record_status VARCHAR(18) NOT NULL, user VARCHAR(50),
    PRIMARY KEY (id_session_log),
    CONSTRAINT check_event_type CHECK (event_type IN ('START', 'END', 'RECORD_GENERATION')),
    CONSTRAINT check_record_status CHECK (record_status IN ('COMPLETED', 'WAITING_FOR_END',
        'TO_BE_BUILT', 'BUILT_NOT_EXPORTED', 'ERROR', 'NO_FILES_FOUND', 'NO_CONSENT',
        'NO_RESERVATION')),
    FOREIGN KEY(instrument) REFERENCES instruments (instrument_pid)
);
CREATE INDEX ix_session_log_session_identifier ON session_log (session_identifier);"""
_2X_UPLOAD_LOG = """
CREATE TABLE upload_log (
    id INTEGER NOT NULL, session_identifier VARCHAR(36) NOT NULL,
    destination_name VARCHAR(100) NOT NULL, success BOOLEAN NOT NULL, timestamp VARCHAR,
    record_id VARCHAR(255), record_url VARCHAR(500), error_message VARCHAR,
    metadata_json VARCHAR, PRIMARY KEY (id)
);
CREATE INDEX ix_upload_log_session_identifier ON upload_log (session_identifier);
CREATE INDEX ix_upload_log_destination_name ON upload_log (destination_name);"""
_2X_USER_IDS = """
CREATE TABLE external_user_identifiers (
    id INTEGER NOT NULL, nexuslims_username VARCHAR NOT NULL, external_system VARCHAR NOT NULL,
    external_id VARCHAR NOT NULL, email VARCHAR, created_at VARCHAR NOT NULL,
    last_verified_at VARCHAR, notes VARCHAR, PRIMARY KEY (id),
    CONSTRAINT valid_external_system CHECK (external_system IN ('nemo', 'labarchives_eln',
        'labarchives_scheduler', 'cdcs')),
    CONSTRAINT nexuslims_username_system_UNIQUE UNIQUE (nexuslims_username, external_system),
    CONSTRAINT system_external_id_UNIQUE UNIQUE (external_system, external_id)
);"""

#: The releases :func:`make_2x_demo_db` makes files of.
RELEASES_2X = tuple(_2X_INSTRUMENTS)


def nexuslims_2x_demo_schema(release: str = "2.5", *, own_tables: bool = True) -> str:
    """Return the tables 2.x's ``create-demo`` makes at ``release`` ("2.4" or "2.5").

    ``own_tables=False`` leaves out the tables only 2.x has (``upload_log``,
    ``external_user_identifiers``): a file that only its columns tell from 1.4's.
    """
    parts = [_2X_INSTRUMENTS[release], _2X_SESSION_LOG]
    if own_tables:
        parts += [_2X_UPLOAD_LOG] + ([_2X_USER_IDS] if release == "2.5" else [])
    return "\n".join(parts)


def make_2x_demo_db(path: Union[str, os.PathLike[str]], release: str = "2.5", *,
                    own_tables: bool = True) -> Path:
    """Create a file as NexusLIMS 2.x's ``nexuslims db create-demo`` makes it: no alembic_version.

    One instrument, one START log (and, with 2.x's own tables, one upload),
    so that a test can tell that nothing was changed.
    """
    db_path = Path(path)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(nexuslims_2x_demo_schema(release, own_tables=own_tables))
        with conn:
            if release == "2.5":
                conn.execute(
                    "INSERT INTO instruments (instrument_pid, api_url, calendar_url, location, "
                    "display_name, property_tag, filestore_path, harvester, timezone) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ("FEI-Titan-TEM-635816", "https://nemo.example.org/api/tools/?id=1",
                     "https://nemo.example.org/calendar/titan-tem/", "Building 217, Room F131",
                     "FEI Titan TEM", "635816", "./Titan", "nemo", "America/New_York"))
            else:
                conn.execute(
                    "INSERT INTO instruments (instrument_pid, api_url, calendar_name, "
                    "calendar_url, location, schema_name, property_tag, filestore_path, "
                    "harvester, timezone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ("FEI-Titan-TEM-635816", "https://nemo.example.org/api/tools/?id=1",
                     "FEI Titan TEM", "https://nemo.example.org/calendar/titan-tem/",
                     "Building 217, Room F131", "FEI Titan TEM", "635816", "./Titan", "nemo",
                     "America/New_York"))
            conn.execute(
                "INSERT INTO session_log (session_identifier, instrument, timestamp, "
                "event_type, record_status, user) VALUES (?, ?, ?, ?, ?, ?)",
                ("s-2x", "FEI-Titan-TEM-635816", "2024-05-01T10:00:00-04:00", "START",
                 "TO_BE_BUILT", "alice"))
            if own_tables:
                conn.execute(
                    "INSERT INTO upload_log (session_identifier, destination_name, success, "
                    "timestamp) VALUES (?, ?, ?, ?)",
                    ("s-2x", "cdcs", 1, "2024-05-01T12:00:00-04:00"))
    return db_path


def make_legacy_db(path: Union[str, os.PathLike[str]]) -> Path:
    """Create a database at ``path`` as NexusLIMS 1.4's script did.

    The tables are empty and ``PRAGMA user_version`` is 0. The connection is
    closed before returning.

    Returns
    -------
    pathlib.Path
        The path of the new database.
    """
    db_path = Path(path)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(LEGACY_1_4_SCHEMA)
    return db_path


def make_2x_db(path: Union[str, os.PathLike[str]], revision: str = NEXUSLIMS_2X_REVISION) -> Path:
    """Create a database at ``path`` shaped like NexusLIMS 2.x's, at alembic ``revision``.

    One instrument and one START log are stored, so that a test can tell
    that nothing was changed. ``PRAGMA user_version`` stays 0, as 2.x leaves it.

    Returns
    -------
    pathlib.Path
        The path of the new database.
    """
    db_path = Path(path)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executescript(_NEXUSLIMS_2X_SCHEMA)
        with conn:
            conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (revision,))
            conn.execute(
                f"INSERT INTO instruments ({', '.join(NEXUSLIMS_2X_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(NEXUSLIMS_2X_COLUMNS))})",
                ("FEI-Titan-TEM-635816", "https://nemo.example.org/api/tools/?id=1",
                 "https://nemo.example.org/calendar/titan-tem/", "Building 217, Room F131",
                 "FEI Titan TEM", "635816", "./Titan", "nemo", "America/New_York"),
            )
            conn.execute(
                "INSERT INTO session_log (session_identifier, instrument, timestamp, "
                "event_type, record_status, user) VALUES (?, ?, ?, ?, ?, ?)",
                ("s-2x", "FEI-Titan-TEM-635816", "2024-05-01T10:00:00.000-04:00", "START",
                 "TO_BE_BUILT", "alice"),
            )
    return db_path


def file_shape(path: Union[str, os.PathLike[str]]) -> tuple[Any, ...]:
    """Return a SQLite file's schema version and schema objects: unchanged means untouched."""
    with closing(sqlite3.connect(path)) as conn:
        return (conn.execute("PRAGMA user_version").fetchall(),
                conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall())


def main(argv: list[str]) -> int:
    """Make a NexusLIMS 1.4 file with the demo's sessions: ``python tests/legacy_schema.py PATH``.

    For trying ``nexuslims-db migrate`` (as the README does) without a
    facility's database. An existing file is never touched.
    """
    from nexusLIMS.db.samples import populate_demo

    if len(argv) != 1:
        print("usage: python tests/legacy_schema.py PATH", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if path.exists():
        print(f"{path} exists already; nothing was changed", file=sys.stderr)
        return 1
    summary = populate_demo(make_legacy_db(path))
    print(f"Made {path}: a NexusLIMS 1.4 database (schema version 0) holding the demo's "
          f"{len(summary.instruments)} instruments and {summary.logs} session logs.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
