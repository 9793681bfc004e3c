"""IPVS message encoding (byte layouts, round trips, pyroute2 as an independent decoder) and
the netlink socket's batching, error mapping and timeouts against the host's real kernel
(rtnetlink in a private namespace: the host has no IPVS, but the socket code is the same)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvslb.ipvs import model, netlink
from ipvslb.ipvs.model import AF_INET, AF_INET6, Dest, Service
from ipvslb.ipvs.nlsock import NETLINK_ROUTE, NLM_F_CREATE, NLM_F_EXCL, Message, NetlinkSocket
from ipvslb.ipvs.nlsock import NetlinkTimeout as Timeout


def as_reply(payload: bytes) -> Message:
    """A request payload (genl header + attributes) seen as if the kernel had sent it."""
    data = struct.pack("=IHHII", 16 + len(payload), 0x20, 0, 1, 0) + payload
    return Message(0x20, 0, 1, data, 16, len(data))


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
    decoded = netlink.decode_service(as_reply(netlink.service_request(netlink.CMD_NEW_SERVICE,
                                                                      svc)))
    assert decoded is not None and decoded.config == svc.config


@settings(max_examples=200, deadline=None)
@given(services(), dests())
def test_dest_round_trip(svc: Service, d: Dest) -> None:
    payload = netlink.dest_request(netlink.CMD_NEW_DEST, svc, d)
    decoded = netlink.decode_dest(as_reply(payload), svc.family)
    assert decoded is not None and decoded.config == d.config


def test_byte_layout_of_what_the_kernel_reads() -> None:
    """Byte orders the kernel expects (pyroute2 0.9 gets the tunnel port and the IPv6/fwmark
    netmask wrong): ports, tunnel port and IPv4 masks big-endian; IPv6 prefix host order."""
    svc6 = model.service("tcp", "2001:db8::1", 6443, persistence=60, netmask=64)
    body = netlink.encode_service(svc6)
    attrs = netlink.attrs(body, 0, len(body))
    assert body[attrs[netlink.SVC_PORT][0]:][:2] == b"\x19\x2b"  # 6443
    assert body[slice(*attrs[netlink.SVC_NETMASK])] == struct.pack("=I", 64)
    assert body[slice(*attrs[netlink.SVC_ADDR])] == socket.inet_pton(AF_INET6, "2001:db8::1")
    svc4 = model.service("udp", "10.0.0.1", 53, persistence=60, netmask=24)
    body = netlink.encode_service(svc4)
    attrs = netlink.attrs(body, 0, len(body))
    assert body[slice(*attrs[netlink.SVC_NETMASK])] == b"\xff\xff\xff\x00"
    assert body[slice(*attrs[netlink.SVC_ADDR])] == b"\x0a\0\0\x01" + b"\0" * 12
    flags, mask = struct.unpack("=II", body[slice(*attrs[netlink.SVC_FLAGS])])
    assert (flags, mask) == (model.F_PERSISTENT, 0xFFFFFFFF)
    fwm = model.fwmark_service(7, AF_INET6)
    body = netlink.encode_service(fwm)
    attrs = netlink.attrs(body, 0, len(body))
    assert set(attrs) >= {netlink.SVC_AF, netlink.SVC_FWMARK, netlink.SVC_NETMASK}
    assert netlink.SVC_ADDR not in attrs and netlink.SVC_PROTOCOL not in attrs
    gue = model.dest("10.0.0.2", 443, forward="tunnel", tun_type=model.TunnelType.GUE,
                     tun_port=6080)
    body = netlink.encode_dest(gue)
    attrs = netlink.attrs(body, 0, len(body))
    assert body[attrs[netlink.DEST_TUN_PORT][0]:][:2] == b"\x17\xc0"  # 6080 big-endian
    route = netlink.encode_dest(model.dest("10.0.0.2", 443))
    assert netlink.DEST_TUN_TYPE not in netlink.attrs(route, 0, len(route))


def test_pyroute2_decodes_our_messages_the_same() -> None:
    """pyroute2's decoder, independent of ours, reads the fields it handles correctly."""
    from pyroute2.netlink.generic.ipvs import ipvsmsg

    svc = model.service("sctp", "192.0.2.1", 3868, scheduler="wrr", persistence=100)
    d = model.dest("198.51.100.5", 3868, forward="masq", weight=9, u_threshold=50,
                   l_threshold=5)
    payload = netlink.dest_request(netlink.CMD_NEW_DEST, svc, d)
    raw = struct.pack("=IHHII", 16 + len(payload), 30, 0, 1, 0) + payload
    msg = ipvsmsg(raw)
    msg.decode()
    s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert (s.get_attr("IPVS_SVC_ATTR_AF"), s.get_attr("IPVS_SVC_ATTR_PROTOCOL"),
            s.get_attr("IPVS_SVC_ATTR_ADDR"), s.get_attr("IPVS_SVC_ATTR_PORT")) == \
        (AF_INET, 132, "192.0.2.1", 3868)
    dd = msg.get_attr("IPVS_CMD_ATTR_DEST")
    assert (dd.get_attr("IPVS_DEST_ATTR_ADDR"), dd.get_attr("IPVS_DEST_ATTR_PORT"),
            dd.get_attr("IPVS_DEST_ATTR_FWD_METHOD"), dd.get_attr("IPVS_DEST_ATTR_WEIGHT"),
            dd.get_attr("IPVS_DEST_ATTR_U_THRESH"), dd.get_attr("IPVS_DEST_ATTR_L_THRESH"),
            dd.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY")) == \
        ("198.51.100.5", 3868, 0, 9, 50, 5, AF_INET)
    full = netlink.service_request(netlink.CMD_NEW_SERVICE, svc)
    msg = ipvsmsg(struct.pack("=IHHII", 16 + len(full), 30, 0, 1, 0) + full)
    msg.decode()
    s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert (s.get_attr("IPVS_SVC_ATTR_SCHED_NAME"), s.get_attr("IPVS_SVC_ATTR_TIMEOUT")) == \
        ("wrr", 100)


# --- the socket, against the host's real kernel ------------------------------------------

@pytest.fixture
def netns_name() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"ipvslb-unit-{os.getpid()}"
    os.system(f"ip netns add {name} && ip -n {name} link set lo up")  # noqa: S605
    try:
        yield name
    finally:
        os.system(f"ip netns delete {name}")  # noqa: S605


def _addr_request(index: int, address: int) -> bytes:
    raw = struct.pack(">I", address)
    body = struct.pack("=BBBBI", AF_INET, 32, 0, 0, index)
    return body + struct.pack("=HH", 8, 2) + raw + struct.pack("=HH", 8, 1) + raw


def test_batch_reports_each_refused_message(netns_name: str) -> None:
    """1,300 address additions (three writes of up to 512) with deliberate duplicates: the
    batch returns EEXIST exactly for the duplicates and 0 for the rest."""
    with NetlinkSocket(NETLINK_ROUTE, netns_name) as nl:
        base = 0x0A630000
        requests = []
        duplicates = {7, 600, 1299}
        for i in range(1300):
            address = base + (i - 1 if i in duplicates else i)
            requests.append((20, NLM_F_CREATE | NLM_F_EXCL, _addr_request(1, address)))
        errors = nl.batch(requests)
        assert nl.sent == 1300
    assert [i for i, e in enumerate(errors) if e] == sorted(duplicates)
    assert {errors[i] for i in duplicates} == {errno.EEXIST}
    shown = os.popen(f"ip -n {netns_name} -4 addr show dev lo").read()  # noqa: S605
    assert shown.count("inet 10.99.") == 1300 - len(duplicates)


def test_receive_times_out_instead_of_hanging(netns_name: str) -> None:
    """A kernel that never answers is simulated by simply not asking: the receive must give
    up after the socket timeout with one clear error."""
    with NetlinkSocket(NETLINK_ROUTE, netns_name, timeout=0.3) as nl:
        start = time.monotonic()
        with pytest.raises(Timeout, match="no answer from the kernel within 0.3s"):
            list(nl._recv())
        assert time.monotonic() - start < 5


def kernel_dest_message(d: Dest, stats: tuple[int, ...]) -> Message:
    """A real server as the kernel dumps it (ip_vs_genl_fill_dest's order and sizes)."""
    a = netlink._a_bytes
    raw = socket.inet_pton(d.family, d.address)
    body = (a(netlink.DEST_ADDR, raw + b"\0" * (16 - len(raw)))
            + netlink._a_be16(netlink.DEST_PORT, d.port)
            + netlink._a_u32(netlink.DEST_FWD_METHOD, d.forward)
            + netlink._a_u32(netlink.DEST_WEIGHT, d.weight)
            + netlink._a_u8(netlink.DEST_TUN_TYPE, d.tun_type)
            + netlink._a_be16(netlink.DEST_TUN_PORT, d.tun_port)
            + netlink._a_u16(netlink.DEST_TUN_FLAGS, d.tun_flags)
            + netlink._a_u32(netlink.DEST_U_THRESH, d.u_threshold)
            + netlink._a_u32(netlink.DEST_L_THRESH, d.l_threshold)
            + netlink._a_u32(netlink.DEST_ACTIVE_CONNS, d.active_conns)
            + netlink._a_u32(netlink.DEST_INACT_CONNS, d.inactive_conns)
            + netlink._a_u32(netlink.DEST_PERSIST_CONNS, d.persist_conns)
            + netlink._a_u16(netlink.DEST_ADDR_FAMILY, d.family))
    small = b"".join(a(i + 1, struct.pack("=Q" if i in (3, 4) else "=I", v))
                     for i, v in enumerate(stats))
    wide = b"".join(a(i + 1, struct.pack("=Q", v)) for i, v in enumerate(stats))
    body += netlink._a_nest(netlink.DEST_STATS, small) + netlink._a_nest(netlink.DEST_STATS64,
                                                                         wide)
    return as_reply(netlink.genl(netlink.CMD_NEW_DEST, netlink._a_nest(netlink.ATTR_DEST, body)))


@settings(max_examples=200, deadline=None)
@given(dests(), st.integers(0, 1 << 20), st.tuples(*[st.integers(0, (1 << 32) - 1)] * 10))
def test_fast_dest_decoder_equals_generic(d: Dest, conns: int, stats: tuple[int, ...]) -> None:
    d = d._replace(active_conns=conns, inactive_conns=conns // 3, persist_conns=conns % 7)
    msg = kernel_dest_message(d, stats)
    fast = netlink.decode_dest_fast(msg, stats=True)
    assert fast is not None
    assert fast == netlink.decode_dest(msg, AF_INET, stats=True)
    assert fast[:13] == d[:13] and fast.stats == model.Stats(*stats)
    # another layout (our own request) is left to the generic decoder
    request = as_reply(netlink.dest_request(netlink.CMD_NEW_DEST, model.Service(
        AF_INET, 6, "10.0.0.1", 80), d))
    assert netlink.decode_dest_fast(request) is None
