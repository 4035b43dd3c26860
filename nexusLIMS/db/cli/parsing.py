"""Argument parsing conventions of ``nexuslims-db``: choices in any case, "did you mean", versions.

argparse does the parsing; this module only makes its errors speak the
user's words (a mistyped command or choice gets the closest ones suggested,
a bad number says what a number must be) and lets enumerated values (event
types, statuses) be typed in any case.
"""

from __future__ import annotations

import argparse
import difflib
import platform
import sqlite3
import sys
from typing import Any, Callable, Iterable, NoReturn, Optional, Sequence

import nexusLIMS
from nexusLIMS import DISTRIBUTION

__all__ = ["AnyCaseSubParsers", "Parser", "VersionAction", "any_case", "non_negative",
           "version_text"]


def suggestions(value: str, choices: Iterable[str]) -> list[str]:
    """Return the choices closest to ``value`` (compared in any case), best first."""
    by_folded = {choice.casefold(): choice for choice in choices}
    return [by_folded[match] for match in
            difflib.get_close_matches(value.casefold(), list(by_folded), n=3, cutoff=0.6)]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose invalid choices suggest the closest valid ones."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or not isinstance(value, str):
            super()._check_value(action, value)
            return
        names = [str(choice) for choice in choices]
        if value in names or (isinstance(action, AnyCaseSubParsers)
                              and value.casefold() in action.folded()):
            return
        message = f"invalid choice: {value!r} (choose from {', '.join(names)})"
        close = suggestions(value, names)
        if close:
            message += f"; did you mean {' or '.join(repr(name) for name in close)}?"
        raise argparse.ArgumentError(action, message)


class AnyCaseSubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands that may be typed in any case (``log START`` is ``log start``)."""

    def folded(self) -> dict[str, str]:
        """Return each subcommand's name by its case-folded name."""
        return {name.casefold(): name for name in self._name_parser_map}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        """Run the subcommand named by ``values[0]``, in whatever case it was typed."""
        name = self.folded().get(str(values[0]).casefold(), values[0])
        super().__call__(parser, namespace, [name, *values[1:]], option_string)


def any_case(allowed: Sequence[str]) -> Callable[[str], str]:
    """Return an argparse ``type`` that gives the allowed value matching ``value`` in any case.

    A value that matches none is returned as typed, for the choices check to
    refuse in the user's own words.
    """
    by_folded = {value.casefold(): value for value in allowed}

    def convert(value: str) -> str:
        return by_folded.get(value.casefold(), value)

    convert.__name__ = "value"
    return convert


def non_negative(value: str) -> int:
    """Return ``value`` as a whole number of 0 or more (an argparse ``type``)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number (0 or more), not {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def version_text() -> str:
    """Return what ``--version`` prints: this package's version and those it runs on."""
    lines = [
        f"{DISTRIBUTION} {nexusLIMS.__version__} (import package nexusLIMS from "
        f"{nexusLIMS.__path__[0]})",
        f"Python {platform.python_version()} ({sys.executable})",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    try:
        import psycopg
    except ImportError:
        lines.append(f'psycopg not installed (PostgreSQL needs: pip install "{DISTRIBUTION}'
                     f'[postgres]")')
    else:
        libpq = psycopg.pq.version()
        lines.append(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, "
                     f"libpq {libpq // 10000}.{libpq % 10000})")
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit (read only when asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> NoReturn:
        """Print the versions and exit."""
        print(version_text())
        parser.exit()
