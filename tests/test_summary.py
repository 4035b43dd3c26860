"""``nexusLIMS.db.summary.summarize()``: the overview behind ``nexuslims-db info``."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import JEOL, QUANTA, TITAN, insert_raw, log, row, rows
from legacy_schema import make_legacy_db

from nexusLIMS.db.config import ENV_DB_PATH, DatabaseLocation
from nexusLIMS.db.connection import tracing
from nexusLIMS.db.enums import ProblemKind
from nexusLIMS.db.errors import DatabaseNotFoundError, UnsupportedDatabaseError
from nexusLIMS.db.logs import insert_logs, log_start
from nexusLIMS.db.samples import populate_demo
from nexusLIMS.db.schema import SCHEMA_VERSION
from nexusLIMS.db.summary import DatabaseSummary, summarize

DEMO_WAITING = "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"
DEMO_COMPLETED = "5c4b3a29-1807-4f6e-9d5c-4b3a29180706"


def _same_place(found: DatabaseLocation, expected: DatabaseLocation) -> None:
    assert (found.backend, found.target) == (expected.backend, expected.target)


@pytest.fixture
def demo_location(nexuslims_database: DatabaseLocation) -> DatabaseLocation:
    populate_demo(nexuslims_database)
    return nexuslims_database


def test_summarize_an_empty_database(nexuslims_database: DatabaseLocation) -> None:
    summary = summarize()
    assert isinstance(summary, DatabaseSummary)
    _same_place(summary.location, nexuslims_database)
    assert summary.schema_version == SCHEMA_VERSION
    assert isinstance(summary.size_bytes, int)
    assert summary.size_bytes > 0
    if nexuslims_database.backend == "sqlite":
        assert summary.size_bytes == nexuslims_database.path.stat().st_size
    assert summary.instruments == 0
    assert summary.log_counts == ()
    assert summary.sessions_to_build == 0
    assert summary.oldest_waiting is None
    assert summary.problems == ()


def test_summarize_a_busy_database(
    nexuslims_database: DatabaseLocation, caplog: pytest.LogCaptureFixture
) -> None:
    populate_demo(nexuslims_database)
    insert_raw([row("no-end", "START", "2024-05-08T10:00:00-04:00", QUANTA)])
    log_start(JEOL, "running-now", "zed")  # a recent WAITING_FOR_END
    with caplog.at_level(logging.INFO, logger="nexusLIMS"):  # a revision after the record
        insert_logs([log(DEMO_COMPLETED, "END", "2024-05-03T13:00:00-04:00", user="dave")])
    before_rows = rows()

    before = datetime.now(timezone.utc)
    summary = summarize(nexuslims_database)
    after = datetime.now(timezone.utc)

    _same_place(summary.location, nexuslims_database)
    assert summary.schema_version == SCHEMA_VERSION
    assert summary.instruments == 3
    assert summary.log_counts == (
        ("END", "COMPLETED", 1),
        ("END", "TO_BE_BUILT", 3),
        ("RECORD_GENERATION", "COMPLETED", 1),
        ("START", "COMPLETED", 1),
        ("START", "TO_BE_BUILT", 4),
        ("START", "WAITING_FOR_END", 2),
    )
    assert summary.sessions_to_build == 3
    assert summary.oldest_waiting is not None
    oldest, age = summary.oldest_waiting
    assert (oldest.session_identifier, oldest.instrument, oldest.timestamp,
            oldest.event_type, oldest.record_status, oldest.user) == (
        DEMO_WAITING, QUANTA, "2024-05-07T08:30:00-04:00", "START", "WAITING_FOR_END", "carol")
    started = datetime.fromisoformat(oldest.timestamp)
    assert isinstance(age, timedelta)
    assert before - started <= age <= after - started
    assert [(p.session_identifier, p.kind) for p in summary.problems] == [
        ("no-end", ProblemKind.END_COUNT), (DEMO_COMPLETED, ProblemKind.LATE_REVISION)]
    late = summary.problems[1]
    assert "2024-05-03T13:00:00-04:00" in late.detail
    assert late.markable is False
    assert rows() == before_rows  # summarize writes nothing


def test_summarize_opens_one_connection_and_closes_it(demo_location: DatabaseLocation) -> None:
    events: list[tuple[str, str]] = []
    with tracing(lambda event, text: events.append((event, text))):
        summarize()
    kinds = [event for event, _ in events]
    assert kinds.count("open") == kinds.count("close") == 1
    assert not any(text.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
                   for event, text in events if event.startswith("execute"))


def test_an_explicit_database_wins_over_the_environment(
    demo_location: DatabaseLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.sqlite"
    monkeypatch.setenv(ENV_DB_PATH, str(missing))
    summary = summarize(demo_location.target)
    assert summary.instruments == 3
    assert not missing.exists()


def test_a_naive_waiting_start_is_placed_in_its_instruments_zone(
    nexuslims_instruments: dict[str, Any],
) -> None:
    insert_raw([row("naive", "START", "2024-05-07T07:00:00", JEOL, status="WAITING_FOR_END")])
    before = datetime.now(timezone.utc)
    summary = summarize()
    after = datetime.now(timezone.utc)
    assert summary.oldest_waiting is not None
    oldest, age = summary.oldest_waiting
    assert oldest.session_identifier == "naive"
    started = datetime(2024, 5, 7, 13, 0, tzinfo=timezone.utc)  # 07:00 MDT
    assert age is not None
    assert before - started <= age <= after - started


def test_an_unplaceable_waiting_start_has_no_age(nexuslims_instruments: dict[str, Any]) -> None:
    insert_raw([row("odd", "START", "yesterday-ish", TITAN, status="WAITING_FOR_END")])
    summary = summarize()
    assert summary.oldest_waiting is not None
    assert summary.oldest_waiting[0].session_identifier == "odd"
    assert summary.oldest_waiting[1] is None


@pytest.mark.parametrize(
    ("older", "younger"),
    [
        # naive local times of instruments in two zones: 08:00 New York is 12:00Z,
        # 07:00 Denver is 13:00Z
        ((TITAN, "2024-05-07T08:00:00"), (JEOL, "2024-05-07T07:00:00")),
        # explicit offsets: 10:00+05:30 is 04:30Z, 08:30-04:00 is 12:30Z
        ((TITAN, "2024-05-07T10:00:00+05:30"), (QUANTA, "2024-05-07T08:30:00-04:00")),
    ],
    ids=["naive", "offsets"],
)
def test_the_oldest_waiting_start_is_the_earliest_instant(
    nexuslims_database: DatabaseLocation, nexuslims_instruments: dict[str, Any],
    older: tuple[str, str], younger: tuple[str, str],
) -> None:
    insert_raw([
        row("younger", "START", younger[1], younger[0], status="WAITING_FOR_END"),
        row("older", "START", older[1], older[0], status="WAITING_FOR_END"),
    ])
    summary = summarize()
    assert summary.oldest_waiting is not None
    assert summary.oldest_waiting[0].session_identifier == "older"


def test_summarize_a_1_4_database_reads_it_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_legacy_db(tmp_path / "old.sqlite")
    monkeypatch.setenv(ENV_DB_PATH, str(path))
    before = path.read_bytes()
    summary = summarize()
    assert summary.schema_version == 0
    assert (summary.instruments, summary.log_counts, summary.problems) == (0, (), ())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]


def test_summarize_a_missing_database_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFoundError, match="does not exist"):
        summarize(tmp_path / "missing.sqlite")
    assert list(tmp_path.iterdir()) == []


def test_summarize_refuses_a_non_nexuslims_database(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
        conn.execute("INSERT INTO alembic_version VALUES ('v2_5_0b')")
    before = path.read_bytes()
    with pytest.raises(UnsupportedDatabaseError, match=r"NexusLIMS 2\.x .*v2_5_0b"):
        summarize(path)
    assert path.read_bytes() == before

