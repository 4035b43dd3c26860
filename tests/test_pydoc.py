"""help(), pydoc and Sphinx's autodoc render every module with no database configured.

They show a module's data by its ``repr``, so nothing a module holds may open
(or need) a database to be shown.
"""

from __future__ import annotations

import importlib
import pkgutil
import pydoc
from pathlib import Path
from types import ModuleType

import pytest

import nexusLIMS
from nexusLIMS.db.config import ENV_DB_PATH, ENV_DB_PATH_2X
from nexusLIMS.db.connection import tracing
from nexusLIMS.db.pytest_plugin import missing_postgres_extra
from nexusLIMS.instruments import instrument_db

MODULES = ["nexusLIMS", *sorted(
    info.name for info in pkgutil.walk_packages(nexusLIMS.__path__, "nexusLIMS.")
)]


@pytest.fixture
def nothing_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No database variable, and an empty working and home folder; returns the folder."""
    for name in (ENV_DB_PATH, ENV_DB_PATH_2X):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _render(module: ModuleType) -> tuple[str, str]:
    """The module as ``help()`` shows it (text) and as ``pydoc -w`` writes it (HTML)."""
    text = pydoc.render_doc(module, renderer=pydoc.plaintext)
    html = pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, module.__name__))
    return text, html


def test_every_module_renders_without_a_database(nothing_configured: Path) -> None:
    events: list[tuple[str, str]] = []
    rendered = []
    with tracing(lambda event, text: events.append((event, text))):
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:  # the PostgreSQL backend, without the postgres extra
                assert missing_postgres_extra() is not None
                assert name == "nexusLIMS.db.backends.postgresql"
                continue
            text, html = _render(module)
            assert name in text
            assert name in html
            rendered.append(name)
    assert events == []
    assert len(rendered) >= len(MODULES) - 1
    assert list(nothing_configured.iterdir()) == []
    assert {"nexusLIMS.instruments", "nexusLIMS.db.session_handler",
            "nexusLIMS.db.cli"} <= set(MODULES)


def test_help_shows_instrument_db_as_a_placeholder_without_a_database(
    nothing_configured: Path,
) -> None:
    shown = repr(instrument_db)
    assert shown.startswith("<instrument_db: ")
    assert f"${ENV_DB_PATH}" in shown
    assert "none is configured" in shown
    text = pydoc.render_doc(importlib.import_module("nexusLIMS.instruments"),
                            renderer=pydoc.plaintext)
    assert "instrument_db = <instrument_db: " in text


def test_with_a_database_instrument_db_shows_its_instruments(nexuslims_instruments: dict) -> None:
    assert repr(instrument_db) == repr(dict(nexuslims_instruments))
    assert "FEI-Titan-TEM-635816" in repr(instrument_db)
