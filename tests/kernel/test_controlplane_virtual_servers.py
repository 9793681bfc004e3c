"""A real Kubernetes control plane behind the VIP, virtual-servers mode, in the QEMU guest
(issue 11).

    tests/vm/run .venv/bin/pytest -m kernel tests/kernel/test_controlplane_virtual_servers.py

Three controller namespaces, each with a member of a three-member etcd cluster, a real
kube-apiserver 1.20.2 and `ipvslb up` with ``endpoints: kubernetes`` (its local apiserver's
kubeconfig) and real keepalived programming real IPVS (direct routing, the VIP on dummyvip0,
only the VRRP master carrying the service). A client namespace runs Debian's kubectl against
``https://VIP:6443``. The IPVS real servers come from the apiservers' own lease endpoint
reconciler through each agent's watch; the tests never name a backend.

One lab serves the module (bringing it up costs about three minutes in the emulated guest);
the tests run in file order and each leaves the lab as the next one expects: the first with all
three nodes serving, the second with one apiserver dead, the last with one node powered off.
Waits are scaled (IPVSLB_TIMEOUT_SCALE, 8 in the guest); the figures printed are the guest's,
an upper bound for a real node.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from ipvslb.config.model import Role
from ipvslb.lab.kubewatch import Watch, make_configmap
from ipvslb.lab.nslab import Lab, time_scale, wait_for
from ipvslb.lab.topology import LabMode
from tests.e2e.conftest import real_control_plane

pytestmark = pytest.mark.kernel

# The apiservers' lease reconciler drops a dead apiserver within ~25 s on a node (TTL 15 s,
# every 10 s); the emulated guest is slower still, and every wait is scaled on top of this.
LEASE_EXPIRY = 60.0
# Client-visible unavailability allowed around one failure (scaled): VRRP failover, the new
# master's keepalived adding the virtual server, a health check failing a dead real server.
FAILOVER_WINDOW = 5.0


@pytest.fixture(scope="module")
def kube_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with real_control_plane(tmp_path_factory.mktemp("kubevs") / "lab", LabMode.VIRTUAL_SERVERS,
                            Role.CONTROLLER, "ipvslbkv") as lab:
        yield lab


def service(lab: Lab) -> str:
    return f"{lab.vip}:{lab.state.api_port}"


def real_servers(lab: Lab, node: str) -> list[str] | None:
    """The real servers of the VIP's service in ``node``'s IPVS table (None: no service)."""
    rules = lab.ipvs_rules(node)
    if f"-A -t {service(lab)} -s rr -p 360" not in rules:
        assert not rules, f"{node} carries an unexpected IPVS table: {rules}"
        return None
    prefix = f"-a -t {service(lab)} -r "
    return sorted(r[len(prefix):].split()[0].split(":")[0] for r in rules
                  if r.startswith(prefix) and r.endswith(" -g -w 1"))


def the_director(lab: Lab, master: str, reals: list[str], off: str | None = None) -> bool:
    """Only ``master`` carries the service, with exactly ``reals`` (direct routing). A
    powered-off node (``off``) does not count: its dead keepalived left its table as it was,
    and nothing reaches it."""
    return (real_servers(lab, master) == sorted(reals)
            and all(real_servers(lab, n) is None for n in lab.names() if n not in (master, off)))


def test_kubectl_through_the_vip_and_ipvs_follows_the_api(kube_lab: Lab) -> None:
    lab = kube_lab
    master = lab.wait_serving(30)
    everyone = sorted(lab.address_of(n) for n in lab.names())
    assert lab.kubectl("get", "--raw", "/readyz", timeout=60).stdout.strip() == "ok"
    wait_for(lambda: lab.published() == everyone, LEASE_EXPIRY,
             "the API to list all three apiservers")
    # the master's IPVS real servers are exactly what the API publishes; backups carry none
    wait_for(lambda: the_director(lab, master, lab.published()), LEASE_EXPIRY,
             f"{master} to direct to the apiservers the API lists")
    for node in lab.names():
        assert lab.dummy_addresses(node) == [f"{lab.vip}/32"], node
        assert lab.iptables_rules(node) == [], node
    # client addresses are pinned (persistence) to every apiserver in turn, told apart by
    # their serving certificates; kubectl verified each with the lab CA
    seen = {f.name for f in lab.fetch_round(rounds=1, timeout=10 * time_scale())}
    assert seen == set(lab.names()), seen


def test_the_vip_and_the_service_leave_a_master_whose_apiserver_dies(kube_lab: Lab) -> None:
    lab = kube_lab
    old = lab.wait_serving(30)
    proc = lab.proc("apiserver", old)
    assert proc is not None
    proc.signal(signal.SIGKILL)  # its etcd member, agent and keepalived stay up
    new = wait_for(lambda: next((h for h in lab.holders() if h != old), None) or None,
                   30, f"the VIP to leave {old}, whose apiserver died")
    wait_for(lambda: lab.holders() == [new], 30, f"{old} to give up the VIP")
    agent = lab.proc("agent", old)
    assert agent is not None and agent.alive()
    alive = sorted(lab.address_of(n) for n in lab.names() if n != old)
    # the dead apiserver leaves the new master's real servers (its health check, then the
    # API's lease expiry); the old master drops its service
    wait_for(lambda: the_director(lab, new, alive), LEASE_EXPIRY,
             f"{new} alone to direct, to {alive}")
    wait_for(lambda: lab.published() == alive, LEASE_EXPIRY,
             f"the API to drop {old}'s apiserver")
    assert lab.kubectl("get", "--raw", "/readyz", timeout=60).stdout.strip() == "ok"


def test_power_off_of_the_vip_holder_while_a_watch_and_a_request_loop_run(
        kube_lab: Lab) -> None:
    # Left by the previous test: one apiserver dead (its node still up, etcd member alive);
    # the holder is powered off now, so one apiserver must carry the cluster (etcd keeps
    # quorum with two of three members).
    lab = kube_lab
    old = lab.wait_serving(30)
    last = next(n for n in lab.names() if n != old and lab.proc("apiserver", n) is not None
                and lab.proc("apiserver", n).alive())  # type: ignore[union-attr]
    window = FAILOVER_WINDOW * time_scale()
    with Watch(lab) as watch, lab.prober() as loop:
        wait_for(lambda: make_configmap(lab, "before-power-off", 60), 60,
                 "kubectl create through the VIP")
        wait_for(lambda: watch.seen("before-power-off"), 60, "the watch to see a change")
        killed_at = time.monotonic()
        lab.power_off(old)
        new = wait_for(lambda: next((h for h in lab.holders() if h != old), None), 30,
                       "the VIP on another controller")
        assert new == last, f"the VIP went to {new}, whose apiserver is dead"
        first_ok = loop.first_ok(killed_at, 60 * time_scale())
        assert first_ok is not None, "no request through the VIP succeeded after power-off"
        # one new director, whose real servers end up being the one live apiserver
        wait_for(lambda: the_director(lab, new, [lab.address_of(new)], off=old),
                 LEASE_EXPIRY, f"{new} to direct to its own apiserver only")
        wait_for(lambda: make_configmap(lab, "after-power-off", 60), 60,
                 "kubectl create through the VIP after the failover")
        wait_for(lambda: watch.seen("after-power-off"), 60,
                 "the watch to resume through the VIP and see a change made after failover")
        # keep the loop running past the window: nothing may fail after it
        time.sleep(max(1.0, killed_at + window + 3.0 - time.monotonic()))
    after = [a for a in loop.attempts if a.start >= killed_at]
    failed = [a for a in after if not a.ok]
    late = [a for a in failed if a.start > killed_at + window]
    print(f"power-off (guest): VIP on {new}; first answer {first_ok - killed_at:.2f}s after "
          f"the kill; {len(failed)} of {len(after)} requests failed, at "
          f"{[round(a.start - killed_at, 2) for a in failed][:20]} s; watch runs {watch.runs}")
    assert first_ok - killed_at <= window
    assert not late, f"requests failed after the failover window: {late[:3]}"
    assert any(a.ok for a in after if a.start > killed_at + window)
    assert [h for h in lab.holders() if h != old] == [new]
