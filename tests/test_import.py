"""Importing the package does no I/O and needs no configuration; only config reads the env."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import psycopg

import nexusLIMS

PACKAGE = Path(nexusLIMS.__file__).parent

# Runs in a fresh interpreter with no nexusLIMS variable set. The spies are in
# place before anything of nexusLIMS is imported. For each argument, every
# nexusLIMS module is forgotten and the named modules imported again ("ALL":
# every module pkgutil finds), and the database connections opened counted.
# Then the configuration is looked for only when the database is used.
CHILD = textwrap.dedent(
    """
    import importlib, json, pkgutil, sqlite3, sys

    calls = []
    real_sqlite = sqlite3.connect

    def sqlite_spy(*args, **kwargs):
        calls.append("sqlite3.connect" + repr(args))
        return real_sqlite(*args, **kwargs)

    sqlite3.connect = sqlite_spy

    try:
        import psycopg
    except ImportError:  # no postgres extra: no PostgreSQL connection to spy on
        psycopg = None
    else:
        real_pg = psycopg.connect

        def pg_spy(*args, **kwargs):
            calls.append("psycopg.connect" + repr(args))
            return real_pg(*args, **kwargs)

        psycopg.connect = pg_spy
        psycopg.Connection.connect = classmethod(lambda cls, *a, **k: pg_spy(*a, **k))

    control, targets = sys.argv[1], sys.argv[2:]
    report = {}
    for target in targets:
        for name in [m for m in sys.modules if m == "nexusLIMS" or m.startswith("nexusLIMS.")]:
            del sys.modules[name]
        if target == "ALL":
            import nexusLIMS
            modules = ["nexusLIMS"] + sorted(
                info.name for info in pkgutil.walk_packages(nexusLIMS.__path__, "nexusLIMS.")
            )
        else:
            modules = [target]
        before = len(calls)
        imported, needs_extra = [], []
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError:
                if psycopg is not None:
                    raise
                needs_extra.append(name)  # the PostgreSQL backend, without its extra
            else:
                imported.append(name)
        report[target] = {"imported": imported, "needs_extra": needs_extra,
                          "connect_calls": calls[before:]}

    before = len(calls)
    from nexusLIMS.instruments import instrument_db
    try:
        len(instrument_db)
    except Exception as exc:
        error = type(exc).__name__ + ": " + str(exc)
    else:
        error = None
    report["use"] = {"error": error, "connect_calls": calls[before:]}

    # The control: the spies see the package's own connections.
    from nexusLIMS.db.schema import init_db
    before = len(calls)
    init_db(control)
    report["control"] = {"connect_calls": calls[before:],
                         "pg_spied": psycopg is not None and psycopg.connect is pg_spy}
    print(json.dumps(report))
    """
)

FRONT_MODULES = [
    "nexusLIMS.db.session_handler",
    "nexusLIMS.instruments",
    "nexusLIMS.db",
    "nexusLIMS.utils",
    "nexusLIMS.db.cli",
]


def _clean_env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith("nexuslims_")
        and key not in ("NX_DB_PATH", "mmfnexus_path", "_ARGCOMPLETE")
    }
    env["HOME"] = env["USERPROFILE"] = str(home)
    return env


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One child interpreter: each front module alone, then every module."""
    root = tmp_path_factory.mktemp("import")
    cwd, home, control = root / "cwd", root / "home", root / "control"
    for folder in (cwd, home, control):
        folder.mkdir()
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD, str(control / "control.sqlite"),
         *FRONT_MODULES, "ALL"],
        cwd=cwd, env=_clean_env(home), capture_output=True, text=True, check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    data["files"] = sorted(str(p.relative_to(root)) for folder in (cwd, home)
                           for p in folder.rglob("*"))
    data["control_files"] = sorted(p.name for p in control.iterdir())
    return data


@pytest.mark.slow
@pytest.mark.parametrize("module", FRONT_MODULES)
def test_importing_a_front_module_alone_opens_no_database(
    report: dict[str, Any], module: str
) -> None:
    assert report[module]["imported"] == [module]
    assert report[module]["connect_calls"] == []


def _module_names() -> set[str]:
    """The module names of every .py file of the package, from the file system."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


@pytest.mark.slow
def test_importing_every_module_opens_no_database(report: dict[str, Any]) -> None:
    imported = set(report["ALL"]["imported"])
    # Only the PostgreSQL backend needs its extra to be imported.
    needs_extra = {"nexusLIMS.db.backends.postgresql"} if psycopg is None else set()
    assert set(report["ALL"]["needs_extra"]) == needs_extra
    assert imported == _module_names() - needs_extra
    assert {
        "nexusLIMS.db.cli", "nexusLIMS.db.cli.commands", "nexusLIMS.db.backends.postgresql",
        "nexusLIMS.db.backends.sqlite", "nexusLIMS.db.legacy_sql", "nexusLIMS.db.pytest_plugin",
        "nexusLIMS.db.__main__", "nexusLIMS.db.connection", "nexusLIMS.db.summary",
    } - needs_extra <= imported
    assert report["ALL"]["connect_calls"] == []


@pytest.mark.slow
def test_the_missing_configuration_shows_only_when_the_database_is_used(
    report: dict[str, Any],
) -> None:
    error = report["use"]["error"]
    assert isinstance(error, str)
    assert error.startswith("DatabaseConfigError: ")
    assert "nexusLIMS_db_path" in error
    assert report["use"]["connect_calls"] == []


@pytest.mark.slow
def test_the_spies_see_the_packages_connections(report: dict[str, Any]) -> None:
    calls = report["control"]["connect_calls"]
    assert calls
    assert all(call.startswith("sqlite3.connect(") for call in calls)
    assert any("control.sqlite" in call for call in calls)
    assert report["control"]["pg_spied"] is (psycopg is not None)
    assert report["control_files"] == ["control.sqlite"]


@pytest.mark.slow
def test_importing_creates_no_file(report: dict[str, Any]) -> None:
    assert report["files"] == []


# ------------------------------------------------ who reads the environment


def _env_reads(path: Path) -> list[tuple[int, str, ast.AST]]:
    """``os.environ`` / ``os.getenv`` / ``environ.get`` uses in one file: (line, text, parent)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    os_names = {"os"}
    environ_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {alias.asname or alias.name for alias in node.names if alias.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            environ_names |= {alias.asname or alias.name for alias in node.names
                              if alias.name in ("environ", "getenv")}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        hit = (
            isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and ((node.value.id in os_names and node.attr in ("environ", "getenv", "environb"))
                 or (node.value.id in environ_names | {"environ"} and node.attr == "get"))
        ) or (isinstance(node, ast.Name) and node.id in environ_names)
        if hit:
            parent = parents.get(node, node)
            found.append((node.lineno, ast.unparse(parent), parent))
    return found


def test_only_config_reads_the_environment() -> None:
    readers = {
        str(path.relative_to(PACKAGE.parent)): reads
        for path in sorted(PACKAGE.rglob("*.py"))
        if (reads := _env_reads(path))
    }
    assert "nexusLIMS/db/config.py" in readers
    # The command line asks whether a shell wants completions (argcomplete's
    # protocol); that is its only look at the environment, pinned below.
    assert set(readers) <= {"nexusLIMS/db/config.py", "nexusLIMS/db/cli/__init__.py"}, {
        name: [(line, text) for line, text, _ in reads] for name, reads in readers.items()
    }


def test_the_cli_reads_only_the_completion_request() -> None:
    reads = _env_reads(PACKAGE / "db" / "cli" / "__init__.py")
    for line, text, parent in reads:
        assert isinstance(parent, ast.Compare), (line, text)
        assert isinstance(parent.left, ast.Constant), (line, text)
        assert parent.left.value == "_ARGCOMPLETE", (line, text)
    for name in ("commands.py", "output.py"):
        assert _env_reads(PACKAGE / "db" / "cli" / name) == []
