"""Scalar checks shared by every config field and every command-line option.

YAML and the command line hand over values the obvious checks do not expect: integers of
thousands of digits (``repr`` of one raises), ``.inf``/``.nan``, digits for which
``str.isdigit()`` is true but ``int()`` fails (superscripts), lone surrogates that cannot be
printed or written. Everything here is total: it returns a value or None, never raises.
"""

from __future__ import annotations

import re
from typing import Any

ASCII_DIGITS = re.compile(r"[0-9]+")
# Printable ASCII without space: what may go into a keepalived word.
PRINTABLE_ASCII = re.compile(r"[!-~]+")
MAX_SHOWN = 60
# More digits than any value ipvslb takes (ports, marks, labels, seconds) could need.
MAX_DIGITS = 20


def shown(value: Any) -> str:
    """``repr`` of a value for an error line: short, printable, never raising."""
    if isinstance(value, int) and not isinstance(value, bool) and _too_long(value):
        return f"a number of {len(hex(value)) * 4 // 3} or so digits"
    if isinstance(value, list | dict | tuple | set):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} of {len(value)} entries"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return type(value).__name__
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _too_long(value: int) -> bool:
    return value.bit_length() > 64


def parse_uint(text: str, lo: int, hi: int) -> int | None:
    """``text`` as a whole number from ``lo`` to ``hi`` written in ASCII digits, else None."""
    if not isinstance(text, str) or len(text) > MAX_DIGITS or not ASCII_DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def clean_text(value: str) -> bool:
    """Whether ``value`` can be printed and written (UTF-8 encodable, no control characters)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value)


def printable_ascii(value: str) -> bool:
    return bool(PRINTABLE_ASCII.fullmatch(value))
