"""The guest kernel is what ipvslb needs: IPVS with its schedulers, dummy links, NAT traffic.

Runs in the QEMU guest (real Debian kernel, real ipvsadm); see tests/kernel/conftest.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.kernel.conftest import VIP4, VIP6, DirectorLab
from tests.support.netlab import NetLab, run, tcp_request, wait_until

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("module", ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "dummy"])
def test_module_loads(module: str) -> None:
    run("modprobe", module)
    assert Path(f"/sys/module/{module}").is_dir()


def test_dummy_link_holds_a_vip_in_a_namespace(netlab: NetLab) -> None:
    node = netlab.netns("node")
    node.ip("link", "add", "dummyvip0", "type", "dummy")
    node.ip("addr", "add", f"{VIP4}/32", "dev", "dummyvip0")

    (link,) = json.loads(node.ip("-j", "-d", "addr", "show", "dev", "dummyvip0"))

    assert link["linkinfo"]["info_kind"] == "dummy"
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]] == [(VIP4, 32)]
    # The test's own namespace never sees it.
    assert "dummyvip0" not in run("ip", "link", "show")


def test_ipvsadm_adds_and_saves_a_persistent_service(netlab: NetLab) -> None:
    node = netlab.netns("node")
    other = netlab.netns("other")
    service = f"{VIP4}:6443"
    node.run("ipvsadm", "-A", "-t", service, "-s", "rr", "-p", "360")
    node.run("ipvsadm", "-a", "-t", service, "-r", "10.77.1.11:6443", "-g", "-w", "1")
    node.run("ipvsadm", "-a", "-t", service, "-r", "10.77.1.12:6443", "-m", "-w", "1")

    saved = node.run("ipvsadm", "-S", "-n")

    assert saved.splitlines() == [
        f"-A -t {service} -s rr -p 360",
        f"-a -t {service} -r 10.77.1.11:6443 -g -w 1",
        f"-a -t {service} -r 10.77.1.12:6443 -m -w 1",
    ]
    # IPVS tables are per network namespace: tests sharing the guest kernel stay apart.
    assert other.run("ipvsadm", "-S", "-n") == ""


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_nat_service_spreads_tcp_round_robin(
    netlab: NetLab, director_lab: DirectorLab, vip: str
) -> None:
    lab = director_lab
    family = "ipv6" if ":" in vip else "ipv4"
    service = f"[{vip}]:6443" if family == "ipv6" else f"{vip}:6443"
    servers = [
        netlab.name_server(real.netns, f"real{i}", 8080, wait=False)
        for i, real in enumerate(lab.reals, start=1)
    ]
    lab.ipvsadm("-A", "-t", service, "-s", "rr")
    for real in lab.reals:
        address = getattr(real, family)
        target = f"[{address}]:8080" if family == "ipv6" else f"{address}:8080"
        lab.ipvsadm("-a", "-t", service, "-r", target, "-m", "-w", "1")
    for server in servers:
        netlab.wait_ready(server)

    answers = [tcp_request(vip, 6443, netns=lab.client.netns).decode().strip() for _ in range(6)]

    assert Counter(answers) == {"real1": 2, "real2": 2, "real3": 2}, answers
    assert answers[:3] == answers[3:], answers  # the same rotation twice: round robin

    # IPVS itself counted them: two per real server (its rate estimator folds the per-CPU
    # counters into these every 2 seconds).
    def per_real() -> list[int] | None:
        stats = lab.ipvsadm("-L", "-n", "--stats")
        rows = [line.split() for line in stats.splitlines() if line.lstrip().startswith("->")]
        counts = [int(row[2]) for row in rows[1:]]
        return counts if sum(counts) == 6 else None

    assert wait_until(per_real, 10, interval=0.5, what="IPVS to count 6 connections") == [2, 2, 2]
