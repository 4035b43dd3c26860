"""Drop-in fidelity: code written against NexusLIMS 1.4 runs unchanged (issue 8).

The tests are written as 1.4's callers are: a NEMO-style harvester that
writes START and END logs, a record builder that polls for sessions, records
their outcome and deletes its RECORD_GENERATION row when it is too early, and
1.4-style tests that compare instruments and monkeypatch module names. They
run on a database made by NexusLIMS 1.4's creation script (untouched), on one
made by ``init_db``, and (where the backend does not matter) on PostgreSQL.
"""

from __future__ import annotations

import logging
from datetime import datetime as dt
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import (
    END_COUNT_PREFIX,
    INCONSISTENT,
    JEOL,
    QUANTA,
    TITAN,
    insert_raw,
    row,
    rows,
    sql,
)
from legacy_schema import make_legacy_db

import nexusLIMS.instruments
from nexusLIMS.db import make_db_query, session_handler
from nexusLIMS.db.config import ENV_DB_PATH, DatabaseLocation
from nexusLIMS.db.migrations import migrate_db
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.session_handler import Session, SessionLog, db_query, get_sessions_to_build
from nexusLIMS.instruments import (
    Instrument,
    get_instr_from_api_url,
    get_instr_from_calendar_name,
    get_instr_from_filepath,
    instrument_db,
)
from nexusLIMS.utils import is_subpath

TITAN_API = "https://nemo.example.org/api/tools/?id=1"


@pytest.fixture(params=["1.4 file", "init_db"])
def facility(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite database with the sample instruments: 1.4's own file, or ours."""
    if request.param == "1.4 file":
        path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
        monkeypatch.setenv(ENV_DB_PATH, str(path))
    else:
        path = request.getfixturevalue("nexuslims_db")
    add_sample_instruments(path)
    return path


def harvest(identifier: str, start: str, end: str, user: str = "jdoe",
            instrument: str = TITAN) -> None:
    """What 1.4's NEMO connector does with one usage event."""
    for event, timestamp in (("START", start), ("END", end)):
        _, found = db_query(
            "SELECT * FROM session_log WHERE session_identifier = ? AND event_type = ?",
            (identifier, event))
        if len(found) > 0:
            continue
        SessionLog(session_identifier=identifier, instrument=instrument, timestamp=timestamp,
                   event_type=event, user=user, record_status="TO_BE_BUILT").insert_log()


def build_records(outcome: Callable[[Session], str]) -> dict[str, str]:
    """What 1.4's record builder does: every session gets an outcome, or waits."""
    done = {}
    for session in get_sessions_to_build():
        row_dict = session.insert_record_generation_event()
        status = outcome(session)
        if status == "TOO_EARLY":
            db_query("DELETE FROM session_log WHERE id_session_log = ?",
                     (row_dict["id_session_log"],))
            continue
        session.update_session_status(status)
        done[session.session_identifier] = status
    return done


# -------------------------------------------------- 1. instruments compare as in 1.4


def test_look_ups_return_the_instruments_of_instrument_db(facility: Path) -> None:
    titan = instrument_db[TITAN]
    assert instrument_db[TITAN] == instrument_db[TITAN]
    assert get_instr_from_api_url(TITAN_API) == titan
    assert get_instr_from_calendar_name("id=1") == titan
    assert get_instr_from_calendar_name("id=3") == instrument_db[JEOL]
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    (session,) = get_sessions_to_build()
    assert session.instrument == titan
    assert session.instrument is instrument_db[TITAN]


def test_instruments_work_as_dict_keys_and_set_members(facility: Path) -> None:
    seen = {instrument_db[TITAN]: "titan", instrument_db[QUANTA]: "quanta"}
    members = set(instrument_db.values())
    assert seen[get_instr_from_api_url(TITAN_API)] == "titan"
    assert instrument_db[QUANTA] in members
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    assert get_sessions_to_build()[0].instrument in members


def test_an_attribute_set_on_an_instrument_is_seen_by_later_look_ups(
    facility: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    instr = instrument_db[TITAN]
    monkeypatch.setattr(instr, "timezone", None)
    assert instrument_db[TITAN].timezone is None
    assert get_instr_from_api_url(TITAN_API).timezone is None  # type: ignore[union-attr]
    naive = dt.fromisoformat("2021-11-26T12:00:00.000")
    assert instrument_db[TITAN].localize_datetime(naive) == naive
    assert "Tried to localize a datetime with instrument" in caplog.text
    harvest("s1", "2024-03-01T09:00:00", "2024-03-01T10:00:00")
    assert get_sessions_to_build()[0].instrument.timezone is None


def test_a_changed_row_shows_its_new_values_and_others_keep_their_identity(
    facility: Path,
) -> None:
    titan, quanta = instrument_db[TITAN], instrument_db[QUANTA]
    make_db_query(f"UPDATE instruments SET location = 'Room 101' WHERE instrument_pid = '{TITAN}'")
    assert instrument_db[TITAN].location == "Room 101"
    assert instrument_db[TITAN] is not titan
    assert instrument_db[QUANTA] is quanta
    assert instrument_db[TITAN] is instrument_db[TITAN]


def test_switching_the_database_shows_its_instruments(
    facility: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TITAN in instrument_db
    other = make_legacy_db(tmp_path / "other.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(other))
    assert TITAN not in instrument_db
    assert len(instrument_db) == 0


# ------------------------------------------------------- 2. names 1.4 code reaches


@pytest.mark.parametrize("name", ["Instrument", "instrument_db", "current_system_tz",
                                  "db_query", "SessionLog", "Session",
                                  "get_sessions_to_build", "logger"])
def test_session_handler_has_the_module_names_of_1_4(name: str) -> None:
    assert hasattr(session_handler, name)


def test_session_handler_names_are_the_shared_objects() -> None:
    assert session_handler.instrument_db is nexusLIMS.instruments.instrument_db
    assert session_handler.Instrument is Instrument
    assert session_handler.logger.name == "nexusLIMS.db.session_handler"


def test_a_replaced_session_handler_instrument_db_is_honoured(
    facility: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = Instrument(name=TITAN, location="elsewhere", timezone="America/Chicago")
    monkeypatch.setattr(session_handler, "instrument_db", {TITAN: stand_in})
    harvest("s1", "2024-03-01T09:00:00-06:00", "2024-03-01T10:00:00-06:00")
    (session,) = session_handler.get_sessions_to_build()
    assert session.instrument is stand_in


def test_a_replaced_instruments_instrument_db_is_honoured(
    facility: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stand_in = Instrument(name="x", api_url="https://elsewhere/api/tools/?id=7",
                          filestore_path="./X")
    monkeypatch.setattr(nexusLIMS.instruments, "instrument_db", {"x": stand_in})
    monkeypatch.setenv("mmfnexus_path", str(tmp_path))
    assert get_instr_from_api_url("https://elsewhere/api/tools/?id=7") is stand_in
    assert get_instr_from_calendar_name("id=7") is stand_in
    assert get_instr_from_api_url(TITAN_API) is None
    assert get_instr_from_filepath(tmp_path / "X" / "a.dm3") is stand_in


def test_is_subpath_is_1_4s() -> None:
    assert is_subpath(Path("/data/Titan/a/b.dm3"), Path("/data/Titan"))
    assert is_subpath(Path("/data/Titan/a/b.dm3"), [Path("/x"), Path("/data/Titan/a")])
    assert not is_subpath(Path("/data/Titan"), Path("/data/Titan"))
    assert not is_subpath(Path("bad_path_no_instrument"), Path("/data/Titan"))


# ------------------------------------------------------------------ 3. hashable


def test_sessions_and_logs_are_hashable_consistently_with_equality(facility: Path) -> None:
    first = SessionLog("s", TITAN, "2024-03-01T09:00:00", "START", "u")
    twin = SessionLog("s", TITAN, "2024-03-01T09:00:00", "START", "u")
    assert first == twin
    assert hash(first) == hash(twin)
    assert len({first, twin}) == 1
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    a, b = get_sessions_to_build()[0], get_sessions_to_build()[0]
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1


def test_a_session_may_hold_a_string_instrument_as_1_4_callers_build_it() -> None:
    session = Session("dummy_id", "no_instrument", (dt(2024, 1, 1), dt(2024, 1, 2)), "None")
    assert hash(session) == hash(Session("dummy_id", "no_instrument",
                                         (dt(2024, 1, 1), dt(2024, 1, 2)), "None"))


# ------------------------------------------ 4. the default never stops a 1.4 run


#: The inconsistent sessions of helpers' catalogue that 1.4 did not raise for
#: (it raised only for a START without exactly one END), as session 'bad'.
BAD_SESSIONS = {name: case.rows("bad") for name, case in INCONSISTENT.items()
                if not case.raises_in_1_4}


@pytest.mark.parametrize("bad", sorted(BAD_SESSIONS))
def test_the_default_skips_what_1_4_did_not_raise_for(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: Any, bad: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harvest("good", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    insert_raw(BAD_SESSIONS[bad])
    caplog.set_level(logging.WARNING, logger="nexusLIMS.db.session_handler")
    sessions = get_sessions_to_build()
    assert [s.session_identifier for s in sessions] == ["good"]
    skipped = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 1
    assert skipped[0].name == "nexusLIMS.db.session_handler"
    assert BAD_SESSIONS[bad][0][0] in skipped[0].getMessage()
    with pytest.raises(ValueError, match="session"):
        get_sessions_to_build(on_error="strict")


def test_the_default_raises_where_1_4_raised(nexuslims_database: DatabaseLocation,
                                             nexuslims_instruments: Any) -> None:
    harvest("good", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    insert_raw([row("lonely", "START", "2024-03-01T09:00:00")])
    with pytest.raises(ValueError, match=f"^{END_COUNT_PREFIX}") as raised:
        get_sessions_to_build()
    assert "len(matching_end_logs) was 0" in str(raised.value)
    assert [s.session_identifier for s in get_sessions_to_build(on_error="skip")] == ["good"]


def test_1_4s_own_raw_insert_of_a_lonely_start_raises(facility: Path) -> None:
    make_db_query("INSERT INTO session_log (instrument, event_type, session_identifier, "
                  f"record_status) VALUES ('{TITAN}', 'START', 'uuid-1', 'TO_BE_BUILT');")
    with pytest.raises(ValueError, match=END_COUNT_PREFIX):
        session_handler.get_sessions_to_build()
    make_db_query("DELETE FROM session_log WHERE session_identifier = 'uuid-1'")
    assert session_handler.get_sessions_to_build() == []


def test_a_record_builder_loop_of_1_4_completes(facility: Path) -> None:
    harvest("https://nemo.example.org/api/usage_events/?id=1", "2024-03-01T09:00:00-05:00",
            "2024-03-01T10:00:00-05:00")
    harvest("https://nemo.example.org/api/usage_events/?id=2", "2024-03-01T11:00:00-05:00",
            "2024-03-01T12:00:00-05:00", user="asmith", instrument=QUANTA)
    harvest("https://nemo.example.org/api/usage_events/?id=3", "2024-03-02T11:00:00-07:00",
            "2024-03-02T12:00:00-07:00", instrument=JEOL)
    insert_raw(BAD_SESSIONS["end without start"])
    outcomes = iter(["COMPLETED", "TOO_EARLY", "NO_FILES_FOUND"])
    done = build_records(lambda session: next(outcomes))
    assert sorted(done.values()) == ["COMPLETED", "NO_FILES_FOUND"]
    # the session that was too early waits, without its RECORD_GENERATION row
    (waiting,) = get_sessions_to_build()
    assert waiting.session_identifier.endswith("id=2")
    generation = [r for r in rows() if r.event_type == "RECORD_GENERATION"]
    assert {r.session_identifier for r in generation} == set(done)
    # re-harvesting the same usage events builds nothing twice
    harvest("https://nemo.example.org/api/usage_events/?id=1", "2024-03-01T09:00:00-05:00",
            "2024-03-01T10:00:00-05:00")
    assert [s.session_identifier for s in get_sessions_to_build()] == [waiting.session_identifier]


def test_the_statuses_1_4s_builder_sets_work_once_migrated(facility: Path) -> None:
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    migrate_db(backup=False)
    for status in ("NO_CONSENT", "NO_RESERVATION", "ERROR", "COMPLETED"):
        assert Session("s1", instrument_db[TITAN],
                       (dt(2024, 3, 1), dt(2024, 3, 1)), "jdoe").update_session_status(status)
        assert {r.record_status for r in rows()} == {status}


# -------------------------------------------------- 5. daylight-saving fall-back


def test_a_session_over_the_fall_back_hour_is_built(nexuslims_database: DatabaseLocation,
                                                    nexuslims_instruments: Any) -> None:
    harvest("dst", "2021-11-07T01:50:00.000", "2021-11-07T01:10:00.000")
    (session,) = get_sessions_to_build()
    assert session.duration is not None
    assert session.duration.total_seconds() == 20 * 60
    assert get_sessions_to_build(on_error="strict") == [session]


def test_an_end_before_its_start_on_another_day_is_still_a_problem(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: Any
) -> None:
    insert_raw([row("late", "START", "2021-11-08T01:50:00.000"),
                row("late", "END", "2021-11-08T01:10:00.000")])
    assert get_sessions_to_build() == []
    with pytest.raises(ValueError, match="ends"):
        get_sessions_to_build(on_error="strict")


# -------------------------------------------- 6. no history lost through foreign keys


def _titan_logs() -> int:
    return len([r for r in rows() if r.instrument == TITAN])


def _replace_titan_sql() -> str:
    return ("INSERT OR REPLACE INTO instruments (instrument_pid, api_url, calendar_name, "
            "calendar_url, location, schema_name, property_tag, filestore_path, timezone) "
            f"VALUES ('{TITAN}', 'https://x/api/tools/?id=99', 'c', 'u', 'l', 's', 'p', './T', "
            "'America/New_York')")


@pytest.mark.parametrize("how", ["delete", "replace"])
def test_deleting_or_replacing_an_instrument_with_logs_is_refused(facility: Path,
                                                                  how: str) -> None:
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    before = len(rows())
    statement = (f"DELETE FROM instruments WHERE instrument_pid = '{TITAN}'" if how == "delete"
                 else _replace_titan_sql())
    with pytest.raises(Exception, match="history would be lost") as refused:
        make_db_query(statement)
    assert "UPDATE instruments SET instrument_pid" in str(refused.value)
    assert len(rows()) == before
    assert _titan_logs() == 2
    with pytest.raises(Exception, match="history would be lost"):
        db_query("DELETE FROM instruments WHERE instrument_pid = ?", (TITAN,))
    assert len(rows()) == before


def test_the_refusal_holds_on_a_migrated_1_4_file(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_legacy_db(tmp_path / "nexuslims_db.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    add_sample_instruments(path)
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    migrate_db(backup=False)
    with pytest.raises(Exception, match="history would be lost"):
        make_db_query(f"DELETE FROM instruments WHERE instrument_pid = '{TITAN}'")
    assert _titan_logs() == 2


def test_renaming_an_instrument_carries_its_logs_along(facility: Path) -> None:
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    make_db_query(f"UPDATE instruments SET instrument_pid = 'Titan-2' "
                  f"WHERE instrument_pid = '{TITAN}'")
    assert _titan_logs() == 0
    assert len([r for r in rows() if r.instrument == "Titan-2"]) == 2
    assert get_sessions_to_build()[0].instrument.name == "Titan-2"


def test_an_instrument_without_logs_can_still_be_deleted(facility: Path) -> None:
    make_db_query(f"DELETE FROM instruments WHERE instrument_pid = '{JEOL}'")
    assert JEOL not in instrument_db


def test_the_refusal_holds_on_postgresql(nexuslims_postgres_db: DatabaseLocation,
                                         nexuslims_instruments: Any) -> None:
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    with pytest.raises(Exception, match="history would be lost"):
        make_db_query(f"DELETE FROM instruments WHERE instrument_pid = '{TITAN}'")
    assert _titan_logs() == 2
    sql(f"UPDATE instruments SET instrument_pid = 'Titan-2' WHERE instrument_pid = '{TITAN}'")
    assert len([r for r in rows() if r.instrument == "Titan-2"]) == 2


# ------------------------------------------------------------------- 7. logger names


def test_messages_come_from_1_4s_logger_names(facility: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    harvest("s1", "2024-03-01T09:00:00-05:00", "2024-03-01T10:00:00-05:00")
    SessionLog("s1", TITAN, "2024-03-01T09:00:00-05:00", "START", "jdoe",
               "TO_BE_BUILT").insert_log()
    get_sessions_to_build()
    by_message = {r.getMessage().split(":")[0]: r.name for r in caplog.records}
    assert by_message["SessionLog already existed in DB, so no row was added"] == \
        "nexusLIMS.db.session_handler"
    assert by_message["Found 1 new sessions to build"] == "nexusLIMS.db.session_handler"
    monkeypatch.setattr(instrument_db[TITAN], "timezone", None)
    instrument_db[TITAN].localize_datetime(dt(2024, 1, 1))
    localize = [r for r in caplog.records if "Tried to localize" in r.getMessage()]
    assert localize[0].name == "nexusLIMS.instruments"
