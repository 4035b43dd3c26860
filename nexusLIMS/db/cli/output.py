"""Formatting for the command line: aligned tables, JSON, NDJSON, CSV, progress, safe text."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

from nexusLIMS.db.validation import printable

__all__ = [
    "FORMATS",
    "Progress",
    "duration",
    "plural",
    "printable",
    "records",
    "table",
    "to_json",
]

#: The output formats of the listing commands (``--format``); ``table`` is for people.
FORMATS = ("table", "json", "ndjson", "csv")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return ``rows`` under ``headers`` in left-aligned columns (cells made printable)."""
    cells = [list(headers)] + [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells
    )


def to_json(value: Any) -> str:
    """Return ``value`` as indented JSON (control characters are escaped by JSON itself)."""
    return json.dumps(value, indent=2)


def _cell(value: Any) -> str:
    """One CSV cell: lists joined by spaces, booleans and None as JSON spells them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return printable(value)


def records(
    items: Sequence[Mapping[str, Any]], output: str, columns: Optional[Sequence[str]] = None,
) -> str:
    """Return ``items`` (flat mappings) in a machine-readable ``output`` format.

    Parameters
    ----------
    items
        The records, each a mapping of field name to a JSON value.
    output
        ``"json"`` (one indented array), ``"ndjson"`` (one compact object a
        line) or ``"csv"`` (a header line, then one line a record; control
        characters shown escaped, as in tables).
    columns
        The CSV header (default: the fields of the first record), so that
        an empty list still says what its columns are.
    """
    if output == "json":
        return to_json(list(items))
    if output == "ndjson":
        return "".join(json.dumps(item) + "\n" for item in items).rstrip("\n")
    if output != "csv":
        raise ValueError(f"unknown output format {output!r}; one of: {', '.join(FORMATS)}")
    header = list(columns if columns is not None else (items[0] if items else ()))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(item.get(column)) for column in header] for item in items)
    return text.getvalue().rstrip("\n")


def plural(count: int, word: str, words: Optional[str] = None) -> str:
    """Return ``"1 session"`` / ``"2 sessions"``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def duration(value: Optional[timedelta]) -> str:
    """Return a duration as ``H:MM:SS`` (days first if any), or ``?`` when unknown."""
    return "?" if value is None else str(timedelta(seconds=round(value.total_seconds())))


class Progress:
    """A progress line with an ETA, rewritten in place on a terminal; silent elsewhere.

    Call it as a ``progress(label, done, total)`` callback (what
    :func:`~nexusLIMS.db.transfer.copy_database` and
    :func:`~nexusLIMS.db.migrations.migrate_db` take). The ETA is estimated
    from the rate so far. Use it as a context manager, so that the last line
    is ended.

    Parameters
    ----------
    prefix
        Written before each line (the program's name).
    unit
        What is counted, shown with the counts (``"rows"``), or ``""`` to
        show only the percentage.
    one_line
        One line and one clock for the whole run, the label showing the
        current stage; otherwise each label gets a line and an ETA of its own.
    stream
        Where to write (default: stderr); nothing is written unless it is a
        terminal.
    clock
        The time source (seconds), for the ETA.
    """

    def __init__(self, prefix: str, unit: str = "", *, one_line: bool = False,
                 stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.prefix = prefix
        self.unit = unit
        self.one_line = one_line
        self.clock = clock
        self._label: Optional[str] = None
        self._started = 0.0
        self._first = 0  # units already done at the first call: the rate counts those after
        self._shown = 0.0
        self._width = 0

    def __call__(self, label: str, done: int, total: int) -> None:
        """Show that ``done`` of ``total`` units of ``label`` are done."""
        if not self.enabled:
            return
        now = self.clock()
        if self._label is None or (label != self._label and not self.one_line):
            self._end_line()
            self._started, self._shown, self._first = now, 0.0, done
        elif label == self._label and done < total and now - self._shown < 0.1:
            return  # at most ten updates a second
        self._label, self._shown = label, now
        self._write(self.line(label, done, total, now - self._started, done - self._first))

    def line(self, label: str, done: int, total: int, elapsed: float, measured: int) -> str:
        """Return the text of one progress line.

        ``measured`` of the ``done`` units were done in the ``elapsed``
        seconds; the rest of ``total`` is expected to go at their rate.
        """
        percent = 100 if total <= 0 else done * 100 // total
        counts = f"{done}/{total} {self.unit} ({percent}%)" if self.unit else f"{percent}%"
        if total > 0 and done >= total:
            when = f"done in {duration(timedelta(seconds=elapsed))}"
        elif measured > 0 and elapsed > 0:
            when = f"ETA {duration(timedelta(seconds=elapsed * (total - done) / measured))}"
        else:
            when = "ETA ?"
        return f"{self.prefix}: {label}: {counts}, {when}"

    def _write(self, text: str) -> None:
        pad = " " * max(self._width - len(text), 0)
        self.stream.write(f"\r{text}{pad}")
        self.stream.flush()
        self._width = len(text)

    def _end_line(self) -> None:
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._end_line()
