"""Issue 2, point 3: importing the package does no I/O and needs no configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Runs in a fresh interpreter: counts sqlite3.connect calls made by the imports,
# then checks the database is only looked for when a function is called.
SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sqlite3, sys

    calls = []
    real_connect = sqlite3.connect

    def spy(*args, **kwargs):
        calls.append(repr(args))
        return real_connect(*args, **kwargs)

    sqlite3.connect = spy
    modules = sys.argv[1:]
    if modules == ["ALL"]:
        import nexusLIMS
        modules = ["nexusLIMS"] + [
            info.name
            for info in pkgutil.walk_packages(nexusLIMS.__path__, "nexusLIMS.")
        ]
    for name in modules:
        importlib.import_module(name)

    from nexusLIMS.instruments import instrument_db
    try:
        len(instrument_db)
    except Exception as exc:
        error = type(exc).__name__ + ": " + str(exc)
    else:
        error = None
    print(json.dumps({"imported": modules, "connect_calls": calls, "error": error}))
    """
)

MODULES = [
    "nexusLIMS.db.session_handler",
    "nexusLIMS.instruments",
    "nexusLIMS.db",
    "nexusLIMS.utils",
]


def _clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith("nexuslims_")
        and key not in ("NX_DB_PATH", "mmfnexus_path")
    }


def _run(args: list[str], cwd: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", SCRIPT, *args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("module", MODULES)
def test_import_needs_no_database_or_variables(module: str, tmp_path: Path) -> None:
    report = _run([module], tmp_path)
    assert report["imported"] == [module]
    assert report["connect_calls"] == []
    # The missing configuration shows up only when the database is used.
    error = report["error"]
    assert isinstance(error, str)
    assert error.startswith("DatabaseConfigError: ")
    assert "nexusLIMS_db_path" in error
    assert list(tmp_path.iterdir()) == []


def test_all_four_modules_together(tmp_path: Path) -> None:
    report = _run(MODULES, tmp_path)
    assert report["connect_calls"] == []
    assert list(tmp_path.iterdir()) == []


def test_every_module_of_the_package_imports_without_io(tmp_path: Path) -> None:
    report = _run(["ALL"], tmp_path)
    imported = report["imported"]
    assert isinstance(imported, list)
    assert set(MODULES) <= set(imported)
    assert "nexusLIMS.db.connection" in imported
    assert report["connect_calls"] == []
    assert list(tmp_path.iterdir()) == []
