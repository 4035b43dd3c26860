"""The database backends: everything that differs between SQLite and PostgreSQL.

A backend works on its driver's raw connections and never on the package's
:class:`~nexusLIMS.db.connection.Connection` wrapper. It opens connections
(and keeps them, where opening costs round trips), begins transactions the
way its locking needs, runs statements written once with ``?`` placeholders,
classifies its driver's errors into the package's
(:mod:`nexusLIMS.db.errors`), renders the schema as its SQL
(:attr:`Backend.ddl`), answers the schema questions the package asks
(tables, columns, indexes, the schema version), and carries out the
mechanics of migrating, backing up and compacting a database. Capability
attributes tell the layers above what the backend does well, so that they
never ask which backend it is.

A third backend is one module here implementing :class:`Backend`, one line
in :func:`backend_for`, and its parameter in the tests' fixtures.
"""

from __future__ import annotations

from nexusLIMS.db.backends.base import (
    Backend,
    Begin,
    Pool,
    insert_statement,
    translated,
    writes_to_parent,
)
from nexusLIMS.db.backends.ddl import DIALECTS, Dialect
from nexusLIMS.db.config import DatabaseLocation
from nexusLIMS.db.errors import DatabaseConfigError

__all__ = [
    "Backend",
    "Begin",
    "Pool",
    "backend_for",
    "dialect_named",
    "insert_statement",
    "translated",
    "writes_to_parent",
]


def dialect_named(name: str) -> Dialect:
    """Return the dialect called ``name`` (``"sqlite"`` or ``"postgresql"``); no driver needed."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"Unknown SQL dialect {name!r}; use one of: "
                         f"{', '.join(DIALECTS)}") from None


def backend_for(location: DatabaseLocation) -> Backend:
    """Return the backend of ``location`` (importing PostgreSQL's only when needed)."""
    if location.backend == "sqlite":
        from nexusLIMS.db.backends.sqlite import SQLITE

        return SQLITE
    try:
        from nexusLIMS.db.backends.postgresql import POSTGRESQL
    except ImportError as exc:
        from nexusLIMS import DISTRIBUTION

        raise DatabaseConfigError(
            f"{location.describe()} is a PostgreSQL database, which needs the postgres extra: "
            f'pip install "{DISTRIBUTION}[postgres]" ({exc})'
        ) from None
    return POSTGRESQL
