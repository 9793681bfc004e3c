"""Only the VRRP master of an instance carries that instance's virtual servers.

With DR and IPVS on every controller, a packet forwarded to a backup (still addressed to
VIP:port, which every node holds on dummyvip0) would be balanced again and could bounce
between directors. So ``keepalived.conf`` includes ``vs-active-<i>.conf`` for instance <i>, a
symlink that points at ``vs-<i>.conf`` while this node is MASTER of <i> and at /dev/null
otherwise; keepalived is reloaded when a link changes. This works for any number of instances,
each switching on its own state. keepalived calls ``ipvslb notify`` on every state change.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from ipvslb.keepalived_files import vs_active_file, vs_file

DEVNULL = "/dev/null"
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")


def instance_index(name: str) -> int | None:
    prefix = "ipvslb-vip-"
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def state_file(run_dir: Path, index: int) -> Path:
    return run_dir / f"state-{index}"


def read_state(run_dir: Path, index: int) -> str | None:
    try:
        return state_file(run_dir, index).read_text().strip() or None
    except FileNotFoundError:
        return None


def point(run_dir: Path, index: int, master: bool) -> bool:
    """Point instance ``index``'s include at its virtual servers (master) or at /dev/null.

    Returns True when the link changed. The link is replaced atomically.
    """
    link = run_dir / vs_active_file(index)
    target = str(run_dir / vs_file(index)) if master else DEVNULL
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return False
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def on_state(run_dir: Path, name: str, state: str) -> bool:
    """Record the state of instance ``name``; switch its virtual servers; reload if needed.

    Returns True when keepalived was asked to reload.
    """
    index = instance_index(name)
    if index is None:
        return False
    tmp = state_file(run_dir, index).with_suffix(".tmp")
    tmp.write_text(state + "\n")
    os.replace(tmp, state_file(run_dir, index))
    if not (run_dir / vs_file(index)).exists():
        return False
    if point(run_dir, index, state == "MASTER"):
        return reload_keepalived(run_dir)
    return False


def reload_keepalived(run_dir: Path) -> bool:
    try:
        pid = int((run_dir / "keepalived.pid").read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() != "keepalived":
            return False
        os.kill(pid, signal.SIGHUP)
        return True
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
