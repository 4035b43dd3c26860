"""Every method of the Backend protocol, on both backends, through raw driver connections.

What the layers above rely on: the catalogue answers, the schema version's
storage, the id counters, the bulk paths, and errors classified by class and
code (never by message text, which a server in another language words
differently).
"""

from __future__ import annotations

import inspect
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import TITAN

from nexusLIMS.db.backends import Backend, backend_for, dialect_named
from nexusLIMS.db.backends.base import Backend as BackendProtocol
from nexusLIMS.db.backends.sqlite import SQLITE
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.databases import database_at
from nexusLIMS.db.errors import ConstraintError, ConstraintKind, DatabaseLockedError
from nexusLIMS.db.instruments import Instrument
from nexusLIMS.db.tables import (
    INDEXES,
    KEEP_LOGS_MESSAGE,
    SCHEMA_VERSION,
    SESSION_LOG,
    TABLES,
    quoted_columns,
)
from nexusLIMS.db.testing import skew_clock
from nexusLIMS.db.timestamps import utc_now, utc_text

LOG_INSERT = ("INSERT INTO session_log (session_identifier, instrument, timestamp, event_type, "
              "record_status) VALUES (?, ?, ?, ?, ?)")


Raw = tuple[Backend, Any, DatabaseLocation]


@pytest.fixture
def raw(nexuslims_database: DatabaseLocation,
        nexuslims_instruments: dict[str, Instrument]) -> Iterator[Raw]:
    """The backend, one raw connection to the test's database (with the sample instruments),
    and the database's location."""
    db = database_at(nexuslims_database)
    connection = db.take()
    try:
        yield db.backend, connection, nexuslims_database
    finally:
        if db.backend.in_transaction(connection):
            db.backend.rollback(connection)
        db.give(connection)


def _protocol_members() -> set[str]:
    return {name for name, _ in inspect.getmembers(BackendProtocol)
            if not name.startswith("_")} | set(BackendProtocol.__annotations__)


@pytest.mark.parametrize("location", [DatabaseLocation("sqlite", "/x.sqlite"),
                                      DatabaseLocation("postgresql", "postgresql://h/d")],
                         ids=["sqlite", "postgresql"])
def test_each_backend_implements_every_member_of_the_protocol(location: DatabaseLocation) -> None:
    pytest.importorskip("psycopg")
    backend = backend_for(location)
    missing = sorted(name for name in _protocol_members() if not hasattr(backend, name))
    assert missing == []
    assert backend.name == location.backend
    assert backend.ddl is dialect_named(location.backend)


def test_the_catalogue(raw: Raw) -> None:
    backend, connection, location = raw
    assert {table.name for table in TABLES} <= backend.table_names(connection)
    for table in TABLES:
        assert backend.column_names(connection, table.name) == list(table.column_names)
    assert backend.index_names(connection, SESSION_LOG.name) == {
        index.name for index in INDEXES if index.table == SESSION_LOG.name}
    assert backend.on_delete_action(connection, SESSION_LOG.name, "instrument") == "RESTRICT"
    assert backend.on_delete_action(connection, SESSION_LOG.name, "event_type") is None
    assert backend.schema_version(connection) == SCHEMA_VERSION
    assert backend.blockers(connection, SESSION_LOG.name) == []
    size = backend.size(connection, location)
    assert size is not None
    assert size > 0


def test_the_schema_version_and_the_id_counter(raw: Raw) -> None:
    backend, connection, _ = raw
    backend.begin(connection, "IMMEDIATE", 5)
    backend.set_schema_version(connection, 2)
    assert backend.schema_version(connection) == 2
    assert backend.id_counter(connection, SESSION_LOG.name, "id_session_log") is None
    backend.set_id_counter(connection, SESSION_LOG.name, "id_session_log", 41)
    new_id = backend.insert_id(connection, LOG_INSERT, ("s", TITAN, "2021-05-01T10:00:00",
                                                         "START", "TO_BE_BUILT"),
                               "id_session_log", 5)
    assert new_id == 42
    assert backend.id_counter(connection, SESSION_LOG.name, "id_session_log") == 42
    backend.rollback(connection)
    assert not backend.in_transaction(connection)
    assert backend.schema_version(connection) == SCHEMA_VERSION


@pytest.mark.parametrize("count", [3, 150], ids=["few rows", "bulk"])
def test_inserting_rows_and_finding_them_by_value(raw: Raw, count: int) -> None:
    backend, connection, _ = raw
    identifiers = [f"s{number}" for number in range(count)]
    rows = [(identifier, TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT", None)
            for identifier in identifiers]
    backend.begin(connection, "WRITE", 5)
    backend.insert_rows(connection, SESSION_LOG.name, quoted_columns(SESSION_LOG)[1:], rows)
    found = []
    for condition, params in backend.in_values("session_identifier", identifiers[::2]):
        found += backend.execute(connection, f"SELECT session_identifier FROM session_log "
                                 f"WHERE {condition}", params, 5).fetchall()
    assert sorted(row[0] for row in found) == sorted(identifiers[::2])
    assert backend.in_values("session_identifier", []) == []
    backend.executemany(connection, "UPDATE session_log SET record_status = ? "
                        "WHERE session_identifier = ?", [("ERROR", "s0"), ("ERROR", "s1")])
    assert backend.execute(connection, "SELECT count(*) FROM session_log WHERE record_status = ?",
                           ("ERROR",), 5).fetchone()[0] == 2
    backend.rollback(connection)


def test_a_statement_alone_in_its_transaction(raw: Raw) -> None:
    backend, connection, _ = raw
    began, count = backend.write_alone(
        connection, LOG_INSERT, ("s", TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT"),
        "IMMEDIATE", 5)
    assert (began, count) == ("BEGIN IMMEDIATE", 1)
    assert not backend.in_transaction(connection)
    assert backend.execute(connection, "SELECT count(*) FROM session_log", (), 5).fetchone() == (1,)


def _violation(raw: Raw, statement: str, params: tuple[Any, ...] = ()) -> ConstraintError:
    backend, connection, location = raw
    try:
        backend.execute(connection, statement, params, 5)
    except backend.driver_errors as exc:
        better = backend.translate(exc, location, statement)
        assert isinstance(better, ConstraintError)
        assert isinstance(better, backend.integrity_errors)  # what 1.4's callers catch
        return better
    raise AssertionError(f"{statement} was not refused")


def test_constraint_errors_are_classified(raw: Raw) -> None:
    backend, connection, _ = raw
    assert _violation(raw, LOG_INSERT, (
        "s", "GHOST", "2021-05-01T10:00:00", "START", "TO_BE_BUILT")).kind \
        is ConstraintKind.FOREIGN_KEY
    assert _violation(raw, LOG_INSERT, (
        "s", TITAN, "2021-05-01T10:00:00", "START", "DONE")).kind is ConstraintKind.CHECK
    assert _violation(raw, LOG_INSERT, (
        None, TITAN, "2021-05-01T10:00:00", "START", "TO_BE_BUILT")).kind \
        is ConstraintKind.NOT_NULL
    assert _violation(raw, "UPDATE instruments SET api_url = "
                      "(SELECT max(api_url) FROM instruments)").kind is ConstraintKind.UNIQUE
    backend.execute(connection, LOG_INSERT, ("s", TITAN, "2021-05-01T10:00:00", "START",
                                             "TO_BE_BUILT"), 5)
    refused = _violation(raw, "DELETE FROM instruments WHERE instrument_pid = ?",
                         (TITAN,))
    assert refused.kind is ConstraintKind.RESTRICT
    assert KEEP_LOGS_MESSAGE in str(refused)
    reworded = refused.reworded("in other words")
    assert (type(reworded), reworded.kind, str(reworded)) == (
        type(refused), ConstraintKind.RESTRICT, "in other words")


def test_an_error_the_package_has_no_words_for_is_left_as_it_is(
        raw: Raw) -> None:
    backend, connection, location = raw
    with pytest.raises(backend.driver_errors) as raised:
        backend.execute(connection, "SELECT * FROM nowhere", (), 5)
    assert backend.translate(raised.value, location) is None
    assert backend.translate(ValueError("not a driver's"), location) is None


def test_migration_mechanics(raw: Raw, tmp_path: Path) -> None:
    backend, connection, location = raw
    backend.begin(connection, "IMMEDIATE", 5)
    backend.execute(connection, LOG_INSERT, ("s", TITAN, "2021-05-01T10:00:00", "START",
                                             "TO_BE_BUILT"), 5)
    backend.apply_constraints(connection, SESSION_LOG, {index.name for index in INDEXES})
    backend.restrict_deletes(connection)
    backend.guard_old_schema(connection, 0)
    assert backend.execute(connection, "SELECT count(*) FROM session_log", (),
                           5).fetchone() == (1,)
    assert backend.on_delete_action(connection, SESSION_LOG.name, "instrument") == "RESTRICT"
    assert _violation(raw, LOG_INSERT, (
        "s", TITAN, "2021-05-01T10:00:00", "START", "DONE")).kind is ConstraintKind.CHECK
    backend.rollback(connection)
    copy = backend.backup(connection, tmp_path / "copy.sqlite")
    assert (copy is not None) is backend.is_file
    assert backend.compact(location) is backend.is_file
    with pytest.raises(RuntimeError), backend.removed_if_failed(location):
        raise RuntimeError
    assert backend.table_names(connection)  # an existing database is never removed


def test_the_databases_clock(raw: Raw) -> None:
    backend, connection, _ = raw
    clock = backend.ddl.clock

    def read(sql: str, params: tuple[Any, ...] = ()) -> datetime:
        text = backend.execute(connection, f"SELECT {sql}", params, 5).fetchone()[0]
        assert len(text) == len(utc_text(utc_now()))  # utc_text's fixed width
        assert text.endswith("+00:00")
        return datetime.fromisoformat(text)

    assert abs(read(clock()) - utc_now()) < timedelta(minutes=1)
    assert abs(read(clock("?"), (60.5,)) - utc_now() - timedelta(seconds=60.5)) \
        < timedelta(minutes=1)
    restore = skew_clock(-3600)  # a builder an hour behind
    try:
        behind = read(clock())
    finally:
        restore()
    # A server's own clock; SQLite's is the builders' (so they must share one).
    assert abs(behind - utc_now()) < timedelta(minutes=1) if backend.skip_locked \
        else abs(behind - utc_now() + timedelta(hours=1)) < timedelta(minutes=1)


def test_skipping_locked_rows_and_ordered_reads(raw: Raw) -> None:
    backend, connection, location = raw
    backend.write_batch(connection, [(LOG_INSERT, (f"s{n}", TITAN, "2021-05-01T10:00:00",
                                                   "START", "TO_BE_BUILT")) for n in (1, 2)],
                        "WRITE", 5)
    if not backend.skip_locked:  # one writer at a time: nothing to skip, no plan to steer
        assert backend.ordered_reads == ()
        return
    db = database_at(location)
    other = db.take()
    try:
        backend.begin(other, "WRITE", 5)
        assert backend.execute(other, "SELECT session_identifier FROM session_log AS s WHERE "
                               "session_identifier = 's1' FOR UPDATE", (), 5).fetchall()
        backend.begin(connection, "WRITE", 0.5)  # a wait would fail: none happens
        for statement in backend.ordered_reads:
            backend.execute(connection, statement, (), 5)
        assert backend.execute(connection, "SELECT current_setting('enable_sort')", (),
                               5).fetchone() == ("off",)
        assert backend.execute(
            connection, f"SELECT session_identifier FROM session_log AS s ORDER BY "
            f"id_session_log FOR UPDATE OF s {backend.skip_locked}", (), 5).fetchall() == [("s2",)]
        backend.rollback(connection)
        backend.rollback(other)
    finally:
        db.give(other)
    assert backend.execute(connection, "SELECT current_setting('enable_sort')", (),
                           5).fetchone() == ("on",)  # for that transaction only


def test_sql_written_for_sqlite(raw: Raw) -> None:
    backend, connection, _ = raw
    sql = backend.from_sqlite_sql('SELECT count(*) FROM session_log WHERE "event_type" == "END"')
    assert backend.execute(connection, sql, (), 5).fetchone() == (0,)


def test_the_change_watch(nexuslims_database: DatabaseLocation,
                          nexuslims_instruments: dict[str, Instrument]) -> None:
    backend = backend_for(nexuslims_database)
    watch = backend.open_watch(nexuslims_database)
    assert watch is not None
    try:
        before = backend.data_version(watch)
        db = database_at(nexuslims_database)
        connection = db.take()
        try:
            backend.write_alone(connection, "UPDATE instruments SET location = location || '.'", (),
                                "IMMEDIATE", 5)
        finally:
            db.give(connection)
        # A server's announcement arrives after its commit (about a round trip later).
        deadline = time.monotonic() + 10
        while backend.data_version(watch) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.data_version(watch) != before
    finally:
        watch.close()


def test_integrity_and_identity(raw: Raw, tmp_path: Path) -> None:
    backend, connection, location = raw
    assert backend.integrity_problems(connection, full=False) == []
    assert backend.integrity_problems(connection, full=True) == []
    assert "backup" in backend.damage_advice(location)
    db = database_at(location)
    other = db.take()
    try:  # the same database through another connection: the same identity
        assert backend.identity(other, location) == backend.identity(connection, location)
    finally:
        db.give(other)
    with backend.staged(location, None) as staged:  # an existing database: in place
        assert staged == location
    elsewhere = database_at(DatabaseLocation(location.backend, str(tmp_path / "x.sqlite"))) \
        if backend.is_file else None
    if elsewhere is not None:  # another file: another identity
        with backend.staged(elsewhere.location, None) as new_file:
            assert new_file.target.endswith(".partial")
            fresh = database_at(new_file).take(create=True)
            try:
                assert backend.identity(fresh, new_file) != backend.identity(connection, location)
            finally:
                database_at(new_file).give(fresh)
        assert Path(elsewhere.location.target).exists()  # renamed when the block ended
        assert not Path(new_file.target).exists()


# --- by code, not by words ------------------------------------------------------------

SQLITE_CODES = [(787, ConstraintKind.FOREIGN_KEY), (275, ConstraintKind.CHECK),
                (2067, ConstraintKind.UNIQUE), (1555, ConstraintKind.UNIQUE),
                (1299, ConstraintKind.NOT_NULL), (1811, ConstraintKind.OTHER)]


@pytest.mark.parametrize(("code", "kind"), SQLITE_CODES)
def test_sqlite_errors_are_classified_by_their_code(code: int, kind: ConstraintKind) -> None:
    error = sqlite3.IntegrityError("Einschränkung verletzt")  # words SQLite never uses
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    better = SQLITE.translate(error, DatabaseLocation("sqlite", "/x.sqlite"))
    assert isinstance(better, ConstraintError)
    assert better.kind is kind
    locked = sqlite3.OperationalError("gesperrt")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert isinstance(SQLITE.translate(locked, DatabaseLocation("sqlite", "/x.sqlite")),
                      (DatabaseLockedError, sqlite3.OperationalError))


PG_STATES = [("ForeignKeyViolation", ConstraintKind.FOREIGN_KEY),
             ("CheckViolation", ConstraintKind.CHECK), ("UniqueViolation", ConstraintKind.UNIQUE),
             ("NotNullViolation", ConstraintKind.NOT_NULL),
             ("RestrictViolation", ConstraintKind.RESTRICT),
             ("ExclusionViolation", ConstraintKind.OTHER)]


@pytest.mark.parametrize(("name", "kind"), PG_STATES)
def test_postgres_errors_are_classified_by_their_sqlstate(name: str, kind: ConstraintKind) -> None:
    errors = pytest.importorskip("psycopg.errors")
    from nexusLIMS.db.backends.postgresql import POSTGRESQL

    location = DatabaseLocation("postgresql", "postgresql://h/d")
    driver_class = getattr(errors, name)
    better = POSTGRESQL.translate(driver_class("Fremdschlüssel verletzt"), location,
                                  "INSERT INTO session_log VALUES (1)")
    assert isinstance(better, ConstraintError)
    # The driver's class itself, for every constraint the schema can have.
    assert isinstance(better, driver_class if kind is not ConstraintKind.OTHER
                      else errors.IntegrityError)
    assert better.kind is kind
    deleting = POSTGRESQL.translate(errors.ForeignKeyViolation("verletzt"), location,
                                    'DELETE FROM "instruments" WHERE x = 1')
    assert isinstance(deleting, ConstraintError)
    assert deleting.kind is ConstraintKind.RESTRICT
    assert isinstance(POSTGRESQL.translate(errors.LockNotAvailable("gesperrt"), location),
                      DatabaseLockedError)
