"""Corrections and small extensions of pyroute2 0.9.x, in one place.

Each class below names the pyroute2 behaviour it corrects or the piece it adds. They are
written the way pyroute2 defines its own message classes and sockets, so each could be
offered upstream as it is, and has a test on the real kernel (tests/kernel/) that fails
without it. Everything else in ipvslb uses pyroute2's public API. Sections: IPVS (generic
netlink), then rtnetlink (IPv6 address labels).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    genlmsg,
    nla,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as pr_ipvs
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_DELADDRLABEL, RTM_GETADDRLABEL, RTM_NEWADDRLABEL

# --- IPVS -----------------------------------------------------------------------------------
#
# pyroute2.netlink.generic.ipvs.ipvsmsg describes the IPVS generic netlink messages. Its
# high-level wrapper pyroute2.ipvs.IPVS is not used at all: its "update" command sends
# IPVS_CMD_DEL_SERVICE/DEL_DEST, and IPVSService/IPVSDest.from_message keep their default
# flags, timeout and fwd_method instead of the decoded ones. ipvslb builds ipvsmsg messages
# itself (with the corrected classes below) and converts them to and from its own model.


class ipvs_service(pr_ipvs.ipvsmsg.service):
    """pyroute2's ``ipvsmsg.service`` with the netmask an IPv6 service can carry.

    pyroute2 declares IPVS_SVC_ATTR_NETMASK as ``ip4addr``: an IPv6 service's netmask (the
    kernel wants a host-order u32 prefix length 1..128 there) cannot be encoded or decoded,
    and the kernel refuses a NEW_SERVICE without NETMASK for IPv6 and firewall-mark services.
    Here it is the raw u32 the kernel stores (``ip_vs_genl_parse_service`` copies the 32 bits
    as they are): for IPv4 the mask's network-order bytes read as a host-order u32 (see
    ``ipv4_netmask``), for IPv6 the prefix length.
    """

    __slots__ = ()
    nla_map = tuple(
        ("IPVS_SVC_ATTR_NETMASK", "uint32") if name == "IPVS_SVC_ATTR_NETMASK" else (name, kind)
        for name, kind in pr_ipvs.ipvsmsg.service.nla_map)


class ipvs_dest(pr_ipvs.ipvsmsg.dest):
    """pyroute2's ``ipvsmsg.dest`` with the tunnel port in network byte order.

    pyroute2 declares IPVS_DEST_ATTR_TUN_PORT as ``uint16`` (host order); the kernel reads
    and writes it big-endian (``nla_get_be16``/``nla_put_be16`` in ip_vs_ctl.c), so a GUE or
    GRE tunnel port 6080 arrives as 49175.
    """

    __slots__ = ()
    nla_map = tuple(
        ("IPVS_DEST_ATTR_TUN_PORT", "be16") if name == "IPVS_DEST_ATTR_TUN_PORT" else (name, kind)
        for name, kind in pr_ipvs.ipvsmsg.dest.nla_map)


class ipvs_daemon(nla):
    """IPVS_CMD_ATTR_DAEMON's nest (pyroute2 has it as ``hex``: sync daemons unreadable)."""

    __slots__ = ()
    prefix = "IPVS_DAEMON_ATTR_"
    nla_map = (
        ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
        ("IPVS_DAEMON_ATTR_STATE", "uint32"),
        ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
        ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
        ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
        ("IPVS_DAEMON_ATTR_MCAST_GROUP", "ip4addr"),
        ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "ip6addr"),
        ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
        ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
    )


class ipvs_attrs(dict):  # type: ignore[type-arg]
    """A nest decoded by ``_IPVSCodec``: ``["attrs"]`` is a list of ``[name, value]`` and
    ``get_attr`` works as on pyroute2's nla objects."""

    def get_attr(self, name: str, default: Any = None) -> Any:
        for attr in self["attrs"]:
            if attr[0] == name:
                return attr[1]
        return default


_SIMPLE = {"uint8": "B", "uint16": "H", "uint32": "I", "uint64": "Q", "be16": ">H",
           "flags": "II"}


def _layout(cls: Any) -> tuple[dict[str, tuple[int, str, Any]], dict[int, tuple[str, str, Any]]]:
    """name -> (type, kind, nested layout) and type -> (name, kind, nested layout) of
    ``cls.nla_map``, nested classes (named in nla_map, as pyroute2 resolves them) included."""
    by_name: dict[str, tuple[int, str, Any]] = {}
    by_type: dict[int, tuple[str, str, Any]] = {}
    for atype, (name, kind) in enumerate(cls.nla_map):
        sub = None
        if kind.startswith("target("):
            kind = "target"
        elif kind not in _SIMPLE and kind not in ("asciiz", "none", "ip4addr", "ip6addr"):
            sub = _layout(getattr(cls, kind))
            kind = "nest"
        by_name[name] = (atype, kind, sub)
        by_type[atype] = (name, kind, sub)
    return by_name, by_type


_NLA = struct.Struct("=HH")


def _family_of(attrs: Sequence[Any]) -> int:
    for attr in attrs:
        if attr[0] in ("IPVS_SVC_ATTR_AF", "IPVS_DEST_ATTR_ADDR_FAMILY"):
            return int(attr[1])
    return socket.AF_INET


def _encode_chain(attrs: Sequence[Any], by_name: dict[str, tuple[int, str, Any]]) -> bytes:
    out = []
    for attr in attrs:
        name, value = attr[0], attr[1]
        atype, kind, sub = by_name[name]
        if kind in _SIMPLE:
            fmt = _SIMPLE[kind]
            payload = struct.pack(fmt, value["flags"], value["mask"]) if kind == "flags" \
                else struct.pack(fmt if fmt[0] == ">" else "=" + fmt, value)
        elif kind == "asciiz":
            payload = value.encode() + b"\0"
        elif kind in ("target", "ip4addr", "ip6addr"):
            family = socket.AF_INET6 if kind == "ip6addr" or (
                kind == "target" and _family_of(attrs) == socket.AF_INET6) else socket.AF_INET
            payload = socket.inet_pton(family, value)
        elif kind == "nest":
            payload = _encode_chain(value["attrs"], sub[0])
        else:
            raise ValueError(f"{name}: cannot encode {kind}")
        n = 4 + len(payload)
        out.append(_NLA.pack(n, atype) + payload + b"\0" * (-n & 3))
    return b"".join(out)


def _decode_chain(data: Any, start: int, end: int,
                  by_type: dict[int, tuple[str, str, Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    family = socket.AF_INET
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, atype = unpack(data, start)
        if length < 4:
            break
        p, q = start + 4, start + length
        start += (length + 3) & ~3
        spec = by_type.get(atype & 0x3FFF)
        if spec is None:
            continue
        name, kind, sub = spec
        value: Any
        if kind == "nest":
            value = ipvs_attrs(attrs=_decode_chain(data, p, q, sub[1]))
        elif kind == "flags":
            flags, mask = struct.unpack_from("=II", data, p)
            value = {"flags": flags, "mask": mask}
        elif kind in _SIMPLE:
            fmt = _SIMPLE[kind]
            value = struct.unpack_from(fmt if fmt[0] == ">" else "=" + fmt, data, p)[0]
            if name in ("IPVS_SVC_ATTR_AF", "IPVS_DEST_ATTR_ADDR_FAMILY"):
                family = value
        elif kind == "asciiz":
            value = bytes(data[p:q]).split(b"\0", 1)[0].decode(errors="replace")
        elif kind in ("target", "ip4addr", "ip6addr"):
            out.append([name, (p, q, kind)])  # resolved below: the family may come later
            continue
        else:
            continue
        out.append([name, value])
    for attr in out:
        if isinstance(attr[1], tuple):
            p, q, kind = attr[1]
            v6 = kind == "ip6addr" or (kind == "target" and family == socket.AF_INET6)
            attr[1] = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET,
                                       bytes(data[p:p + (16 if v6 else 4)]))
    return out


class ipvsmsg(genlmsg):
    """pyroute2's ``ipvsmsg`` with the corrected nests, the command attributes typed, and a
    compiled attribute codec.

    pyroute2 declares IPVS_CMD_ATTR_DAEMON and the IPVS_CMD_ATTR_TIMEOUT_* attributes as
    ``hex``: GET_CONFIG answers (the tcp/tcpfin/udp timeouts) and GET_DAEMON answers cannot
    be read and SET_CONFIG / NEW_DAEMON cannot be built. Here they are the kernel's u32s and
    the daemon nest; SERVICE and DEST use the corrected classes above.

    Cost: pyroute2's generic ``encode_nlas``/``decode_nlas`` build one nla object per
    attribute (~150 us to encode a real-server message on a fast host, ~80 us to decode one),
    which makes a 1,000-service table take seconds. ``encode_nlas``/``decode_nlas`` below
    walk the same ``nla_map`` (compiled once per class) with ``struct`` and produce the same
    ``["attrs"]`` structure ([name, value] lists; nests are ``ipvs_attrs`` dicts with
    ``get_attr``). Only the kinds IPVS uses are handled.
    """

    __slots__ = ()
    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )
    service = ipvs_service
    dest = ipvs_dest
    daemon = ipvs_daemon

    def encode_nlas(self, offset: int) -> int:
        body = _encode_chain(self["attrs"], _IPVSMSG_LAYOUT[0])
        self.data[offset:offset + len(body)] = body
        return offset + len(body)

    def decode_nlas(self, offset: int) -> None:
        self["attrs"] = _decode_chain(self.data, offset, self.offset + self.length,
                                      _IPVSMSG_LAYOUT[1])


_IPVSMSG_LAYOUT = _layout(ipvsmsg)


class ipvs_info_msg(genlmsg):
    """The answer to IPVS_CMD_GET_INFO, which pyroute2 does not describe.

    Its attributes are IPVS_INFO_ATTR_VERSION (1) and IPVS_INFO_ATTR_CONN_TAB_SIZE (2) at the
    top level; decoded with ``ipvsmsg`` they are taken for a SERVICE and a DEST nest. The
    socket's marshal maps one class per netlink type, so the reply is re-read with this class
    (``IPVSSocket.info_of``).
    """

    __slots__ = ()
    prefix = "IPVS_INFO_ATTR_"
    nla_map = (
        ("IPVS_INFO_ATTR_UNSPEC", "none"),
        ("IPVS_INFO_ATTR_VERSION", "uint32"),
        ("IPVS_INFO_ATTR_CONN_TAB_SIZE", "uint32"),
    )


def ipv4_netmask(mask: int) -> int:
    """The u32 to put in IPVS_SVC_ATTR_NETMASK for IPv4 mask ``mask`` (e.g. 0xFFFFFF00), and
    back (the conversion is its own inverse): the kernel keeps the mask in network order."""
    return int.from_bytes(mask.to_bytes(4, "big"), sys.byteorder)


class AsyncIPVSSocket(pr_ipvs.AsyncIPVSSocket):
    """pyroute2's async IPVS socket bound with the corrected ``ipvsmsg``, plus a batch that
    reports one error per message.

    pyroute2's ``nlm_request_batch`` either raises at the first refused message (the rest of
    the answers unread) or, with ``noraise``, drops every error: a caller cannot tell which
    of 500 changes failed. ``request_batch_errors`` sends every message with NLM_F_ACK in one
    write and returns the errno of each (0: done).
    """

    async def setup_endpoint(self) -> None:
        if getattr(self.local, "transport", None) is not None:
            return
        await pr_ipvs.AsyncGenericNetlinkSocket.setup_endpoint(self)
        await self.bind(pr_ipvs.GENL_NAME, ipvsmsg)

    async def request_batch_errors(self, msgs: Sequence[Any]) -> list[int]:
        requests = []
        data = b""
        for msg in msgs:
            request = NetlinkRequest(self, msg, msg_type=self.prid,
                                     msg_flags=NLM_F_REQUEST | NLM_F_ACK)
            await request.prepare()
            data += request.msg.data
            requests.append(request)
        self.send(data)
        errors = []
        for request in requests:
            code = 0
            try:
                async for _ in request.response():
                    pass
            except NetlinkError as err:
                code = err.code or errno.EIO
            errors.append(code)
        return errors


class IPVSSocket(pr_ipvs.IPVSSocket):
    """pyroute2's IPVS socket with a timeout on every conversation.

    pyroute2's sync sockets wait for an answer without limit: a kernel (or a namespace) that
    never answers wedges the caller forever. ``timeout`` (seconds) bounds the wait for each
    answer of a request or dump (a long dump that keeps answering is not cut short) and each
    batch; when it passes, ``TimeoutError`` is raised.

    ``sent`` counts the netlink messages written by ``request``/``batch``.
    """

    async_class = AsyncIPVSSocket

    def __init__(self, timeout: float = 5.0, **kwarg: Any) -> None:
        self.timeout = timeout
        self.sent = 0
        super().__init__(**kwarg)

    def _bounded(self, coro: Any) -> Any:
        async def run() -> Any:
            return await asyncio.wait_for(coro, self.timeout)
        return self._run_with_cleanup(run)

    def request(self, msg: Any, dump: bool = False) -> list[Any]:
        """Send one request (an ``ipvsmsg``); return its answers (an ack is not returned).

        Errors raise pyroute2's NetlinkError; no answer within ``timeout``, TimeoutError.
        """
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)

        async def collect() -> list[Any]:
            # The bound is on silence, not on the whole answer: a dump of a large table may
            # take longer than ``timeout`` while its parts keep arriving.
            answers = await asyncio.wait_for(
                self.asyncore.nlm_request(msg, msg_type=self.prid, msg_flags=flags),
                self.timeout)
            parts = answers.__aiter__()
            got: list[Any] = []
            while True:
                try:
                    m = await asyncio.wait_for(parts.__anext__(), self.timeout)
                except StopAsyncIteration:
                    return got
                if m["header"]["type"] != NLMSG_ERROR:
                    got.append(m)

        self.sent += 1
        return self._run_with_cleanup(collect)  # type: ignore[no-any-return]

    def batch(self, msgs: Sequence[Any]) -> list[int]:
        """Send change requests in one write; one errno per message (0: done)."""
        self.sent += len(msgs)
        return self._bounded(self.asyncore.request_batch_errors(msgs))  # type: ignore[no-any-return]


# --- rtnetlink ---
#
# IPv6 address labels (RFC 6724, `ip addrlabel`): pyroute2 0.9.7 defines the message types
# RTM_NEWADDRLABEL/DELADDRLABEL/GETADDRLABEL (pyroute2.netlink.rtnl) but no message class
# for them and no IPRoute method, so its marshal decodes the kernel's replies as bare
# nlmsg (no fields, no attributes) and nothing can encode a request. ``ifaddrlblmsg`` is
# the kernel's struct ifaddrlblmsg (include/uapi/linux/if_addrlabel.h) with its two
# attributes; register it on a socket with ``register_policy(ADDRLABEL_POLICY)``.
# Test: tests/kernel/test_dummy.py (labels set, replaced and deleted; read back by `ip`;
# tests/host/test_dummy_rtnl.py on the host kernel).


class ifaddrlblmsg(nlmsg):  # noqa: N801 (pyroute2's naming: the kernel's struct name)
    """struct ifaddrlblmsg { u8 family; u8 pad; u8 prefixlen; u8 flags; u32 index; u32 seq; }"""

    prefix = "IFAL_"
    fields = (
        ("family", "B"),
        ("__pad", "x"),
        ("prefixlen", "B"),
        ("flags", "B"),
        ("index", "I"),
        ("seq", "I"),
    )
    nla_map = (
        ("IFAL_UNSPEC", "none"),
        ("IFAL_ADDRESS", "ip6addr"),
        ("IFAL_LABEL", "uint32"),
    )


ADDRLABEL_POLICY: dict[int, type[nlmsg]] = {
    RTM_NEWADDRLABEL: ifaddrlblmsg,
    RTM_DELADDRLABEL: ifaddrlblmsg,
    RTM_GETADDRLABEL: ifaddrlblmsg,
}
