"""`ipvslb up` in virtual-servers mode end to end, in the QEMU guest (issue 5 part 6).

    tests/vm/run .venv/bin/pytest -m kernel tests/kernel/test_e2e_virtual_servers.py

The one-machine lab (``ipvslb.lab.nslab``): three controller namespaces on a bridge, each with
an HTTPS apiserver stand-in (own certificate) and `ipvslb up` (real keepalived programming real
IPVS, direct routing, the VIP on dummyvip0), and a client namespace with six addresses (IPVS
persistence pins one client address to one real server). Python is 15-30x slower in the
guest, so the lab is built once and one test walks through the whole scenario; every wait is
scaled (IPVSLB_TIMEOUT_SCALE, 8 in the guest).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvslb.config.model import Role
from ipvslb.lab.nslab import Lab, wait_for
from ipvslb.lab.procs import sh
from ipvslb.lab.topology import LabMode
from tests.e2e.conftest import running_lab
from tests.support.agentstatus import metrics, sample, status, unknown_to

pytestmark = pytest.mark.kernel


def ipvs_rules(lab: Lab, node: str) -> list[str]:
    """`ipvsadm -S -n` in the node's namespace, one rule per line."""
    assert shutil.which("ipvsadm"), "ipvsadm missing (apt-get install ipvsadm)"
    return lab.ipvs_rules(node)


def expected_ipvs(lab: Lab, reals: list[str]) -> list[str]:
    service = f"{lab.vip}:{lab.state.api_port}"
    return [f"-A -t {service} -s rr -p 360"] + [
        f"-a -t {service} -r {real}:{lab.state.api_port} -g -w 1" for real in sorted(reals)]


def address(lab: Lab, node: str) -> str:
    return lab.controller(node).addresses[0].split("/")[0]


def assert_one_director(lab: Lab, master: str, reals: list[str]) -> None:
    """The master carries the service with ``reals``; every backup carries nothing."""
    assert sorted(ipvs_rules(lab, master)) == sorted(expected_ipvs(lab, reals))
    for node in lab.names():
        if node != master:
            assert ipvs_rules(lab, node) == [], node


def assert_dummy_everywhere(lab: Lab) -> None:
    for node in lab.names():
        assert lab.dummy_addresses(node) == [f"{lab.vip}/32"], node


@pytest.fixture
def vs_lab(tmp_path: Path) -> Iterator[Lab]:
    with running_lab(tmp_path, LabMode.VIRTUAL_SERVERS, Role.CONTROLLER, "ipvslbvs",
                     90) as lab:
        yield lab


def test_virtual_servers_end_to_end(vs_lab: Lab) -> None:
    lab = vs_lab
    everyone = [address(lab, n) for n in lab.names()]

    # one VIP holder; dummyvip0 with the VIP/32 on all three; no REDIRECT rules in this mode
    master = lab.wait_settled()
    assert lab.holders() == [master]
    assert_dummy_everywhere(lab)
    for node in lab.names():
        assert lab.iptables_rules(node) == [], node

    # only the master programs IPVS: rr, persistent 360, all three real servers (DR)
    wait_for(lambda: sorted(ipvs_rules(lab, master)) == sorted(expected_ipvs(lab, everyone)),
             60, f"the IPVS service on {master}")
    assert_one_director(lab, master, everyone)

    # clients from several source addresses see all three apiservers, each with its own cert
    certs = lab.certificates()
    fetches = lab.fetch_round(rounds=1, timeout=10)
    assert {f.name for f in fetches} == set(lab.names())
    assert all(certs[f.fingerprint] == f.name for f in fetches)

    # `ipvslb status` and the metrics show the kernel's IPVS table on the master only
    service = f"{lab.vip}:{lab.state.api_port}"
    code, snap = status(lab, master)
    assert code == 0, snap.get("problems")
    (svc,) = snap["ipvs"]
    assert svc["address"] == service and svc["scheduler"] == "rr"
    assert sorted(rs["address"].split(":")[0] for rs in svc["realServers"]) == sorted(everyone)
    assert all(b["inRotation"] and b["up"] for b in snap["backends"])
    assert snap["instances"][0]["state"] == "MASTER"
    for node in lab.names():
        if node != master:
            code, other = status(lab, node)
            assert code == 0 and other["ipvs"] == [], node
    m = metrics(lab, master)
    scheduled = sum(v for (name, labels), v in m.items()
                    if name == "ipvslb_ipvs_connections_total" and ("service", service) in labels)
    assert scheduled >= len(fetches)  # the kernel's counters of the connections just made
    assert unknown_to(m, ("ipvslb_ipvs_",)) == []  # what the shipped dashboard queries

    # a dead apiserver is taken out by keepalived's check; clients keep working
    victim = next(n for n in lab.names() if n != master)
    standin = lab.proc("standin", victim)
    assert standin is not None
    standin.signal(signal.SIGKILL)
    alive = [a for a in everyone if a != address(lab, victim)]
    wait_for(lambda: sorted(ipvs_rules(lab, master)) == sorted(expected_ipvs(lab, alive)),
             60, f"keepalived to remove {victim} from the IPVS service")
    fetches = lab.fetch_round(rounds=1, timeout=10)  # raises on any failed request
    assert victim not in {f.name for f in fetches}
    code, snap = status(lab, master)
    (gone,) = [b for b in snap["backends"] if b["address"].startswith(address(lab, victim) + ":")]
    assert code == 1 and gone["inRotation"] is False, snap
    lab.start_standin(victim)
    wait_for(lambda: sorted(ipvs_rules(lab, master)) == sorted(expected_ipvs(lab, everyone)),
             60, f"keepalived to add {victim} back")

    # failover: SIGKILL of the master's agent and keepalived; VIP and IPVS service move
    result = lab.failover("crash", restart=True, timeout=60)
    new = result.new
    assert new is not None and new != master, result
    assert result.served is not None, result
    assert lab.holders() == [new]
    wait_for(lambda: ipvs_rules(lab, master) == [], 30,
             f"the restarted {master} to drop the IPVS service its killed keepalived left")
    assert_one_director(lab, new, everyone)
    # no duplicate state after SIGKILL + `ipvslb up` again: one address, one link, one service
    assert_dummy_everywhere(lab)
    assert {f.name for f in lab.fetch_round(rounds=1, timeout=10)} == set(lab.names())

    # stop: nothing left anywhere
    for node in lab.names():
        lab.stop_agent(node, grace=30)
    for node in lab.names():
        netns = lab.controller(node).netns
        assert lab.dummy_addresses(node) is None, node
        assert ipvs_rules(lab, node) == [], node
        left = lab.addresses(netns) or []
        assert f"{lab.vip}/24" not in left and lab.controller(node).addresses[0] in left, node
        assert not (lab.state_dir / "nodes" / node / "run").exists(), node


def dummy_link(lab: Lab, node: str) -> dict[str, object] | None:
    """`ip -j -d link show dummyvip0` in the node's namespace (None: no such link)."""
    out = sh("ip", "-j", "-d", "-n", lab.controller(node).netns, "link", "show", "dummyvip0",
             check=False)
    return json.loads(out)[0] if out.strip() else None


def is_ours(link: dict[str, object] | None) -> bool:
    info = link.get("linkinfo") if link else None
    return isinstance(info, dict) and info.get("info_kind") == "dummy" and \
        "UP" not in link.get("flags", [])  # type: ignore[union-attr, operator]


def test_dummy_link_changed_by_someone_else_is_repaired(vs_lab: Lab) -> None:
    # issue 15: a network manager re-applying interfaces, `ip addr flush`, `ip link del`. A
    # backup without the VIP on dummyvip0 drops the DR traffic the master sends it.
    lab = vs_lab
    master = lab.wait_settled()
    node = next(n for n in lab.names() if n != master)
    netns = lab.controller(node).netns
    vip32 = f"{lab.vip}/32"
    repaired = lambda: lab.dummy_addresses(node) == [vip32] and is_ours(  # noqa: E731
        dummy_link(lab, node))
    assert repaired()
    took = {}
    for what, argv in [
        ("ip addr del", ["addr", "del", vip32, "dev", "dummyvip0"]),
        ("ip addr flush", ["addr", "flush", "dev", "dummyvip0"]),
        ("ip link set up", ["link", "set", "dummyvip0", "up"]),
        ("ip link del", ["link", "del", "dummyvip0"]),
    ]:
        began = time.monotonic()
        sh("ip", "-n", netns, *argv)
        wait_for(repaired, 10, f"{node}'s dummyvip0 repaired after {what}", interval=0.01)
        took[what] = time.monotonic() - began
    print("dummyvip0 repaired after: " + ", ".join(f"{w} {s * 1000:.0f} ms"
                                                   for w, s in took.items()))
    code, snap = status(lab, node)
    assert code == 0 and snap["dummy"]["watching"] and snap["dummy"]["repairs"] >= 4, snap
    agent = lab.proc("agent", node)
    assert agent is not None
    assert agent.output().count("event=dummy_repaired") == snap["dummy"]["repairs"]
    m = metrics(lab, node)
    assert sample(m, "ipvslb_dummy_repairs_total") == snap["dummy"]["repairs"]
    # the backup still takes its share of the DR traffic
    assert {f.name for f in lab.fetch_round(rounds=2, timeout=10)} == set(lab.names())

    # a foreign link of that name (swapped in while the agent is frozen) is never fought over
    assert agent.signal(signal.SIGSTOP)
    try:
        sh("ip", "-n", netns, "link", "del", "dummyvip0")
        sh("ip", "-n", netns, "link", "add", "dummyvip0", "type", "bridge")
    finally:
        agent.signal(signal.SIGCONT)
    wait_for(lambda: status(lab, node)[0] == 1, 20, f"{node}'s status to report the link")
    code, snap = status(lab, node)
    assert any("dummyvip0 is not repaired" in p for p in snap["problems"]), snap["problems"]
    link = dummy_link(lab, node)
    assert link is not None and link["linkinfo"]["info_kind"] == "bridge"  # type: ignore[index]
    assert agent.output().count("event=dummy_not_repaired") == 1
    sh("ip", "-n", netns, "link", "del", "dummyvip0")  # gone: ipvslb's own comes back
    wait_for(repaired, 10, f"{node}'s dummyvip0 back after the foreign link went")
    wait_for(lambda: status(lab, node)[0] == 0, 20, f"{node}'s status healthy again")
