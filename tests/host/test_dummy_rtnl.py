"""dummy.Rtnl (pyroute2's AsyncIPRoute) against the host's real kernel, in a throwaway
namespace: requests time out instead of hanging, a missing namespace is one clear error and
is never created, IPv6 address labels (pyroute2_fixes.ifaddrlblmsg) read back by `ip`."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from ipvslb.errors import UserError
from ipvslb.node import dummy, netinfo
from ipvslb.node.netns import iproute
from tests.support.scratchns import scratch_netns


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("ipvslb-rtnl") as name:
        yield name


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def test_request_without_answer_times_out(netns: str) -> None:
    """A kernel that never answers, made real: a request without NLM_F_ACK is carried out
    and answered with nothing, so pyroute2 would wait for its reply for ever."""
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = 1, dummy.IFF_UP, dummy.IFF_UP  # lo up
    with dummy.Rtnl(netns, timeout=0.3) as rt:
        with pytest.raises(dummy.RtnlTimeout, match="no answer from the kernel within 0.3s"):
            rt._all(rt.ipr.nlm_request(msg, RTM_NEWLINK, dummy.NLM_F_REQUEST))
    assert "UP" in ip(netns, "link", "show", "lo").split(">")[0], "the request reached it"


def test_missing_namespace_is_one_error_and_not_created() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"ipvslb-absent-{os.getpid()}"
    line = f"netns: no network namespace '{name}' (/run/netns/{name} does not exist)"
    for call in (lambda: dummy.ensure("dummyvip0", ["192.0.2.1"], netns=name),
                 lambda: dummy.addresses("dummyvip0", name),
                 lambda: dummy.remove("dummyvip0", name),
                 lambda: netinfo.links(name),
                 lambda: iproute(name)):
        with pytest.raises(UserError) as err:
            call()
        assert str(err.value) == line
    assert not os.path.exists(f"/run/netns/{name}")
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True, check=True).stdout


def test_address_labels_set_replaced_deleted(netns: str) -> None:
    address = "2001:db8:77::1"
    with dummy.Rtnl(netns) as rt:
        before = rt.labels()
        assert before[("::1", 128)] == 0, "the kernel's default table decodes"
        rt.set_label(address, 4242)
        assert f"prefix {address}/128 label 4242" in ip(netns, "addrlabel", "list")
        rt.set_label(address, 4243)  # replaced in place
        assert rt.labels()[(address, 128)] == 4243
        assert ip(netns, "addrlabel", "list").count(f"{address}/128") == 1
        rt.delete_label(address)
        assert rt.labels() == before
    assert address not in ip(netns, "addrlabel", "list")


def test_addresses_added_and_deleted(netns: str) -> None:
    with dummy.Rtnl(netns) as rt:
        lo = rt.link("lo")
        assert lo is not None and lo.kind == "" and rt.link("absent0") is None
        rt.add_address(lo.ifindex, socket.AF_INET6, "2001:db8:77::2", 128)
        rt.add_address(lo.ifindex, socket.AF_INET, "192.0.2.77", 32)
        got = {(a.address, a.prefixlen) for a in rt.addresses(lo.ifindex)}
        assert {("2001:db8:77::2", 128), ("192.0.2.77", 32)} <= got
        shown = ip(netns, "addr", "show", "dev", "lo")
        assert "inet 192.0.2.77/32" in shown and "inet6 2001:db8:77::2/128" in shown
        rt.delete_address(lo.ifindex, socket.AF_INET6, "2001:db8:77::2", 128)
        rt.delete_address(lo.ifindex, socket.AF_INET, "192.0.2.77", 32)
    shown = ip(netns, "addr", "show", "dev", "lo")
    assert "192.0.2.77" not in shown and "2001:db8:77::2" not in shown
