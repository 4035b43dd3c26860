"""Issue 2, points 1 and 4: ``nexusLIMS.instruments`` and the live ``instrument_db``."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import pytz

from nexusLIMS.db import DatabaseConfigError, init_db
from nexusLIMS.instruments import (
    Instrument,
    add_instrument,
    get_instr_from_api_url,
    get_instr_from_calendar_name,
    get_instr_from_filepath,
    instrument_db,
)

TITAN = "FEI-Titan-TEM-635816"
QUANTA = "FEI-Quanta-ESEM-633137"
JEOL = "JEOL-JEM3010-TEM-565989"
SAMPLES = {TITAN, QUANTA, JEOL}


def _full_instrument(**changes: Any) -> Instrument:
    values: dict[str, Any] = {
        "api_url": "https://nemo.example.org/api/tools/?id=42",
        "calendar_name": "Test Tool",
        "calendar_url": "https://nemo.example.org/calendar/test-tool/",
        "location": "Building 217, Room A001",
        "name": "Test-Tool-000042",
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


def _rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(query).fetchall()


def _execute(path: Path, query: str, args: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(query, args)


# --- Instrument -------------------------------------------------------------


def test_repr_is_thirteen_padded_lines() -> None:
    text = repr(_full_instrument())
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


def test_str_with_and_without_location() -> None:
    assert str(_full_instrument()) == "Test-Tool-000042 in Building 217, Room A001"
    assert str(_full_instrument(location=None)) == ""
    assert str(Instrument()) == ""


def test_constructor_keywords_and_positions() -> None:
    instr = Instrument(
        "api", "cal", "calurl", "loc", "name", "schema", "tag", "store",
        "ip", "host", "mount", "harv", "UTC",
    )
    assert (instr.api_url, instr.calendar_name, instr.calendar_url, instr.location) == (
        "api", "cal", "calurl", "loc",
    )
    assert (instr.name, instr.schema_name, instr.property_tag, instr.filestore_path) == (
        "name", "schema", "tag", "store",
    )
    assert (instr.computer_ip, instr.computer_name, instr.computer_mount, instr.harvester) == (
        "ip", "host", "mount", "harv",
    )
    assert instr.timezone is pytz.utc


def test_string_timezone_becomes_a_pytz_zone() -> None:
    instr = _full_instrument(timezone="America/New_York")
    assert isinstance(instr.timezone, pytz.tzinfo.BaseTzInfo)
    assert instr.timezone is pytz.timezone("America/New_York")
    assert _full_instrument(timezone=None).timezone is None
    fixed = timezone(timedelta(hours=2))
    assert _full_instrument(timezone=fixed).timezone is fixed


def test_unknown_timezone_name_raises() -> None:
    with pytest.raises(pytz.UnknownTimeZoneError):
        _full_instrument(timezone="Mars/Olympus_Mons")


@pytest.mark.parametrize(
    ("naive", "offset"),
    [
        (datetime(2021, 1, 15, 10, 0), timedelta(hours=-5)),  # EST
        (datetime(2021, 7, 15, 10, 0), timedelta(hours=-4)),  # EDT
    ],
)
def test_localize_naive_datetime_puts_it_in_the_zone(naive: datetime, offset: timedelta) -> None:
    instr = _full_instrument(timezone="America/New_York")
    local = instr.localize_datetime(naive)
    assert local.replace(tzinfo=None) == naive
    assert local.utcoffset() == offset


def test_localize_aware_datetime_converts_it() -> None:
    instr = _full_instrument(timezone="America/Denver")
    utc = datetime(2021, 7, 15, 18, 30, tzinfo=timezone.utc)
    local = instr.localize_datetime(utc)
    assert local == utc
    assert local.replace(tzinfo=None) == datetime(2021, 7, 15, 12, 30)
    assert local.utcoffset() == timedelta(hours=-6)


def test_localize_without_zone_warns_and_returns_dt_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    instr = _full_instrument(timezone=None)
    dt = datetime(2021, 7, 15, 10, 0)
    with caplog.at_level(logging.WARNING):
        result = instr.localize_datetime(dt)
    assert result is dt
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Tried to localize a datetime with instrument" in warnings[0].getMessage()
    assert "Test-Tool-000042" in warnings[0].getMessage()


def test_localize_datetime_str_default_and_custom_format() -> None:
    instr = _full_instrument(timezone="America/New_York")
    assert instr.localize_datetime_str(datetime(2021, 1, 15, 10, 0)) == "2021-01-15 10:00:00 EST"
    assert instr.localize_datetime_str(datetime(2021, 7, 15, 10, 0)) == "2021-07-15 10:00:00 EDT"
    utc = datetime(2021, 7, 15, 18, 30, tzinfo=timezone.utc)
    assert instr.localize_datetime_str(utc, "%H:%M %z") == "14:30 -0400"


# --- instrument_db ----------------------------------------------------------


def test_instrument_db_is_a_dict_instance(nexuslims_instruments: dict[str, Instrument]) -> None:
    assert isinstance(instrument_db, dict)
    assert set(instrument_db) == SAMPLES
    assert set(instrument_db.keys()) == SAMPLES
    assert len(instrument_db) == 3
    assert TITAN in instrument_db
    assert "nope" not in instrument_db
    assert instrument_db.get("nope") is None
    assert {pid: i.api_url for pid, i in instrument_db.items()} == {
        pid: i.api_url for pid, i in nexuslims_instruments.items()
    }
    assert sorted(i.name for i in instrument_db.values()) == sorted(SAMPLES)


def test_instrument_db_values_are_instruments_from_the_table(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    titan = instrument_db[TITAN]
    assert isinstance(titan, Instrument)
    assert titan.name == TITAN
    assert titan.api_url == "https://nemo.example.org/api/tools/?id=1"
    assert titan.filestore_path == "./Titan"
    assert titan.timezone is pytz.timezone("America/New_York")
    assert instrument_db[JEOL].timezone is pytz.timezone("America/Denver")
    assert repr(titan) == repr(nexuslims_instruments[TITAN])


def test_unknown_key_raises_key_error(nexuslims_instruments: dict[str, Instrument]) -> None:
    with pytest.raises(KeyError):
        instrument_db["nope"]


def test_instrument_db_empty_table(nexuslims_db: Path) -> None:
    assert len(instrument_db) == 0
    assert list(instrument_db) == []
    assert dict(instrument_db) == {}


def test_sees_instrument_added_with_add_instrument(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    assert "Test-Tool-000042" not in instrument_db
    add_instrument(_full_instrument())
    assert "Test-Tool-000042" in instrument_db
    assert instrument_db["Test-Tool-000042"].computer_name == "TEST-PC-42"
    assert len(instrument_db) == 4
    assert set(dict(instrument_db)) == SAMPLES | {"Test-Tool-000042"}


def test_sees_rows_changed_with_raw_sql(
    nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    assert len(instrument_db) == 3
    _execute(
        nexuslims_db,
        "INSERT INTO instruments (instrument_pid, api_url, calendar_name, calendar_url, "
        "location, schema_name, property_tag, filestore_path) "
        "VALUES ('Raw-1', 'https://raw/1', 'Raw', 'https://raw/cal', 'Lab', 'Raw', '1', './Raw')",
    )
    assert instrument_db["Raw-1"].api_url == "https://raw/1"
    # The column default applies to rows written by other tools.
    assert instrument_db["Raw-1"].timezone is pytz.timezone("America/New_York")
    _execute(nexuslims_db, "UPDATE instruments SET location = 'Lab 2' WHERE instrument_pid = ?",
             ("Raw-1",))
    assert instrument_db["Raw-1"].location == "Lab 2"
    _execute(nexuslims_db, "DELETE FROM instruments WHERE instrument_pid = ?", (TITAN,))
    assert TITAN not in instrument_db
    assert set(instrument_db) == {QUANTA, JEOL, "Raw-1"}


def test_follows_the_database_the_variable_names(
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = init_db(tmp_path / "other" / "other.sqlite")
    add_instrument(_full_instrument(), other)

    monkeypatch.setenv("nexusLIMS_db_path", str(other))
    assert set(instrument_db) == {"Test-Tool-000042"}
    assert list(dict(instrument_db)) == ["Test-Tool-000042"]
    assert instrument_db["Test-Tool-000042"].location == "Building 217, Room A001"
    assert TITAN not in instrument_db

    monkeypatch.setenv("nexusLIMS_db_path", str(nexuslims_db))
    assert set(instrument_db) == SAMPLES
    assert set(dict(instrument_db)) == SAMPLES


MUTATIONS: dict[str, Callable[[], Any]] = {
    "setitem": lambda: instrument_db.__setitem__("X", Instrument(name="X")),
    "delitem": lambda: instrument_db.__delitem__(TITAN),
    "pop": lambda: instrument_db.pop(TITAN),
    "popitem": lambda: instrument_db.popitem(),
    "update": lambda: instrument_db.update({"X": Instrument(name="X")}),
    "setdefault": lambda: instrument_db.setdefault("X", Instrument(name="X")),
    "clear": lambda: instrument_db.clear(),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_mutation_is_refused_and_the_table_is_unchanged(
    mutate: Callable[[], Any], nexuslims_db: Path, nexuslims_instruments: dict[str, Instrument]
) -> None:
    with pytest.raises(TypeError, match="read-only"):
        mutate()
    assert set(instrument_db) == SAMPLES
    assert sorted(_rows(nexuslims_db, "SELECT instrument_pid FROM instruments")) == sorted(
        (pid,) for pid in SAMPLES
    )


def test_inplace_or_is_refused(nexuslims_instruments: dict[str, Instrument]) -> None:
    import nexusLIMS.instruments as module

    with pytest.raises(TypeError):
        module.instrument_db |= {"X": Instrument(name="X")}
    assert set(instrument_db) == SAMPLES


# --- look-ups ---------------------------------------------------------------


def test_get_instr_from_api_url_exact_match_only(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    found = get_instr_from_api_url("https://nemo.example.org/api/tools/?id=2")
    assert found is not None
    assert found.name == QUANTA
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=") is None
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=22") is None
    assert get_instr_from_api_url("") is None


def test_get_instr_from_calendar_name_substring_of_api_url(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    found = get_instr_from_calendar_name("tools/?id=3")
    assert found is not None
    assert found.name == JEOL
    # The calendar_name column is not what is searched.
    assert get_instr_from_calendar_name("JEOL JEM-3010 TEM") is None
    assert get_instr_from_calendar_name("id=9") is None


def test_lookups_follow_the_database(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    assert get_instr_from_api_url("https://nemo.example.org/api/tools/?id=42") is None
    add_instrument(_full_instrument())
    found = get_instr_from_api_url("https://nemo.example.org/api/tools/?id=42")
    assert found is not None
    assert found.name == "Test-Tool-000042"


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mmfnexus"
    monkeypatch.setenv("mmfnexus_path", str(root))
    return root


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("Titan/2021/05/01/image.dm3", TITAN),
        ("Quanta/user/a.tif", QUANTA),
        ("JEOL3010/x/../y/b.dm3", JEOL),
        ("Titanium/2021/image.dm3", None),  # a sibling folder sharing a prefix
        ("Other/image.dm3", None),
        ("image.dm3", None),
    ],
)
def test_get_instr_from_filepath(
    relative: str,
    expected: str | None,
    data_root: Path,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    for path in (data_root / relative, str(data_root / relative)):
        found = get_instr_from_filepath(path)
        assert (found.name if found else None) == expected


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


# --- add_instrument -----------------------------------------------------------


def test_add_instrument_writes_every_column(nexuslims_db: Path) -> None:
    add_instrument(_full_instrument())
    assert _rows(nexuslims_db, "SELECT * FROM instruments") == [
        (
            "Test-Tool-000042",
            "https://nemo.example.org/api/tools/?id=42",
            "Test Tool",
            "https://nemo.example.org/calendar/test-tool/",
            "Building 217, Room A001",
            "Test Tool",
            "000042",
            "./TestTool",
            "TEST-PC-42",
            "192.0.2.42",
            "T:/",
            "nemo",
            "America/Denver",
        )
    ]


def test_add_instrument_without_timezone_uses_the_default(nexuslims_db: Path) -> None:
    add_instrument(_full_instrument(timezone=None))
    assert _rows(nexuslims_db, "SELECT timezone FROM instruments") == [("America/New_York",)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": None}, "missing instrument_pid"),
        ({"api_url": ""}, "missing api_url"),
        ({"filestore_path": None, "location": None}, "missing location, filestore_path"),
        ({"timezone": timezone(timedelta(hours=1))}, "unknown timezone"),
        ({"name": TITAN}, "UNIQUE"),
        ({"api_url": "https://nemo.example.org/api/tools/?id=1"}, "UNIQUE"),
        ({"computer_name": "TITAN-PC-01"}, "UNIQUE"),
        ({"computer_ip": "192.0.2.11"}, "UNIQUE"),
    ],
)
def test_add_instrument_errors_write_nothing(
    changes: dict[str, Any],
    message: str,
    nexuslims_db: Path,
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    before = _rows(nexuslims_db, "SELECT * FROM instruments ORDER BY instrument_pid")
    with pytest.raises(ValueError, match=message) as info:
        add_instrument(_full_instrument(**changes))
    assert "Cannot add instrument" in str(info.value)
    assert _rows(nexuslims_db, "SELECT * FROM instruments ORDER BY instrument_pid") == before
