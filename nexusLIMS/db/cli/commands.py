"""The subcommands of ``nexuslims-db``: each calls the library and formats what it returns."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from typing import Any, Optional

from nexusLIMS import DISTRIBUTION
from nexusLIMS.db.claims import list_claims, release_claim
from nexusLIMS.db.cli.output import (
    Progress,
    duration,
    plural,
    printable,
    records,
    table,
    to_json,
)
from nexusLIMS.db.config import ENV_POOL_SIZE, locate_database
from nexusLIMS.db.instruments import (
    Instrument,
    add_instrument,
    edit_instrument,
    load_instruments,
    remove_instrument,
)
from nexusLIMS.db.integrity import check_integrity
from nexusLIMS.db.logs import SessionLog, log_end, log_start
from nexusLIMS.db.migrations import MigrationResult, migrate_db
from nexusLIMS.db.samples import DemoSummary, populate_demo
from nexusLIMS.db.schema import INSTRUMENTS, SCHEMA_VERSION, init_db, render
from nexusLIMS.db.sessions import (
    SessionProblem,
    find_session_problems,
    get_sessions_to_build,
    repair_duplicate_ends,
    set_session_status,
)
from nexusLIMS.db.summary import summarize
from nexusLIMS.db.transfer import copy_database

PROG = "nexuslims-db"
_PROGRESS_ROWS = 1000
# The fields of each listing's records (--format json, ndjson, csv).
_SESSION_FIELDS = ("session_identifier", "instrument", "start", "end", "duration_seconds", "user")
_PROBLEM_FIELDS = ("session_identifier", "kind", "detail", "log_ids")
_CLAIM_FIELDS = ("session_identifier", "worker", "claimed_at", "expires_at", "live",
                 "age_seconds", "lease_left_seconds")


def _error(message: str, *, status: int = 1) -> int:
    """Print ``message`` as the command's one-line error; return the exit status."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _db_option(args: argparse.Namespace) -> str:
    """Return `` --db <database>`` for a suggested command (a URL without its password)."""
    if not args.db:
        return ""
    location = locate_database(args.db, must_exist=False)
    return f" --db {shlex.quote(args.db if location.backend == 'sqlite' else location.describe())}"


def cmd_init(args: argparse.Namespace) -> int:
    """Create the database (or add what it lacks); ``--demo`` fills it (``init``)."""
    location = init_db(args.db, force=args.force)
    if not args.demo:
        print(f"Initialised NexusLIMS database {location} (schema version {SCHEMA_VERSION}).")
        print(f"Next, add an instrument:\n  {PROG}{_db_option(args)} instruments add --help")
        return 0
    print(_format_demo(populate_demo(location), args))
    return 0


def _format_demo(summary: DemoSummary, args: argparse.Namespace) -> str:
    zones = summary.timezones
    states = ", ".join(f"{count} {status}" for status, count in summary.status_counts.items())
    return "\n".join([
        f"Initialised NexusLIMS database {summary.location} with demo data:",
        f"  instruments  {len(summary.instruments)}, in {len(zones)} time zones "
        f"({', '.join(zones)})",
        f"  sessions     {len(summary.sessions)}: {states}",
        f"  log rows     {summary.logs}",
        "List the sessions ready to build:",
        f"  {PROG}{_db_option(args)} sessions",
    ])


def cmd_sessions(args: argparse.Namespace) -> int:
    """List the sessions ready to build (``sessions``)."""
    # The library logs one WARNING per skipped session; main() sends it to stderr.
    sessions = get_sessions_to_build(on_error="skip", database=args.db)
    shown = sessions if args.limit is None else sessions[: args.limit]
    if args.format != "table":
        print(records([
            {
                "session_identifier": s.session_identifier,
                "instrument": s.instrument.name,
                "start": s.dt_from.isoformat(),
                "end": s.dt_to.isoformat(),
                "duration_seconds": None if (d := s.duration) is None else d.total_seconds(),
                "user": s.user,
            }
            for s in shown
        ], args.format, _SESSION_FIELDS))
        return 0
    if not sessions:
        print("No sessions to build.")
        return 0
    rows = [(s.session_identifier, s.instrument.name or "", s.dt_from.isoformat(),
             s.dt_to.isoformat(), duration(s.duration), s.user or "-") for s in shown]
    print(table(("SESSION", "INSTRUMENT", "START", "END", "DURATION", "USER"), rows))
    more = len(sessions) - len(shown)
    print(f"{plural(len(sessions), 'session')} to build"
          + (f"; {more} not shown (--limit {args.limit})." if more else "."))
    return 0


def _problem_json(problem: SessionProblem) -> dict[str, Any]:
    return {"session_identifier": problem.session_identifier, "kind": problem.kind.value,
            "detail": problem.detail, "log_ids": list(problem.log_ids)}


def cmd_check(args: argparse.Namespace) -> int:
    """Report every inconsistent session; exit 1 if there is any (``check``)."""
    check_integrity(args.db, full=args.full)  # a damaged file: exit 2
    problems = find_session_problems(database=args.db)
    if args.format != "table":
        print(records([_problem_json(problem) for problem in problems], args.format,
                      _PROBLEM_FIELDS))
    elif not problems:
        print("No problems: every TO_BE_BUILT log belongs to a session that can be built.")
    else:
        for problem in problems:
            print(printable(problem))
        sessions = len({p.session_identifier for p in problems})
        print(f"{plural(len(problems), 'problem')} in {plural(sessions, 'session')}.")
    return 1 if problems else 0


def cmd_log(args: argparse.Namespace) -> int:
    """Write what the Session Logger writes (``log start|end``)."""
    write = log_start if args.event == "start" else log_end
    log: SessionLog = write(args.instrument, args.session_identifier, args.user, args.at,
                            database=args.db)
    print(f"Logged {log.event_type} of session {printable(log.session_identifier)} on "
          f"{printable(log.instrument)} at {log.timestamp}; the session is now "
          f"{log.record_status}.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Set the record status of every log of a session (``status``)."""
    changed = set_session_status(args.session_identifier, args.status, database=args.db)
    if changed == 0:
        return _error(f"no session_log rows have session identifier "
                      f"{args.session_identifier!r}; nothing changed")
    print(f"Set {plural(changed, 'log')} of session {printable(args.session_identifier)} "
          f"to {args.status}.")
    return 0


def cmd_instruments(args: argparse.Namespace) -> int:
    """List the instruments (``instruments``)."""
    instruments = load_instruments(args.db)
    if args.format != "table":
        print(records([instrument.to_row() for instrument in instruments.values()], args.format,
                      INSTRUMENTS.column_names))
        return 0
    if not instruments:
        print(f"No instruments; add one with: {PROG}{_db_option(args)} instruments add --help")
        return 0
    rows = [(pid, str(i.timezone or ""), i.location or "", i.harvester or "", i.api_url or "")
            for pid, i in instruments.items()]
    print(table(("INSTRUMENT", "TIMEZONE", "LOCATION", "HARVESTER", "API URL"), rows))
    return 0


def _column_values(args: argparse.Namespace) -> dict[str, Optional[str]]:
    """Return the instrument columns given on the command line, by column name."""
    given: dict[str, Optional[str]] = args.columns
    return {column: value for column, value in given.items() if value is not None}


def cmd_instruments_add(args: argparse.Namespace) -> int:
    """Add an instrument (``instruments add``)."""
    values = _column_values(args)
    instrument = Instrument(name=values.pop("instrument_pid"), **values)
    add_instrument(instrument, args.db)
    print(f"Added instrument {printable(instrument.name)} ({instrument.timezone}).")
    return 0


def cmd_instruments_edit(args: argparse.Namespace) -> int:
    """Change columns of an instrument (a new PID renames it) (``instruments edit``)."""
    changes = _column_values(args)
    if not changes:
        return _error(f"nothing to change; give at least one column option "
                      f"(see {PROG} instruments edit --help)", status=2)
    edited = edit_instrument(args.pid, changes, args.db)
    renamed = f" (renamed to {printable(edited.name)})" if edited.name != args.pid else ""
    print(f"Edited instrument {printable(args.pid)}{renamed}: "
          f"{', '.join(sorted(changes))}.")
    return 0


def cmd_instruments_remove(args: argparse.Namespace) -> int:
    """Remove an instrument that has no logs (``instruments remove``)."""
    remove_instrument(args.pid, args.db)
    print(f"Removed instrument {printable(args.pid)}.")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database to the current schema (``migrate``)."""
    with Progress(PROG, one_line=True) as progress:
        result = migrate_db(args.db, backup=not args.no_backup, dry_run=args.dry_run,
                            progress=lambda stage, done, total: progress(
                                "migrated" if stage == "done" else f"migrating, {stage}",
                                done, total))
    print(_format_migration(result, args.dry_run))
    return 0


def _format_migration(result: MigrationResult, dry_run: bool) -> str:
    where = result.location
    if not result.steps:
        return (f"{where} is already at schema version {result.to_version}; "
                f"nothing to do, nothing changed.")
    steps = [f"  {step.version}. {step.name}: {step.description}" for step in result.steps]
    if dry_run:
        return "\n".join([f"{where} is at schema version {result.from_version}; migrating it "
                          f"would run {plural(len(steps), 'step')}:", *steps,
                          "Nothing was changed (--dry-run)."])
    lines = [f"Migrated {where} from schema version {result.from_version} "
             f"to {result.to_version}:", *steps,
             f"Kept all {result.rows} session_log rows with their ids."]
    if result.orphans:
        lines.append(f"{result.orphans} of them name an instrument missing from instruments.")
    if result.removed_partial_backups:
        lines.append(f"Removed {plural(len(result.removed_partial_backups), 'incomplete backup')} "
                     f"of an interrupted migration.")
    if result.location.backend == "sqlite":
        lines.append(f"Backup: {result.backup}" if result.backup
                     else "No backup made (--no-backup).")
    return "\n".join(lines)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the schema as SQL (``schema``)."""
    print(render(args.dialect), end="")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Keep the newest of a session's TO_BE_BUILT ENDs, mark the others ERROR (``repair``)."""
    plan = repair_duplicate_ends(dry_run=True, database=args.db)
    if not plan:
        print("Nothing to repair: no session has more than one TO_BE_BUILT END.")
        return 0
    for identifier, kept, superseded in plan:
        print(f"{printable(identifier)}: keep END {kept}, mark superseded END(s) "
              f"{', '.join(map(str, superseded))} ERROR")
    if args.dry_run:
        print("Nothing was changed (--dry-run).")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            return _error(f"not confirmed; run again with --yes to repair "
                          f"{plural(len(plan), 'session')}")
        answer = input(f"Repair {plural(len(plan), 'session')}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing was changed.")
            return 1
    done = repair_duplicate_ends(database=args.db)
    marked = sum(len(superseded) for _, _, superseded in done)
    print(f"Repaired {plural(len(done), 'session')}: marked {plural(marked, 'END')} ERROR.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print an overview of the database (``info``)."""
    summary = summarize(args.db)
    oldest = summary.oldest_waiting
    if args.format != "table":
        overview = {
            "database": str(summary.location),
            "backend": summary.location.backend,
            "schema_version": summary.schema_version,
            "current_schema_version": SCHEMA_VERSION,
            "size_bytes": summary.size_bytes,
            "server": summary.server,
            "connections": summary.connections,
            "instruments": summary.instruments,
            "logs": [{"event_type": e, "record_status": s, "count": c}
                     for e, s, c in summary.log_counts],
            "sessions_to_build": summary.sessions_to_build,
            "oldest_waiting_for_end": None if oldest is None else {
                "session_identifier": oldest[0].session_identifier,
                "instrument": oldest[0].instrument,
                "start": oldest[0].timestamp,
                "age_seconds": None if oldest[1] is None else oldest[1].total_seconds(),
            },
            "problems": [_problem_json(problem) for problem in summary.problems],
        }
        # One object: indented JSON, or a single line of NDJSON.
        print(to_json(overview) if args.format == "json" else records([overview], args.format))
        return 0
    version = f"{summary.schema_version}" + (
        "" if summary.schema_version == SCHEMA_VERSION
        else f" (current is {SCHEMA_VERSION}: run '{PROG} migrate')")
    size = "?" if summary.size_bytes is None else f"{summary.size_bytes / 1e6:.1f} MB"
    if oldest is None:
        waiting = "none"
    else:
        log, age = oldest
        waiting = (f"{printable(log.session_identifier)} on {printable(log.instrument)}, "
                   f"started {printable(log.timestamp)} ({duration(age)} ago)")
    problems = f"{len(summary.problems)}" + (
        f" (see '{PROG}{_db_option(args)} check')" if summary.problems else "")
    fields = (
        ("database", f"{summary.location} ({summary.location.backend})"),
        ("schema version", version),
        ("size", size),
        ("server", summary.server),
        ("connections", _connections(summary.connections)),
        ("instruments", str(summary.instruments)),
        ("sessions to build", str(summary.sessions_to_build)),
        ("oldest WAITING_FOR_END", waiting),
        ("problems", problems),
    )
    lines = [f"{label:<24}{value}" for label, value in fields]
    lines.append("logs by event and status:")
    lines += ["  " + line for line in table(
        ("EVENT", "STATUS", "COUNT"),
        [(e, s, str(c)) for e, s, c in summary.log_counts]).splitlines()]
    print("\n".join(lines))
    return 0


def _connections(figures: dict[str, int]) -> str:
    """Describe the connections this process keeps."""
    if not figures:
        return "one per call (a file)"
    return (f"{figures['open']} open, {figures['idle']} idle, at most {figures['most']} "
            f"(${ENV_POOL_SIZE})")


def cmd_claims(args: argparse.Namespace) -> int:
    """List the record builders' claims, live and expired (``claims``)."""
    claims = list_claims(args.db)
    # Leases are judged by the database's clock (a server's), not this machine's.
    now = claims[0].now() if claims else datetime.now(timezone.utc)
    if args.format != "table":
        print(records([{
            "session_identifier": claim.session_identifier,
            "worker": claim.worker,
            "claimed_at": claim.claimed_at.isoformat(),
            "expires_at": claim.expires_at.isoformat(),
            "live": claim.live(now),
            "age_seconds": claim.age(now).total_seconds(),
            "lease_left_seconds": max(claim.lease_left(now).total_seconds(), 0.0),
        } for claim in claims], args.format, _CLAIM_FIELDS))
        return 0
    if not claims:
        print("No claims: no record builder is building a session.")
        return 0
    rows = [(claim.session_identifier, claim.worker, "live" if claim.live(now) else "expired",
             duration(claim.age(now)),
             duration(claim.lease_left(now)) if claim.live(now) else "-") for claim in claims]
    print(table(("SESSION", "WORKER", "STATE", "AGE", "LEASE LEFT"), rows))
    expired = sum(not claim.live(now) for claim in claims)
    print(f"{plural(len(claims), 'claim')}, {expired} expired"
          + (" (their sessions can be claimed again)." if expired else "."))
    return 0


def cmd_claims_release(args: argparse.Namespace) -> int:
    """Free a claimed session by hand (``claims release``)."""
    if not release_claim(args.session_identifier, args.db):
        return _error(f"no claim holds session {args.session_identifier!r}; nothing changed")
    print(f"Released the claim on session {printable(args.session_identifier)}; "
          f"any builder may claim it now.")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    """Copy a whole database to another, on any backend (``copy``)."""
    with Progress(PROG, "rows") as progress:
        def show(table: str, done: int, total: int) -> None:
            if total >= _PROGRESS_ROWS:  # a line for each large table (on a terminal)
                progress(f"copying {table}", done, total)

        result = copy_database(args.source, args.target, force=args.force, progress=show)
    print(f"Copied {result.source} (schema version {result.source_version}) to "
          f"{result.target} (schema version {SCHEMA_VERSION}):")
    print(table(("TABLE", "ROWS", "SHA-256 (BOTH SIDES)"),
                [(copy.table, str(copy.rows), copy.checksum) for copy in result.tables]))
    print(f"Row counts and checksums match. New session logs continue at id "
          f"{result.next_log_id}.")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell completion script (``completion``)."""
    try:
        from argcomplete.shell_integration import shellcode
    except ImportError:
        return _error(f'shell completion needs argcomplete: '
                      f'pip install "{DISTRIBUTION}[completion]"')
    print(shellcode([PROG], shell=args.shell), end="")
    return 0
