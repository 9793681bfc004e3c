"""Destructive and looping input on a real node (issue 17): a VIP that is the node's own
address, and a keepalived that can never run.

The node is a network namespace this test creates, with a veth link as its interface.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipvslb.config.formats import config_from_document
from ipvslb.errors import SystemStateError, UserError
from ipvslb.files import claim_run_dir
from ipvslb.keepalived.process import MAX_QUICK_EXITS, Keepalived
from ipvslb.keepalived.vs_switch import recorded_master
from ipvslb.node import vip
from tests.support.netlab import NetLab, Netns

ADDRESS = "10.99.0.1"


def node_doc(run_dir: Path) -> dict[str, Any]:
    return {
        "node": {"runDir": str(run_dir), "priority": 100},
        "endpoints": {"source": "static", "static": ["10.99.0.11"]},
        "controlPlaneLoadBalancing": {"keepalived": {
            "vrrpInstances": [{"virtualIPs": [f"{ADDRESS}/24"], "interface": "eth0"}]}},
    }


def node(netlab: NetLab) -> Netns:
    ns, peer = netlab.netns("node"), netlab.netns("peer")
    netlab.veth(ns, "eth0", peer, "eth0")
    ns.batch([f"addr add {ADDRESS}/24 dev eth0"])
    return ns


def has_address(ns: Netns) -> bool:
    return f"inet {ADDRESS}/24" in ns.ip("-4", "addr", "show", "dev", "eth0")


def test_a_vip_that_is_the_nodes_address_is_never_deleted(netlab: NetLab, tmp_path: Path
                                                          ) -> None:
    run_dir = tmp_path / "run"
    ns = node(netlab)
    config = config_from_document(node_doc(run_dir))
    with pytest.raises(UserError, match=f"VIP {ADDRESS}/24 is already an address of this node "
                       "on eth0, not one keepalived added"):
        vip.check_not_node_address(config, ("eth0",), recorded_master(run_dir), ns.name)
    removed = vip.remove_stale(config, ("eth0",), recorded_master(run_dir), ns.name)
    assert removed == 0 and has_address(ns)

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(node_doc(run_dir)))
    for command in ("up", "down"):
        res = subprocess.run(ns.argv(sys.executable, "-m", "ipvslb", command, "-c", str(cfg)),
                             capture_output=True, text=True, timeout=120)
        assert "Traceback" not in res.stderr and has_address(ns), (command, res.stderr)
        if command == "up":
            assert res.returncode == 2 and "is already an address of this node" in res.stderr
            assert not run_dir.exists()  # refused before anything was changed
    # What keepalived added (its notify recorded MASTER) is removed after it died.
    claim_run_dir(run_dir)
    (run_dir / "state-0").write_text("MASTER 1 1\n")
    vip.check_not_node_address(config, ("eth0",), recorded_master(run_dir), ns.name)
    removed = vip.remove_stale(config, ("eth0",), recorded_master(run_dir), ns.name)
    assert removed == 1 and not has_address(ns)


def test_a_keepalived_that_exits_at_once_makes_the_agent_give_up(tmp_path: Path) -> None:
    """A stand-in binary that fails like keepalived refusing its config: exits at once."""
    binary = tmp_path / "keepalived"
    binary.write_text("#!/bin/sh\necho 'cannot bind to interface'\nexit 1\n")
    binary.chmod(0o755)
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir)
    failures: list[BaseException] = []

    async def scenario() -> None:
        gave_up = asyncio.Event()

        def give_up(err: BaseException) -> None:
            failures.append(err)
            gave_up.set()

        ka = Keepalived(str(binary), run_dir, run_dir / "keepalived.conf", on_give_up=give_up,
                        max_backoff=0.5)
        await ka.start()
        try:
            await asyncio.wait_for(gave_up.wait(), 60)
        finally:
            await ka.stop()
        assert ka.restarts == MAX_QUICK_EXITS

    asyncio.run(scenario())
    assert isinstance(failures[0], SystemStateError)
    assert "exited 5 times in a row" in failures[0].message
    assert "cannot bind to interface" in failures[0].message
