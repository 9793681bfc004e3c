"""Only the VRRP master of an instance carries that instance's virtual servers (with
``node.lvsSyncDaemon``, backups carry standby ones: see ``ipvslb.keepalived.desired``).

With DR and IPVS on every controller, a packet forwarded to a backup (still addressed to
VIP:port, which every node holds on dummyvip0) would be balanced again and could bounce
between directors. So ``keepalived.conf`` includes ``vs-active-<i>.conf`` for instance <i>, a
symlink that points at ``vs-<i>.conf`` while this node is MASTER of <i> and at /dev/null
otherwise; keepalived is reloaded when a link changes. This works for any number of instances,
each switching on its own state. keepalived calls ``ipvslb notify`` on every state change.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Callable
from pathlib import Path

from ipvslb.config.scalars import parse_uint
from ipvslb.keepalived.desired import vs_active_file, vs_file, vs_standby_file

DEVNULL = "/dev/null"
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")


def instance_index(name: str) -> int | None:
    prefix = "ipvslb-vip-"
    if name.startswith(prefix):
        return parse_uint(name[len(prefix):], 0, 254)
    return None


def state_file(run_dir: Path, index: int) -> Path:
    return run_dir / f"state-{index}"


def read_state(run_dir: Path, index: int) -> str | None:
    try:
        words = state_file(run_dir, index).read_text().split()
    except FileNotFoundError:
        return None
    return words[0] if words else None


def recorded_master(run_dir: Path) -> Callable[[int], bool]:
    """``is_master(index)``: whether the notify hook last recorded MASTER for instance
    ``index`` in ``run_dir`` (what ``ipvslb.node.vip`` needs to tell keepalived's VIPs from
    the node's own addresses)."""
    return lambda index: read_state(run_dir, index) == "MASTER"


def _recorded_sequence(run_dir: Path, index: int) -> tuple[int, int] | None:
    try:
        words = state_file(run_dir, index).read_text().split()
        return int(words[1]), int(words[2])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def this_process_sequence() -> tuple[int, int]:
    """When keepalived forked this process: (start time in clock ticks after boot, pid).

    keepalived forks one notify process per state change, in the order of the changes, but
    they run concurrently and a slower one can finish last (two changes 0.2 s apart at start:
    BACKUP then MASTER). This orders them; the pid breaks ties within one clock tick.
    """
    stat = Path("/proc/self/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19]), os.getpid()


def point(run_dir: Path, index: int, master: bool) -> bool:
    """Point instance ``index``'s include at its virtual servers (master), or at its standby
    virtual servers where they are rendered (``node.lvsSyncDaemon``), else at /dev/null.

    Returns True when the link changed. The link is replaced atomically.
    """
    link = run_dir / vs_active_file(index)
    standby = run_dir / vs_standby_file(index)
    if master:
        target = str(run_dir / vs_file(index))
    else:
        target = str(standby) if standby.exists() else DEVNULL
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return False
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def on_state(run_dir: Path, name: str, state: str,
             sequence: tuple[int, int] | None = None) -> bool:
    """Record the state of instance ``name``; switch its virtual servers; reload if needed.

    Notifications are applied one at a time (a lock on the run directory), and one older than the
    last applied (``sequence``, default :func:`this_process_sequence`) is dropped: a late
    BACKUP must not undo the MASTER that followed it. Returns True when keepalived was asked
    to reload.
    """
    index = instance_index(name)
    if index is None:
        return False
    sequence = sequence or this_process_sequence()
    lock = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        last = _recorded_sequence(run_dir, index)
        if last is not None and sequence < last:
            return False
        tmp = state_file(run_dir, index).with_suffix(".tmp")
        tmp.write_text(f"{state} {sequence[0]} {sequence[1]}\n")
        os.replace(tmp, state_file(run_dir, index))
        if not (run_dir / vs_file(index)).exists():
            return False
        if point(run_dir, index, state == "MASTER"):
            return reload_keepalived(run_dir)
        return False
    finally:
        os.close(lock)  # releases the lock


def reload_keepalived(run_dir: Path) -> bool:
    try:
        pid = int((run_dir / "keepalived.pid").read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() != "keepalived":
            return False
        os.kill(pid, signal.SIGHUP)
        return True
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
