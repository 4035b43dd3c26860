"""Rules for the text the package stores and prints: the one home of the control-character rule.

Identifiers, PIDs and user names are printed by the command line and written
to logs; a newline or an escape sequence in one could forge or hide output
(and PostgreSQL refuses a NUL outright). Control characters are Unicode's
categories ``Cc`` (C0/C1 controls) and ``Cf`` (format characters such as
bidirectional overrides).
"""

from __future__ import annotations

import unicodedata

__all__ = ["check_text", "has_control_characters", "is_control", "printable"]

_CONTROL_CATEGORIES = ("Cc", "Cf")


def is_control(char: str) -> bool:
    """Whether the one character ``char`` is a control or format character."""
    return unicodedata.category(char) in _CONTROL_CATEGORIES


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control or format character."""
    # isprintable() is False for every Cc and Cf character (and for other
    # categories too, such as non-ASCII spaces): the quick test first.
    return not text.isprintable() and any(is_control(char) for char in text)


def check_text(value: object, what: str, *, blank: bool = False) -> None:
    """Raise ValueError if ``value`` is not a string, is blank, or holds control characters.

    Parameters
    ----------
    value
        The value to check.
    what
        What it is, for the message (e.g. ``"session_identifier"``).
    blank
        Accept an empty or blank string.

    Raises
    ------
    ValueError
        Naming ``what`` and the value.
    """
    if not isinstance(value, str) or (not blank and not value.strip()):
        raise ValueError(f"Invalid {what} {value!r}; expected a non-blank string")
    if has_control_characters(value):
        raise ValueError(f"Invalid {what} {value!r}; control characters are not allowed")


def printable(value: object) -> str:
    """Return ``value`` as text safe to print: control characters shown escaped.

    A newline or an escape sequence stored in an identifier could otherwise
    forge rows of a listing or clear the screen.
    """
    text = "" if value is None else str(value)
    if not has_control_characters(text):
        return text
    return "".join(repr(char)[1:-1] if is_control(char) else char for char in text)
