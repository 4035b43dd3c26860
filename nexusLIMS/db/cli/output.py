"""Formatting for the command line: aligned tables, JSON, and terminal-safe text."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Optional, Sequence

from nexusLIMS.db.validation import printable

__all__ = ["duration", "plural", "printable", "table", "to_json"]


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


def plural(count: int, word: str, words: Optional[str] = None) -> str:
    """Return ``"1 session"`` / ``"2 sessions"``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def duration(value: Optional[timedelta]) -> str:
    """Return a duration as ``H:MM:SS`` (days first if any), or ``?`` when unknown."""
    return "?" if value is None else str(timedelta(seconds=round(value.total_seconds())))
