"""What may appear in a keepalived.conf token, and how numbers are written.

keepalived's reader (2.2.x, lib/parser.c) gives special meaning to many characters: ``#`` and
``!`` start comments anywhere outside double quotes, ``{`` and ``}`` open and close blocks even in
the middle of a word, ``"`` quotes, ``\\`` escapes (and continues a line at its end), ``$``
substitutes parameters (``${_PWD}`` is always defined), a line starting with ``@`` is conditional,
one starting with ``~`` is a sequence, one whose first word is ``include`` reads another file, and
lines longer than 1023 bytes are cut in two. Every check here is a whitelist that keeps all of
that out of the values we write.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal

#: Lines keepalived reads with fgets into a 1024-byte buffer; stay well below.
MAX_LINE = 1000
MAX_TOKEN = 255
MAX_SCRIPT = 512

#: Words keepalived treats as "read another file" when they start a line.
INCLUDE_WORDS = frozenset({"include", "includer", "includem", "includew", "includeb", "includea"})

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
PATH_RE = re.compile(r"[A-Za-z0-9_./:*?\[\]-]+")
URL_PATH_RE = re.compile(r"/[A-Za-z0-9_.~%/?&=+,:;@-]*")
#: Printable ASCII without space.
WORD_RE = re.compile(r"[!-~]+")
#: auth_pass: a WORD without any character keepalived treats specially.
PASSWORD_RE = WORD_RE
PASSWORD_FORBIDDEN = frozenset("\"'\\{}#!$")
#: Script commands are written in double quotes; spaces separate the program's arguments.
SCRIPT_RE = re.compile(r"[ -~]+")
SCRIPT_FORBIDDEN = frozenset("\"'\\{}#!$")
#: Comment text (render header): inert to keepalived, but kept free of a line-continuing
#: backslash, quotes and braces so that a plain count of braces still matches the blocks.
COMMENT_RE = re.compile(r"[ -~]*")
COMMENT_FORBIDDEN = frozenset("\\\"{}")

NAME_HELP = "use letters, digits and . _ : - (not starting with . : -)"


def _shown(value: object) -> str:
    return repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."


def check_name(value: object, what: str) -> str:
    """An identifier: instance/script names, interfaces, router_id, users, labels."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    if not value:
        raise ValueError(f"{what}: must not be empty")
    if len(value) > MAX_TOKEN:
        raise ValueError(f"{what}: must be at most {MAX_TOKEN} characters")
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{what}: {_shown(value)} is not allowed; {NAME_HELP}")
    if value in INCLUDE_WORDS:
        raise ValueError(f"{what}: {_shown(value)} is a keepalived keyword; choose another name")
    return value


def check_path(value: object, what: str) -> str:
    """A file path or glob for ``include``."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    if not value or len(value) > MAX_TOKEN:
        raise ValueError(f"{what}: must be 1 to {MAX_TOKEN} characters")
    if not PATH_RE.fullmatch(value):
        raise ValueError(
            f"{what}: {_shown(value)} is not allowed; use letters, digits and . _ / : - * ? [ ]"
        )
    return value


def check_url_path(value: object, what: str) -> str:
    """An HTTP request path such as ``/healthz`` or ``/readyz?verbose``."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    if not value or len(value) > MAX_TOKEN:
        raise ValueError(f"{what}: must be 1 to {MAX_TOKEN} characters")
    if not URL_PATH_RE.fullmatch(value):
        raise ValueError(
            f"{what}: {_shown(value)} is not allowed; start with / and use letters, digits "
            "and . _ ~ % / ? & = + , : ; @ -"
        )
    return value


def check_password(value: object, what: str) -> str:
    """A VRRP PASS password: 1-8 printable characters, no space or quoting characters."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    if not value:
        raise ValueError(f"{what}: must not be empty")
    if len(value) > 8:
        raise ValueError(f"{what}: must be at most 8 characters (keepalived PASS authentication)")
    if not PASSWORD_RE.fullmatch(value) or PASSWORD_FORBIDDEN.intersection(value):
        raise ValueError(
            f"{what}: {_shown(value)} is not allowed; use printable ASCII without spaces "
            "or any of \" ' \\ {{ }} # ! $"
        )
    return value


def check_script(value: object, what: str) -> str:
    """A command line (program and arguments) keepalived runs; written in double quotes."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    if not value.strip(" "):
        raise ValueError(f"{what}: must not be empty")
    if len(value) > MAX_SCRIPT:
        raise ValueError(f"{what}: must be at most {MAX_SCRIPT} characters")
    if value != value.strip(" "):
        raise ValueError(f"{what}: must not start or end with a space")
    if not SCRIPT_RE.fullmatch(value) or SCRIPT_FORBIDDEN.intersection(value):
        raise ValueError(
            f"{what}: {_shown(value)} is not allowed; use printable ASCII and spaces without "
            "any of \" ' \\ { } # ! $ (arguments cannot contain spaces)"
        )
    return value


def check_comment(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    for line in value.split("\n"):
        if len(line) > MAX_LINE - 2 or not COMMENT_RE.fullmatch(line):
            raise ValueError(f"{what}: {_shown(line)} is not allowed; use printable ASCII")
        if COMMENT_FORBIDDEN.intersection(line):
            raise ValueError(f"{what}: must not contain any of \\ \" {{ }}")
    return value


def check_ip(value: object, what: str) -> str:
    """An IPv4 or IPv6 address, kept as written."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    if not re.fullmatch(r"[0-9A-Fa-f.:]{2,45}", value):
        raise ValueError(f"{what}: {_shown(value)} is not an IP address")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what}: {_shown(value)} is not an IP address") from None
    return value


def check_cidr(value: object, what: str) -> str:
    """An address with an optional ``/prefix`` (keepalived assumes /32 or /128 without one)."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: must be a string, got {_shown(value)}")
    address, slash, prefix = value.partition("/")
    check_ip(address, what)
    if slash:
        limit = 32 if ipaddress.ip_address(address).version == 4 else 128
        if not re.fullmatch(r"[0-9]{1,3}", prefix) or int(prefix) > limit:
            raise ValueError(f"{what}: {_shown(value)} has an invalid prefix length (0-{limit})")
    return value


def check_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: must be an integer, got {_shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{what}: must be between {low} and {high}, got {value}")
    return value


def check_seconds(value: object, what: str, low: float, high: float, places: int = 6) -> float:
    """A time in seconds; fractions allowed down to ``places`` decimal places."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: must be a number, got {_shown(value)}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{what}: must be between {format_number(low)} and "
                         f"{format_number(high)} seconds, got {value}")
    exponent = Decimal(repr(float(value))).normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise ValueError(f"{what}: must have at most {places} decimal places, got {value}")
    return value


def check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: must be true or false, got {_shown(value)}")
    return value


def check_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what}: must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def format_number(value: int | float) -> str:
    """Shortest plain decimal: 1 -> "1", 0.1 -> "0.1", 60.0 -> "60", 1e-05 -> "0.00001"."""
    if isinstance(value, int):
        return str(value)
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
