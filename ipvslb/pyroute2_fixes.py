"""Corrections and small extensions of pyroute2 0.9.x, in one place.

Each class below names the pyroute2 behaviour it corrects or the piece it adds. They are
written the way pyroute2 defines its own message classes and sockets, so each could be
offered upstream as it is. Everything else in ipvslb uses pyroute2's public API.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as pr_ipvs
from pyroute2.netlink.nlsocket import NetlinkRequest

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


class ipvsmsg(genlmsg):
    """pyroute2's ``ipvsmsg`` with the corrected nests and the command attributes typed.

    pyroute2 declares IPVS_CMD_ATTR_DAEMON and the IPVS_CMD_ATTR_TIMEOUT_* attributes as
    ``hex``: GET_CONFIG answers (the tcp/tcpfin/udp timeouts) and GET_DAEMON answers cannot
    be read and SET_CONFIG / NEW_DAEMON cannot be built. Here they are the kernel's u32s and
    the daemon nest; SERVICE and DEST use the corrected classes above.
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
    never answers wedges the caller forever. ``timeout`` (seconds) bounds each request, dump
    and batch here; when it passes, ``TimeoutError`` is raised.

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
            answers = await self.asyncore.nlm_request(msg, msg_type=self.prid, msg_flags=flags)
            return [m async for m in answers if m["header"]["type"] != NLMSG_ERROR]

        self.sent += 1
        return self._bounded(collect())  # type: ignore[no-any-return]

    def batch(self, msgs: Sequence[Any]) -> list[int]:
        """Send change requests in one write; one errno per message (0: done)."""
        self.sent += len(msgs)
        return self._bounded(self.asyncore.request_batch_errors(msgs))  # type: ignore[no-any-return]
