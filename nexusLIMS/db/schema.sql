-- The NexusLIMS session database (schema version 1).
--
-- The CHECK lists must equal nexusLIMS/db/enums.py (a test compares them).
-- Every statement is idempotent: init_db runs this file on new and existing
-- databases alike and never drops or changes a row.

CREATE TABLE IF NOT EXISTS instruments (
    instrument_pid  VARCHAR(100) NOT NULL PRIMARY KEY,
    api_url         TEXT NOT NULL UNIQUE,
    calendar_name   TEXT NOT NULL,
    calendar_url    TEXT NOT NULL,
    location        VARCHAR(100) NOT NULL,
    schema_name     TEXT NOT NULL,
    property_tag    VARCHAR(20) NOT NULL,
    filestore_path  TEXT NOT NULL,
    computer_name   TEXT UNIQUE,
    computer_ip     VARCHAR(15) UNIQUE,
    computer_mount  TEXT,
    harvester       TEXT,
    timezone        TEXT NOT NULL DEFAULT 'America/New_York'
);

-- session_identifier is declared VARCHAR(36) for compatibility; SQLite does
-- not enforce the length, and harvesters store URLs in it.
CREATE TABLE IF NOT EXISTS session_log (
    id_session_log      INTEGER PRIMARY KEY AUTOINCREMENT,
    session_identifier  VARCHAR(36) NOT NULL,
    instrument          VARCHAR(100) NOT NULL
        REFERENCES instruments (instrument_pid) ON UPDATE CASCADE ON DELETE CASCADE,
    timestamp           DATETIME NOT NULL
        DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now', 'localtime')),
    event_type          TEXT NOT NULL
        CHECK (event_type IN ('START', 'END', 'RECORD_GENERATION')),
    record_status       TEXT NOT NULL DEFAULT 'WAITING_FOR_END'
        CHECK (record_status IN ('COMPLETED', 'WAITING_FOR_END', 'TO_BE_BUILT',
                                 'ERROR', 'NO_FILES_FOUND', 'NO_CONSENT',
                                 'NO_RESERVATION', 'BUILT_NOT_EXPORTED')),
    user                VARCHAR(50)
);

CREATE INDEX IF NOT EXISTS session_log_instrument_idx
    ON session_log (instrument);

CREATE INDEX IF NOT EXISTS session_log_session_identifier_idx
    ON session_log (session_identifier);

-- Rows by status and event: the count of TO_BE_BUILT ENDs and the full read
-- of get_sessions_to_build when a session has a problem.
CREATE INDEX IF NOT EXISTS session_log_status_event_idx
    ON session_log (record_status, event_type);

-- Serves the pairing of get_sessions_to_build: every column it reads of the
-- TO_BE_BUILT START and END rows, so it reads no table page, and each START
-- finds its END by (event_type, session_identifier). Partial: it holds only
-- the sessions waiting for their record, so it stays small.
CREATE INDEX IF NOT EXISTS session_log_to_be_built_idx
    ON session_log (event_type, session_identifier, instrument, timestamp, user, record_status)
    WHERE record_status = 'TO_BE_BUILT';
