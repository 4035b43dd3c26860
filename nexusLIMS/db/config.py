"""Configuration: every environment variable the package reads, read at call time.

Nothing here is cached: a test (or an admin) that changes a variable is
seen by the next call. No other module of the package reads the environment.

=============================  ===============================================
variable                       meaning
=============================  ===============================================
``nexusLIMS_db_path``          the SQLite file, or a ``postgresql://`` URL
``NX_DB_PATH``                 used when ``nexusLIMS_db_path`` is unset (2.x)
``nexusLIMS_db_timeout``       how long to wait for another writer's lock:
                               seconds, or with a unit (``90``, ``2m``; 30)
``nexusLIMS_db_mark_after``    age after which ``mark`` may mark a session
                               that a writer could still complete (3d)
``nexusLIMS_db_pool_size``     most connections a process keeps open to a
                               PostgreSQL server (8)
``nexusLIMS_user``             user stored on RECORD_GENERATION logs
``mmfnexus_path``              root folder of the instruments' data
``NEXUSLIMS_TEST_POSTGRES``    a server URL for the PostgreSQL tests, instead
                               of a throwaway server
=============================  ===============================================
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal, Optional, Union
from urllib.parse import unquote

from nexusLIMS.db.errors import DatabaseConfigError, DatabaseNotFoundError

__all__ = [
    "DEFAULT_MARK_AFTER",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TIMEOUT",
    "ENV_DATA_ROOT",
    "ENV_DB_PATH",
    "ENV_DB_PATH_2X",
    "ENV_MARK_AFTER",
    "ENV_POOL_SIZE",
    "ENV_TEST_POSTGRES",
    "ENV_TIMEOUT",
    "ENV_USER",
    "Backend",
    "DatabaseLocation",
    "DatabaseRef",
    "configured_database",
    "data_root",
    "locate_database",
    "lock_timeout",
    "mark_after",
    "pool_size",
    "record_user",
    "test_postgres_url",
]

ENV_DB_PATH = "nexusLIMS_db_path"
ENV_DB_PATH_2X = "NX_DB_PATH"
ENV_TIMEOUT = "nexusLIMS_db_timeout"
ENV_MARK_AFTER = "nexusLIMS_db_mark_after"
ENV_POOL_SIZE = "nexusLIMS_db_pool_size"
ENV_USER = "nexusLIMS_user"
ENV_DATA_ROOT = "mmfnexus_path"
ENV_TEST_POSTGRES = "NEXUSLIMS_TEST_POSTGRES"

DEFAULT_TIMEOUT = 30.0
DEFAULT_MARK_AFTER = timedelta(days=3)
DEFAULT_POOL_SIZE = 8

Backend = Literal["sqlite", "postgresql"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"
_SECRET_PARAMS = frozenset({"password", "passfile", "sslpassword"})


@dataclass(frozen=True)
class DatabaseLocation:
    """Where the NexusLIMS database is: a SQLite file or a PostgreSQL URL.

    Attributes
    ----------
    backend
        ``"sqlite"`` or ``"postgresql"``.
    target
        The absolute path of the SQLite file, or the PostgreSQL URL as given
        (which may hold a password: show :meth:`describe` instead).
    source
        Where the location came from, for messages: ``"the path given"`` or
        the environment variable's name.
    """

    backend: Backend
    target: str
    source: str = field(default="the path given", compare=False)

    @property
    def path(self) -> Path:
        """The SQLite file (only for the ``sqlite`` backend)."""
        if self.backend != "sqlite":
            raise DatabaseConfigError(f"{self.describe()} is not a SQLite file")
        return Path(self.target)

    def describe(self) -> str:
        """Return the location for messages: the path, or the URL without secrets.

        Never raises and never shows a password, whatever the text: a URL
        that is not valid is shown as far as it can be read, less its password
        and its ``password``, ``sslpassword`` and ``passfile`` parameters.
        """
        if self.backend == "sqlite":
            return self.target
        scheme, userinfo, host, rest = _split_url(_without_secret_params(self.target))
        user = "" if userinfo is None else userinfo.partition(":")[0]
        return f"{scheme}://{user + '@' if user else ''}{host}{rest}"

    def secrets(self) -> tuple[str, ...]:
        """Return the secrets the URL holds (its password, as written and decoded), longest first.

        Messages that quote the URL or its parts (a driver's, above all) are
        shown through :meth:`scrub`, which removes them.
        """
        if self.backend == "sqlite":
            return ()
        found = {value for key, value in _query_params(self.target)
                 if _unquoted(key).lower() in _SECRET_PARAMS}
        without = _without_secret_params(self.target)
        after = without.partition("://")[2]
        # The user information ends at the first "@" for libpq, at the last one
        # for a password holding an unencoded "@": both are taken as secret.
        # libpq's host ends at the first "/", so a password holding one unencoded is
        # read as a host and a port there: its part before the "/" is secret too.
        for at in {after.find("@"), after.rfind("@")} - {-1}:
            _, colon, password = after[:at].partition(":")
            if colon:
                found |= {password, re.split(r"[/?#]", password)[0]}
        found |= {_unquoted(secret) for secret in found}
        return tuple(sorted((secret for secret in found if secret), key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """Return ``text`` with every secret of the URL (:meth:`secrets`) replaced by ``***``."""
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text

    def server(self) -> dict[str, Optional[str]]:
        """Return what the URL says of ``user``, ``host``, ``port`` and ``dbname`` (None: not said).

        Read leniently, for messages about a URL that libpq cannot read; never raises.
        """
        _, userinfo, hostport, rest = _split_url(_without_secret_params(self.target))
        user = None if userinfo is None else _unquoted(userinfo.partition(":")[0]) or None
        if hostport.startswith("["):  # [IPv6]:port
            host, _, after = hostport[1:].partition("]")
            port = after[1:] if after.startswith(":") else ""
        else:
            host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        dbname = rest.split("?", 1)[0].split("#", 1)[0].lstrip("/")
        return {"user": user, "host": _unquoted(host) or None, "port": port or None,
                "dbname": _unquoted(dbname) or None}

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return f"DatabaseLocation({self.backend!r}, {self.describe()!r}, source={self.source!r})"


#: Anything naming a database: a path, a URL, or a resolved location.
DatabaseRef = Union[str, "os.PathLike[str]", DatabaseLocation]

# A query parameter: its separator, key and value (as written).
_PARAM = re.compile(r"([?&])([^=&#]*)=([^&#]*)")
# A libpq connection string (key=value pairs), which is not a URL.
_CONNINFO = re.compile(r"^\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode)"
                       r"\s*=", re.IGNORECASE)


def _unquoted(text: str) -> str:
    """Return ``text`` percent-decoded as libpq decodes URLs (undecodable text as it is)."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return text


def _query_params(url: str) -> list[tuple[str, str]]:
    """Return every ``key=value`` of ``url`` after a ``?`` or ``&``, as written."""
    return [(key, value) for _, key, value in _PARAM.findall(url)]


def _without_secret_params(url: str) -> str:
    """Return ``url`` without its ``password``, ``sslpassword`` and ``passfile`` parameters."""
    def drop(match: re.Match[str]) -> str:
        secret = _unquoted(match.group(2)).lower() in _SECRET_PARAMS
        return match.group(1) + "\x00" if secret else match.group(0)

    kept = _PARAM.sub(drop, url)
    # Tidy the separators the dropped parameters leave: "?\0&a=1" -> "?a=1".
    kept = re.sub(r"([?&])\x00(?:&|(?=#)|$)", r"\1", kept)
    return re.sub(r"[?&](?=#|$)", "", kept.replace("\x00", ""))


def _split_url(url: str) -> tuple[str, Optional[str], str, str]:
    """Return a URL's scheme, user information (None: none), host and port, and the rest.

    Lenient: any text splits, nothing is decoded or checked. The user
    information ends at the last ``@`` (a password may hold an unencoded
    ``/``, ``?`` or ``@``); the host ends at the first ``/``, ``?`` or ``#`` after it.
    """
    scheme, _, after = url.partition("://")
    userinfo: Optional[str] = None
    if "@" in after:
        userinfo, _, after = after.rpartition("@")
    end = min((index for index in map(after.find, "/?#") if index >= 0), default=len(after))
    return scheme, userinfo, after[:end], after[end:]


def _from_text(text: str, source: str) -> DatabaseLocation:
    lowered = text.lower()
    if lowered.startswith(_POSTGRES_SCHEMES):
        return DatabaseLocation("postgresql", text, source)
    if lowered.startswith(_SQLITE_SCHEME):
        text = text[len(_SQLITE_SCHEME):]
        if not text:
            raise DatabaseConfigError(f"The SQLite URL from {source} names no file")
    elif _CONNINFO.match(text):
        # Never quoted: it may hold a password.
        raise DatabaseConfigError(
            f"The database from {source} is a libpq connection string (key=value), which is "
            f"not supported; use a URL: postgresql://user@host:port/dbname"
        )
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", text):
        scheme = text.partition("://")[0]
        hint = " (a SQLite URL has three slashes: sqlite:///path)" \
            if scheme.lower() == "sqlite" else ""
        raise DatabaseConfigError(
            f"Unsupported database URL scheme {scheme!r} (from {source}){hint}; use a file "
            f"path, sqlite:///path or postgresql://user@host:port/dbname"
        )
    path = Path(os.path.expanduser(text)).absolute()
    return DatabaseLocation("sqlite", str(path), source)


def locate_database(
    database: Optional[DatabaseRef] = None, *, must_exist: bool = True
) -> DatabaseLocation:
    """Return where the database is: ``database`` if given, else from the environment.

    The environment is read at every call: ``nexusLIMS_db_path``, or
    ``NX_DB_PATH`` when the former is unset or empty. A path has ``~``
    expanded and is made absolute; ``sqlite:///path`` is a path too.

    Parameters
    ----------
    database
        An explicit path or URL, which takes precedence over the environment.
    must_exist
        For a SQLite file: raise :class:`DatabaseNotFoundError` when it does
        not exist (a server database is checked when connecting).

    Raises
    ------
    DatabaseConfigError
        Neither an explicit database nor either variable is set, or the URL
        scheme is not supported.
    DatabaseNotFoundError
        ``must_exist`` and no SQLite file exists at the path.
    """
    if isinstance(database, DatabaseLocation):
        location = database
    elif database is not None and os.fspath(database) != "":
        location = _from_text(os.fspath(database), "the path given")
    else:
        for var in (ENV_DB_PATH, ENV_DB_PATH_2X):
            value = os.environ.get(var)
            if value:
                location = _from_text(value, var)
                break
        else:  # pragma: no branch
            raise DatabaseConfigError(
                f"No NexusLIMS database configured: set the environment variable "
                f"{ENV_DB_PATH} (or {ENV_DB_PATH_2X}) to the path of the SQLite file "
                f"or to a postgresql:// URL"
            )
    if location.backend == "sqlite":
        path = location.path
        if must_exist and not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise DatabaseNotFoundError(
                f"NexusLIMS database {location.target!r} (from {location.source}) {what}; "
                f"no database was created (use init_db or 'nexuslims-db init' to make one)"
            )
        if path.is_dir():
            raise DatabaseConfigError(
                f"NexusLIMS database {location.target!r} (from {location.source}) is a folder, "
                f"not a database file; name a file in it, such as "
                f"{str(path / 'nexuslims_db.sqlite')!r}"
            )
    return location


def configured_database() -> Optional[str]:
    """Return the database the environment names (``nexusLIMS_db_path``, else ``NX_DB_PATH``)."""
    return os.environ.get(ENV_DB_PATH) or os.environ.get(ENV_DB_PATH_2X) or None


def _seconds(variable: str, raw: str) -> float:
    """Return ``raw`` as a finite, non-negative number of seconds ('3d', '12h', '90m', '30')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", raw)
    if match is None:
        raise DatabaseConfigError(
            f"{variable} must be a number of seconds, optionally with a unit "
            f"(e.g. 30, 90m, 12h, 3d), not {raw!r}"
        )
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not math.isfinite(value):
        raise DatabaseConfigError(f"{variable} is too large: {raw!r}")
    return value


def lock_timeout() -> float:
    """Return how many seconds to wait for another writer's lock.

    ``nexusLIMS_db_timeout`` (seconds, or with a unit: ``90``, ``2m``) when
    set, else :data:`DEFAULT_TIMEOUT`.

    Raises
    ------
    DatabaseConfigError
        The variable is set to something that is not a non-negative number.
    """
    raw = os.environ.get(ENV_TIMEOUT, "")
    return DEFAULT_TIMEOUT if raw.strip() == "" else _seconds(ENV_TIMEOUT, raw)


def mark_after() -> timedelta:
    """Return how old an incomplete session must be before ``mark`` may mark it.

    ``nexusLIMS_db_mark_after`` (seconds, or with a unit: ``90m``, ``12h``,
    ``3d``) when set, else :data:`DEFAULT_MARK_AFTER`.
    """
    raw = os.environ.get(ENV_MARK_AFTER, "")
    if raw.strip() == "":
        return DEFAULT_MARK_AFTER
    return timedelta(seconds=_seconds(ENV_MARK_AFTER, raw))


def pool_size() -> int:
    """Return the most connections a process opens to one PostgreSQL database at once.

    ``nexusLIMS_db_pool_size`` (a whole number, 1 or more) when set, else
    :data:`DEFAULT_POOL_SIZE`. A call that finds them all busy waits (at
    most ``nexusLIMS_db_timeout``) for one to be free.

    Raises
    ------
    DatabaseConfigError
        The variable is set to something else.
    """
    raw = os.environ.get(ENV_POOL_SIZE, "").strip()
    if raw == "":
        return DEFAULT_POOL_SIZE
    if not raw.isdigit() or int(raw) < 1:
        raise DatabaseConfigError(f"{ENV_POOL_SIZE} must be a whole number, 1 or more, not {raw!r}")
    return int(raw)


def record_user() -> Optional[str]:
    """Return the user name stored on RECORD_GENERATION logs (``nexusLIMS_user``), if set."""
    return os.environ.get(ENV_USER)


def data_root() -> str:
    """Return the root folder of the instruments' data (``mmfnexus_path``).

    Raises
    ------
    DatabaseConfigError
        The variable is not set.
    """
    root = os.environ.get(ENV_DATA_ROOT)
    if not root:
        raise DatabaseConfigError(
            f"Set the environment variable {ENV_DATA_ROOT} to the root folder "
            f"of the instrument data to look instruments up by file path"
        )
    return root


def test_postgres_url() -> Optional[str]:
    """Return the PostgreSQL server URL the tests should use instead of starting one."""
    return os.environ.get(ENV_TEST_POSTGRES) or None
