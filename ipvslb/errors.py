"""Errors that reach the user as one clear line each, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, missing kernel feature).

    The CLI prints ``error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(UserError):
    """One or more configuration problems, each ``field.path: what is wrong and the fix``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SystemStateError(UserError):
    """The system is not as ipvslb needs it (no IPVS in the kernel, a foreign link in the way)."""

    exit_code = 1
