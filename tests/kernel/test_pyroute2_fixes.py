"""Each IPVS correction in ipvslb/pyroute2_fixes.py, on the real kernel: the same conversation
with pyroute2's own class shows the wrong result, with the corrected one the right result
(judged by the real ipvsadm or the kernel's /proc files)."""

from __future__ import annotations

import errno
import re
from typing import Any

import pytest
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as pr_ipvs

from ipvslb.ipvs import model
from ipvslb.ipvs import netlink as nl
from ipvslb.ipvs.netlink import IPVS
from tests.support.netlab import NetLab, Netns

pytestmark = pytest.mark.kernel


def as_class(msg: Any, cls: type) -> Any:
    """The received message ``msg`` decoded again with another class."""
    other = cls(msg.data, offset=msg.offset)
    other.decode()
    return other


def unfixed(cmd: int, attrs: list[list[Any]]) -> Any:
    """A request built with pyroute2's own ipvsmsg (its service/dest classes)."""
    msg = pr_ipvs.ipvsmsg()
    msg["cmd"] = cmd
    msg["version"] = 1
    msg["attrs"] = attrs
    return msg


@pytest.fixture
def ns(netlab: NetLab) -> Netns:
    ns = netlab.netns("fixes")
    ns.run("modprobe", "ip_vs")
    return ns


def test_tunnel_port_is_big_endian(ns: Netns) -> None:
    svc = model.service("udp", "10.5.0.1", 5000)
    gue = model.dest("10.6.0.2", 5000, forward="tunnel", tun_type=model.TunnelType.GUE,
                     tun_port=6080)
    other = gue._replace(address="10.6.0.3")
    with IPVS(ns.name) as ipvs:
        ipvs.add_service(svc)
        ipvs.add_dest(svc, gue)  # the corrected class
        ipvs._request(unfixed(nl.CMD_NEW_DEST, [  # pyroute2's class: uint16 host order
            ["IPVS_CMD_ATTR_SERVICE", {"attrs": nl.service_key_attrs(svc)}],
            ["IPVS_CMD_ATTR_DEST", {"attrs": nl.dest_attrs(other)}]]))
        got = {d.address: d.tun_port for d in ipvs.dests(svc)}
    saved = ns.run("ipvsadm", "-S", "-n")
    assert "-r 10.6.0.2:5000 -i -w 1 --tun-type gue --tun-port 6080" in saved
    assert "-r 10.6.0.3:5000 -i -w 1 --tun-type gue --tun-port 49175" in saved  # 0x17c0 swapped
    assert got == {"10.6.0.2": 6080, "10.6.0.3": 49175}


def test_ipv6_and_fwmark_services_carry_their_netmask(ns: Netns) -> None:
    v6 = model.service("tcp", "fd00:5::1", 443, persistence=60, netmask=64)
    fwm = model.fwmark_service(7, model.AF_INET6, persistence=60, netmask=96)
    with IPVS(ns.name) as ipvs:
        ipvs.add_service(v6)
        ipvs.add_service(fwm)
        back = {s.fwmark or s.port: s.netmask for s in ipvs.services()}
        # pyroute2's NETMASK is an ip4addr: a prefix length cannot be expressed, and without
        # the attribute the kernel refuses the service
        attrs = [a for a in nl.service_attrs(v6._replace(address="fd00:5::2"))
                 if a[0] != "IPVS_SVC_ATTR_NETMASK"]
        with pytest.raises(NetlinkError) as refused:
            ipvs._request(unfixed(nl.CMD_NEW_SERVICE, [["IPVS_CMD_ATTR_SERVICE",
                                                        {"attrs": attrs}]]))
        assert refused.value.code == errno.EINVAL
        with pytest.raises(Exception):  # noqa: B017 - pyroute2 cannot encode 64 as ip4addr
            attrs.append(["IPVS_SVC_ATTR_NETMASK", 64])
            unfixed(nl.CMD_NEW_SERVICE, [["IPVS_CMD_ATTR_SERVICE", {"attrs": attrs}]]).encode()
    assert back == {443: 64, 7: 96}
    listed = ns.run("ipvsadm", "-S", "-n")
    assert "-A -t [fd00:5::1]:443 -s rr -p 60 -M 64" in listed
    assert "-A -f 7 -6 -s rr -p 60 -M 96" in listed


def test_config_timeouts_and_info_are_decoded(ns: Netns) -> None:
    ns.run("ipvsadm", "--set", "901", "61", "299")
    with IPVS(ns.name) as ipvs:
        assert ipvs.timeouts() == model.Timeouts(901, 61, 299)
        (raw,) = ipvs._request(nl.genl(nl.CMD_GET_CONFIG))
        assert isinstance(as_class(raw, pr_ipvs.ipvsmsg).get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP"),
                          str), "pyroute2 gives the timeout as a hex dump"
        info = ipvs.info()
        (raw,) = ipvs._request(nl.genl(nl.CMD_GET_INFO))
        # pyroute2 reads VERSION (1) and CONN_TAB_SIZE (2) as SERVICE and DEST nests
        assert as_class(raw, pr_ipvs.ipvsmsg).get_attr("IPVS_CMD_ATTR_SERVICE") is not None
    with open("/proc/net/ip_vs", encoding="ascii") as fh:  # the init namespace's: same module
        header = fh.readline()
    m = re.match(r"IP Virtual Server version (\d+)\.(\d+)\.(\d+) \(size=(\d+)\)", header)
    assert m is not None
    version = (int(m[1]) << 16) | (int(m[2]) << 8) | int(m[3])
    assert (info.version, info.conn_table_size) == (version, int(m[4]))
    assert ns.run("ipvsadm", "-L", "--timeout") == "Timeout (tcp tcpfin udp): 901 61 299\n"


def test_sync_daemon_is_decoded(ns: Netns) -> None:
    ns.run("ipvsadm", "--start-daemon", "backup", "--mcast-interface", "lo", "--syncid", "9")
    try:
        with IPVS(ns.name) as ipvs:
            daemons = ipvs.daemons()
            raws = ipvs._request(nl.genl(nl.CMD_GET_DAEMON), dump=True)
        assert [(d.state, d.mcast_ifn, d.syncid) for d in daemons] == [(2, "lo", 9)]
        assert isinstance(as_class(raws[0], pr_ipvs.ipvsmsg).get_attr("IPVS_CMD_ATTR_DAEMON"),
                          str), "pyroute2 gives the daemon nest as a hex dump"
    finally:
        ns.run("ipvsadm", "--stop-daemon", "backup")


def test_batch_reports_the_refused_message(ns: Netns) -> None:
    svcs = [model.service("tcp", f"10.7.0.{i}", 80) for i in range(1, 4)]
    with IPVS(ns.name) as ipvs:
        ipvs.add_service(svcs[1])
        requests = [nl.service_request(nl.CMD_NEW_SERVICE, s) for s in svcs]
        assert ipvs.run(requests) == [0, errno.EEXIST, 0]
        # pyroute2's own batch: with noraise the refusal is not reported at all
        again = [nl.service_request(nl.CMD_NEW_SERVICE, s) for s in svcs]
        for m in again:
            m["header"]["type"] = ipvs.sock.prid
            m["header"]["flags"] = NLM_F_REQUEST | 0x4
        answers = ipvs.sock.nlm_request_batch(again, noraise=True)
        assert all(a["header"].get("error") is None for a in answers)
    assert ns.run("ipvsadm", "-S", "-n").count("-A -t 10.7.0.") == 3


def test_a_kernel_that_never_answers_times_out(ns: Netns) -> None:
    """A change sent without NLM_F_ACK gets no answer: waiting for one must end."""
    with IPVS(ns.name, timeout=0.5) as ipvs:
        sock = ipvs.sock
        msg = nl.genl(nl.CMD_SET_CONFIG, [["IPVS_CMD_ATTR_TIMEOUT_TCP", 0]])

        async def no_answer() -> list[Any]:
            answers = await sock.asyncore.nlm_request(msg, msg_type=sock.prid,
                                                      msg_flags=NLM_F_REQUEST)
            return [m async for m in answers]

        with pytest.raises(TimeoutError):
            sock._bounded(no_answer())
        assert ipvs.timeouts().tcp > 0, "the socket still works afterwards"
