"""dummyvip0: created down with exactly the VIPs, idempotent, follows VIP changes, never
touches a foreign link, removed with its address labels. Checked with iproute2 (`ip`), an
independent reader, and `ip monitor` for netlink events."""

from __future__ import annotations

import json
import time

import pytest

from ipvslb import ipvs
from ipvslb.errors import SystemStateError
from ipvslb.node import dummy, sysctl
from tests.support.netlab import NetLab, Netns, Process, wait_until

pytestmark = pytest.mark.kernel


VIP4 = "192.0.2.10"
VIP6 = "2001:db8:10::10"


def link_json(ns: Netns, name: str) -> dict:
    return json.loads(ns.ip("-d", "-j", "link", "show", "dev", name))[0]


def addrs(ns: Netns, name: str) -> set[str]:
    data = json.loads(ns.ip("-j", "addr", "show", "dev", name))[0]
    return {f"{a['local']}/{a['prefixlen']}" for a in data.get("addr_info", [])}


def labels(ns: Netns) -> dict[str, int]:
    out = {}
    for line in ns.ip("addrlabel", "list").splitlines():
        parts = line.split()  # prefix P/L label N
        out[parts[1]] = int(parts[3])
    return out


class Monitor:
    """`ip monitor address label` in the namespace, with markers to know what it has seen."""

    def __init__(self, netlab: NetLab, ns: Netns) -> None:
        self.ns = ns
        self.proc: Process = netlab.start(["ip", "-n", ns.name, "monitor", "address", "label"],
                                          name="ip-monitor")
        self.count = 0

    def mark(self) -> str:
        """Make an event on lo and wait until the monitor printed it; return its text."""
        self.count += 1
        marker = f"127.0.0.{100 + self.count}"

        def seen() -> bool:  # repeated until seen: the monitor may not be listening yet
            self.ns.ip("addr", "add", f"{marker}/32", "dev", "lo")
            self.ns.ip("addr", "del", f"{marker}/32", "dev", "lo")
            return f"Deleted 1: lo    inet {marker}/32" in self.proc.output()

        wait_until(seen, 20, interval=0.2, what=f"ip monitor to report {marker}")
        return marker

    def between(self, first: str, second: str) -> str:
        text = self.proc.output()
        start = text.rindex(f"inet {first}/32")
        return text[start:text.index(f"inet {second}/32", start)]


def test_create_idempotent_change_and_remove(netlab: NetLab) -> None:
    ns = netlab.netns("dummy")
    first = dummy.ensure("dummyvip0", [VIP4, VIP6], label=12345, netns=ns.name)
    assert first.created and sorted(first.added) == sorted([f"{VIP4}/32", f"{VIP6}/128"])

    link = link_json(ns, "dummyvip0")
    assert link["linkinfo"]["info_kind"] == "dummy"
    assert "UP" not in link["flags"], "the dummy link is kept down, like kube-ipvs0"
    assert addrs(ns, "dummyvip0") == {f"{VIP4}/32", f"{VIP6}/128"}
    assert labels(ns)[f"{VIP6}/128"] == 12345
    for key, value in dummy.OWNED_SYSCTLS.items():
        assert sysctl.read(key, ns.name) == value, key
    assert sorted(ipvs.set_sysctls(ns.name)) == sorted(ipvs.OWNED_SYSCTLS)
    for key, value in ipvs.OWNED_SYSCTLS.items():
        assert sysctl.read(key, ns.name) == value, key
    assert ipvs.set_sysctls(ns.name) == [], "already set: nothing changes"
    # the VIPs are local although the link is down
    assert f"local {VIP4}" in ns.ip("route", "show", "table", "local")
    assert f"local {VIP6}" in ns.ip("-6", "route", "show", "table", "local")

    stamps = {a.address: a.created for a in dummy.addresses("dummyvip0", ns.name)}
    monitor = Monitor(netlab, ns)
    before = monitor.mark()
    time.sleep(0.05)  # cstamp ticks every 10 ms: a re-added address would get a new one
    again = dummy.ensure("dummyvip0", [VIP6, VIP4], label=12345, netns=ns.name)
    after = monitor.mark()
    assert not again.changed, again
    events = monitor.between(before, after)
    assert VIP4 not in events and VIP6 not in events, f"re-run touched the addresses:\n{events}"
    assert {a.address: a.created for a in dummy.addresses("dummyvip0", ns.name)} == stamps

    # change the VIPs: one kept (untouched), one replaced, the label of the old IPv6 VIP goes
    new6 = "2001:db8:10::20"
    before = monitor.mark()
    change = dummy.ensure("dummyvip0", [VIP4, new6], label=12345, netns=ns.name)
    after = monitor.mark()
    assert change.added == [f"{new6}/128"] and change.removed == [f"{VIP6}/128"]
    assert addrs(ns, "dummyvip0") == {f"{VIP4}/32", f"{new6}/128"}
    assert VIP4 not in monitor.between(before, after)
    current = {a.address: a.created for a in dummy.addresses("dummyvip0", ns.name)}
    assert current[VIP4] == stamps[VIP4]
    got = labels(ns)
    assert got[f"{new6}/128"] == 12345 and f"{VIP6}/128" not in got

    # a VIP someone put there with another prefix is replaced by the /32
    ns.ip("addr", "del", f"{VIP4}/32", "dev", "dummyvip0")
    ns.ip("addr", "add", f"{VIP4}/24", "dev", "dummyvip0")
    fixed = dummy.ensure("dummyvip0", [VIP4, new6], label=12345, netns=ns.name)
    assert fixed.removed == [f"{VIP4}/24"] and fixed.added == [f"{VIP4}/32"]
    assert addrs(ns, "dummyvip0") == {f"{VIP4}/32", f"{new6}/128"}

    # a changed label is replaced in place
    relabel = dummy.ensure("dummyvip0", [VIP4, new6], label=777, netns=ns.name)
    assert relabel.labels_set == [new6] and labels(ns)[f"{new6}/128"] == 777

    assert dummy.remove("dummyvip0", ns.name) is True
    assert "dummyvip0" not in ns.ip("link", "show")
    assert f"{new6}/128" not in labels(ns)
    assert dummy.remove("dummyvip0", ns.name) is False


def test_default_label_and_name(netlab: NetLab) -> None:
    ns = netlab.netns("dummydef")
    dummy.ensure(dummy.DEFAULT_NAME, [VIP6], netns=ns.name)
    assert labels(ns)[f"{VIP6}/128"] == dummy.DEFAULT_LABEL == 10000
    assert addrs(ns, "dummyvip0") == {f"{VIP6}/128"}
    dummy.ensure("dummyvip0", [], netns=ns.name)
    assert addrs(ns, "dummyvip0") == set()
    assert f"{VIP6}/128" not in labels(ns)


def test_foreign_link_is_refused_and_left_alone(netlab: NetLab) -> None:
    ns = netlab.netns("foreign")
    ns.ip("link", "add", "dummyvip0", "type", "veth", "peer", "name", "peer0")
    ns.ip("addr", "add", "198.51.100.7/24", "dev", "dummyvip0")
    with pytest.raises(SystemStateError, match="not a dummy link .kind: veth"):
        dummy.ensure("dummyvip0", [VIP4], netns=ns.name)
    assert dummy.remove("dummyvip0", ns.name) is False
    assert link_json(ns, "dummyvip0")["linkinfo"]["info_kind"] == "veth"
    assert addrs(ns, "dummyvip0") == {"198.51.100.7/24"}
