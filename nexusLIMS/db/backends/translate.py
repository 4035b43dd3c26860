"""SQL text for PostgreSQL: psycopg's placeholders, and SQL written for SQLite carried over.

:func:`native_sql` turns the package's ``?`` and ``:name`` placeholders into
psycopg's ``%s`` and ``%(name)s``. :func:`to_postgres` translates SQL that
callers of :func:`~nexusLIMS.db.make_db_query` wrote for SQLite with sqlglot:
identifiers are matched case-insensitively and quoted (so a column called
``user`` stays a column), SQLite's double-quoted strings (``"event_type" =
"END"``), ``==``, ``REPLACE()``, ``datetime('now')`` and ``INSERT OR IGNORE``
are carried over, and SQL that has no PostgreSQL equivalent (``PRAGMA``,
``INSERT OR REPLACE``) is refused with an error naming it, before anything
runs. Both need only sqlglot (the ``postgres`` extra), imported when first used.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, cast

from nexusLIMS.db.errors import UnsupportedSQLError
from nexusLIMS.db.tables import TABLES

if TYPE_CHECKING:  # pragma: no cover
    from sqlglot import exp

__all__ = ["native_sql", "to_postgres"]


@lru_cache(maxsize=512)
def native_sql(sql: str) -> str:
    """Return ``sql`` with ``?`` and ``:name`` placeholders as psycopg's ``%s`` / ``%(name)s``.

    Every other ``%`` (in literals, comments or the modulo operator) is
    doubled, as psycopg requires. Outside literals and quoted names, ``?`` is
    always a placeholder, also where PostgreSQL's tokenizer reads it as the
    start of an operator (``?::integer``, ``?||?``).
    """
    from sqlglot import TokenType
    from sqlglot.dialects.postgres import Postgres

    quoted = (TokenType.STRING, TokenType.IDENTIFIER, TokenType.NATIONAL_STRING)
    tokens = Postgres().tokenize(sql)
    parts: list[str] = []
    position = 0
    index = 0
    while index < len(tokens):
        token = tokens[index]
        parts.append(sql[position : token.start].replace("%", "%%"))
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.token_type == TokenType.PLACEHOLDER and token.text == "?":
            parts.append("%s")
        elif token.text.startswith("?") and token.token_type not in quoted:
            parts.append("%s" + token.text[1:].replace("%", "%%"))
        elif (token.token_type == TokenType.COLON and following is not None
              and following.start == token.end + 1 and following.text.isidentifier()):
            parts.append(f"%({following.text})s")
            index += 1
            token = following
        else:
            parts.append(sql[token.start : token.end + 1].replace("%", "%%"))
        position = token.end + 1
        index += 1
    parts.append(sql[position:].replace("%", "%%"))
    return "".join(parts)


# SQLite's date-time functions called with 'now', as to_char formats.
_NOW_FORMATS = {"DATETIME": "YYYY-MM-DD HH24:MI:SS", "DATE": "YYYY-MM-DD", "TIME": "HH24:MI:SS"}
_COLUMNS = frozenset(name for table in TABLES for name in table.column_names)


def _now(node: exp.Expression, name: str) -> exp.Expression:
    """Return PostgreSQL's equivalent of SQLite's ``datetime('now'[, 'localtime'])``."""
    import sqlglot
    from sqlglot import exp

    args = [arg.this if isinstance(arg, exp.Literal) and arg.is_string else None
            for arg in ([node.this] if isinstance(node, exp.Date) else node.expressions)]
    if args == ["now"]:
        moment = "now() AT TIME ZONE 'UTC'"
    elif args == ["now", "localtime"]:
        moment = "localtimestamp"
    else:
        raise UnsupportedSQLError(
            f"Cannot run {node.sql(dialect='sqlite')} on PostgreSQL: only "
            f"{name.lower()}('now') and {name.lower()}('now', 'localtime') are translated")
    return cast("exp.Expression", sqlglot.parse_one(
        f"to_char({moment}, '{_NOW_FORMATS[name]}')", read="postgres"))


_SAFE = "nx_"  # prefix of renamed :name placeholders while sqlglot parses them


def _safe_placeholders(query: str) -> str:
    """Rename ``:name`` placeholders to ``:nx_name``, so that ``:when`` or ``:end`` parse."""
    from sqlglot import TokenType
    from sqlglot.dialects.sqlite import SQLite

    tokens = SQLite().tokenize(query)
    parts, position = [], 0
    for token, following in zip(tokens, tokens[1:]):
        if token.token_type == TokenType.COLON and following.start == token.end + 1 \
                and following.text.isidentifier():
            parts.append(query[position : following.start] + _SAFE)
            position = following.start
    return "".join(parts) + query[position:]


@lru_cache(maxsize=256)
def to_postgres(query: str) -> str:
    """Return ``query`` (SQLite's dialect) in PostgreSQL's, placeholders kept as ``?``/``:name``.

    Raises
    ------
    UnsupportedSQLError
        The SQL cannot be carried over; the message names the construct.
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, UnsupportedError
    from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

    try:
        statements = [tree for tree in sqlglot.parse(_safe_placeholders(query), read="sqlite")
                      if tree is not None]
    except ParseError as exc:
        reason = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
        raise UnsupportedSQLError(f"Cannot translate this SQL for PostgreSQL: {reason}") from None
    if len(statements) != 1:
        raise UnsupportedSQLError("You can only execute one statement at a time.")
    tree = statements[0]
    if isinstance(tree, exp.Pragma):
        raise UnsupportedSQLError(
            f"Cannot run {tree.sql(dialect='sqlite')} on PostgreSQL: PRAGMA is SQLite's own")
    if isinstance(tree, exp.Insert) and tree.args.get("alternative"):
        alternative = str(tree.args["alternative"]).upper()
        if alternative != "IGNORE":
            raise UnsupportedSQLError(
                f"Cannot run INSERT OR {alternative} on PostgreSQL: it has no equivalent there "
                f"(write INSERT ... ON CONFLICT (...) DO UPDATE SET ... instead)")
        tree.set("alternative", None)
        tree.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))

    def carry_over(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table and node.this.quoted \
                and node.name.lower() not in _COLUMNS:
            return exp.Literal.string(node.name)  # SQLite reads "text" as a string here
        if isinstance(node, exp.Anonymous) and str(node.this).upper() in _NOW_FORMATS:
            return _now(node, str(node.this).upper())
        if isinstance(node, exp.Date) and isinstance(node.this, exp.Literal):
            return _now(node, "DATE")
        if isinstance(node, exp.Placeholder):  # kept for the backend's own conversion
            return exp.var(f":{str(node.this)[len(_SAFE):]}" if node.this else "?")
        return node

    tree = normalize_identifiers(tree.transform(carry_over), dialect="sqlite")
    try:
        return tree.sql(dialect="postgres", identify=True,
                        unsupported_level=sqlglot.ErrorLevel.RAISE)
    except UnsupportedError as exc:
        raise UnsupportedSQLError(f"Cannot run this SQL on PostgreSQL: {exc}") from None
