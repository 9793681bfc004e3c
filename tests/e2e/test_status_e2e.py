"""`ipvslb status` and the metrics endpoint on the one-machine lab (issue 12), userspace mode.

Everything real: three controllers with keepalived and `ipvslb up`, stand-in apiservers, a
failover by SIGKILL. What status and metrics say is compared with what the kernel says (`ip
addr`, iptables-save) and with what the test did (a stand-in stopped), never with itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ipvslb.lab.nslab import Lab, wait_for
from tests.support.agentstatus import metrics, sample, status, unknown_to


def assert_agrees_with_kernel(lab: Lab) -> None:
    """Every node's status: its VRRP state as keepalived reported it, the VIP held exactly
    where `ip addr` shows it, ipvslb's iptables rules as iptables-save prints them."""
    holders = lab.holders()
    assert len(holders) == 1, holders
    for node in lab.names():
        code, snap = status(lab, node)
        assert code == 0, (node, snap.get("problems"))
        assert snap["schema"] == "ipvslb.status/v1" and snap["healthy"] is True
        (inst,) = snap["instances"]
        assert inst["state"] == lab.vrrp_state(node) == ("MASTER" if node in holders
                                                         else "BACKUP"), node
        held = [v.split("/")[0] for v in inst["vipsHeld"]]
        assert held == ([lab.vip] if node in holders else []), node
        assert snap["iptablesRules"] == lab.iptables_rules(node), node
        assert snap["keepalived"]["running"] and snap["keepalived"]["pid"] in \
            lab.keepalived_pids(node)
        assert sorted(b["address"] for b in snap["backends"] if b["inRotation"]) == sorted(
            f"{m.addresses[0].split('/')[0]}:{lab.state.api_port}" for m in lab.state.controllers)


def test_status_and_metrics_follow_failover_and_a_backend_going_down(userspace_lab: Lab) -> None:
    lab = userspace_lab
    wait_for(lambda: all(status(lab, n)[0] == 0 for n in lab.names()), 20,
             "every agent healthy")
    assert_agrees_with_kernel(lab)
    old = lab.holder()
    assert old is not None
    before = {n: metrics(lab, n) for n in lab.names()}
    for node, m in before.items():
        assert sample(m, "ipvslb_vrrp_state", vrrp_instance="ipvslb-vip-0",
                      state="MASTER") == (1.0 if node == old else 0.0)
        assert sample(m, "ipvslb_backends", state="up") == 3.0
        assert sample(m, "ipvslb_keepalived_up") == 1.0
        sent = sample(m, "ipvslb_vrrp_adverts_sent_total", vrrp_instance="ipvslb-vip-0")
        assert (sent or 0) > 0 or node != old  # keepalived's own counters: the master sends

    result = lab.failover("crash", restart=True)
    new = result.new
    assert new is not None and new != old
    wait_for(lambda: all(status(lab, n)[0] == 0 for n in lab.names()), 20,
             "every agent healthy after the failover")
    assert_agrees_with_kernel(lab)
    m = metrics(lab, new)
    assert sample(m, "ipvslb_vrrp_state", vrrp_instance="ipvslb-vip-0", state="MASTER") == 1.0
    transitions = sample(m, "ipvslb_vrrp_transitions_total", vrrp_instance="ipvslb-vip-0")
    was = sample(before[new], "ipvslb_vrrp_transitions_total", vrrp_instance="ipvslb-vip-0")
    assert transitions is not None and was is not None and transitions > was
    assert sample(m, "ipvslb_vip_held", vrrp_instance="ipvslb-vip-0", vip=f"{lab.vip}/24") == 1.0

    # a stand-in stops: every agent's status turns degraded naming that backend, and back
    victim = next(n for n in lab.names() if n != new)
    dead = f"{lab.controller(victim).addresses[0].split('/')[0]}:{lab.state.api_port}"
    standin = lab.proc("standin", victim)
    assert standin is not None
    standin.stop(5.0)
    wait_for(lambda: status(lab, new)[0] == 1, 20, f"{new}'s status to see {dead} down")
    code, snap = status(lab, new)
    (down,) = [b for b in snap["backends"] if b["address"] == dead]
    assert code == 1 and down["up"] is False and down["inRotation"] is False
    assert any(dead in p for p in snap["problems"]), snap["problems"]
    m = metrics(lab, new)
    assert sample(m, "ipvslb_backend_up", backend=dead) == 0.0
    assert sample(m, "ipvslb_backends", state="down") == 1.0
    assert sample(m, "ipvslb_healthy") == 0.0
    # every series the shipped dashboard and alert rules query exists (IPVS: the guest's test;
    # ipvslb_split_brain{vip} only during a split brain: tests/e2e/test_split_brain.py)
    assert [x for x in unknown_to(m)
            if not x.startswith("ipvslb_ipvs_") and x != "ipvslb_split_brain"] == []
    lab.start_standin(victim)
    wait_for(lambda: status(lab, new)[0] == 0, 30, f"{new}'s status to see {dead} back")
    assert "event=backend_down" in (lab.proc("agent", new).output())  # type: ignore[union-attr]

    # a stopped agent: exit 3, one line on stderr
    lab.stop_agent(victim)
    member = lab.controller(victim)
    proc = subprocess.run([sys.executable, "-m", "ipvslb", "status", "-c", member.config],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 3 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and "no ipvslb agent" in proc.stderr
    assert not (Path(member.run_dir) / "status.sock").exists()
