"""nexusLIMS.db.testing: test tooling that imports without pytest; no test server outlives its run.

Issue 17, point 7: the throwaway PostgreSQL server and the builder runner live
in a module the plugin, the tests and the benchmarks share, which imports
without pytest. Issue 20, point 8: a run of pytest ended by Ctrl-C (SIGINT),
SIGTERM or SIGKILL leaves no PostgreSQL server running and no server folder
behind: on Ctrl-C the fixture's finalizer stops the server, on SIGTERM a
handler does, and after a SIGKILL the server's watchdog does, soon after.
The waits below are bounded only to catch a hang.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nexusLIMS.db.config import ENV_TEST_POSTGRES
from nexusLIMS.db.testing import PostgresServer, postgres_bindir, process_alive

ROOT = Path(__file__).resolve().parent.parent
#: The longest anything below may take: only a hang comes near it.
HANG = 120.0


def _bindir() -> Path:
    """PostgreSQL's programs, or skip (fail when the run requires PostgreSQL)."""
    found = postgres_bindir()
    if found is None:
        if os.environ.get(ENV_TEST_POSTGRES) == "require":
            pytest.fail(f"{ENV_TEST_POSTGRES}=require, but PostgreSQL's initdb was not found")
        pytest.skip("PostgreSQL's initdb was not found")
    return found


def _eventually(condition: object, timeout: float = 30.0) -> bool:
    """Whether ``condition()`` becomes true within ``timeout`` seconds (a bound on a hang)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _processes_naming(text: str) -> list[str]:
    """The command lines of live processes that contain ``text`` (Linux; else [])."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and process_alive(int(entry.name)):
            found.append(f"{entry.name}: {command}")
    return found


# ---------------------------------------------------------------- importing


@pytest.mark.slow
def test_the_testing_module_and_the_benchmarks_import_without_pytest() -> None:
    code = textwrap.dedent("""
        import importlib.util, sys
        import nexusLIMS.db.testing
        for name in ("bench_claims", "bench_sessions"):
            spec = importlib.util.spec_from_file_location(name, f"benchmarks/{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("pytest", "_pytest")))
    """)
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_plugin_uses_the_testing_modules_server() -> None:
    from nexusLIMS.db import pytest_plugin

    assert pytest_plugin.PostgresServer is PostgresServer
    assert pytest_plugin.postgres_bindir is postgres_bindir


# ---------------------------------------------------------------- the server itself


@pytest.mark.slow
def test_a_stopped_server_leaves_nothing_and_its_watchdog_ends(tmp_path: Path) -> None:
    server = PostgresServer(_bindir()).start()
    try:
        pid, watchdog = server.pid, server.watchdog
        assert pid is not None
        assert watchdog is not None
        assert process_alive(pid)
        assert watchdog.poll() is None  # it watches while the server runs
        import psycopg

        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
    assert not process_alive(pid)
    assert not server.folder.exists()
    assert watchdog.returncode == 0  # it ended when told, and cleaned nothing up itself
    assert server.watchdog is None
    server.stop()  # again: nothing left to do


def test_a_server_that_cannot_start_leaves_nothing(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path)  # no initdb there
    with pytest.raises((OSError, RuntimeError)):  # (as root: runuser's error)
        server.start()
    assert not server.folder.exists()
    assert server.watchdog is None


# ---------------------------------------------------------------- runs stopped from outside

# A suite that holds the plugin's throwaway server and waits to be stopped.
HOLDER = textwrap.dedent("""
    import time

    import psycopg

    def test_hold_the_server(nexuslims_postgres_server):
        with psycopg.connect(nexuslims_postgres_server, autocommit=True) as conn:
            data = conn.execute("SHOW data_directory").fetchone()[0]
        print(f"\\nSERVER {data}", flush=True)
        time.sleep(600)
""")

# pytest, with Ctrl-C raising KeyboardInterrupt as at a terminal, even when this
# run's shell started it with SIGINT ignored (a background job).
PYTEST = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "import pytest; sys.exit(pytest.main(sys.argv[1:]))")


def _server_data_folder(child: subprocess.Popen[bytes]) -> tuple[Path, bytes]:
    """The data folder the held run reports (``SERVER <folder>``), and its output so far."""
    assert child.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            if not selector.select(timeout=1):
                continue
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                break  # it ended
            seen += chunk
            found = re.search(rb"^SERVER (.+)$", seen, re.MULTILINE)
            if found:
                return Path(os.fsdecode(found.group(1).strip())), seen
    pytest.fail("the held run never reported its server:\n" + seen.decode(errors="replace"))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("ending", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_no_server_outlives_a_run_stopped_from_outside(tmp_path: Path, ending: str) -> None:
    _bindir()
    project = tmp_path / "held"
    project.mkdir()
    (project / "test_held.py").write_text(HOLDER)
    (project / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")}
    env[ENV_TEST_POSTGRES] = "require"  # its own throwaway server, whatever this run uses
    child = subprocess.Popen(
        [sys.executable, "-c", PYTEST, "-s", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "basetemp"), "test_held.py"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        data, before = _server_data_folder(child)
        folder = data.parent
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        assert process_alive(pid)
        assert folder.name.startswith("nexuslims-pg-")

        child.send_signal(getattr(signal, ending))
        rest, _ = child.communicate(timeout=HANG)
        out = (before + rest).decode(errors="replace")
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    if ending == "SIGKILL":
        assert child.returncode == -signal.SIGKILL
        # The watchdog stops the server soon after pytest is gone.
        assert _eventually(lambda: not process_alive(pid) and not folder.exists()), (
            f"server {pid} in {folder} still there 30 s after pytest was killed")
    else:
        if ending == "SIGINT":  # pytest's Ctrl-C: the session's finalizers ran
            assert child.returncode == pytest.ExitCode.INTERRUPTED, out
            assert "KeyboardInterrupt" in out
        else:  # stopped by the handler, then ended by SIGTERM as it would have been
            assert child.returncode == -signal.SIGTERM, out
        # Stopped by pytest itself before it ended (the watchdog had nothing to do).
        assert not process_alive(pid), out
        assert not folder.exists(), out
    if Path("/proc").is_dir():  # nor its watchdog, nor anything else of it
        assert _eventually(lambda: not _processes_naming(str(folder))), _processes_naming(
            str(folder))
