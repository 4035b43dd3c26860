"""NexusLIMS 2.x files are recognised with or without ``alembic_version`` (issue 20.7).

2.x's ``nexuslims db create-demo`` makes its tables at once, without Alembic's
table; such a file is told by 2.x's own tables (``upload_log``,
``external_user_identifiers``) or, without them, by its ``instruments`` columns
(``display_name``, no ``calendar_name``). Every command and API call refuses
it with the 2.x message and writes nothing; ``copy`` refuses it as a source
and as a target. The files are made here, in 2.x's documented shape
(``legacy_schema.make_2x_demo_db``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import TITAN
from legacy_schema import RELEASES_2X, make_2x_demo_db, make_legacy_db, nexuslims_2x_demo_schema

from nexusLIMS.db import init_db, make_db_query, migrate_db
from nexusLIMS.db.backends import backend_for
from nexusLIMS.db.claims import claim_sessions, list_claims, release_claim
from nexusLIMS.db.cli import main
from nexusLIMS.db.config import locate_database
from nexusLIMS.db.connection import connect
from nexusLIMS.db.errors import UnsupportedDatabaseError
from nexusLIMS.db.instruments import (
    Instrument,
    add_instrument,
    edit_instrument,
    load_instruments,
    remove_instrument,
)
from nexusLIMS.db.integrity import check_integrity
from nexusLIMS.db.logs import insert_logs, log_end, log_start
from nexusLIMS.db.samples import add_sample_instruments, populate_demo
from nexusLIMS.db.schema import inspect, transaction
from nexusLIMS.db.session_handler import Session, SessionLog, db_query, get_sessions_to_build
from nexusLIMS.db.sessions import find_session_problems, repair_duplicate_ends
from nexusLIMS.db.summary import summarize
from nexusLIMS.db.transfer import copy_database
from nexusLIMS.instruments import get_instr_from_api_url, instrument_db

# (release, with 2.x's own tables): what create-demo makes at 2.4 and 2.5, and a
# 2.5 file without 2.x's own tables, which only its instruments columns tell apart.
SHAPES = [("2.5", True), ("2.4", True), ("2.5", False)]
SHAPE_IDS = ["2.5 create-demo", "2.4 create-demo", "2.5 columns only"]


@pytest.fixture(params=SHAPES, ids=SHAPE_IDS)
def two_x(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 2.x file without alembic_version, which the environment names."""
    release, own_tables = request.param
    path = make_2x_demo_db(tmp_path / "nexuslims_2x.sqlite", release, own_tables=own_tables)
    monkeypatch.setenv("nexusLIMS_db_path", str(path))
    monkeypatch.delenv("NX_DB_PATH", raising=False)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _transaction() -> None:
    with transaction():
        pass


def _session() -> Session:
    return Session(
        "s-2x", Instrument(name=TITAN, timezone="America/New_York"),
        (datetime.fromisoformat("2024-05-01T10:00:00-04:00"),
         datetime.fromisoformat("2024-05-01T11:00:00-04:00")), "alice")


NEW_INSTRUMENT = Instrument(
    api_url="https://nemo.example.org/api/tools/?id=9", calendar_name="X",
    calendar_url="https://cal/x", location="Room 1", name="New-Instrument-1",
    schema_name="X", property_tag="1", filestore_path="./X", timezone="America/New_York")

CALLS: dict[str, Callable[[], Any]] = {
    "transaction": _transaction,
    "make_db_query": lambda: make_db_query("SELECT count(*) FROM session_log"),
    "db_query": lambda: db_query("SELECT * FROM session_log WHERE user = ?", ("alice",)),
    "load_instruments": load_instruments,
    "instrument_db": lambda: list(instrument_db),
    "get_instr_from_api_url": lambda: get_instr_from_api_url(
        "https://nemo.example.org/api/tools/?id=1"),
    "get_sessions_to_build": get_sessions_to_build,
    "find_session_problems": find_session_problems,
    "insert_log": lambda: SessionLog("s2", TITAN, "2024-05-01T10:00:00", "START",
                                     None).insert_log(),
    "insert_logs": lambda: insert_logs([SessionLog("s2", TITAN, "2024-05-01T10:00:00",
                                                   "START", None)]),
    "log_start": lambda: log_start(TITAN, "s3", "alice"),
    "log_end": lambda: log_end(TITAN, "s-2x"),
    "update_session_status": lambda: _session().update_session_status("COMPLETED"),
    "insert_record_generation_event": lambda: _session().insert_record_generation_event(),
    "repair_duplicate_ends": repair_duplicate_ends,
    "claim_sessions": claim_sessions,
    "list_claims": list_claims,
    "release_claim": lambda: release_claim("s-2x"),
    "add_instrument": lambda: add_instrument(NEW_INSTRUMENT),
    "edit_instrument": lambda: edit_instrument(TITAN, {"location": "elsewhere"}),
    "remove_instrument": lambda: remove_instrument(TITAN),
    "add_sample_instruments": add_sample_instruments,
    "populate_demo": populate_demo,
    "summarize": summarize,
    "check_integrity": check_integrity,
    "init_db": init_db,
    "init_db(force)": lambda: init_db(force=True),
    "migrate_db": migrate_db,
    "migrate_db(dry_run)": lambda: migrate_db(dry_run=True),
    "copy from it": lambda: copy_database(locate_database(), "copy.sqlite"),
    "copy onto it": lambda: copy_database(_a_source(), locate_database(), force=True),
}


def _a_source() -> Path:
    """A NexusLIMS 1.4 file beside the test's database, to copy from."""
    folder = Path(locate_database().target).parent
    path = make_legacy_db(folder / f"source-{uuid.uuid4().hex[:6]}.sqlite")
    add_sample_instruments(path)
    return path


@pytest.mark.parametrize("call", CALLS.values(), ids=list(CALLS))
def test_every_call_refuses_a_2x_file_without_alembic(
        two_x: Path, call: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(two_x.parent)
    before = two_x.read_bytes()
    with pytest.raises(UnsupportedDatabaseError, match=r"NexusLIMS 2\.x") as raised:
        call()
    message = str(raised.value)
    assert str(two_x) in message
    assert "no alembic revision" in message
    assert two_x.read_bytes() == before
    assert not (two_x.parent / "copy.sqlite").exists()
    assert not (two_x.parent / "copy.sqlite.partial").exists()


COMMANDS = [
    ["sessions"], ["sessions", "--json"], ["check"], ["check", "--full"], ["check", "--json"],
    ["info"], ["info", "--json"], ["instruments"], ["instruments", "--json"],
    ["instruments", "edit", TITAN, "--location", "x"], ["instruments", "remove", TITAN],
    ["log", "start", "--instrument", TITAN, "--id", "s2"],
    ["log", "end", "--instrument", TITAN, "--id", "s-2x"], ["status", "s-2x", "COMPLETED"],
    ["repair"], ["repair", "--yes"], ["migrate"], ["migrate", "--dry-run"],
    ["claims"], ["claims", "--json"], ["claims", "release", "s-2x"],
    ["init"], ["init", "--force"], ["init", "--demo"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_every_command_refuses_a_2x_file_without_alembic(
        two_x: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    before = _files(two_x.parent)
    assert main(["--db", str(two_x), *argv]) != 0
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "NexusLIMS 2.x" in err
    assert str(two_x) in err
    assert _files(two_x.parent) == before


def test_copy_refuses_a_2x_file_as_source_and_as_target(
        two_x: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_legacy_db(tmp_path / "source.sqlite")
    add_sample_instruments(source)
    before = _files(tmp_path)
    for argv in (["copy", str(two_x), str(tmp_path / "copy.sqlite")],
                 ["copy", str(source), str(two_x)], ["copy", "--force", str(source), str(two_x)]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert (out, "NexusLIMS 2.x" in err, str(two_x) in err) == ("", True, True), err
        assert _files(tmp_path) == before


@pytest.mark.parametrize("release", RELEASES_2X)
def test_what_tells_a_2x_file(tmp_path: Path, release: str) -> None:
    with connect(make_2x_demo_db(tmp_path / "with.sqlite", release)) as conn:
        info = inspect(conn)
    assert info.is_nexuslims_2x
    assert info.alembic_revision is None
    assert "upload_log" in (info.signs_of_2x or "")
    with connect(make_2x_demo_db(tmp_path / "without.sqlite", release, own_tables=False)) as conn:
        info = inspect(conn)
    # 2.4's instruments are 1.4's: without 2.x's tables nothing tells it from a 1.4 file.
    assert info.is_nexuslims_2x is (release == "2.5")


def test_a_1_4_file_and_our_own_are_not_taken_for_2x(
        tmp_path: Path, nexuslims_db: Path) -> None:
    for path in (make_legacy_db(tmp_path / "legacy.sqlite"), nexuslims_db):
        with connect(path) as conn:
            assert not inspect(conn).is_nexuslims_2x


def test_columns_are_read_only_for_a_file_without_a_schema_version(
        tmp_path: Path, nexuslims_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect() runs on every transaction of a file: a current one costs no column query."""
    backend = backend_for(locate_database(nexuslims_db))
    asked: list[str] = []
    real = backend.column_names

    def counting(raw: Any, table: str) -> list[str]:
        asked.append(table)
        return real(raw, table)

    monkeypatch.setattr(backend, "column_names", counting)
    get_sessions_to_build()
    assert asked == []
    get_sessions_to_build(database=make_legacy_db(tmp_path / "legacy.sqlite"))
    assert asked == ["instruments"]  # a 1.4 file (or 2.x's): one look at one table


def test_a_2x_shaped_postgresql_schema_is_refused(
        nexuslims_postgres_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Recognition works through the backend's catalogue, so on PostgreSQL too."""
    schema = f"nexuslims_2x_{uuid.uuid4().hex[:12]}"
    with connect(nexuslims_postgres_server, begin=None) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in nexuslims_postgres_server else "?"
    url = f"{nexuslims_postgres_server}{separator}options=-csearch_path%3D{schema}"
    try:
        with connect(url, begin=None) as conn:
            for statement in nexuslims_2x_demo_schema("2.5", own_tables=False).split(";"):
                if statement.strip():
                    conn.execute(statement.replace("user VARCHAR", '"user" VARCHAR'))
        location = locate_database(url)
        for call in (lambda: get_sessions_to_build(database=location),
                     lambda: list_claims(location), lambda: summarize(location)):
            with pytest.raises(UnsupportedDatabaseError, match=r"NexusLIMS 2\.x .*display_name"):
                call()
        assert main(["--db", url, "claims"]) == 1
        assert "NexusLIMS 2.x" in capsys.readouterr().err
    finally:
        with connect(nexuslims_postgres_server, begin=None) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
