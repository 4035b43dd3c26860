"""Test tooling: a throwaway PostgreSQL server and a runner of record-builder processes.

Like ``procrastinate.testing``, this module is for tests and benchmarks, not
for production code, and it imports without pytest: the package's pytest
plugin (:mod:`nexusLIMS.db.pytest_plugin`), the package's own tests and the
scripts in ``benchmarks/`` use it alike. It is beyond NexusLIMS 1.4.

:class:`PostgresServer`
    A PostgreSQL server in a temporary folder, on a free loopback port,
    started with PostgreSQL's own ``initdb`` and ``pg_ctl`` (found by
    :func:`postgres_bindir`; as root, they run as the ``postgres`` user). No
    server outlives the process that started it: :meth:`PostgresServer.stop`
    runs at exit and on SIGTERM, and a small watchdog process stops the
    server and removes its folder soon after that process is gone, however
    it ended (SIGKILL included).
:func:`run_builders`
    Run record builders in spawned processes on one database until no
    session is left to build, and return what each did
    (:class:`BuilderReport`).

Run as ``python -m nexusLIMS.db.testing watchdog ...``, this module is the
watchdog itself (started by :meth:`PostgresServer.start`; not for people).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any, Callable, Optional, Union

__all__ = [
    "BuilderReport",
    "PostgresServer",
    "postgres_bindir",
    "process_alive",
    "run_builders",
    "skew_clock",
    "unbuilt",
]

# --------------------------------------------------------------------------
# A throwaway PostgreSQL server
# --------------------------------------------------------------------------

#: How often the watchdog looks whether the process that started the server is alive.
WATCH_INTERVAL = 0.25
#: What the server's owner writes to the watchdog when it stops the server itself.
_DISARM = b"disarm\n"
_READY = "ready"


def postgres_bindir() -> Optional[Path]:
    """Return the folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), if installed."""
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                               check=True).stdout.strip()
        if (Path(found) / "initdb").exists() or (Path(found) / "initdb.exe").exists():
            return Path(found)
    except (OSError, subprocess.CalledProcessError):
        pass
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _command(bindir: Path, as_root: bool, *args: str) -> list[str]:
    """Return the command line of a PostgreSQL program (as the ``postgres`` user when root)."""
    command = [str(bindir / args[0]), *args[1:]]
    return ["runuser", "-u", "postgres", "--", *command] if as_root else command


def _postmaster_pid(data: Path) -> Optional[int]:
    """Return the postmaster's process id from ``postmaster.pid`` (None without one)."""
    try:
        return int((data / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    if sys.platform == "win32":  # os.kill would end it
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    if os.path.isdir("/proc/self"):  # Linux: tell a zombie from a live process
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
        except (OSError, IndexError):
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_cluster(folder: Path, bindir: Path, as_root: bool) -> None:
    """Stop the server whose cluster is in ``folder`` (if it runs) and remove the folder."""
    data = folder / "data"
    pid = _postmaster_pid(data)
    if pid is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(_command(bindir, as_root, "pg_ctl", "-D", str(data), "-m",
                                    "immediate", "-w", "stop"),
                           capture_output=True, check=False, timeout=120)
        if process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    # Once its data folder is gone, a postmaster that was still starting (its
    # owner died during pg_ctl start) shuts itself down at its next check of
    # its lock file.
    shutil.rmtree(folder, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL server in a temporary folder, on a free loopback port.

    ``PostgresServer(bindir).start()`` creates the cluster (trust
    authentication, user ``postgres``; fsync off unless ``durable``: for tests only) and starts
    the server; :attr:`url` reaches it. :meth:`stop` stops it and removes
    its folder; it runs at the latest when the process exits, or on SIGTERM,
    or (through the watchdog) soon after the process was killed. It is also
    a context manager.
    """

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = Path(bindir)
        #: Whether a commit survives a crash (fsync on): needed to test one; slower.
        self.durable = durable
        self.folder = Path(tempfile.mkdtemp(prefix="nexuslims-pg-"))
        self.port = _free_port()
        self.as_root = _as_root()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.watchdog: Optional[subprocess.Popen[bytes]] = None
        self._owner = os.getpid()  # a forked child must not stop its parent's server

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.folder / "data"

    @property
    def pid(self) -> Optional[int]:
        """The process id of the running server's postmaster (None when it is not running)."""
        return _postmaster_pid(self.data)

    def _run(self, *args: str) -> None:
        command = _command(self.bindir, self.as_root, *args)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; return self.

        On failure, whatever was made is removed before the error propagates.
        """
        _RUNNING.add(self)
        atexit.register(self._stop_at_exit)
        _catch_sigterm()
        try:
            self.watchdog = _start_watchdog(self)
            if self.as_root:
                shutil.chown(self.folder, "postgres")
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8", "--locale=C")
            self.resume()
        except BaseException:
            self.stop()
            raise
        return self

    def pause(self, mode: str = "fast", *, wait: bool = True) -> None:
        """Stop the server, keeping its cluster (as an outage would); :meth:`resume` starts it.

        With ``wait=False`` it returns at once: a ``smart`` stop then waits for
        the clients to leave, refusing new ones meanwhile; :attr:`pid` is None
        once the server stopped.
        """
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w" if wait else "-W", "stop")

    def resume(self) -> None:
        """Start the server of the cluster; return once it accepts connections."""
        unsafe = "" if self.durable else \
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        settings = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                    f"{unsafe}-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", settings, "-l",
                  str(self.folder / "log"), "-w", "start")

    def restart(self, mode: str = "fast") -> None:
        """Restart the server (``pg_ctl restart -m fast|smart|immediate``), as an admin would.

        ``fast`` ends every session cleanly; ``immediate`` kills the server's
        processes, as a crash would. Returns once the server accepts connections.
        """
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-l", str(self.folder / "log"),
                  "-w", "restart")

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder; calling it again does nothing."""
        try:
            if self.pid is not None:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._disarm_watchdog()
            _RUNNING.discard(self)
            atexit.unregister(self._stop_at_exit)
            if not _RUNNING:
                _release_sigterm()

    def _stop_at_exit(self) -> None:
        """Stop the server at exit or on SIGTERM, unless in a forked child of its owner."""
        if os.getpid() == self._owner:
            self.stop()

    def _disarm_watchdog(self) -> None:
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is None:
            return
        assert watchdog.stdin is not None
        try:
            watchdog.stdin.write(_DISARM)
            watchdog.stdin.close()
        except OSError:
            pass  # it is gone already
        try:
            watchdog.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_watchdog(server: PostgresServer) -> subprocess.Popen[bytes]:
    """Start the watchdog of ``server`` and wait until it watches."""
    command = [sys.executable, "-m", "nexusLIMS.db.testing", "watchdog", str(os.getpid()),
               str(server.folder), str(server.bindir), "root" if server.as_root else "user"]
    # Its own session: a Ctrl-C at the terminal, or a signal to pytest's
    # process group, leaves it to do its work.
    extra: dict[str, Any] = ({"start_new_session": True} if os.name == "posix" else
                             {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)})
    watchdog = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, **extra)
    assert watchdog.stdout is not None
    with watchdog.stdout:
        answer = watchdog.stdout.readline().decode(errors="replace").strip()
    if answer != _READY:
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        watchdog.kill()
        watchdog.wait()
        raise RuntimeError(f"the watchdog of the throwaway PostgreSQL server did not start "
                           f"({' '.join(command)})")
    return watchdog


def _watch(parent: int, folder: Path, bindir: Path, as_root: bool,
           stdin: IO[bytes], stdout: IO[str]) -> bool:
    """Wait until ``parent`` stops the server itself or is gone; then clean up for it.

    ``parent`` holds the write end of ``stdin``: it writes ``disarm`` when it
    stops the server itself. End of input without it, or (POSIX) a new
    parent process, means it is gone. Returns whether it cleaned up.
    """
    said: list[bytes] = []
    closed = threading.Event()

    def listen() -> None:
        with contextlib.suppress(OSError):
            said.append(stdin.read())
        closed.set()

    threading.Thread(target=listen, daemon=True).start()
    print(_READY, file=stdout, flush=True)
    while not closed.wait(WATCH_INTERVAL):
        if os.name == "posix" and os.getppid() != parent:
            break  # re-parented: the parent died (and its pipe may be held by a forked child)
    if said and said[0].startswith(_DISARM):
        return False
    _stop_cluster(folder, bindir, as_root)
    return True


def _watchdog_main(argv: list[str]) -> int:
    """``watchdog PARENT_PID FOLDER BINDIR root|user``: the watchdog process."""
    if len(argv) != 5 or argv[0] != "watchdog":
        print("usage: python -m nexusLIMS.db.testing watchdog PARENT_PID FOLDER BINDIR root|user",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdout = sys.stdout
    _watch(int(argv[1]), Path(argv[2]), Path(argv[3]), argv[4] == "root", sys.stdin.buffer,
           stdout)
    return 0


# Every server started and not yet stopped, and the SIGTERM handler that was
# there before ours (ours is installed while one runs, from the main thread).
_RUNNING: set[PostgresServer] = set()
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]
_previous_sigterm: list[_Handler] = []


def _catch_sigterm() -> None:
    """Stop the running servers on SIGTERM, then let SIGTERM do what it did before."""
    if (not hasattr(signal, "SIGTERM") or _previous_sigterm
            or threading.current_thread() is not threading.main_thread()):
        return
    current = signal.getsignal(signal.SIGTERM)
    if current in (signal.SIG_IGN, None):
        return  # SIGTERM is ignored, or handled outside Python: leave it so
    _previous_sigterm.append(current)
    signal.signal(signal.SIGTERM, _on_sigterm)


def _release_sigterm() -> None:
    if not _previous_sigterm or threading.current_thread() is not threading.main_thread():
        return
    previous = _previous_sigterm.pop()
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    previous = _previous_sigterm[0] if _previous_sigterm else signal.SIG_DFL
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):  # the watchdog is there to try again
            server._stop_at_exit()
    _release_sigterm()
    if callable(previous):
        previous(signum, frame)
    else:  # the default: end the process, as SIGTERM would have
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------
# Record builders in spawned processes
# --------------------------------------------------------------------------

#: How long a builder waits before it looks again when every session left is claimed.
POLL = 0.005
_UNBUILT = ("SELECT count(*) FROM session_log WHERE event_type = 'START' "
            "AND record_status = 'TO_BE_BUILT'")


@dataclass
class BuilderReport:
    """What one builder process did; times are ``time.time()`` (comparable across processes)."""

    name: str
    finished: list[str] = field(default_factory=list)  # identifiers, in the order finished
    started: float = 0.0  # when it passed the barrier
    last_finish: float = 0.0
    claim_seconds: float = 0.0  # spent in claim_sessions
    finish_seconds: float = 0.0  # spent in finish
    claim_calls: int = 0
    contended: int = 0  # claims that got nothing while sessions were left
    error: str = ""  # the traceback of what stopped it, if anything did
    exitcode: Optional[int] = None  # the process's, once it ended


def unbuilt(database: Optional[str] = None) -> int:
    """Return how many sessions still wait for their record (claimed ones included)."""
    from nexusLIMS.db.connection import connect

    with connect(database) as conn:
        return int(conn.scalar(_UNBUILT))


def skew_clock(seconds: float) -> Callable[[], None]:
    """Set this process's clock, as the package reads it, ``seconds`` ahead (behind if < 0).

    The package reads the time through :func:`nexusLIMS.db.timestamps.utc_now`
    (and so does SQLite's SQL clock); the returned function sets it right again.
    """
    from nexusLIMS.db import timestamps

    real = timestamps.utc_now
    timestamps.utc_now = lambda: real() + timedelta(seconds=seconds)

    def restore() -> None:
        timestamps.utc_now = real

    return restore


def builder(name: str, batch: int, build_seconds: float, lease_seconds: Optional[float],
            record_generation: bool, database: Optional[str], barrier_timeout: float,
            barrier: Any, results: Any, clock_offset: float = 0.0) -> None:
    """Claim ``batch`` sessions at a time and build each, until no session is left to build.

    Runs in a spawned process. A build is ``insert_record_generation_event()``
    when ``record_generation``, a sleep of ``build_seconds`` when not 0, and
    ``finish("COMPLETED")``. Before the barrier, it warms up as a
    long-running builder would be (imports, first connection, schema check)
    by claiming nothing. Its clock is ``clock_offset`` seconds off (see
    :func:`skew_clock`). Puts a :class:`BuilderReport` on ``results``.
    """
    from nexusLIMS.db.claims import DEFAULT_LEASE, claim_sessions

    if clock_offset:
        skew_clock(clock_offset)
    lease = DEFAULT_LEASE if lease_seconds is None else timedelta(seconds=lease_seconds)
    report = BuilderReport(name)
    try:
        claim_sessions(0, worker=name, database=database)
        unbuilt(database)
        barrier.wait(timeout=barrier_timeout)
        report.started = report.last_finish = time.time()
        while True:
            began = time.perf_counter()
            claimed = claim_sessions(batch, worker=name, lease=lease, database=database)
            report.claim_seconds += time.perf_counter() - began
            report.claim_calls += 1
            if not claimed:
                if unbuilt(database) == 0:
                    break
                report.contended += 1
                time.sleep(POLL)  # the rest is claimed by others (or by a dead builder)
                continue
            for session in claimed:
                if record_generation:
                    session.insert_record_generation_event()
                if build_seconds:
                    time.sleep(build_seconds)
                began = time.perf_counter()
                session.finish("COMPLETED")
                report.finish_seconds += time.perf_counter() - began
                report.last_finish = time.time()
                report.finished.append(session.session_identifier)
    except BaseException:  # reported, whatever it was (a Ctrl-C too)
        report.error = f"builder {name}:\n{traceback.format_exc()}"
    results.put(report)


def run_builders(count: int, batch: int, build_seconds: float = 0.0, *,
                 database: Optional[str] = None, lease: Optional[timedelta] = None,
                 record_generation: bool = False, timeout: float = 900.0,
                 clock_offsets: tuple[float, ...] = (),
                 ) -> list[BuilderReport]:
    """Run ``count`` builder processes (see :func:`builder`) until nothing is left to build.

    The builders are spawned processes, started behind a barrier once warmed
    up. They use ``database`` (a path or URL), else the database the
    environment names (children inherit it). ``lease`` is each claim's
    (default: ``claim_sessions``'). Builder ``n``'s clock is
    ``clock_offsets[n % len(clock_offsets)]`` seconds off (none when empty).
    Returns every builder's report, with its ``error`` (if one failed) and
    its process's ``exitcode``.

    Raises
    ------
    RuntimeError
        A builder died without a report, or the builders took longer than
        ``timeout`` seconds (a bound meant only to catch a hang).
    """
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(count), spawn.Queue()
    lease_seconds = None if lease is None else lease.total_seconds()
    processes = {f"builder-{number}": spawn.Process(
        target=builder, args=(f"builder-{number}", batch, build_seconds, lease_seconds,
                              record_generation, database, timeout, barrier, results,
                              clock_offsets[number % len(clock_offsets)] if clock_offsets
                              else 0.0),
        daemon=True) for number in range(count)}
    try:
        for process in processes.values():
            process.start()
        reports = _collect(list(processes.values()), results, timeout)
        for process in processes.values():
            process.join(timeout=60)
    finally:
        for process in processes.values():
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join()
        results.close()
        results.join_thread()
    for report in reports:
        report.exitcode = processes[report.name].exitcode
    return sorted(reports, key=lambda report: int(report.name.rsplit("-", 1)[1]))


def _collect(processes: list[Any], results: Any, timeout: float) -> list[BuilderReport]:
    """Return every builder's report; raise RuntimeError if one died or took too long."""
    reports: list[BuilderReport] = []
    deadline = time.monotonic() + timeout
    while len(reports) < len(processes):
        try:
            reports.append(results.get(timeout=1.0))
        except queue.Empty:
            if time.monotonic() > deadline or not any(p.is_alive() for p in processes):
                raise RuntimeError(
                    f"{len(processes) - len(reports)} builder(s) did not report (died, or took "
                    f"longer than {timeout:.0f} s)") from None
    return reports


if __name__ == "__main__":
    sys.exit(_watchdog_main(sys.argv[1:]))
