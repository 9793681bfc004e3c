"""Processes and waits for the one-machine lab: by pid, bounded, scaled for slow machines.

A :class:`Proc` remembers its pid *and* start time, so a signal never reaches a process that
merely inherited a recycled pid. ``pids_in_netns`` finds whatever still runs inside a lab
namespace (a keepalived whose agent was killed, say) so ``down`` can stop it by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ipvslb.errors import SystemStateError
from ipvslb.node import netns as netns_mod

T = TypeVar("T")


def time_scale() -> float:
    """How much to stretch waits: IPVSLB_TIMEOUT_SCALE, else 8 in the QEMU guest, else 1."""
    value = os.environ.get("IPVSLB_TIMEOUT_SCALE")
    if value:
        return float(value)
    return 8.0 if os.environ.get("IPVSLB_IN_VM") == "1" else 1.0


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.02, abort: Callable[[], str | None] | None = None) -> T:
    """Call ``predicate`` until it returns something truthy (exceptions count as "not yet");
    SystemStateError naming ``what`` after ``timeout`` seconds (scaled), or at once when
    ``abort`` returns a reason (e.g. a process that had to keep running died)."""
    deadline = time.monotonic() + timeout * time_scale()
    last: object = None
    while True:
        reason = abort() if abort is not None else None
        if reason:
            raise SystemStateError(f"lab: gave up waiting for {what}: {reason}")
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as err:  # noqa: BLE001 - reported if it never succeeds
            last = err
        if time.monotonic() >= deadline:
            raise SystemStateError(f"lab: timed out after {timeout * time_scale():.0f}s waiting "
                                   f"for {what} (last: {last!r})")
        time.sleep(interval)


def sh(*argv: str, netns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command (inside ``netns``) and return its stdout; SystemStateError on failure."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        done = subprocess.run(full, capture_output=True, text=True,
                              timeout=timeout * time_scale(), check=False)
    except subprocess.TimeoutExpired:
        raise SystemStateError(f"lab: `{' '.join(full)}` did not finish in time") from None
    if check and done.returncode != 0:
        raise SystemStateError(f"lab: `{' '.join(full)}` failed: "
                               f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


# --- processes, by pid --------------------------------------------------------------------------

def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


@dataclass
class Proc:
    """A process the lab started: pid plus start time, so a recycled pid is never signalled."""

    node: str
    role: str  # "standin" | "agent"
    pid: int
    start: int
    log: str

    def alive(self) -> bool:
        _reap(self.pid)
        return start_time(self.pid) == self.start

    def signal(self, sig: int) -> bool:
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
            return True
        return False

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.signal(signal.SIGTERM):
            deadline = time.monotonic() + grace * time_scale()
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.signal(signal.SIGKILL):
            wait_for(lambda: not self.alive(), 10, f"pid {self.pid} to exit")

    def output(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _reap(pid: int) -> None:
    """Collect the exit status of our own child (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(netns_mod.path_of(name)).st_ino
    except FileNotFoundError:
        return None


def pids_in_netns(name: str) -> list[int]:
    """Every process whose network namespace is ``name`` (found through /proc/PID/ns/net)."""
    inode = netns_inode(name)
    if inode is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == inode:
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found
