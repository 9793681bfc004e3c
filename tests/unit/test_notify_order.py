"""keepalived's notify hooks run concurrently; a late notification must not undo a newer one.

Found in the one-machine lab: at start a node goes BACKUP then MASTER 0.2 s later, keepalived
forks one `ipvslb notify` per change, and the first (slower to start) finished last, leaving
"BACKUP" recorded on the VRRP master (and, in virtual-servers mode, its virtual servers
switched off).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ipvslb.keepalived.desired import vs_file
from ipvslb.keepalived.vs_switch import on_state, read_state, this_process_sequence


def test_an_older_notification_arriving_last_is_dropped(tmp_path: Path) -> None:
    (tmp_path / vs_file(0)).write_text("# vs\n")
    on_state(tmp_path, "ipvslb-vip-0", "MASTER", sequence=(1000, 42))
    assert on_state(tmp_path, "ipvslb-vip-0", "BACKUP", sequence=(990, 41)) is False
    assert read_state(tmp_path, 0) == "MASTER"
    assert os.readlink(tmp_path / "vs-active-0.conf") == str(tmp_path / vs_file(0))
    on_state(tmp_path, "ipvslb-vip-0", "FAULT", sequence=(1000, 43))  # same tick, later pid
    assert read_state(tmp_path, 0) == "FAULT"
    assert os.readlink(tmp_path / "vs-active-0.conf") == "/dev/null"


def test_a_process_forked_later_has_a_later_sequence() -> None:
    code = "from ipvslb.keepalived.vs_switch import this_process_sequence as s; print(*s())"
    first = this_process_sequence()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    child = (int(out[0]), int(out[1]))
    assert child > first
