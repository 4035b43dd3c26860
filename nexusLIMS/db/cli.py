"""The ``nexuslims-db`` command line, for the admins of a NexusLIMS facility.

A thin layer: each subcommand parses its arguments, calls one or two library
functions and formats what they return. Errors print one line to stderr and
exit non-zero (a traceback only with ``--debug``). No subcommand but ``init``
ever creates a database file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sqlite3
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

from nexusLIMS.db.connection import ENV_DB_PATH, resolve_db_path
from nexusLIMS.db.demo import DemoSummary, populate_demo
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.errors import NexusLIMSDBError
from nexusLIMS.db.migration import MigrationResult, migrate_db
from nexusLIMS.db.pairing import find_session_problems, get_sessions_to_build
from nexusLIMS.db.schema import SCHEMA_VERSION, init_db
from nexusLIMS.db.session import set_session_status
from nexusLIMS.db.session_log import SessionLog
from nexusLIMS.db.session_logger import log_end, log_start
from nexusLIMS.instruments import (
    DEFAULT_TIMEZONE,
    Instrument,
    add_instrument,
    load_instruments,
    validate_timezone,
)

__all__ = ["PROG", "build_parser", "main"]

PROG = "nexuslims-db"

Handler = Callable[[argparse.Namespace], int]

# (column, option, required, help) of `instruments add`, in table order.
_INSTRUMENT_OPTIONS = (
    ("instrument_pid", "--pid", True, "instrument PID, unique (e.g. FEI-Titan-TEM-635816)"),
    ("api_url", "--api-url", True, "calendar API URL, unique (e.g. a NEMO tool URL)"),
    ("calendar_name", "--calendar-name", True, "name of the instrument's calendar"),
    ("calendar_url", "--calendar-url", True, "URL of the instrument's calendar"),
    ("location", "--location", True, "building and room"),
    ("schema_name", "--schema-name", True, "the instrument's name in records"),
    ("property_tag", "--property-tag", True, "property tag (asset number)"),
    ("filestore_path", "--filestore-path", True, "data folder, relative to mmfnexus_path"),
    ("computer_name", "--computer-name", False, "instrument PC host name, unique"),
    ("computer_ip", "--computer-ip", False, "instrument PC IP address, unique"),
    ("computer_mount", "--computer-mount", False, "data mount point on the PC (e.g. M:/)"),
    ("harvester", "--harvester", False, "harvester of its reservations (e.g. nemo)"),
)


# ---------------------------------------------------------------- formatting


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return ``rows`` under ``headers`` in left-aligned columns."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2)


def _db_option(args: argparse.Namespace) -> str:
    return f" --db {shlex.quote(args.db)}" if args.db else ""


# ------------------------------------------------------------------ commands


def _cmd_init(args: argparse.Namespace) -> int:
    path = init_db(args.db)
    if not args.demo:
        print(f"Initialised NexusLIMS database {path} (schema version {SCHEMA_VERSION}).")
        print(f"Next, add an instrument:\n  {PROG}{_db_option(args)} instruments add --help")
        return 0
    print(_format_demo(populate_demo(path), args))
    return 0


def _format_demo(summary: DemoSummary, args: argparse.Namespace) -> str:
    zones = summary.timezones
    states = ", ".join(f"{count} {status}" for status, count in summary.status_counts.items())
    return "\n".join([
        f"Initialised NexusLIMS database {summary.path} with demo data:",
        f"  instruments  {len(summary.instruments)}, in {len(zones)} time zones "
        f"({', '.join(zones)})",
        f"  sessions     {len(summary.sessions)}: {states}",
        f"  log rows     {summary.logs}",
        "List the sessions ready to build:",
        f"  {PROG}{_db_option(args)} sessions",
    ])


def _cmd_sessions(args: argparse.Namespace) -> int:
    # The library logs one WARNING per skipped session; main() sends it to stderr.
    sessions = get_sessions_to_build(on_error="skip", path=args.db)
    if args.json:
        print(_json([
            {
                "session_identifier": s.session_identifier,
                "instrument": s.instrument.name,
                "start": s.dt_from.isoformat(),
                "end": s.dt_to.isoformat(),
                "duration_seconds": None if (d := s.duration) is None else d.total_seconds(),
                "user": s.user,
            }
            for s in sessions
        ]))
        return 0
    if not sessions:
        print("No sessions to build.")
        return 0
    rows = [
        (
            s.session_identifier,
            s.instrument.name or "",
            s.dt_from.isoformat(),
            s.dt_to.isoformat(),
            "?" if (d := s.duration) is None else str(d),
            s.user or "-",
        )
        for s in sessions
    ]
    print(_table(("SESSION", "INSTRUMENT", "START", "END", "DURATION", "USER"), rows))
    print(f"{len(sessions)} session{'s' if len(sessions) != 1 else ''} to build.")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    problems = find_session_problems(path=args.db)
    if args.json:
        print(_json([
            {
                "session_identifier": p.session_identifier,
                "kind": p.kind.value,
                "detail": p.detail,
                "log_ids": list(p.log_ids),
            }
            for p in problems
        ]))
    elif not problems:
        print("No problems: every TO_BE_BUILT log belongs to a session that can be built.")
    else:
        for problem in problems:
            print(problem)
        sessions = len({p.session_identifier for p in problems})
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} "
              f"in {sessions} session{'s' if sessions != 1 else ''}.")
    return 1 if problems else 0


def _cmd_log(args: argparse.Namespace) -> int:
    write = log_start if args.event == "start" else log_end
    log: SessionLog = write(
        args.instrument, args.session_identifier, args.user, args.at, path=args.db
    )
    print(f"Logged {log.event_type} of session {log.session_identifier} on "
          f"{log.instrument} at {log.timestamp}; the session is now {log.record_status}.")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    changed = set_session_status(args.session_identifier, args.status, path=args.db)
    if changed == 0:
        print(f"{PROG}: error: no session_log rows have session identifier "
              f"{args.session_identifier!r}; nothing changed", file=sys.stderr)
        return 1
    print(f"Set {changed} log{'s' if changed != 1 else ''} of session "
          f"{args.session_identifier} to {args.status}.")
    return 0


def _cmd_instruments(args: argparse.Namespace) -> int:
    instruments = load_instruments(args.db)
    if args.json:
        print(_json([instrument.to_row() for instrument in instruments.values()]))
        return 0
    if not instruments:
        print(f"No instruments; add one with: {PROG}{_db_option(args)} instruments add --help")
        return 0
    rows = [
        (pid, str(i.timezone or ""), i.location or "", i.harvester or "", i.api_url or "")
        for pid, i in instruments.items()
    ]
    print(_table(("INSTRUMENT", "TIMEZONE", "LOCATION", "HARVESTER", "API URL"), rows))
    return 0


def _cmd_instruments_add(args: argparse.Namespace) -> int:
    values = {column: getattr(args, column) for column, *_ in _INSTRUMENT_OPTIONS}
    instrument = Instrument(name=values.pop("instrument_pid"), timezone=args.timezone, **values)
    add_instrument(instrument, args.db)
    print(f"Added instrument {instrument.name} ({args.timezone}).")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    print(_format_migration(migrate_db(args.db, backup=not args.no_backup)))
    return 0


def _format_migration(result: MigrationResult) -> str:
    if not result.migrated:
        return (f"{result.path} is already at schema version {result.to_version}; "
                f"nothing to do, nothing changed.")
    lines = [f"Migrated {result.path} from schema version {result.from_version} "
             f"to {result.to_version}:"]
    lines += [f"  - {reason}" for reason in result.reasons]
    lines.append(f"Kept all {result.rows} session_log rows with their ids.")
    if result.orphans:
        lines.append(f"{result.orphans} of them name an instrument missing from instruments.")
    lines.append(f"Backup: {result.backup}" if result.backup else "No backup made (--no-backup).")
    return "\n".join(lines)


# -------------------------------------------------------------------- parser


def _timezone(value: str) -> str:
    try:
        return validate_timezone(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common() -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", metavar="PATH", default=argparse.SUPPRESS,
        help=f"the database file (default: ${ENV_DB_PATH}, else $NX_DB_PATH)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="log debug messages, and show the traceback of an error",
    )
    return common


def _sub(
    subparsers: Any, name: str, summary: str, example: str, handler: Handler,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``nexuslims-db``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and maintain the NexusLIMS session database.",
        epilog=f"example:\n  {PROG} --db demo.sqlite init --demo\n"
               f"  {PROG} --db demo.sqlite sessions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(db=None, debug=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = _sub(commands, "init", "create the database (or add what it lacks)",
                f"{PROG} --db demo.sqlite init --demo", _cmd_init)
    init.add_argument("--demo", action="store_true",
                      help="also add sample instruments and sessions in several states")

    sessions = _sub(commands, "sessions", "list the sessions ready to build (TO_BE_BUILT)",
                    f"{PROG} --db demo.sqlite sessions --json", _cmd_sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON")

    check = _sub(commands, "check",
                 "report every inconsistent session; exit 1 if there is any",
                 f"{PROG} --db demo.sqlite check", _cmd_check)
    check.add_argument("--json", action="store_true", help="print JSON")

    log = _sub(commands, "log", "log the start or end of a session (the Session Logger)",
               f"{PROG} --db demo.sqlite log start --instrument FEI-Titan-TEM-635816 "
               f"--id my-session-1 --user alice", _cmd_log)
    events = log.add_subparsers(dest="event", metavar="EVENT", required=True)
    for event, what in (("start", "write a START log (status WAITING_FOR_END)"),
                        ("end", "write the END log; both logs become TO_BE_BUILT")):
        sub = _sub(events, event, what,
                   f"{PROG} --db demo.sqlite log {event} --instrument FEI-Titan-TEM-635816 "
                   f"--id my-session-1", _cmd_log)
        sub.add_argument("--instrument", required=True, metavar="PID", help="instrument PID")
        sub.add_argument("--id", required=True, dest="session_identifier", metavar="ID",
                         help="session identifier")
        sub.add_argument("--user", help="user name (end: default the START's user)")
        sub.add_argument("--at", metavar="ISO-TIME",
                         help="when, ISO 8601 (default: now, local time with its offset)")

    status = _sub(commands, "status", "set the record status of every log of a session",
                  f"{PROG} --db demo.sqlite status my-session-1 NO_CONSENT", _cmd_status)
    status.add_argument("session_identifier", metavar="ID", help="session identifier")
    status.add_argument("status", choices=RecordStatus.values(), metavar="STATUS",
                        help=f"one of: {', '.join(RecordStatus.values())}")

    instruments = _sub(commands, "instruments", "list the instruments (or add one)",
                       f"{PROG} --db demo.sqlite instruments --json", _cmd_instruments)
    instruments.add_argument("--json", action="store_true", help="print JSON")
    actions = instruments.add_subparsers(dest="action", metavar="ACTION")
    add = _sub(actions, "add", "add an instrument to the instruments table",
               f"{PROG} --db demo.sqlite instruments add --pid FEI-Helios-DB-636663 "
               f"--api-url 'https://nemo.example.org/api/tools/?id=4' "
               f"--calendar-name 'FEI Helios' "
               f"--calendar-url https://nemo.example.org/calendar/helios/ "
               f"--location 'Building 217, Room D101' --schema-name 'Helios NanoLab' "
               f"--property-tag 636663 --filestore-path ./Helios --timezone America/Chicago",
               _cmd_instruments_add)
    for column, option, required, text in _INSTRUMENT_OPTIONS:
        add.add_argument(option, dest=column, required=required, help=text)
    add.add_argument("--timezone", type=_timezone, default=DEFAULT_TIMEZONE,
                     help=f"IANA time zone (default: {DEFAULT_TIMEZONE})")

    migrate = _sub(commands, "migrate",
                   "bring a NexusLIMS 1.4 (or older) database to the current schema",
                   f"{PROG} --db nexuslims_db.sqlite migrate", _cmd_migrate)
    migrate.add_argument("--no-backup", action="store_true",
                         help="do not copy the database to <file>.bak-<time> first")
    return parser


# ---------------------------------------------------------------------- main


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


@contextmanager
def _log_to_stderr(debug: bool) -> Iterator[None]:
    """Send the library's log messages to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    package = logging.getLogger("nexusLIMS")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``nexuslims-db`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    handler: Handler = args.handler
    try:
        with _log_to_stderr(args.debug):
            if args.command != "init":
                resolve_db_path(args.db)  # a missing file is an error, never created
            return handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. "| head"): not an error; keep Python's
        # exit-time flush of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        known = isinstance(exc, (NexusLIMSDBError, ValueError, OSError, sqlite3.Error))
        message = _one_line(exc) if known else f"unexpected {type(exc).__name__}: {_one_line(exc)}"
        hint = "" if known or args.debug else " (run with --debug for the traceback)"
        print(f"{PROG}: error: {message}{hint}", file=sys.stderr)
        return 1
