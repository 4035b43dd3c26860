"""The package's shape: layers that read top-down, no import circle, one seam to the databases.

Read from the source (``ast``), every import counts: at module level, inside
functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nexusLIMS

PACKAGE = Path(nexusLIMS.__file__).parent

#: The layers, lowest first; a module imports only from its own layer or lower ones.
LAYERS: list[set[str]] = [
    {"nexusLIMS", "nexusLIMS.utils", "nexusLIMS.db.enums", "nexusLIMS.db.errors",
     "nexusLIMS.db.validation"},
    {"nexusLIMS.db.config", "nexusLIMS.db.timestamps"},
    {"nexusLIMS.db.tables"},
    {"nexusLIMS.db.queries", "nexusLIMS.db.backends.ddl", "nexusLIMS.db.backends.translate"},
    {"nexusLIMS.db.backends.base"},
    {"nexusLIMS.db.backends.pg_connections"},
    {"nexusLIMS.db.backends.sqlite", "nexusLIMS.db.backends.postgresql"},
    {"nexusLIMS.db.backends"},
    {"nexusLIMS.db.trace"},
    {"nexusLIMS.db.databases"},
    {"nexusLIMS.db.connection"},
    {"nexusLIMS.db.schema"},
    {"nexusLIMS.db.integrity"},
    {"nexusLIMS.db.migrations"},
    {"nexusLIMS.db.instruments"},
    {"nexusLIMS.db.pairing"},
    {"nexusLIMS.db.logs"},
    {"nexusLIMS.db.session"},
    {"nexusLIMS.db.sessions"},
    {"nexusLIMS.db.claims"},
    {"nexusLIMS.db.summary", "nexusLIMS.db.transfer", "nexusLIMS.db.legacy_sql",
     "nexusLIMS.db.samples"},
    {"nexusLIMS.db", "nexusLIMS.db.session_handler", "nexusLIMS.instruments"},
    {"nexusLIMS.db.cli.output", "nexusLIMS.db.cli.parsing"},
    {"nexusLIMS.db.cli.commands"},
    {"nexusLIMS.db.cli", "nexusLIMS.db.__main__", "nexusLIMS.db.testing"},
    {"nexusLIMS.db.pytest_plugin"},
]
#: Where the backend's name may be compared: the backends, the configuration
#: that reads it from a URL, and the command line's presentation.
NAME_ALLOWED = ("db/backends/", "db/config.py", "db/cli/")
BACKEND_NAMES = {"sqlite", "postgresql", "postgres"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                       else node.module for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_every_module_is_in_a_layer() -> None:
    layered = set().union(*LAYERS)
    assert set(MODULES) - layered == set(), "put the new module in a layer"
    assert layered - set(MODULES) == set(), "a layer names a module that is gone"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_from_its_layer_or_below(name: str) -> None:
    level = {module: index for index, layer in enumerate(LAYERS) for module in layer}
    above = sorted(target for target in GRAPH[name] if level[target] > level[name])
    assert above == [], f"{name} reaches up to {above}"


def test_no_import_circle() -> None:
    # Depth-first search: a back edge is a circle.
    state: dict[str, int] = {}
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_no_module_but_the_backends_branches_on_the_backends_name() -> None:
    found = []
    for path in MODULES.values():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(NAME_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                values = [node.left, *node.comparators]
                if any(isinstance(v, ast.Constant) and v.value in BACKEND_NAMES for v in values) \
                        or any(isinstance(v, ast.Attribute) and v.attr == "dialect"
                               for v in values):
                    found.append(f"{relative}:{node.lineno}")
    assert found == []


def test_the_backends_never_reach_the_connection_wrapper() -> None:
    backends = [name for name in MODULES if name.startswith("nexusLIMS.db.backends")]
    wrapper_layers = {"nexusLIMS.db.connection", "nexusLIMS.db.databases", "nexusLIMS.db.schema"}
    assert {name: GRAPH[name] & wrapper_layers for name in backends} == {
        name: set() for name in backends}
