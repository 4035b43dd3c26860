"""The schema's SQL in each dialect: :mod:`nexusLIMS.db.tables` rendered as statements.

Pure text, no driver: ``nexuslims-db schema --dialect postgresql`` works
without the ``postgres`` extra. What differs between the dialects (types, the
generated id, the local-time default, the version's storage, SQLite's trigger
keeping an instrument's logs) is in the two subclasses; the rest is shared.
"""

from __future__ import annotations

from typing import Optional

from nexusLIMS.db.tables import (
    INDEXES,
    INSTRUMENTS,
    KEEP_LOGS_MESSAGE,
    KEEPS_LOGS_SINCE,
    LOCAL_NOW,
    SCHEMA_VERSION,
    SESSION_LOG,
    TABLES,
    Column,
    Index,
    Table,
    quote,
)

__all__ = ["CLOCK_FUNCTION", "DIALECTS", "POSTGRESQL_DDL", "SQLITE_DDL", "Dialect", "literal"]

#: The SQL function that gives SQLite the builders' clock (see ``Dialect.clock``);
#: the SQLite backend defines it on each connection it opens.
CLOCK_FUNCTION = "nexuslims_utc_text"


def literal(value: str) -> str:
    """Return ``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


class Dialect:
    """How one database spells the schema (see :mod:`nexusLIMS.db.backends.ddl`)."""

    name = ""
    #: The tables the database keeps for itself (none of another application's).
    own_tables: frozenset[str] = frozenset()

    def column_type(self, column: Column) -> str:
        """Return the SQL type of ``column``."""
        return column.type

    def generated_id(self, column: Column) -> str:
        """Return the whole definition of an autoincrement primary key."""
        raise NotImplementedError

    def local_now(self) -> str:
        """Return the SQL of the current local time as ``YYYY-MM-DDTHH:MM:SS.fff`` text."""
        raise NotImplementedError

    def clock(self, seconds: Optional[str] = None) -> str:
        """Return the SQL of the database's clock, ``seconds`` from now, as UTC text.

        The text has the fixed width of :func:`~nexusLIMS.db.timestamps.utc_text`
        (microseconds, ``+00:00``), so it compares with stored claim times as
        text does. ``seconds`` is an SQL expression (a ``?`` placeholder, say);
        None means now. A server judges leases by its own clock, so that no
        builder's clock does; SQLite, in the builder's process, has none: its
        dialect names the builder's clock.
        """
        raise NotImplementedError

    def column_sql(self, column: Column) -> str:
        """Return the definition of ``column`` in ``CREATE TABLE``."""
        if column.autoincrement:
            return self.generated_id(column)
        parts = [quote(column.name), self.column_type(column)]
        if column.required:
            parts.append("NOT NULL")
        if column.primary_key:
            parts.append("PRIMARY KEY")
        if column.unique:
            parts.append("UNIQUE")
        if column.default is LOCAL_NOW:
            parts.append(f"DEFAULT {self.local_now()}")
        elif isinstance(column.default, str):
            parts.append(f"DEFAULT {literal(column.default)}")
        if column.references:
            parts.append(self.references(column))
        if column.allowed:
            parts.append(self.check(column))
        return " ".join(parts)

    def references(self, column: Column) -> str:
        """Return the foreign key clause of ``column``: renames carry, deletes are refused."""
        assert column.references is not None
        table, parent = column.references
        return f"REFERENCES {table} ({quote(parent)}) ON UPDATE CASCADE ON DELETE RESTRICT"

    def check(self, column: Column) -> str:
        """Return the CHECK clause of ``column``'s allowed values."""
        assert column.allowed is not None
        values = ", ".join(literal(value) for value in column.allowed)
        return f"CHECK ({quote(column.name)} IN ({values}))"

    def table_statement(self, table: Table, *, name: Optional[str] = None) -> str:
        """Return the ``CREATE TABLE IF NOT EXISTS`` of ``table`` (or under another ``name``)."""
        columns = ",\n    ".join(self.column_sql(column) for column in table.columns)
        return f"CREATE TABLE IF NOT EXISTS {name or table.name} (\n    {columns}\n)"

    def index_statement(self, index: Index) -> str:
        """Return the ``CREATE INDEX IF NOT EXISTS`` of ``index``."""
        columns = ", ".join(quote(column) for column in index.columns)
        sql = f"CREATE INDEX IF NOT EXISTS {index.name} ON {index.table} ({columns})"
        if index.where:
            sql += f" WHERE {quote(index.where[0])} = {literal(index.where[1])}"
        return sql

    def extra_statements(self, version: int) -> list[str]:
        """Return what the schema needs beyond tables and indexes at ``version``."""
        return []

    def create_statements(self, version: int = SCHEMA_VERSION) -> list[str]:
        """Return the statements creating every table, index (and trigger) up to ``version``."""
        statements = [self.table_statement(table) for table in TABLES if table.since <= version]
        statements += [self.index_statement(index) for index in INDEXES if index.since <= version]
        return statements + self.extra_statements(version)

    def version_statements(self, version: int) -> list[str]:
        """Return the statements that record the schema ``version`` (for a script)."""
        raise NotImplementedError

    def render(self) -> str:
        """Return the whole schema as an SQL script, ending with its version."""
        header = (f"-- The NexusLIMS session database, schema version {SCHEMA_VERSION} "
                  f"({self.name}); generated by nexusLIMS.db.schema.\n")
        statements = [*self.create_statements(), *self.version_statements(SCHEMA_VERSION)]
        return header + "".join(f"\n{statement};\n" for statement in statements)


class _SQLiteDialect(Dialect):
    """SQLite's spelling of the schema."""

    name = "sqlite"
    own_tables = frozenset({"sqlite_sequence"})

    def generated_id(self, column: Column) -> str:
        return f"{quote(column.name)} INTEGER PRIMARY KEY AUTOINCREMENT"

    def local_now(self) -> str:
        return "(strftime('%Y-%m-%dT%H:%M:%f', 'now', 'localtime'))"

    def clock(self, seconds: Optional[str] = None) -> str:
        # The builders' clock, as Python reads it (timestamps.utc_now): builders
        # sharing a file must share a clock (one host).
        return f"{CLOCK_FUNCTION}({seconds or 0})"

    def keep_logs_trigger(self, *, temporary: bool = False) -> str:
        """Return the trigger refusing to delete (or REPLACE) an instrument that has logs.

        The foreign key says ``ON DELETE RESTRICT`` since schema version 2; this
        trigger (part of the schema since then) says why, in words. A file of
        an older schema, whose foreign key still cascades, gets it as a TEMP
        trigger on every connection the package opens.
        """
        name, main = ("TEMP TRIGGER IF NOT EXISTS nexuslims_keep_logs", "main.") if temporary \
            else ("TRIGGER IF NOT EXISTS instruments_keep_logs", "")
        return (
            f"CREATE {name} BEFORE DELETE ON {main}{INSTRUMENTS.name} "
            f"WHEN EXISTS (SELECT 1 FROM {main}{SESSION_LOG.name} "
            f"WHERE instrument = OLD.instrument_pid) "
            f"BEGIN SELECT RAISE(ABORT, {literal(KEEP_LOGS_MESSAGE)}); END"
        )

    def extra_statements(self, version: int) -> list[str]:
        return [self.keep_logs_trigger()] if version >= KEEPS_LOGS_SINCE else []

    def version_statements(self, version: int) -> list[str]:
        return [f"PRAGMA user_version = {int(version)}"]


class _PostgreSQLDialect(Dialect):
    """PostgreSQL's spelling of the schema."""

    name = "postgresql"
    #: Where the schema version is kept.
    version_table = "nexuslims_schema_version"
    own_tables = frozenset({version_table})
    #: The channel a change of ``instruments`` is announced on (the payload: its schema).
    instruments_channel = "nexuslims_instruments"
    #: The trigger that announces it.
    instruments_trigger = "instruments_notify"

    def extra_statements(self, version: int) -> list[str]:
        """Announce every change of ``instruments``, so that look-ups need not ask.

        Raw SQL changes announce themselves too. Added by ``init_db`` to a
        database made before (look-ups then ask every time until it is there).
        """
        function = "nexuslims_instruments_changed"
        return [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify({literal(self.instruments_channel)}, TG_TABLE_SCHEMA); "
            f"RETURN NULL; END $$",
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = "
            f"{literal(self.instruments_trigger)} AND tgrelid = "
            f"{literal(INSTRUMENTS.name)}::regclass) THEN CREATE TRIGGER "
            f"{self.instruments_trigger} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "
            f"{INSTRUMENTS.name} FOR EACH STATEMENT EXECUTE FUNCTION {function}(); END IF; END $$",
        ]

    def column_type(self, column: Column) -> str:
        # SQLite never enforced the lengths of 1.4's character types.
        if column.type in ("DATETIME", "TEXT") or "CHAR" in column.type:
            return "TEXT"
        return column.type

    def generated_id(self, column: Column) -> str:
        return f"{quote(column.name)} BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

    def local_now(self) -> str:
        return "to_char(localtimestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS')"

    def clock(self, seconds: Optional[str] = None) -> str:
        # The server's clock at the start of the statement, whatever the builder's says.
        moment = "statement_timestamp() AT TIME ZONE 'UTC'"
        if seconds is not None:
            moment = f"({moment} + ({seconds}) * interval '1 second')"
        return f"to_char({moment}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"

    def version_statements(self, version: int) -> list[str]:
        return [f"CREATE TABLE IF NOT EXISTS {self.version_table} (version INTEGER NOT NULL)",
                f"INSERT INTO {self.version_table} (version) VALUES ({int(version)})"]


#: SQLite's dialect.
SQLITE_DDL = _SQLiteDialect()
#: PostgreSQL's dialect.
POSTGRESQL_DDL = _PostgreSQLDialect()
#: Each dialect by name.
DIALECTS: dict[str, Dialect] = {dialect.name: dialect
                                for dialect in (SQLITE_DDL, POSTGRESQL_DDL)}
