"""The ``nexuslims-db`` command line, for the admins of a NexusLIMS facility.

A thin layer: each subcommand parses its arguments, calls one or two library
functions and formats what they return. Errors print one line to stderr and
exit non-zero (a traceback only with ``--debug``). No subcommand but ``init``
ever creates a database file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

from nexusLIMS import DISTRIBUTION
from nexusLIMS.db.cli import commands
from nexusLIMS.db.cli.commands import PROG
from nexusLIMS.db.cli.output import FORMATS, printable
from nexusLIMS.db.cli.parsing import (
    AnyCaseSubParsers,
    Parser,
    VersionAction,
    any_case,
    non_negative,
)
from nexusLIMS.db.config import ENV_DB_PATH, ENV_DB_PATH_2X, ENV_TIMEOUT, locate_database
from nexusLIMS.db.enums import RecordStatus
from nexusLIMS.db.errors import DatabaseDamagedError, NexusLIMSDBError
from nexusLIMS.db.instruments import DEFAULT_TIMEZONE, validate_timezone
from nexusLIMS.db.schema import INSTRUMENTS

__all__ = ["PROG", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

# The option of each instrument column, where it is not --column-name.
_COLUMN_OPTIONS = {"instrument_pid": "--pid"}
_EXAMPLE_DB = "demo.sqlite"


def _timezone(value: str) -> str:
    try:
        return validate_timezone(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common() -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", metavar="PATH|URL", default=argparse.SUPPRESS,
        help=f"the database: a SQLite file or a postgresql:// URL "
             f"(default: ${ENV_DB_PATH}, else ${ENV_DB_PATH_2X})",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="log debug messages, and show the traceback of an error",
    )
    return common


def _sub(subparsers: Any, name: str, summary: str, example: str, handler: Handler,
         details: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary + (f"\n\n{details}" if details else ""),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(handler=handler)
    return parser


def _format_options(parser: argparse.ArgumentParser, formats: Sequence[str] = FORMATS) -> None:
    """Add ``--format`` (and ``--json``, short for ``--format json``) to a listing command."""
    parser.add_argument(
        "--format", choices=formats, default="table", type=any_case(formats),
        help=f"output: {', '.join(formats)} (default: table, for people)")
    parser.add_argument("--json", dest="format", action="store_const", const="json",
                        help="print JSON (the same as --format json)")


def _instrument_options(parser: argparse.ArgumentParser, *, adding: bool) -> None:
    """Add one option per column of ``instruments``, from the schema."""
    for column in INSTRUMENTS.columns:
        if column.name == "instrument_pid" and not adding:
            parser.add_argument("--new-pid", dest=f"columns.{column.name}", metavar="PID",
                                help="a new PID: renames the instrument (its logs follow)")
            continue
        option = _COLUMN_OPTIONS.get(column.name, "--" + column.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f"columns.{column.name}", "help": column.doc,
                                  "metavar": option.lstrip("-").replace("-", "_").upper()}
        if column.name == "timezone":
            kwargs["type"] = _timezone
            if adding:
                kwargs["default"] = DEFAULT_TIMEZONE
                kwargs["help"] += f" (default: {DEFAULT_TIMEZONE})"
        elif adding and column.needs_value:
            kwargs["required"] = True
        elif not column.required:
            kwargs["help"] += " ('' for none)"
        parser.add_argument(option, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``nexuslims-db``."""
    db = f"{PROG} --db {_EXAMPLE_DB}"
    parser = Parser(
        prog=PROG,
        description="Inspect and maintain the NexusLIMS session database.",
        epilog=f"example:\n  {db} init --demo\n  {db} sessions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.add_argument("--version", action=VersionAction,
                        help="print the versions of this package, Python, SQLite and psycopg")
    parser.set_defaults(db=None, debug=False, error_code=1)
    commands_ = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = _sub(commands_, "init", "create the database (or add what it lacks)",
                f"{db} init --demo", commands.cmd_init,
                "Refuses a file that holds another application's tables (unless --force).")
    init.add_argument("--demo", action="store_true",
                      help="also add sample instruments and sessions in several states")
    init.add_argument("--force", action="store_true",
                      help="add the NexusLIMS tables even to a database holding other tables")

    sessions = _sub(commands_, "sessions", "list the sessions ready to build (TO_BE_BUILT)",
                    f"{db} sessions --limit 20", commands.cmd_sessions,
                    "An inconsistent session is left out, with one warning line on stderr.")
    _format_options(sessions)
    sessions.add_argument("--limit", type=non_negative, metavar="N",
                          help="show at most N sessions (the count of all is still printed)")

    check = _sub(commands_, "check", "report every inconsistent session",
                 f"{db} check", commands.cmd_check,
                 "First runs the database's own check of its file (SQLite's quick_check;\n"
                 "on PostgreSQL, invalid indexes).\n"
                 "Exit status: 0 no problem, 1 problems found, 2 could not check (no\n"
                 "database, locked, damaged, bad arguments).")
    _format_options(check)
    check.add_argument("--full", action="store_true",
                       help="check the file thoroughly: SQLite's integrity_check (slower), "
                            "which also matches every index to its table")
    check.set_defaults(error_code=2)

    log = _sub(commands_, "log", "log the start or end of a session (the Session Logger)",
               f"{db} log start --instrument FEI-Titan-TEM-635816 --id my-session-1 "
               f"--user alice", commands.cmd_log)
    events = log.add_subparsers(dest="event", metavar="EVENT", required=True,
                                action=AnyCaseSubParsers)
    for event, what, user_help in (
        ("start", "write a START log (status WAITING_FOR_END)", "user name"),
        ("end", "write the END log; both logs become TO_BE_BUILT",
         "user name (default: the user of the START log)"),
    ):
        sub = _sub(events, event, what,
                   f"{db} log {event} --instrument FEI-Titan-TEM-635816 --id my-session-1",
                   commands.cmd_log)
        sub.add_argument("--instrument", required=True, metavar="PID", help="instrument PID")
        sub.add_argument("--id", required=True, dest="session_identifier", metavar="ID",
                         help="session identifier")
        sub.add_argument("--user", help=user_help)
        sub.add_argument("--at", metavar="ISO-TIME",
                         help="when, ISO 8601 (default: now, local time with its offset)")

    status = _sub(commands_, "status", "set the record status of every log of a session",
                  f"{db} status my-session-1 NO_CONSENT", commands.cmd_status)
    status.add_argument("session_identifier", metavar="ID", help="session identifier")
    status.add_argument("status", choices=RecordStatus.values(), metavar="STATUS",
                        type=any_case(RecordStatus.values()),
                        help=f"one of: {', '.join(RecordStatus.values())} (in any case)")

    instruments = _sub(commands_, "instruments", "list the instruments (or add, edit, remove one)",
                       f"{db} instruments --json", commands.cmd_instruments,
                       "Without an action, lists the instruments.")
    _format_options(instruments)
    actions = instruments.add_subparsers(dest="action", metavar="[ACTION]", required=False)
    add = _sub(actions, "add", "add an instrument to the instruments table",
               f"{db} instruments add --pid FEI-Helios-DB-636663 "
               f"--api-url 'https://nemo.example.org/api/tools/?id=4' "
               f"--calendar-name 'FEI Helios' "
               f"--calendar-url https://nemo.example.org/calendar/helios/ "
               f"--location 'Building 217, Room D101' --schema-name 'Helios NanoLab' "
               f"--property-tag 636663 --filestore-path ./Helios --timezone America/Chicago",
               commands.cmd_instruments_add)
    _instrument_options(add, adding=True)
    edit = _sub(actions, "edit", "change columns of an instrument (--new-pid renames it)",
                f"{db} instruments edit FEI-Titan-TEM-635816 --location 'Building 215, Room A1'",
                commands.cmd_instruments_edit)
    edit.add_argument("pid", metavar="PID", help="the instrument to change")
    _instrument_options(edit, adding=False)
    remove = _sub(actions, "remove", "remove an instrument that has no session logs",
                  f"{db} instruments remove FEI-Helios-DB-636663",
                  commands.cmd_instruments_remove,
                  "An instrument with logs is never removed: its logs are its history.\n"
                  "Rename it instead (instruments edit PID --new-pid NEW).")
    remove.add_argument("pid", metavar="PID", help="the instrument to remove")

    migrate = _sub(commands_, "migrate",
                   "bring a NexusLIMS 1.4 (or older) database to the current schema",
                   f"{PROG} --db nexuslims_db.sqlite migrate --dry-run", commands.cmd_migrate,
                   "Needs free disk space of about three times the database's size (backup,\n"
                   f"rebuild, compaction). Writers wait for it up to ${ENV_TIMEOUT} seconds.")
    migrate.add_argument("--no-backup", action="store_true",
                         help="do not copy the database to <file>.bak-<time> first")
    migrate.add_argument("--dry-run", action="store_true",
                         help="list the pending steps; change nothing")

    schema = _sub(commands_, "schema", "print the schema as SQL", f"{PROG} schema",
                  commands.cmd_schema)
    schema.add_argument("--dialect", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the SQL dialect (default: sqlite)")

    repair = _sub(commands_, "repair",
                  "keep the newest of several TO_BE_BUILT ENDs of a session, mark the others ERROR",
                  f"{db} repair --dry-run", commands.cmd_repair,
                  "Databases written before revised usage events were applied in place can\n"
                  "hold two ENDs for one START; 'check' lists them.")
    repair.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    repair.add_argument("--dry-run", action="store_true", help="only show what would be done")

    claims = _sub(commands_, "claims", "list the record builders' claims on sessions",
                  f"{db} claims --json", commands.cmd_claims,
                  "A claim whose lease expired (its builder died?) no longer holds its session.")
    _format_options(claims)
    claim_actions = claims.add_subparsers(dest="action", metavar="[ACTION]", required=False)
    release = _sub(claim_actions, "release", "free a claimed session by hand",
                   f"{db} claims release my-session-1", commands.cmd_claims_release,
                   "Its builder can then no longer record an outcome for it.")
    release.add_argument("session_identifier", metavar="SESSION", help="session identifier")

    copy = _sub(commands_, "copy", "copy a whole database to another (any backends)",
                f"{PROG} copy nexuslims_db.sqlite postgresql://nexuslims@dbhost/nexuslims",
                commands.cmd_copy,
                "Keeps every id and the id counters; a NexusLIMS 1.4 file is migrated on the\n"
                "way; the source is only read. Row counts and checksums are compared before\n"
                "the copy is committed; on any failure the target is left as it was.")
    copy.add_argument("source", metavar="SOURCE", help="database to copy: a path or URL")
    copy.add_argument("target", metavar="TARGET",
                      help="where to copy it: a SQLite path (created) or a PostgreSQL URL")
    copy.add_argument("--force", action="store_true",
                      help="replace the NexusLIMS tables of a target that holds rows")

    info = _sub(commands_, "info", "an overview of the database (for a support request)",
                f"{db} info", commands.cmd_info)
    _format_options(info, ("table", "json", "ndjson"))

    completion = _sub(commands_, "completion", "print a shell completion script",
                      f'eval "$({PROG} completion bash)"', commands.cmd_completion,
                      f'Needs the completion extra: pip install "{DISTRIBUTION}[completion]".')
    completion.add_argument("shell", choices=("bash", "zsh", "fish", "tcsh", "powershell"))
    return parser


def _columns(args: argparse.Namespace) -> None:
    """Gather the ``columns.<name>`` options into one dict, ``args.columns``."""
    prefix = "columns."
    values = {key[len(prefix):]: value for key, value in vars(args).items()
              if key.startswith(prefix)}
    for key in list(vars(args)):
        if key.startswith(prefix):
            delattr(args, key)
    args.columns = values


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {printable(record.getMessage())}"


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
    return printable(" ".join(str(exc).split())) or type(exc).__name__


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request, when argcomplete is installed."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # pragma: no cover - the completion extra is not installed
        return
    argcomplete.autocomplete(parser)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``nexuslims-db`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    _autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    _columns(args)
    handler: Handler = args.handler
    try:
        with _log_to_stderr(args.debug):
            if args.command not in ("init", "schema", "completion", "copy"):
                locate_database(args.db)  # a missing file is an error, never created
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
        known = isinstance(exc, (NexusLIMSDBError, ValueError, OSError)) or _is_driver_error(exc)
        message = _one_line(exc) if known else f"unexpected {type(exc).__name__}: {_one_line(exc)}"
        hint = "" if known or args.debug else " (run with --debug for the traceback)"
        print(f"{PROG}: error: {message}{hint}", file=sys.stderr)
        # A damaged database could not be checked, whatever the command.
        return 2 if isinstance(exc, DatabaseDamagedError) else int(args.error_code)


def _is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a database driver (sqlite3 or psycopg)."""
    return any(cls.__module__.split(".")[0] in ("sqlite3", "psycopg") for cls in type(exc).__mro__)
