"""The dummy link (``dummyvip0``) that makes every VIP a local address of the node.

In IPVS direct-routing mode every control-plane node holds every VIP on a dummy link, as
/32 (IPv6: /128): the VRRP master so IPVS sees packets for VIP:port arriving on it, the
others so they accept the packets the master forwards to them unchanged (DR rewrites only
the MAC address). kube-proxy does the same with ``kube-ipvs0``.

- ``ensure`` is idempotent: an address already there is left alone (k0s deletes and re-adds
  every address on every restart); only missing ones are added and foreign ones removed.
- A link of that name that is not a dummy is never touched: SystemStateError.
- The link stays DOWN, like kube-ipvs0: the kernel still treats the addresses as local
  (IPv4 adds the local route at once; a dummy never runs duplicate address detection, so
  IPv6 addresses are usable at once too), while a down link never sends anything, gets no
  IPv6 link-local address and carries no routes, so the VIPs are never picked for outgoing
  traffic. (Verified in the kernel tier: DR traffic to IPv4 and IPv6 VIPs works.)
- IPv6 VIPs get an RFC 6724 address label (``ip addrlabel add prefix VIP/128 label N``,
  default 10000, as k0s) so source address selection does not pick the VIP for
  connections to other hosts.
- Because the VIP is local on every node, nodes must not answer ARP for it on their real
  interfaces (else a backup could attract VIP traffic): ``ensure`` sets the ARP sysctls in
  :data:`OWNED_SYSCTLS`. :data:`DR_SYSCTLS` lists everything an IPVS DR director needs.

All of this goes through pyroute2's ``AsyncIPRoute`` (links, addresses; address labels with
the message class in :mod:`ipvslb.pyroute2_fixes`), each request bounded by a timeout.
Importing ``pyroute2.iproute`` costs 0.11-0.14 s on the host (``python -X importtime``,
3 runs); the seconds once seen were the emulated QEMU test guest, not a node.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDRLABEL, RTM_GETADDRLABEL, RTM_NEWADDRLABEL

from ipvslb import logfmt
from ipvslb.errors import SystemStateError, UserError
from ipvslb.node import netns as netns_mod
from ipvslb.node import sysctl
from ipvslb.pyroute2_fixes import ADDRLABEL_POLICY, ifaddrlblmsg

log = logfmt.get("dummy")
T = TypeVar("T")

DEFAULT_NAME = "dummyvip0"
DEFAULT_LABEL = 10000
RESERVED_LABEL = 0xFFFFFFFF

# sysctls ipvslb sets when it manages the dummy link (IPVS DR mode)
OWNED_SYSCTLS: dict[str, str] = {
    # answer ARP only for addresses configured on the interface the request came in on:
    # the VIP sits on the dummy link, so only the VRRP master (which also holds it on its
    # real interface) answers for it
    "net.ipv4.conf.all.arp_ignore": "1",
    # never use a VIP as the source address of ARP requests
    "net.ipv4.conf.all.arp_announce": "2",
}


@dataclass(frozen=True)
class SysctlAdvice:
    key: str
    value: str
    owned: bool
    why: str


DR_SYSCTLS: tuple[SysctlAdvice, ...] = (
    SysctlAdvice("net.ipv4.conf.all.arp_ignore", "1", True,
                 "reply to ARP only for addresses on the receiving interface; without it "
                 "every node answers ARP for the VIP it holds on the dummy link"),
    SysctlAdvice("net.ipv4.conf.all.arp_announce", "2", True,
                 "never use the VIP as the source of ARP requests"),
    SysctlAdvice("net.ipv4.vs.expire_nodest_conn", "1", True,
                 "drop connections to a deleted real server at once so clients reconnect"),
    SysctlAdvice("net.ipv4.vs.expire_quiescent_template", "1", True,
                 "persistent clients leave a drained (weight 0) real server"),
    SysctlAdvice("net.ipv4.vs.conntrack", "1", False,
                 "only if the node's firewall must see IPVS traffic in conntrack (as "
                 "kube-proxy needs); DR itself does not need it"),
    SysctlAdvice("net.ipv4.ip_forward", "0 or 1", False,
                 "not needed for DR (IPVS forwards locally received packets); NAT directors "
                 "need 1"),
)

IFA_F_NODAD = 0x02
IFF_UP = 0x1
RT_SCOPE_LINK = 253
TIMEOUT = 5.0  # seconds: a kernel that does not answer a request within this is an error


class Link(NamedTuple):
    ifindex: int
    name: str
    kind: str  # "" for links without IFLA_LINKINFO (physical NICs, lo)
    up: bool


class Address(NamedTuple):
    family: int
    address: str
    prefixlen: int
    scope: int
    created: int  # IFA_CACHEINFO cstamp (hundredths of a second since boot); 0 if unknown


@dataclass
class EnsureResult:
    created: bool = False
    state_set: bool = False  # the link was up (down) and was set back
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    labels_set: list[str] = field(default_factory=list)
    sysctls_set: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.state_set or self.added or self.removed
                    or self.labels_set or self.sysctls_set)


class RtnlTimeout(SystemStateError):
    """The kernel did not answer an rtnetlink request in time."""


class Rtnl:
    """The few rtnetlink requests the dummy link needs, through pyroute2's ``AsyncIPRoute``.

    Every request runs on this object's own event loop under ``asyncio.wait_for``: pyroute2
    waits for an answer without limit, and a kernel that never answers must not wedge the
    agent (:class:`RtnlTimeout` after ``timeout`` seconds).
    """

    def __init__(self, netns: str | None = None, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        try:
            self.ipr = netns_mod.async_iproute(netns)
        except BaseException:
            self.loop.close()
            raise
        try:
            self.ipr.register_policy(ADDRLABEL_POLICY)
            self.run(self.ipr.setup_endpoint())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.ipr.close()
        self.loop.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, request: Awaitable[T]) -> T:
        """Run one request to completion, or raise :class:`RtnlTimeout`."""
        try:
            return self.loop.run_until_complete(asyncio.wait_for(request, self.timeout))
        except TimeoutError:
            raise RtnlTimeout(f"netlink: no answer from the kernel within "
                              f"{self.timeout:g}s") from None

    def _all(self, request: Awaitable[AsyncIterator[Any]]) -> list[Any]:
        async def collect() -> list[Any]:
            return [msg async for msg in await request]

        return self.run(collect())

    def link(self, name: str) -> Link | None:
        try:
            replies = self.run(self.ipr.link("get", ifname=name))
        except NetlinkError as err:
            if err.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for msg in replies:
            info = msg.get_attr("IFLA_LINKINFO")
            kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
            return Link(msg["index"], msg.get_attr("IFLA_IFNAME"), kind,
                        bool(msg["flags"] & IFF_UP))
        return None

    def add_dummy(self, name: str) -> None:
        self.run(self.ipr.link("add", ifname=name, kind="dummy"))

    def set_up(self, index: int, up: bool) -> None:
        self.run(self.ipr.link("set", index=index, state="up" if up else "down"))

    def delete_link(self, index: int) -> None:
        self.run(self.ipr.link("del", index=index))

    def addresses(self, index: int) -> list[Address]:
        out = []
        for msg in self._all(self.ipr.addr("dump")):
            family = msg["family"]
            if msg["index"] != index or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if address is None:
                continue
            cache = msg.get_attr("IFA_CACHEINFO")
            created = cache["cstamp"] if cache is not None else 0
            out.append(Address(family, address, msg["prefixlen"], msg["scope"], created))
        return out

    def add_address(self, index: int, family: int, address: str, prefixlen: int) -> None:
        flags = IFA_F_NODAD if family == socket.AF_INET6 else 0
        self.run(self.ipr.addr("add", index=index, family=family, address=address,
                               local=address, prefixlen=prefixlen, flags=flags))

    def delete_address(self, index: int, family: int, address: str, prefixlen: int) -> None:
        self.run(self.ipr.addr("del", index=index, family=family, address=address,
                               local=address, prefixlen=prefixlen))

    def labels(self) -> dict[tuple[str, int], int]:
        """Global (ifindex 0) IPv6 address labels: (prefix, length) -> label."""
        out = {}
        for msg in self._all(self.ipr.nlm_request(_label_msg(None, None), RTM_GETADDRLABEL,
                                                  NLM_F_REQUEST | NLM_F_DUMP)):
            prefix, label = msg.get_attr("IFAL_ADDRESS"), msg.get_attr("IFAL_LABEL")
            if msg["index"] or prefix is None or label is None:
                continue
            out[(prefix, msg["prefixlen"])] = label
        return out

    def set_label(self, address: str, label: int) -> None:
        self._all(self.ipr.nlm_request(_label_msg(address, label), RTM_NEWADDRLABEL,
                                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
                                       | NLM_F_REPLACE))

    def delete_label(self, address: str) -> None:
        self._all(self.ipr.nlm_request(_label_msg(address, 0), RTM_DELADDRLABEL,
                                       NLM_F_REQUEST | NLM_F_ACK))


def _label_msg(address: str | None, label: int | None) -> ifaddrlblmsg:
    """An address label request for ``address``/128 (None: a dump of all labels)."""
    msg = ifaddrlblmsg()
    msg["family"] = socket.AF_INET6
    if address is not None:
        msg["prefixlen"] = 128
        msg["attrs"] = [("IFAL_ADDRESS", address), ("IFAL_LABEL", label)]
    return msg


def _check_name(name: str) -> None:
    if not 1 <= len(name.encode()) <= 15 or any(c in name for c in "/: \t\n") \
            or name in (".", ".."):
        raise UserError(f"dummy interface name {name!r} is not a valid link name "
                        "(1-15 characters, no '/', ':' or blanks)")


def _vips(vips: Iterable[object]) -> dict[tuple[int, str], int]:
    out: dict[tuple[int, str], int] = {}
    for vip in vips:
        text = str(vip).split("/")[0]
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise UserError(f"dummy: {vip!r} is not an IP address") from None
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        out[(family, socket.inet_ntop(family, ip.packed))] = 128 if ip.version == 6 else 32
    return out


def _explain(err: NetlinkError, name: str, what: str) -> SystemStateError:
    if err.code == errno.EPERM:
        return SystemStateError(f"{name}: {what}: permission denied (needs root)")
    if err.code == errno.EOPNOTSUPP and what == "create":
        return SystemStateError(f"{name}: this kernel has no dummy links (module dummy not "
                                "found); use a kernel with CONFIG_DUMMY")
    return SystemStateError(f"{name}: {what}: {os.strerror(err.code)}")


def ensure(name: str, vips: Iterable[object], label: int | None = None,
           netns: str | None = None, up: bool = False, sysctls: bool = True) -> EnsureResult:
    """Make ``name`` a dummy link holding exactly ``vips`` (/32, /128); idempotent.

    ``label``: RFC 6724 label for the IPv6 VIPs (None: 10000). ``up``: keep the link up
    (default: down, see the module doc). ``sysctls``: set :data:`OWNED_SYSCTLS` (the IPVS
    sysctls are :func:`ipvslb.ipvs.set_sysctls`).
    """
    _check_name(name)
    label = DEFAULT_LABEL if label is None else label
    if not 0 <= label < RESERVED_LABEL:
        raise UserError(f"address label {label} is out of range (0..4294967294)")
    wanted = _vips(vips)
    result = EnsureResult()
    with Rtnl(netns) as rt:
        link = rt.link(name)
        if link is None:
            try:
                rt.add_dummy(name)
            except NetlinkError as err:
                if err.code != errno.EEXIST:  # created meanwhile by someone else: check below
                    raise _explain(err, name, "create") from None
            else:
                result.created = True
            link = rt.link(name)
            if link is None:
                raise SystemStateError(f"{name}: created but not found")
        if link.kind != "dummy":
            raise SystemStateError(
                f"{name} exists and is not a dummy link (kind: {link.kind or 'none'}); "
                "ipvslb never changes foreign links: remove or rename it, or choose another "
                "name (node.dummyInterface)")
        try:
            if link.up != up:
                rt.set_up(link.ifindex, up)
                result.state_set = True
            have = rt.addresses(link.ifindex)
            keep: set[tuple[int, str]] = set()
            for addr in have:
                if addr.family == socket.AF_INET6 and addr.scope == RT_SCOPE_LINK:
                    continue  # the kernel's own link-local address when the link is up
                key = (addr.family, addr.address)
                if wanted.get(key) == addr.prefixlen:
                    keep.add(key)
                    continue
                rt.delete_address(link.ifindex, addr.family, addr.address, addr.prefixlen)
                result.removed.append(f"{addr.address}/{addr.prefixlen}")
            for (family, address), prefixlen in wanted.items():
                if (family, address) not in keep:
                    rt.add_address(link.ifindex, family, address, prefixlen)
                    result.added.append(f"{address}/{prefixlen}")
            v6 = [a for (f, a) in wanted if f == socket.AF_INET6]
            gone6 = [r.split("/")[0] for r in result.removed if ":" in r]
            if v6 or gone6:
                labels = rt.labels()
                for address in v6:
                    if labels.get((address, 128)) != label:
                        rt.set_label(address, label)
                        result.labels_set.append(address)
                for address in gone6:
                    if (address, 128) in labels and (socket.AF_INET6, address) not in wanted:
                        rt.delete_label(address)
        except NetlinkError as err:
            raise _explain(err, name, "configure") from None
    if sysctls:
        result.sysctls_set += sysctl.ensure(OWNED_SYSCTLS, netns)
    if result.changed:
        log.info("dummy link ensured", extra={
            "link": name, "link_created": result.created, "added": ",".join(result.added),
            "removed": ",".join(result.removed), "netns": netns or ""})
    return result


def addresses(name: str, netns: str | None = None) -> list[Address]:
    """The addresses on link ``name`` ([] if there is no such link)."""
    with Rtnl(netns) as rt:
        link = rt.link(name)
        return rt.addresses(link.ifindex) if link else []


def remove(name: str, netns: str | None = None) -> bool:
    """Delete dummy link ``name`` and the address labels of its IPv6 addresses.

    Returns False if there was no such link. A link of that name that is not a dummy is
    left alone (logged, returns False): cleanup must not destroy someone else's link.
    """
    _check_name(name)
    with Rtnl(netns) as rt:
        link = rt.link(name)
        if link is None:
            return False
        if link.kind != "dummy":
            log.warning("not removing a link that is not a dummy",
                        extra={"link": name, "kind": link.kind or "none"})
            return False
        try:
            v6 = [a.address for a in rt.addresses(link.ifindex)
                  if a.family == socket.AF_INET6 and a.prefixlen == 128]
            if v6:
                labels = rt.labels()
                for address in v6:
                    if (address, 128) in labels:
                        rt.delete_label(address)
            rt.delete_link(link.ifindex)
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return False
            raise _explain(err, name, "remove") from None
    log.info("dummy link removed", extra={"link": name, "netns": netns or ""})
    return True
