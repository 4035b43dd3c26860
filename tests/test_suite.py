"""The suite itself (issue 17, point 1): no test passes or fails on how fast the machine is.

Wall-clock figures belong in ``benchmarks/``. Waits in the suite are bounded
only to catch a hang; these checks keep the two timing checks hypothesis
makes by default (a per-example deadline, the ``too_slow`` health check of
data generation) off every property test, and the stopwatches out of tests.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck

TESTS = Path(__file__).resolve().parent
#: What measures elapsed time for a figure; waits use time.monotonic() deadlines.
STOPWATCHES = {"perf_counter", "perf_counter_ns", "process_time", "thread_time", "timeit"}


def test_no_property_test_has_a_deadline_or_a_slowness_check(request: pytest.FixtureRequest
                                                             ) -> None:
    found: dict[str, Any] = {}
    for item in request.session.items:
        function = getattr(item, "obj", None)
        settings = getattr(function, "_hypothesis_internal_use_settings", None)
        if settings is not None:
            found[item.nodeid] = (settings.deadline,
                                  HealthCheck.too_slow in settings.suppress_health_check)
    if not found:
        pytest.skip("no property test collected in this run")
    assert {node: values for node, values in found.items() if values != (None, True)} == {}


def test_no_test_module_uses_a_stopwatch() -> None:
    used = {}
    for path in sorted(TESTS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  for alias in node.names}
        names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                  for alias in node.names}
        if names & STOPWATCHES:
            used[path.name] = sorted(names & STOPWATCHES)
    assert used == {}
