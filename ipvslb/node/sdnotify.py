"""systemd's notify protocol (sd_notify(3)): READY=1, WATCHDOG=1, STOPPING=1, STATUS=...

Written here rather than taken from a library: the protocol is one datagram on the
AF_UNIX socket named by $NOTIFY_SOCKET; systemd-python needs a C build against libsystemd
(or Debian's python3-systemd, outside a virtualenv), and the `sdnotify` package on PyPI
has had no release since 2017. Without $NOTIFY_SOCKET (not under systemd) every call is a
no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False when not under systemd or it failed."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")


def _watchdog_interval(env: os._Environ[str] | dict[str, str]) -> float | None:
    """How often to send WATCHDOG=1 (half of $WATCHDOG_USEC), when the watchdog is ours."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isascii() or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6
