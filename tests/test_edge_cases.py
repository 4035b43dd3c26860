"""Edge cases found in review: mixed offsets, raise order, bad zones, paths."""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from legacy_schema import make_legacy_db

from nexusLIMS.db import init_db
from nexusLIMS.db.cli import main
from nexusLIMS.db.connection import ENV_DB_PATH, ENV_DB_PATH_2X, sqlite_uri
from nexusLIMS.db.samples import add_sample_instruments
from nexusLIMS.db.session import Session, set_session_status
from nexusLIMS.db.session_handler import (
    SessionLog,
    find_session_problems,
    get_sessions_to_build,
)
from nexusLIMS.db.session_logger import log_end, log_start
from nexusLIMS.instruments import Instrument, load_instruments

TITAN = "FEI-Titan-TEM-635816"
JEOL = "JEOL-JEM3010-TEM-565989"  # America/Denver


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM session_log ORDER BY id_session_log").fetchall()


def test_log_end_refuses_a_naive_end_before_an_aware_start(
    nexuslims_instruments: dict[str, Instrument], nexuslims_db: Path
) -> None:
    log_start(JEOL, "s1", at="2024-01-01T10:00:00-07:00")
    before = _rows(nexuslims_db)
    # 09:00 local in Denver is an hour before the start.
    with pytest.raises(ValueError, match="it started later, at 2024-01-01T10:00:00-07:00"):
        log_end(JEOL, "s1", at="2024-01-01T09:00:00")
    assert _rows(nexuslims_db) == before
    assert find_session_problems() == []


def test_log_end_reads_a_naive_end_in_the_instruments_zone(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    log_start(JEOL, "s1", at="2024-01-01T10:00:00-07:00")
    # 10:30 in Denver: after the start, though 10:30 UTC would be before it.
    log_end(JEOL, "s1", at="2024-01-01T10:30:00")
    (session,) = get_sessions_to_build()
    assert session.duration == timedelta(minutes=30)


def test_raise_reports_the_start_without_an_end_as_1_4_did(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    # An orphan END comes first by id, but 1.4 raised for the START.
    SessionLog("orphan", TITAN, "2024-01-01T08:00:00", "END", None).insert_log()
    SessionLog("lonely", TITAN, "2024-01-01T09:00:00", "START", None).insert_log()
    with pytest.raises(ValueError, match=r"^There was not exactly one") as raised:
        get_sessions_to_build()
    message = str(raised.value)
    assert message.startswith("There was not exactly one 'END' log for this 'START' log; ")
    assert "id=lonely" in message


def test_raise_reports_the_first_problem_when_no_start_lacks_an_end(
    nexuslims_instruments: dict[str, Instrument],
) -> None:
    SessionLog("orphan", TITAN, "2024-01-01T08:00:00", "END", None).insert_log()
    with pytest.raises(ValueError, match=r"^session 'orphan' has 1 'END' log\(s\)"):
        get_sessions_to_build()


def test_an_unknown_timezone_in_the_table_names_the_instrument(
    nexuslims_instruments: dict[str, Instrument], nexuslims_db: Path
) -> None:
    with closing(sqlite3.connect(nexuslims_db)) as conn, conn:
        conn.execute("UPDATE instruments SET timezone = 'US/Eastrn' WHERE instrument_pid = ?",
                     (TITAN,))
    expected = re.escape(
        f"Instrument '{TITAN}' in the instruments table has an unknown timezone 'US/Eastrn'"
    )
    with pytest.raises(ValueError, match=expected):
        load_instruments()
    with pytest.raises(ValueError, match=expected):
        get_sessions_to_build()


def test_a_1_4_database_says_to_migrate_for_the_new_statuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_legacy_db(tmp_path / "old.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    add_sample_instruments()
    SessionLog("s1", TITAN, "2024-01-01T08:00:00", "START", None).insert_log()
    with pytest.raises(sqlite3.IntegrityError, match=r"CHECK.*run 'nexuslims-db migrate'"):
        set_session_status("s1", "NO_CONSENT")
    assert {row[5] for row in _rows(path)} == {"TO_BE_BUILT"}


def test_functions_take_an_explicit_path_without_any_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_DB_PATH, raising=False)
    monkeypatch.delenv(ENV_DB_PATH_2X, raising=False)
    path = init_db(tmp_path / "db.sqlite")
    add_sample_instruments(path)
    log_start(TITAN, "s1", at="2024-01-01T08:00:00", path=path)
    log_end(TITAN, "s1", at="2024-01-01T09:00:00", path=path)
    log_start(TITAN, "s2", at="2024-01-01T10:00:00", path=path)
    set_session_status("s2", "TO_BE_BUILT", path=path)
    assert [p.session_identifier for p in find_session_problems(path=path)] == ["s2"]
    sessions = get_sessions_to_build(on_error="skip", path=path)
    assert [s.session_identifier for s in sessions] == ["s1"]


def test_session_duration() -> None:
    denver = Instrument(name="X", timezone="America/Denver")
    utc = timezone.utc
    aware = Session("a", denver, (datetime(2024, 1, 1, 10, tzinfo=utc),
                                  datetime(2024, 1, 1, 11, tzinfo=utc)), None)
    naive = Session("n", denver, (datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 9)), None)
    mixed = Session("m", denver, (datetime(2024, 1, 1, 17, tzinfo=utc),
                                  datetime(2024, 1, 1, 10, 30)), None)
    no_zone = Session("z", Instrument(name="Y"), mixed.dt_range, None)
    assert aware.duration == timedelta(hours=1)
    assert naive.duration == timedelta(hours=-1)
    assert mixed.duration == timedelta(minutes=30)  # 10:30 in Denver is 17:30 UTC
    assert no_zone.duration is None


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        (PureWindowsPath(r"\\fileserver\nexus\db.sqlite"), "file:////fileserver/nexus/db.sqlite"),
        (PureWindowsPath(r"C:\data\nexus db.sqlite"), "file:/C:/data/nexus%20db.sqlite"),
        (PurePosixPath("/srv/a?b#c%d.sqlite"), "file:/srv/a%3Fb%23c%25d.sqlite"),
    ],
)
def test_sqlite_uri(path: Any, uri: str) -> None:
    assert sqlite_uri(path) == uri


def test_a_path_with_uri_characters_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "odd ?#% name"
    path = init_db(folder / "db.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    add_sample_instruments()
    SessionLog("s1", TITAN, "2024-01-01T08:00:00", "START", None).insert_log()
    assert len(_rows(path)) == 1
    assert sorted(os.listdir(folder)) == ["db.sqlite"]


def test_the_cli_leaves_the_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = init_db(tmp_path / "other.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(other))
    target = tmp_path / "target.sqlite"
    assert main(["--db", str(target), "init", "--demo"]) == 0
    assert os.environ[ENV_DB_PATH] == str(other)
    assert _rows(other) == []
    assert len(_rows(target)) == 10
    capsys.readouterr()
