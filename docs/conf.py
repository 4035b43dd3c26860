"""Sphinx configuration of the nexuslims-db documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(after ``pip install -e ".[docs]"``). No database is needed: importing and
documenting the package opens none.
"""

from __future__ import annotations

import nexusLIMS

project = "nexuslims-db"
author = "The nexusLIMS.db maintainers"
copyright = "the nexusLIMS.db maintainers; MIT licence"  # noqa: A001
release = nexusLIMS.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# NumPy-style docstrings, as NexusLIMS writes them.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
    # Sphinx shows a dict's value by iterating it, and instrument_db is the
    # instruments table of the configured database: documented by hand (its
    # repr and pydoc need no database, but len() and iteration do).
    # InstrumentDB's refused dict methods are left out too.
    "exclude-members": "instrument_db, clear, pop, popitem, setdefault, update",
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "both"

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "The NexusLIMS session database", "fixed_sidebar": True}
html_title = f"nexuslims-db {release}"
