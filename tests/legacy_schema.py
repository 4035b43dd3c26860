"""A database as NexusLIMS 1.4's creation script made it, for compatibility tests.

NexusLIMS 1.4 created its database with a SQL script exported from MySQL
Workbench: backquoted names, the columns and constraints of the contract's
schema, but a ``record_status`` CHECK that lists only five statuses (it forgot
``NO_CONSENT`` and ``NO_RESERVATION``; ``BUILT_NOT_EXPORTED`` came with 2.x)
and no indexes beyond those its UNIQUE constraints imply.

Use it from a test module in ``tests/`` with::

    from legacy_schema import LEGACY_1_4_SCHEMA, make_legacy_db
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Union

__all__ = ["LEGACY_1_4_SCHEMA", "LEGACY_1_4_STATUSES", "make_legacy_db"]

#: The statuses the 1.4 ``record_status`` CHECK allows.
LEGACY_1_4_STATUSES = ("COMPLETED", "WAITING_FOR_END", "TO_BE_BUILT", "ERROR", "NO_FILES_FOUND")

#: The table definitions of NexusLIMS 1.4's creation script.
LEGACY_1_4_SCHEMA = """
CREATE TABLE `instruments`(
  `instrument_pid` VARCHAR(100) PRIMARY KEY NOT NULL,
  `api_url` TEXT NOT NULL,
  `calendar_name` TEXT NOT NULL,
  `calendar_url` TEXT NOT NULL,
  `location` VARCHAR(100) NOT NULL,
  `schema_name` TEXT NOT NULL,
  `property_tag` VARCHAR(20) NOT NULL,
  `filestore_path` TEXT NOT NULL,
  `computer_name` TEXT,
  `computer_ip` VARCHAR(15),
  `computer_mount` TEXT,
  `harvester` TEXT,
  `timezone` TEXT NOT NULL DEFAULT 'America/New_York',
  CONSTRAINT `api_url_UNIQUE`
    UNIQUE(`api_url`),
  CONSTRAINT `computer_name_UNIQUE`
    UNIQUE(`computer_name`),
  CONSTRAINT `computer_ip_UNIQUE`
    UNIQUE(`computer_ip`)
);
CREATE TABLE `session_log`(
  `id_session_log` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  `session_identifier` VARCHAR(36) NOT NULL,
  `instrument` VARCHAR(100) NOT NULL,
  `timestamp` DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now', 'localtime')),
  `event_type` TEXT NOT NULL
    CHECK(`event_type` IN('START', 'END', 'RECORD_GENERATION')),
  `record_status` TEXT NOT NULL DEFAULT 'WAITING_FOR_END'
    CHECK(`record_status` IN('COMPLETED', 'WAITING_FOR_END', 'TO_BE_BUILT', 'ERROR',
                             'NO_FILES_FOUND')),
  `user` VARCHAR(50),
  CONSTRAINT `fk_instrument`
    FOREIGN KEY(`instrument`)
    REFERENCES `instruments`(`instrument_pid`)
    ON DELETE CASCADE
    ON UPDATE CASCADE
);
"""


def make_legacy_db(path: Union[str, os.PathLike[str]]) -> Path:
    """Create a database at ``path`` exactly as NexusLIMS 1.4's script did.

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
