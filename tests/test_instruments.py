"""``nexusLIMS.instruments`` and ``nexusLIMS.db.instruments``: Instrument, the live
``instrument_db``, the look-ups, and adding, editing and removing instruments.

Issue 8.1, 9, 10.3, 13.8, 13.10 and 14.2. Everything that does not depend on
the backend runs on SQLite and on PostgreSQL (``nexuslims_database``).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest
import pytz
from helpers import JEOL, QUANTA, TITAN, insert_raw, log, row, rows, sql
from legacy_schema import file_shape

import nexusLIMS.instruments as instruments_module
from nexusLIMS.db import DatabaseConfigError, init_db
from nexusLIMS.db.config import DatabaseLocation, locate_database
from nexusLIMS.db.logs import insert_logs
from nexusLIMS.db.schema import INSTRUMENTS
from nexusLIMS.db.sessions import get_sessions_to_build
from nexusLIMS.instruments import (
    Instrument,
    add_instrument,
    edit_instrument,
    get_instr_from_api_url,
    get_instr_from_calendar_name,
    get_instr_from_filepath,
    instrument_db,
    load_instruments,
    remove_instrument,
)

SAMPLES = {TITAN, QUANTA, JEOL}
NEW = "Test-Tool-000042"
NEW_URL = "https://nemo.example.org/api/tools/?id=42"
TITAN_URL = "https://nemo.example.org/api/tools/?id=1"
COLUMNS = ", ".join(INSTRUMENTS.column_names)


def _instrument(**changes: Any) -> Instrument:
    values: dict[str, Any] = {
        "api_url": NEW_URL,
        "calendar_name": "Test Tool",
        "calendar_url": "https://nemo.example.org/calendar/test-tool/",
        "location": "Building 217, Room A001",
        "name": NEW,
        "schema_name": "Test Tool",
        "property_tag": "000042",
        "filestore_path": "./TestTool",
        "computer_ip": "192.0.2.42",
        "computer_name": "TEST-PC-42",
        "computer_mount": "T:/",
        "harvester": "nemo",
        "timezone": "America/Denver",
    }
    values.update(changes)
    return Instrument(**values)


def _table() -> list[tuple[Any, ...]]:
    return sql(f"SELECT {COLUMNS} FROM instruments ORDER BY instrument_pid")


def _logs_of(pid: str) -> int:
    return int(sql("SELECT count(*) FROM session_log WHERE instrument = ?", (pid,))[0][0])


def _all_logs() -> list[tuple[Any, ...]]:
    return sql('SELECT id_session_log, session_identifier, instrument, timestamp, event_type, '
               'record_status, "user" FROM session_log ORDER BY id_session_log')


# --- Instrument ---------------------------------------------------------------


def test_repr_is_thirteen_lines_with_labels_padded_to_18() -> None:
    text = repr(_instrument())
    assert text == (
        "Nexus Instrument: Test-Tool-000042\n"
        "API url:          https://nemo.example.org/api/tools/?id=42\n"
        "Calendar name:    Test Tool\n"
        "Calendar url:     https://nemo.example.org/calendar/test-tool/\n"
        "Schema name:      Test Tool\n"
        "Location:         Building 217, Room A001\n"
        "Property tag:     000042\n"
        "Filestore path:   ./TestTool\n"
        "Computer IP:      192.0.2.42\n"
        "Computer name:    TEST-PC-42\n"
        "Computer mount:   T:/\n"
        "Harvester:        nemo\n"
        "Timezone:         America/Denver"
    )
    lines = text.split("\n")
    assert len(lines) == 13
    assert [line[:18].rstrip() for line in lines] == [
        "Nexus Instrument:", "API url:", "Calendar name:", "Calendar url:", "Schema name:",
        "Location:", "Property tag:", "Filestore path:", "Computer IP:", "Computer name:",
        "Computer mount:", "Harvester:", "Timezone:",
    ]
    assert all(line[18] != " " for line in lines)


def test_repr_of_an_empty_instrument_shows_none() -> None:
    lines = repr(Instrument()).split("\n")
    assert len(lines) == 13
    assert lines[0] == "Nexus Instrument: None"
    assert lines[-1] == "Timezone:         None"
    assert all(line[18:] == "None" for line in lines)


def test_str_is_name_in_location_or_empty() -> None:
    assert str(_instrument()) == "Test-Tool-000042 in Building 217, Room A001"
    assert str(_instrument(location=None)) == ""
    assert str(_instrument(location="")) == ""
    assert str(Instrument()) == ""


def test_constructor_keywords_and_positions() -> None:
    instr = Instrument("api", "cal", "calurl", "loc", "name", "schema", "tag", "store",
                       "ip", "host", "mount", "harv", "UTC")
    assert (instr.api_url, instr.calendar_name, instr.calendar_url, instr.location) == (
        "api", "cal", "calurl", "loc")
    assert (instr.name, instr.schema_name, instr.property_tag, instr.filestore_path) == (
        "name", "schema", "tag", "store")
    assert (instr.computer_ip, instr.computer_name, instr.computer_mount, instr.harvester) == (
        "ip", "host", "mount", "harv")
    assert instr.timezone is pytz.utc


def test_a_string_timezone_becomes_a_pytz_zone() -> None:
    instr = _instrument(timezone="America/New_York")
    assert isinstance(instr.timezone, pytz.tzinfo.BaseTzInfo)
    assert instr.timezone is pytz.timezone("America/New_York")
    assert _instrument(timezone=None).timezone is None
    fixed = timezone(timedelta(hours=2))
    assert _instrument(timezone=fixed).timezone is fixed


def test_an_unknown_timezone_name_raises_at_construction() -> None:
    with pytest.raises(pytz.UnknownTimeZoneError):
        _instrument(timezone="Mars/Olympus_Mons")


def test_instruments_compare_by_identity_as_in_1_4() -> None:
    first, second = _instrument(), _instrument()
    assert first == first
    assert first != second
    assert len({first, second, first}) == 2


@pytest.mark.parametrize(
    ("naive", "offset"),
    [(datetime(2021, 1, 15, 10, 0), timedelta(hours=-5)),   # EST
     (datetime(2021, 7, 15, 10, 0), timedelta(hours=-4))],  # EDT
)
def test_localize_a_naive_datetime_puts_it_in_the_zone(naive: datetime, offset: timedelta) -> None:
    local = _instrument(timezone="America/New_York").localize_datetime(naive)
    assert local.replace(tzinfo=None) == naive
    assert local.utcoffset() == offset


def test_localize_an_aware_datetime_converts_it() -> None:
    utc = datetime(2021, 7, 15, 18, 30, tzinfo=timezone.utc)
    local = _instrument(timezone="America/Denver").localize_datetime(utc)
    assert local == utc
    assert local.replace(tzinfo=None) == datetime(2021, 7, 15, 12, 30)
    assert local.utcoffset() == timedelta(hours=-6)


def test_localize_with_a_non_pytz_zone() -> None:
    instr = _instrument(timezone=ZoneInfo("Europe/Paris"))
    local = instr.localize_datetime(datetime(2021, 7, 15, 10, 0))
    assert local.utcoffset() == timedelta(hours=2)
    assert local.replace(tzinfo=None) == datetime(2021, 7, 15, 10, 0)


@pytest.mark.parametrize("dt", [datetime(2021, 7, 15, 10, 0),
                                datetime(2021, 7, 15, 10, 0, tzinfo=timezone.utc)])
def test_localize_without_a_zone_warns_and_returns_dt_unchanged(
    dt: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    instr = _instrument(timezone=None)
    with caplog.at_level(logging.WARNING, logger="nexusLIMS.instruments"):
        assert instr.localize_datetime(dt) is dt
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1
    assert records[0].name == "nexusLIMS.instruments"
    assert "Tried to localize a datetime with instrument" in records[0].getMessage()
    assert NEW in records[0].getMessage()


def test_localize_datetime_str_default_and_custom_format() -> None:
    instr = _instrument(timezone="America/New_York")
    assert instr.localize_datetime_str(datetime(2021, 1, 15, 10, 0)) == "2021-01-15 10:00:00 EST"
    assert instr.localize_datetime_str(datetime(2021, 7, 15, 10, 0)) == "2021-07-15 10:00:00 EDT"
    utc = datetime(2021, 7, 15, 18, 30, tzinfo=timezone.utc)
    assert instr.localize_datetime_str(utc, "%H:%M %z") == "14:30 -0400"


# --- instrument_db ------------------------------------------------------------


def test_instrument_db_is_a_dict_of_the_table(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert isinstance(instrument_db, dict)
    assert isinstance(instruments_module.instrument_db, dict)
    assert set(instrument_db) == SAMPLES
    assert set(instrument_db.keys()) == SAMPLES
    assert len(instrument_db) == 3
    assert TITAN in instrument_db
    assert "nope" not in instrument_db
    assert instrument_db.get("nope") is None
    assert instrument_db.get("nope", 5) == 5
    assert dict(instrument_db) == nexuslims_instruments
    assert instrument_db == nexuslims_instruments
    assert sorted(i.name for i in instrument_db.values()) == sorted(SAMPLES)
    assert {pid: i.name for pid, i in instrument_db.items()} == {p: p for p in SAMPLES}
    titan = instrument_db[TITAN]
    assert isinstance(titan, Instrument)
    assert (titan.name, titan.api_url, titan.filestore_path) == (TITAN, TITAN_URL, "./Titan")
    assert titan.timezone is pytz.timezone("America/New_York")
    assert instrument_db[JEOL].timezone is pytz.timezone("America/Denver")
    assert str(titan) == f"{TITAN} in Building 217, Room F131"
    with pytest.raises(KeyError):
        instrument_db["nope"]


def test_instrument_db_of_an_empty_table(nexuslims_database: DatabaseLocation) -> None:
    assert len(instrument_db) == 0
    assert list(instrument_db) == []
    assert dict(instrument_db) == {}
    assert get_instr_from_api_url(TITAN_URL) is None


def test_an_unchanged_row_is_the_same_object_at_every_look_up(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert instrument_db[TITAN] is instrument_db[TITAN]
    assert instrument_db[TITAN] is nexuslims_instruments[TITAN]
    assert get_instr_from_api_url(TITAN_URL) == instrument_db[TITAN]
    assert get_instr_from_api_url(TITAN_URL) is instrument_db[TITAN]
    assert get_instr_from_calendar_name("id=3") is instrument_db[JEOL]
    assert dict(instrument_db)[QUANTA] is instrument_db[QUANTA]
    assert load_instruments()[QUANTA] is instrument_db[QUANTA]
    counts = {instrument_db[TITAN]: 1, instrument_db[JEOL]: 2}
    seen = {instrument_db[QUANTA]}
    assert counts[get_instr_from_api_url(TITAN_URL)] == 1
    assert counts[instrument_db[JEOL]] == 2
    assert get_instr_from_calendar_name("id=2") in seen
    assert instrument_db[TITAN] not in seen
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00")])
    (session,) = get_sessions_to_build()
    assert session.instrument is instrument_db[TITAN]
    assert {session.instrument: "x"}[instrument_db[TITAN]] == "x"


def test_the_same_database_named_explicitly_gives_the_same_objects(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00")])
    (session,) = get_sessions_to_build(database=nexuslims_database.target)
    assert session.instrument == instrument_db[TITAN]
    assert load_instruments(nexuslims_database.target)[TITAN] is instrument_db[TITAN]


def test_an_attribute_set_on_an_instrument_is_seen_by_the_next_look_up(
    nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(instrument_db[QUANTA], "timezone", None)
    assert instrument_db[QUANTA].timezone is None
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=2").timezone is None
    assert instrument_db[TITAN].timezone is pytz.timezone("America/New_York")


def test_rows_changed_added_or_deleted_elsewhere_are_seen_at_the_next_look_up(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    titan, quanta, jeol = (instrument_db[pid] for pid in (TITAN, QUANTA, JEOL))
    sql("UPDATE instruments SET location = ?, timezone = ? WHERE instrument_pid = ?",
        ("Building 1, Room 2", "Europe/Paris", TITAN))
    new_titan = instrument_db[TITAN]
    assert new_titan is not titan
    assert new_titan != titan
    assert new_titan.location == "Building 1, Room 2"
    assert new_titan.timezone is pytz.timezone("Europe/Paris")
    assert titan.location == "Building 217, Room F131"  # the old object is left as it was
    assert instrument_db[TITAN] is new_titan
    assert instrument_db[QUANTA] is quanta
    assert instrument_db[JEOL] is jeol
    sql("INSERT INTO instruments (instrument_pid, api_url, calendar_name, calendar_url, "
        "location, schema_name, property_tag, filestore_path) "
        "VALUES ('Raw-1', 'https://raw/1', 'Raw', 'https://raw/cal', 'Lab', 'Raw', '1', './Raw')")
    assert instrument_db["Raw-1"].api_url == "https://raw/1"
    # The column default applies to rows written by other tools.
    assert instrument_db["Raw-1"].timezone is pytz.timezone("America/New_York")
    sql("DELETE FROM instruments WHERE instrument_pid = ?", (JEOL,))
    assert JEOL not in instrument_db
    assert set(instrument_db) == {TITAN, QUANTA, "Raw-1"}
    assert NEW not in instrument_db
    assert get_instr_from_api_url(NEW_URL) is None
    add_instrument(_instrument())
    assert instrument_db[NEW].computer_name == "TEST-PC-42"
    assert get_instr_from_api_url(NEW_URL) is instrument_db[NEW]
    assert set(instrument_db) == {TITAN, QUANTA, "Raw-1", NEW}
    assert instrument_db[QUANTA] is quanta
    assert instrument_db[TITAN] is new_titan


def test_follows_the_database_the_variable_names(
    nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    titan = instrument_db[TITAN]
    other = init_db(tmp_path / "other" / "other.sqlite")
    add_instrument(_instrument(), other)

    monkeypatch.setenv("nexusLIMS_db_path", str(other.path))
    assert set(instrument_db) == {NEW}
    assert list(dict(instrument_db)) == [NEW]
    assert instrument_db[NEW].location == "Building 217, Room A001"
    assert TITAN not in instrument_db
    assert get_instr_from_api_url(TITAN_URL) is None

    monkeypatch.setenv("nexusLIMS_db_path", nexuslims_database.target)
    assert set(instrument_db) == SAMPLES
    assert instrument_db[TITAN] is titan


MUTATIONS: dict[str, Callable[[], Any]] = {
    "setitem": lambda: instrument_db.__setitem__("X", Instrument(name="X")),
    "delitem": lambda: instrument_db.__delitem__(TITAN),
    "pop": lambda: instrument_db.pop(TITAN),
    "popitem": lambda: instrument_db.popitem(),
    "update": lambda: instrument_db.update({"X": Instrument(name="X")}),
    "setdefault": lambda: instrument_db.setdefault("X", Instrument(name="X")),
    "clear": lambda: instrument_db.clear(),
}


def test_instrument_db_is_read_only(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    before = _table()
    for name, mutate in MUTATIONS.items():
        with pytest.raises(TypeError, match=r"read-only.*add_instrument"):
            mutate()
        assert set(instrument_db) == SAMPLES, name
    with pytest.raises(TypeError, match="add_instrument"):
        instruments_module.instrument_db |= {"X": Instrument(name="X")}
    assert isinstance(instruments_module.instrument_db, dict)
    assert set(instrument_db) == SAMPLES
    assert _table() == before


# --- look-ups -----------------------------------------------------------------


def test_get_instr_from_api_url_and_calendar_name(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=2") is \
        instrument_db[QUANTA]
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=") is None
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=22") is None
    assert get_instr_from_api_url("") is None
    assert get_instr_from_calendar_name("id=3") is instrument_db[JEOL]
    assert get_instr_from_calendar_name("tools/?id=1") is instrument_db[TITAN]
    # The calendar_name column is not what is searched.
    assert get_instr_from_calendar_name("JEOL JEM-3010 TEM") is None
    assert get_instr_from_calendar_name("id=9") is None


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mmfnexus"
    monkeypatch.setenv("mmfnexus_path", str(root))
    return root


FILEPATHS = [
    ("Titan/2021/05/01/image.dm3", TITAN),
    ("Titan/image.dm3", TITAN),  # a file directly in the folder
    ("Titan", None),  # the folder itself is not under itself
    ("Titan/", None),
    ("Quanta/user/a.tif", QUANTA),
    ("JEOL3010/x/../y/b.dm3", JEOL),
    ("./Titan/./a.dm3", TITAN),
    ("Titanium/2021/image.dm3", None),  # a sibling folder sharing a prefix
    ("Other/image.dm3", None),
    ("image.dm3", None),
]


def test_get_instr_from_filepath(
    data_root: Path,
    nexuslims_database: DatabaseLocation,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    # The sample instruments' filestore paths are relative: "./Titan", ...
    assert nexuslims_instruments[TITAN].filestore_path == "./Titan"
    for relative, expected in FILEPATHS:
        for path in (data_root / relative, str(data_root / relative), f"{data_root}/{relative}"):
            found = get_instr_from_filepath(path)
            assert found is (instrument_db[expected] if expected else None), path


def test_get_instr_from_filepath_with_a_trailing_slash_on_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nexuslims_instruments: dict[str, Instrument]
) -> None:
    monkeypatch.setenv("mmfnexus_path", f"{tmp_path}/mmfnexus/")
    assert get_instr_from_filepath(tmp_path / "mmfnexus" / "Quanta" / "a.tif") is \
        instrument_db[QUANTA]


def test_get_instr_from_filepath_outside_the_root(
    tmp_path: Path, data_root: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert get_instr_from_filepath(tmp_path / "Titan" / "image.dm3") is None


def test_get_instr_from_filepath_needs_mmfnexus_path(
    nexuslims_instruments: dict[str, Instrument], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("mmfnexus_path", raising=False)
    with pytest.raises(DatabaseConfigError, match="mmfnexus_path"):
        get_instr_from_filepath("/data/Titan/image.dm3")
    monkeypatch.setenv("mmfnexus_path", "")
    with pytest.raises(DatabaseConfigError, match="mmfnexus_path"):
        get_instr_from_filepath("/data/Titan/image.dm3")


# --- add_instrument -----------------------------------------------------------


def test_add_instrument_writes_every_column(nexuslims_database: DatabaseLocation) -> None:
    add_instrument(_instrument())
    assert _table() == [(
        NEW, NEW_URL, "Test Tool", "https://nemo.example.org/calendar/test-tool/",
        "Building 217, Room A001", "Test Tool", "000042", "./TestTool", "TEST-PC-42",
        "192.0.2.42", "T:/", "nemo", "America/Denver",
    )]
    assert repr(instrument_db[NEW]) == repr(_instrument())


def test_add_instrument_to_an_explicit_database(
    nexuslims_database: DatabaseLocation, tmp_path: Path
) -> None:
    other = init_db(tmp_path / "other.sqlite")
    add_instrument(_instrument(), other.path)
    assert list(load_instruments(other)) == [NEW]
    assert len(instrument_db) == 0
    zones = [(None, "America/New_York"), (ZoneInfo("Europe/Paris"), "Europe/Paris"),
             (timezone.utc, "UTC"), ("Asia/Kolkata", "Asia/Kolkata")]
    for number, (zone, _) in enumerate(zones):
        add_instrument(_instrument(name=f"Tool-{number}", api_url=f"https://tool/{number}",
                                   computer_ip=None, computer_name=None, timezone=zone))
    assert sql("SELECT instrument_pid, timezone FROM instruments WHERE instrument_pid LIKE ? "
               "ORDER BY instrument_pid", ("Tool-%",)) == [
        (f"Tool-{number}", stored) for number, (_, stored) in enumerate(zones)]
    assert [str(instrument_db[f"Tool-{n}"].timezone) for n in range(4)] == [
        stored for _, stored in zones]


def test_empty_optional_values_are_stored_as_null(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    add_instrument(_instrument(computer_ip="", computer_name="", computer_mount="",
                               harvester=""))
    add_instrument(_instrument(name="Blank-Tool", api_url="https://blank/1", computer_ip="  ",
                               computer_name=" ", computer_mount="\t", harvester="   "))
    # A third instrument without a computer does not clash with the others.
    add_instrument(_instrument(name="Other-Tool", api_url="https://other/1",
                               computer_ip="", computer_name=""))
    assert sql("SELECT instrument_pid, computer_ip, computer_name, computer_mount, harvester "
               "FROM instruments WHERE computer_ip IS NULL ORDER BY instrument_pid") == [
        ("Blank-Tool", None, None, None, None),
        ("Other-Tool", None, None, "T:/", "nemo"),
        (NEW, None, None, None, None),
    ]
    assert instrument_db[NEW].computer_ip is None


def _refused_add(instrument: Instrument, message: str) -> str:
    before = (_table(), _all_logs())
    with pytest.raises(ValueError, match=message) as raised:
        add_instrument(instrument)
    assert str(raised.value).startswith("Cannot add instrument ")
    assert (_table(), _all_logs()) == before
    return str(raised.value)


def test_add_refuses_an_existing_pid_or_a_unique_clash(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    message = _refused_add(_instrument(name=TITAN), "already exists")
    assert message == f"Cannot add instrument {TITAN!r}: it already exists"
    for column, value, other in [("api_url", TITAN_URL, TITAN),
                                 ("computer_name", "QUANTA-PC-01", QUANTA),
                                 ("computer_ip", "192.0.2.13", JEOL)]:
        message = _refused_add(_instrument(**{column: value}), column)
        assert message == (f"Cannot add instrument {NEW!r}: {column} {value!r} is already "
                           f"used by instrument {other!r}")
    message = _refused_add(_instrument(api_url=TITAN_URL, computer_ip="192.0.2.11"), "api_url")
    assert f"computer_ip '192.0.2.11' is already used by instrument {TITAN!r}" in message


BAD_PIDS = ["\x1b[2J", "Titan\nFAKE LINE", "Titan\tX", "Titan\x00", "Titan\u200b", "   ", "",
            None]


def test_add_refuses_bad_values_and_writes_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    for pid in BAD_PIDS:
        message = _refused_add(_instrument(name=pid), "Invalid instrument PID")
        assert repr(pid) in message
    for zone in ["Mars/Olympus_Mons", timezone(timedelta(hours=1)), "america/new_york"]:
        instrument = _instrument()
        instrument.timezone = zone  # past the constructor, as a caller may set it
        _refused_add(instrument, "unknown timezone")
    for changes, message in [
        ({"api_url": ""}, "missing api_url"),
        ({"api_url": None}, "missing api_url"),
        ({"filestore_path": None, "location": None}, "missing location, filestore_path"),
        ({"calendar_name": ""}, "missing calendar_name"),
        ({"property_tag": None}, "missing property_tag"),
    ]:
        _refused_add(_instrument(**changes), message)


def test_add_a_whitespace_only_required_column_is_refused(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _refused_add(_instrument(api_url="   "), "missing api_url")


# --- edit_instrument ----------------------------------------------------------


def _logs_on_titan_and_quanta() -> None:
    insert_logs([
        log("s1", "START", "2021-05-01T10:00:00"),
        log("s1", "END", "2021-05-01T11:00:00"),
        log("s2", "START", "2021-05-02T10:00:00", status="COMPLETED"),
        log("q1", "START", "2021-05-01T10:00:00", instrument=QUANTA, status="COMPLETED"),
    ])


def test_edit_a_column(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    quanta = instrument_db[QUANTA]
    edited = edit_instrument(TITAN, {"location": "Building 1, Room 2", "computer_ip": ""})
    assert isinstance(edited, Instrument)
    assert (edited.name, edited.location, edited.computer_ip) == (
        TITAN, "Building 1, Room 2", None)
    assert instrument_db[TITAN] is edited
    assert instrument_db[QUANTA] is quanta
    assert sql("SELECT location, computer_ip, api_url FROM instruments WHERE instrument_pid = ?",
               (TITAN,)) == [("Building 1, Room 2", None, TITAN_URL)]
    assert edit_instrument(JEOL, {"timezone": "Europe/Paris"}).timezone is \
        pytz.timezone("Europe/Paris")
    assert sql("SELECT timezone FROM instruments WHERE instrument_pid = ?", (JEOL,)) == [
        ("Europe/Paris",)]
    edited = edit_instrument(TITAN, {"api_url": TITAN_URL, "computer_name": "TITAN-PC-01"})
    assert edited.api_url == TITAN_URL


def test_rename_carries_the_session_logs_along(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _logs_on_titan_and_quanta()
    renamed = "FEI-Titan-TEM-999999"
    assert (_logs_of(TITAN), _logs_of(renamed), _logs_of(QUANTA)) == (3, 0, 1)
    ids = [r[0] for r in _all_logs()]

    edited = edit_instrument(TITAN, {"instrument_pid": renamed})

    assert edited.name == renamed
    assert (_logs_of(TITAN), _logs_of(renamed), _logs_of(QUANTA)) == (0, 3, 1)
    assert [r[0] for r in _all_logs()] == ids
    assert TITAN not in instrument_db
    assert instrument_db[renamed] is edited
    assert edited.api_url == TITAN_URL
    (session,) = get_sessions_to_build()
    assert session.instrument is edited


EDIT_REFUSALS = [
    (TITAN, {"colour": "blue"}, "unknown column.*colour"),
    (TITAN, {"name": "X"}, "unknown column.*name"),
    ("No-Such-Tool", {"location": "x"}, "no such instrument"),
    (TITAN, {"api_url": ""}, "missing api_url"),
    (TITAN, {"location": None}, "missing location"),
    (TITAN, {"instrument_pid": "Titan\nX"}, "control characters"),
    (TITAN, {"instrument_pid": "\x1b[2J"}, "control characters"),
    (TITAN, {"instrument_pid": "  "}, "non-blank"),
    (TITAN, {"computer_ip": "192.0.2.12"},
     f"computer_ip '192.0.2.12' is already used by instrument {QUANTA!r}"),
    (TITAN, {"api_url": "https://nemo.example.org/api/tools/?id=3"},
     f"api_url .* is already used by instrument {JEOL!r}"),
]


def test_edit_refusals_write_nothing(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _logs_on_titan_and_quanta()
    before = (_table(), _all_logs())
    titan = instrument_db[TITAN]
    for pid, changes, message in EDIT_REFUSALS:
        with pytest.raises(ValueError, match=message) as raised:
            edit_instrument(pid, changes)
        assert str(raised.value).startswith(f"Cannot edit instrument {pid!r}: ")
        assert (_table(), _all_logs()) == before, changes
    with pytest.raises(ValueError, match="already exists") as raised:
        edit_instrument(TITAN, {"instrument_pid": QUANTA})
    assert str(raised.value) == (f"Cannot rename instrument {TITAN!r} to {QUANTA!r}: "
                                 f"{QUANTA!r} already exists")
    assert (_table(), _all_logs()) == before
    assert instrument_db[TITAN] is titan


def test_edit_an_unknown_timezone_is_refused_with_a_value_error(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    before = _table()
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus_Mons'"):
        edit_instrument(TITAN, {"timezone": "Mars/Olympus_Mons"})
    assert _table() == before


# --- remove_instrument --------------------------------------------------------


def test_remove_instrument(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument]
) -> None:
    _logs_on_titan_and_quanta()
    before = (_table(), _all_logs())
    for pid, count in [(TITAN, "3 session logs,"), (QUANTA, "1 session log,")]:
        with pytest.raises(ValueError, match=f"has {count}") as raised:
            remove_instrument(pid)
        assert str(raised.value).startswith(f"Cannot remove instrument {pid!r}: it has {count}")
        assert (_table(), _all_logs()) == before
    with pytest.raises(ValueError, match="no such instrument"):
        remove_instrument("No-Such-Tool")
    assert (_table(), _all_logs()) == before

    remove_instrument(JEOL)
    assert set(instrument_db) == {TITAN, QUANTA}
    assert get_instr_from_calendar_name("id=3") is None
    assert _all_logs() == before[1]

    # Logs of any kind and status count (raw rows, as other tools write them).
    add_instrument(_instrument())
    insert_raw([row("r", "RECORD_GENERATION", "2021-05-01T12:00:00", instrument=NEW),
                row("r", "START", "2021-05-01T10:00:00", instrument=NEW, status="ERROR")])
    with pytest.raises(ValueError, match="has 2 session logs"):
        remove_instrument(NEW)
    assert NEW in instrument_db


def test_the_environment_names_the_database_of_every_function(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Instrument],
    tmp_path: Path,
) -> None:
    other = locate_database(init_db(tmp_path / "elsewhere.sqlite").path)
    add_instrument(_instrument(), other)
    edit_instrument(NEW, {"location": "Elsewhere"}, other)
    assert load_instruments(other)[NEW].location == "Elsewhere"
    remove_instrument(NEW, other)
    assert load_instruments(other) == {}
    assert set(instrument_db) == SAMPLES


# --- a NexusLIMS 1.4 file, not migrated ---------------------------------------


def test_a_1_4_file_takes_instrument_changes_without_migrating(legacy: Path) -> None:
    shape = file_shape(legacy)
    assert set(instrument_db) == {TITAN, QUANTA, JEOL}
    assert instrument_db[TITAN] is instrument_db[TITAN]
    assert get_instr_from_api_url(TITAN_URL) is instrument_db[TITAN]
    insert_logs([log("s1", "START", "2021-05-01T10:00:00"),
                 log("s1", "END", "2021-05-01T11:00:00")])
    add_instrument(_instrument(computer_ip="", computer_name=""))
    add_instrument(_instrument(name="New-2", api_url="https://new/2", computer_ip="",
                               computer_name=""))
    _refused_add(_instrument(api_url="https://new/3"), "already exists")
    _refused_add(_instrument(name="New-3", api_url="https://new/2"),
                 "api_url 'https://new/2' is already used by instrument 'New-2'")
    remove_instrument("New-2")
    edit_instrument(TITAN, {"instrument_pid": "Titan-Renamed"})
    assert [r.instrument for r in rows()] == ["Titan-Renamed"] * 2
    with pytest.raises(ValueError, match="has 2 session logs"):
        remove_instrument("Titan-Renamed")
    remove_instrument(NEW)
    assert set(instrument_db) == {"Titan-Renamed", QUANTA, JEOL}
    (session,) = get_sessions_to_build()
    assert session.instrument is instrument_db["Titan-Renamed"]
    assert file_shape(legacy) == shape


def test_look_ups_in_a_loop_read_the_table_only_after_a_change(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    from nexusLIMS.db.connection import tracing

    instrument_db[TITAN]  # read once
    seen: list[tuple[str, str]] = []
    with tracing(lambda event, text: seen.append((event, text))):
        for _ in range(100):
            assert instrument_db[TITAN].name == TITAN
            assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=1") is not None
    assert seen == []  # nothing changed: no connection, no query
    with closing(sqlite3.connect(nexuslims_db)) as other, other:  # another program writes
        other.execute("UPDATE instruments SET location = 'Room 9' WHERE instrument_pid = ?",
                      (TITAN,))
    with tracing(lambda event, text: seen.append((event, text))):
        assert instrument_db[TITAN].location == "Room 9"
        assert instrument_db[TITAN].location == "Room 9"
    assert len([event for event, _ in seen if event == "open"]) == 1  # read once, again
