"""A real Kubernetes control plane behind the VIP, userspace mode, on the host (issue 11).

Three controller namespaces, each with a member of a three-member etcd cluster, a real
kube-apiserver 1.20.2 (its own serving certificate, the VIP in its SANs) and `ipvslb up` with
``endpoints: kubernetes`` and a kubeconfig for its local apiserver; a client namespace runs
Debian's real kubectl against ``https://VIP:6443`` with the lab CA. The backends every agent
uses come from the apiservers' own lease endpoint reconciler through the agent's watch; the
tests never tell an agent what its backends are.

One lab serves the whole module (starting three apiservers costs tens of seconds); every test
leaves it with all three nodes up and serving.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvslb.config.model import Role
from ipvslb.lab.kubewatch import (
    LEASE_EXPIRY,
    Watch,
    agent_backends,
    all_backends,
    make_configmap,
    wait_agents_follow,
)
from ipvslb.lab.kubewatch import wait_healthy as healthy
from ipvslb.lab.nslab import IFNAME, Lab, time_scale, wait_for
from ipvslb.lab.topology import LabMode
from tests.e2e.conftest import real_control_plane
from tests.support.agentstatus import status

# Client-visible unavailability allowed around one failure: VRRP failover (~0.2 s), a
# client's first connection through a dead path (connect timeout) and TLS on a busy machine.
FAILOVER_WINDOW = 5.0


@pytest.fixture(scope="module")
def kube_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with real_control_plane(tmp_path_factory.mktemp("kube") / "lab", LabMode.USERSPACE,
                            Role.CONTROLLER_WORKER, "ipvslbcp") as lab:
        yield lab


def test_kubectl_through_the_vip_reaches_every_apiserver(kube_lab: Lab) -> None:
    lab = kube_lab
    healthy(lab)
    assert lab.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    # kubectl verifies the serving certificate with the lab CA: the VIP is in every SAN.
    assert lab.published() == sorted(lab.address_of(n) for n in lab.names())
    # across fresh connections the proxy reaches each apiserver (told apart by certificate)
    seen = {f.name for f in lab.fetch_round(rounds=2)}
    assert seen == set(lab.names()), seen
    # `ipvslb status` on every node: the watch is up at the API's resourceVersion, and the
    # backends in rotation are what the API publishes
    published = sorted(f"{a}:{lab.state.api_port}" for a in lab.published())
    for node in lab.names():
        code, snap = status(lab, node)
        src = snap["source"]
        assert code == 0, (node, snap.get("problems"))
        assert src["kind"] == "kubernetes" and src["connected"] and not src["retrying"], node
        assert src["resourceVersion"] and src["lastSync"] is not None, node
        assert sorted(b["address"] for b in snap["backends"] if b["inRotation"]) == published


def test_agents_follow_the_api_when_an_apiserver_stops_and_returns(kube_lab: Lab) -> None:
    lab = kube_lab
    healthy(lab)
    holder = lab.wait_serving(30)
    victim = next(n for n in lab.names() if n != holder)
    proc = lab.proc("apiserver", victim)
    assert proc is not None
    proc.signal(signal.SIGKILL)  # no graceful lease removal: the lease must expire
    others = sorted(f"{lab.address_of(n)}:{lab.state.api_port}" for n in lab.names()
                    if n != victim)
    wait_for(lambda: lab.published() == sorted(a.split(":")[0] for a in others),
             LEASE_EXPIRY, f"the API to drop {victim} after its lease expired")
    # every agent whose watch is up (all but the victim, whose local apiserver is gone)
    wait_agents_follow(lab, others, [n for n in lab.names() if n != victim])
    assert lab.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    lab.start_apiserver(victim)
    healthy(lab)  # it returns: in the API and in every agent's list


def test_power_off_of_the_vip_holder_while_a_watch_and_a_request_loop_run(
        kube_lab: Lab) -> None:
    lab = kube_lab
    healthy(lab)
    old = lab.wait_serving(30)
    with Watch(lab) as watch, lab.prober() as loop:
        assert make_configmap(lab, "before-power-off")
        wait_for(lambda: watch.seen("before-power-off"), 30, "the watch to see a change")
        time.sleep(0.5)
        killed_at = time.monotonic()
        lab.power_off(old)
        new = wait_for(lambda: next((h for h in lab.holders() if h != old), None), 15,
                       "the VIP on another controller")
        first_ok = loop.first_ok(killed_at, 30 * time_scale())
        assert first_ok is not None, "no request through the VIP succeeded after power-off"
        # a change made after the failover reaches the (resumed) watch through the VIP
        wait_for(lambda: make_configmap(lab, "after-power-off"), 30,
                 "kubectl create through the VIP after the failover")
        wait_for(lambda: watch.seen("after-power-off"), 30,
                 "the watch to resume through the VIP and see a change made after failover")
        # keep the loop running well past the window: nothing may fail after it
        time.sleep(max(1.0, killed_at + FAILOVER_WINDOW * time_scale() + 3.0 - time.monotonic()))
        ended = time.monotonic()
    # the powered-off node's eth0 still has the address, but no carrier: it answers nobody
    assert new != old and [h for h in lab.holders() if h != old] == [new]
    after = [a for a in loop.attempts if a.start >= killed_at]
    failed = [a for a in after if not a.ok]
    # Besides the VIP moving, the dead node's apiserver is still in the new holder's rotation
    # until its health check fails it (interval 1 s, fall 2): a connection sent there waits
    # for the proxy's connect timeout before the next backend is tried. Both fit the window.
    late = [a for a in failed if a.start > killed_at + FAILOVER_WINDOW * time_scale()]
    print(f"power-off: first answer {first_ok - killed_at:.3f}s after the kill; "
          f"{len(failed)} of {len(after)} requests failed, at "
          f"{[round(a.start - killed_at, 2) for a in failed]} s; watch runs {watch.runs}; "
          f"{ended - killed_at:.1f}s observed")
    assert first_ok - killed_at <= FAILOVER_WINDOW * time_scale()
    assert not late, f"requests failed after the failover window: {late[:3]}"
    assert any(a.ok for a in after if a.start > killed_at + FAILOVER_WINDOW * time_scale())
    lab.power_on(old)
    healthy(lab)
    lab.kubectl("delete", "configmap", "before-power-off", "after-power-off")


def test_the_vip_leaves_a_node_whose_local_apiserver_dies(kube_lab: Lab) -> None:
    lab = kube_lab
    healthy(lab)
    old = lab.wait_serving(30)
    proc = lab.proc("apiserver", old)
    assert proc is not None
    proc.signal(signal.SIGKILL)  # the agent and keepalived stay up
    wait_for(lambda: lab.holder() not in (None, old), 30,
             f"the VIP to leave {old}, whose apiserver died")
    agent = lab.proc("agent", old)
    assert agent is not None and agent.alive()
    assert lab.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    lab.start_apiserver(old)
    healthy(lab)


def test_rolling_restart_of_every_controller_fails_no_request(kube_lab: Lab) -> None:
    """Planned maintenance (issue 15): `systemctl stop ipvslb`, then the apiserver and etcd,
    on one node at a time, while fresh HTTPS requests run through the VIP. The agent's stop
    releases the VIP first (keepalived sends priority 0, a backup takes over at once) and only
    then drains its proxy; a stopping apiserver closes its port and the holder's proxy moves on
    to the next backend. The prober's connect timeout is 0.1 s, so a lost SYN (a TCP
    retransmission) counts as a failed request.

    The loop GETs /version, an ordinary API request (anonymous, through authentication and
    authorization), not /readyz: a stopping apiserver answers /readyz with 500 on purpose, to
    tell load balancers to take it out, while it still serves every API request.

    One failure is unavoidable in userspace mode and is the only one allowed: a request whose
    TCP connection was open at the instant the VIP moved. The client's next packet goes to the
    new holder (gratuitous ARP), which has no such connection and resets it; a userspace
    proxy's connections cannot move between nodes. The VIP's moves are taken from the kernel's
    address events (VipWatch), so the excuse cannot cover anything else."""
    lab = kube_lab
    healthy(lab)
    marks: list[tuple[float, str]] = []  # when each step began, to place a failure
    with lab.watch() as watch, lab.prober(path="/version") as loop:
        started = time.monotonic()
        for node in lab.names():  # as an operator upgrading the cluster: one node at a time
            agent = lab.proc("agent", node)
            assert agent is not None
            marks.append((time.monotonic(), f"{node}: stop agent"))
            agent.stop(10)  # systemctl stop ipvslb: the VIP is released first (priority 0)
            for role in ("apiserver", "etcd"):
                proc = lab.proc(role, node)
                assert proc is not None
                marks.append((time.monotonic(), f"{node}: stop {role}"))
                proc.stop(20)
            marks.append((time.monotonic(), f"{node}: start etcd, apiserver, agent"))
            lab.start_etcd(node)
            lab.start_apiserver(node)
            lab.restart_agent(node, 60)
            healthy(lab)
        ended = time.monotonic()
        timeline = list(watch.timeline)
    # the instants a new holder got the VIP
    moves = [t for (t, now), (_, before) in zip(timeline[1:], timeline, strict=False)
             if now and set(now) - set(before)]
    failed = [a for a in loop.attempts if not a.ok]
    on_the_wire = [a for a in failed if any(a.start < t <= a.end for t in moves)]
    others = [a for a in failed if a not in on_the_wire]
    worst = max((a.end - a.start for a in loop.attempts), default=0.0)

    def during(t: float) -> str:
        return next((f"{label} +{t - at:.2f}s" for at, label in reversed(marks) if at <= t), "")

    print(f"rolling restart: {len(loop.attempts)} requests in {ended - started:.1f}s, "
          f"{len(moves)} VIP moves, {len(failed)} failed ({len(on_the_wire)} on the wire while "
          f"the VIP moved), worst request {worst * 1000:.0f} ms; failures: "
          f"{[(during(a.start), a.error[:160]) for a in failed]}")
    assert moves, "the VIP never moved: the holder was not restarted"
    assert loop.attempts and not others, [(during(a.start), a.error) for a in others[:5]]
    assert len(on_the_wire) <= len(moves)


def test_a_releasing_holder_still_answers_clients_that_missed_the_gratuitous_arp(
        kube_lab: Lab) -> None:
    """A client whose neighbour entry still names the old holder (it has not seen the new
    holder's gratuitous ARP yet) keeps being answered while the VIP moves: the stopping agent
    keeps its proxy and REDIRECT rule for the handover period after keepalived released the
    VIP. Without it the proxy's port closes as soon as the VIP is gone and such a client's new
    connections are reset, which is what failed a rolling restart now and then."""
    lab = kube_lab
    healthy(lab)
    old = lab.wait_serving(30)
    old_ns, client_ns = lab.controller(old).netns, lab.state.client.netns
    mac = subprocess.run(["ip", "netns", "exec", old_ns, "cat", f"/sys/class/net/{IFNAME}/address"],
                         check=True, capture_output=True, text=True).stdout.strip()
    route = subprocess.run(["ip", "-n", client_ns, "-o", "route", "get", lab.vip], check=True,
                           capture_output=True, text=True).stdout.split()
    dev = route[route.index("dev") + 1]
    neigh = ["ip", "-n", client_ns, "neigh"]
    subprocess.run([*neigh, "replace", lab.vip, "lladdr", mac, "dev", dev, "nud", "permanent"],
                   check=True)  # this client ignores every gratuitous ARP from now on
    agent = lab.proc("agent", old)
    keepalived = [p for p in lab.keepalived_pids(old) if Path(f"/proc/{p}").exists()]
    assert agent is not None and keepalived
    try:
        assert agent.signal(signal.SIGTERM)
        wait_for(lambda: lab.holder() not in (None, old), 15, f"the VIP to leave {old}")
        # keepalived has released the VIP and exited: what answers now is the handover alone
        wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in keepalived), 15,
                 f"{old}'s keepalived to exit")
        released = time.monotonic()
        answered = []
        while time.monotonic() - released < 0.5:  # well inside the 1 s handover
            got = lab.fetch(timeout=2.0 * time_scale())  # raises if reset or refused
            answered.append(got.name)
        print(f"{len(answered)} requests answered through {old} after its keepalived exited")
        assert answered
        wait_for(lambda: not agent.alive(), 15 * time_scale(), f"{old}'s agent to exit")
    finally:
        subprocess.run([*neigh, "del", lab.vip, "dev", dev], check=False)
        lab.restart_agent(old, 60)
    healthy(lab)


def test_api_unreachable_from_the_holder_never_empties_its_backends(kube_lab: Lab) -> None:
    lab = kube_lab
    healthy(lab)
    holder = lab.wait_serving(30)
    netns = lab.controller(holder).netns
    address = lab.address_of(holder)
    # The holder's agent reaches its apiserver at its node address (its kubeconfig); reset
    # those connections from inside the node. The local health check (127.0.0.1) still
    # passes, so this node keeps the VIP with its watch down.
    rule = ["OUTPUT", "-o", "lo", "-d", address, "-p", "tcp", "--dport",
            str(lab.state.api_port), "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-I", *rule], check=True)
    try:
        agent = lab.proc("agent", holder)
        assert agent is not None
        wait_for(lambda: "Failed to watch API server endpoints" in agent.output(), 90,
                 f"{holder}'s watch to fail")
        with lab.prober() as loop:
            time.sleep(3.0)
        assert lab.holder() == holder
        assert agent_backends(lab, holder) == all_backends(lab)  # kept, never emptied
        assert "ignored an empty backend list" not in agent.output()
        ok = [a for a in loop.attempts if a.ok]
        assert ok and len(ok) == len(loop.attempts), [a.error for a in loop.attempts][:3]
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", "-D", *rule], check=False)
    healthy(lab)


def test_lab_state_names_the_real_control_plane(kube_lab: Lab) -> None:
    lab = kube_lab
    assert lab.real and Path(lab.client_kubeconfig).exists()
    roles = {p.role for p in lab.state.processes}
    assert {"etcd", "apiserver", "agent"} <= roles and "standin" not in roles
