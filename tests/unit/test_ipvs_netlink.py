"""IPVS messages through pyroute2's classes with ipvslb's corrections: byte layouts the
kernel reads, round trips through pyroute2's parser, the corrections against pyroute2's own
classes; and the stdlib netlink socket that dummy.py still uses (batching, error mapping,
timeouts) against the host's real kernel (rtnetlink in a private namespace)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.generic import ipvs as pr_ipvs
from pyroute2.netlink.nlsocket import Marshal

from ipvslb.ipvs import model
from ipvslb.ipvs import netlink as nl
from ipvslb.ipvs.model import AF_INET, AF_INET6, Dest, Service
from ipvslb.pyroute2_fixes import ipvs_info_msg, ipvsmsg

FAMILY = 0x20  # any generic netlink family id: the parser is keyed by it


def wire(msg: Any) -> bytes:
    """A request as it goes on the wire (pyroute2 encodes the header and attributes)."""
    msg["header"]["type"] = FAMILY
    msg["header"]["flags"] = 5
    msg["header"]["sequence_number"] = 1
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def parsed(data: bytes, cls: type = ipvsmsg) -> Any:
    """``data`` through pyroute2's parser, as if the kernel had sent it."""
    marshal = Marshal()
    marshal.msg_map[FAMILY] = cls
    (msg,) = marshal.parse(data)
    return msg


def nlas(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Attribute type -> payload, walked by hand (independent of pyroute2)."""
    out = {}
    while start + 4 <= end:
        length, atype = struct.unpack_from("=HH", data, start)
        out[atype & 0x3FFF] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return out


def nest(data: bytes, attr: int) -> dict[int, bytes]:
    top = nlas(data, 20, len(data))  # after the netlink (16) and genl (4) headers
    return nlas(top[attr], 0, len(top[attr]))


addresses4 = st.integers(1, (1 << 32) - 2).map(
    lambda i: model.canonical(ipaddress.IPv4Address(i))[1])
addresses6 = st.integers(1, (1 << 128) - 1).map(
    lambda i: model.canonical(ipaddress.IPv6Address(i))[1])


@st.composite
def services(draw: st.DrawFn) -> Service:
    v6 = draw(st.booleans())
    family = AF_INET6 if v6 else AF_INET
    netmask = draw(st.integers(1, 128)) if v6 else draw(st.integers(0, (1 << 32) - 1))
    if draw(st.booleans()):
        svc = Service(family, 0, "", 0, draw(st.integers(1, (1 << 32) - 1)))
    else:
        svc = Service(family, draw(st.sampled_from([6, 17, 132])),
                      draw(addresses6 if v6 else addresses4), draw(st.integers(0, 65535)))
    return svc._replace(scheduler=draw(st.sampled_from(["rr", "wlc", "sh", "mh"])),
                        flags=draw(st.integers(0, 0x3F)) & ~model.F_HASHED,
                        timeout=draw(st.integers(0, 2678400)), netmask=netmask,
                        pe_name=draw(st.sampled_from(["", "sip"])))


@st.composite
def dests(draw: st.DrawFn) -> Dest:
    v6 = draw(st.booleans())
    forward = draw(st.integers(0, 3))
    tunnel = forward == 2
    return Dest(draw(addresses6 if v6 else addresses4), draw(st.integers(0, 65535)),
                AF_INET6 if v6 else AF_INET, forward, draw(st.integers(0, 65535)),
                draw(st.integers(0, (1 << 31) - 1)), draw(st.integers(0, (1 << 31) - 1)),
                draw(st.integers(0, 2)) if tunnel else 0,
                draw(st.integers(0, 65535)) if tunnel else 0,
                draw(st.integers(0, 2)) if tunnel else 0)


@settings(max_examples=200, deadline=None)
@given(services())
def test_service_round_trip(svc: Service) -> None:
    decoded = nl.decode_service(parsed(wire(nl.service_request(nl.CMD_NEW_SERVICE, svc))))
    assert decoded is not None and decoded.config == svc.config


@settings(max_examples=200, deadline=None)
@given(services(), dests())
def test_dest_round_trip(svc: Service, d: Dest) -> None:
    msg = parsed(wire(nl.dest_request(nl.CMD_NEW_DEST, svc, d)))
    decoded = nl.decode_dest(msg, svc.family)
    assert decoded is not None and decoded.config == d.config
    assert nl.decode_service(msg) is not None


def test_byte_layout_of_what_the_kernel_reads() -> None:
    """Byte orders the kernel expects: ports, tunnel port and IPv4 masks big-endian; IPv6
    prefix length host order; a key-only request carries only the key."""
    svc6 = model.service("tcp", "2001:db8::1", 6443, persistence=60, netmask=64)
    a = nest(wire(nl.service_request(nl.CMD_NEW_SERVICE, svc6)), 1)
    assert a[4] == b"\x19\x2b"  # port 6443
    assert a[9] == struct.pack("=I", 64)
    assert a[3] == socket.inet_pton(AF_INET6, "2001:db8::1")
    assert a[1] == struct.pack("=H", AF_INET6) and a[6] == b"rr\0"
    svc4 = model.service("udp", "10.0.0.1", 53, persistence=60, netmask=24)
    a = nest(wire(nl.service_request(nl.CMD_NEW_SERVICE, svc4)), 1)
    assert a[9] == b"\xff\xff\xff\x00"
    assert a[3] == b"\x0a\0\0\x01"
    assert struct.unpack("=II", a[7]) == (model.F_PERSISTENT, 0xFFFFFFFF)
    assert a[8] == struct.pack("=I", 60)
    fwm = model.fwmark_service(7, AF_INET6)
    a = nest(wire(nl.service_request(nl.CMD_NEW_SERVICE, fwm)), 1)
    assert set(a) >= {1, 5, 9} and 3 not in a and 2 not in a
    assert set(nest(wire(nl.service_request(nl.CMD_DEL_SERVICE, svc4)), 1)) == {1, 2, 3, 4}
    gue = model.dest("10.0.0.2", 443, forward="tunnel", tun_type=model.TunnelType.GUE,
                     tun_port=6080)
    a = nest(wire(nl.dest_request(nl.CMD_NEW_DEST, svc4, gue)), 2)
    assert a[14] == b"\x17\xc0"  # tunnel port 6080 big-endian
    assert (a[13], a[3], a[2]) == (b"\x01", struct.pack("=I", 2), b"\x01\xbb")
    route = nest(wire(nl.dest_request(nl.CMD_NEW_DEST, svc4, model.dest("10.0.0.2", 443))), 2)
    assert 13 not in route
    assert set(nest(wire(nl.dest_request(nl.CMD_DEL_DEST, svc4, gue)), 2)) == {1, 2, 11}
    config = nlas(wire(nl.genl(nl.CMD_SET_CONFIG, [["IPVS_CMD_ATTR_TIMEOUT_TCP", 900]])), 20,
                  28)
    assert config == {4: struct.pack("=I", 900)}


def test_corrections_differ_from_pyroute2s_own_classes() -> None:
    """What each correction changes, on bytes (the kernel tests show the kernel's view)."""
    gue = model.dest("10.0.0.2", 443, forward="tunnel", tun_type=model.TunnelType.GUE,
                     tun_port=6080)
    own = pr_ipvs.ipvsmsg()
    own["cmd"], own["version"] = nl.CMD_NEW_DEST, 1
    own["attrs"] = [["IPVS_CMD_ATTR_DEST", {"attrs": nl.dest_attrs(gue)}]]
    assert nest(wire(own), 2)[14] == struct.pack("=H", 6080)  # host order: wrong
    raw = wire(nl.genl(nl.CMD_SET_CONFIG, [["IPVS_CMD_ATTR_TIMEOUT_UDP", 300]]))
    assert parsed(raw).get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP") == 300
    assert isinstance(parsed(raw, pr_ipvs.ipvsmsg).get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP"), str)


def test_info_reply_is_decoded() -> None:
    """GET_INFO's answer as the kernel builds it: VERSION and CONN_TAB_SIZE, two u32s."""
    body = struct.pack("=BBH", nl.CMD_SET_INFO, 1, 0) + struct.pack("=HHIHHI", 8, 1, 0x010201,
                                                                    8, 2, 4096)
    data = struct.pack("=IHHII", 16 + len(body), FAMILY, 0, 1, 0) + body
    assert nl.decode_info(parsed(data)) == model.Info(0x010201, 4096)
    assert parsed(data, ipvs_info_msg).get_attr("IPVS_INFO_ATTR_CONN_TAB_SIZE") == 4096


def test_daemon_nest_is_decoded() -> None:
    msg = nl.genl(nl.CMD_NEW_DAEMON, [["IPVS_CMD_ATTR_DAEMON", {"attrs": [
        ["IPVS_DAEMON_ATTR_STATE", 1], ["IPVS_DAEMON_ATTR_MCAST_IFN", "eth0"],
        ["IPVS_DAEMON_ATTR_SYNC_ID", 7], ["IPVS_DAEMON_ATTR_SYNC_MAXLEN", 1472],
        ["IPVS_DAEMON_ATTR_MCAST_GROUP", "224.0.0.81"], ["IPVS_DAEMON_ATTR_MCAST_PORT", 8848],
        ["IPVS_DAEMON_ATTR_MCAST_TTL", 1]]}]])
    assert nl.decode_daemon(parsed(wire(msg))) == model.Daemon(1, "eth0", 7, 1472, "224.0.0.81",
                                                              8848, 1)


def test_stats_are_decoded() -> None:
    names = ["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES", "CPS", "INPPS", "OUTPPS",
             "INBPS", "OUTBPS"]
    values = [(1 << 33) + i for i in range(10)]
    d = model.dest("10.0.0.9", 80)
    msg = nl.genl(nl.CMD_NEW_DEST, [["IPVS_CMD_ATTR_DEST", {"attrs": nl.dest_attrs(d) + [
        ["IPVS_DEST_ATTR_STATS64", {"attrs": [[f"IPVS_STATS_ATTR_{n}", v]
                                              for n, v in zip(names, values, strict=True)]}],
        ["IPVS_DEST_ATTR_ACTIVE_CONNS", 5]]}]])
    got = nl.decode_dest(parsed(wire(msg)), AF_INET, stats=True)
    assert got is not None and got.stats == model.Stats(*values) and got.active_conns == 5
