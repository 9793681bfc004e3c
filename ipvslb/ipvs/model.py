"""The IPVS table as typed, immutable values.

Services and real servers ("destinations") are NamedTuples: cheap to build by the ten
thousand, hashable, and compared field by field in C. Their first fields are the
configuration; the trailing ones (connection counters, statistics) are what the kernel
reports and are ignored when comparing a desired table with the kernel's.

Addresses are strings in canonical form (as ``socket.inet_ntop`` prints them).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Iterable
from typing import NamedTuple

AF_INET = socket.AF_INET  # 2
AF_INET6 = socket.AF_INET6  # 10

TCP = 6
UDP = 17
SCTP = 132
PROTOCOL_NAMES = {TCP: "TCP", UDP: "UDP", SCTP: "SCTP"}

# service flags (kernel's IP_VS_SVC_F_*)
F_PERSISTENT = 0x1
F_HASHED = 0x2  # kernel-internal, stripped when reading
F_ONEPACKET = 0x4
F_SCHED1 = 0x8
F_SCHED2 = 0x10
F_SCHED3 = 0x20
F_SCHED_ALL = F_SCHED1 | F_SCHED2 | F_SCHED3

DEFAULT_PERSISTENCE = 360  # ipvsadm's -p without a value


class Forward(enum.IntEnum):
    MASQ = 0
    LOCAL = 1
    TUNNEL = 2
    ROUTE = 3  # direct routing ("DR", ipvsadm -g)


FORWARD_NAMES = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}


class TunnelType(enum.IntEnum):
    IPIP = 0
    GUE = 1
    GRE = 2


class TunnelCsum(enum.IntEnum):
    NOCSUM = 0
    CSUM = 1
    REMCSUM = 2


class Stats(NamedTuple):
    """Counters and rates of a service or real server (64-bit as the kernel reports them)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


class Dest(NamedTuple):
    """A real server of a service."""

    address: str
    port: int
    family: int = AF_INET
    forward: int = Forward.ROUTE
    weight: int = 1
    u_threshold: int = 0  # 0: no upper connection threshold
    l_threshold: int = 0
    tun_type: int = TunnelType.IPIP
    tun_port: int = 0
    tun_flags: int = TunnelCsum.NOCSUM
    # reported by the kernel, not configuration:
    active_conns: int = 0
    inactive_conns: int = 0
    persist_conns: int = 0
    stats: Stats | None = None

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.family, self.address, self.port)

    @property
    def config(self) -> tuple[object, ...]:
        return self[:DEST_CONFIG_FIELDS]


DEST_CONFIG_FIELDS = 10

ServiceKey = tuple[int, int, str, int, int]  # family, protocol, address, port, fwmark


class Service(NamedTuple):
    """A virtual service: protocol+address+port, or a firewall mark (then protocol 0, address
    "" and port 0).

    ``flags`` holds the kernel's service flags (F_PERSISTENT, F_ONEPACKET, F_SCHED1..3);
    ``timeout`` is the persistence timeout in seconds; ``netmask`` the persistence granularity:
    an IPv4 mask as an integer (0xFFFFFFFF = /32) or an IPv6 prefix length (128).
    Build them with :func:`service` / :func:`fwmark_service` rather than by hand.
    """

    family: int
    protocol: int
    address: str
    port: int
    fwmark: int = 0
    scheduler: str = "wlc"
    flags: int = 0
    timeout: int = 0
    netmask: int = 0xFFFFFFFF
    pe_name: str = ""
    dests: tuple[Dest, ...] = ()
    stats: Stats | None = None

    @property
    def key(self) -> ServiceKey:
        return (self.family, self.protocol, self.address, self.port, self.fwmark)

    @property
    def config(self) -> tuple[object, ...]:
        return self[:SERVICE_CONFIG_FIELDS]

    @property
    def persistent(self) -> bool:
        return bool(self.flags & F_PERSISTENT)

    @property
    def one_packet(self) -> bool:
        return bool(self.flags & F_ONEPACKET)

    def describe(self) -> str:
        """``TCP 10.0.0.1:6443`` / ``FWM 5`` / ``FWM 5 IPv6``, for messages."""
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == AF_INET6 else "")
        return f"{PROTOCOL_NAMES.get(self.protocol, self.protocol)} " \
               f"{join_host_port(self.family, self.address, self.port)}"


SERVICE_CONFIG_FIELDS = 10


class Info(NamedTuple):
    version: int  # e.g. 0x010201 for 1.2.1
    conn_table_size: int

    @property
    def version_text(self) -> str:
        v = self.version
        return f"{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}.{v & 0xFF}"


class Timeouts(NamedTuple):
    tcp: int
    tcp_fin: int
    udp: int


class Daemon(NamedTuple):
    """A running connection-synchronisation daemon (ipvsadm --start-daemon)."""

    state: int  # 1 master, 2 backup
    mcast_ifn: str
    syncid: int
    sync_maxlen: int = 0
    mcast_group: str = ""
    mcast_port: int = 0
    mcast_ttl: int = 0


class Table(NamedTuple):
    """What one read returns: the services (with real servers) in the kernel's order."""

    services: tuple[Service, ...]
    info: Info | None = None


def join_host_port(family: int, address: str, port: int) -> str:
    return f"[{address}]:{port}" if family == AF_INET6 else f"{address}:{port}"


SCHED_FLAG_BITS = {
    "flag-1": F_SCHED1, "flag-2": F_SCHED2, "flag-3": F_SCHED3,
    "sh-fallback": F_SCHED1, "sh-port": F_SCHED2,
    "mh-fallback": F_SCHED1, "mh-port": F_SCHED2,
}


def sched_flag_bits(scheduler: str, names: Iterable[str]) -> int:
    """Flag names as ipvsadm -b takes them -> F_SCHED* bits."""
    bits = 0
    for name in names:
        if name not in SCHED_FLAG_BITS:
            raise ValueError(f"unknown scheduler flag {name!r}; use one of "
                             + ", ".join(SCHED_FLAG_BITS))
        prefix = name.split("-")[0]
        if prefix in ("sh", "mh") and scheduler != prefix:
            raise ValueError(f"scheduler flag {name!r} needs scheduler {prefix!r}")
        bits |= SCHED_FLAG_BITS[name]
    return bits


def canonical(address: object) -> tuple[int, str]:
    """(family, address as the kernel's readers print it: inet_ntop, e.g. "::1.2.3.4")."""
    ip = ipaddress.ip_address(str(address))
    family = AF_INET6 if ip.version == 6 else AF_INET
    return family, socket.inet_ntop(family, ip.packed)


_family_of = canonical


def default_netmask(family: int) -> int:
    return 128 if family == AF_INET6 else 0xFFFFFFFF


def netmask_value(family: int, netmask: int | str | None) -> int:
    """A persistence netmask as the kernel stores it: IPv4 mask as an integer, IPv6 prefix."""
    if netmask is None:
        return default_netmask(family)
    if family == AF_INET6:
        value = int(netmask)
        if not 1 <= value <= 128:
            raise ValueError(f"IPv6 persistence netmask must be 1..128, got {netmask}")
        return value
    if isinstance(netmask, int):
        if 0 <= netmask <= 32:
            return (0xFFFFFFFF << (32 - netmask)) & 0xFFFFFFFF
        raise ValueError(f"IPv4 persistence netmask must be a prefix 0..32 or a dotted mask, "
                         f"got {netmask}")
    if "." in netmask:
        return int(ipaddress.IPv4Address(netmask))
    return netmask_value(family, int(netmask))


def service(protocol: int | str, address: str, port: int, *, scheduler: str = "rr",
            persistence: int | None = None, netmask: int | str | None = None,
            one_packet: bool = False, sched_flags: Iterable[str] = (), pe_name: str = "",
            dests: Iterable[Dest] = ()) -> Service:
    """A protocol+address+port service, e.g. ``service("tcp", "10.0.0.1", 6443)``.

    ``persistence`` is the persistence timeout in seconds (None: not persistent).
    """
    proto = protocol if isinstance(protocol, int) else \
        {"tcp": TCP, "udp": UDP, "sctp": SCTP}[protocol.lower()]
    family, addr = _family_of(address)
    return _finish(Service(family, proto, addr, port), scheduler, persistence, netmask,
                   one_packet, sched_flags, pe_name, dests)


def fwmark_service(fwmark: int, family: int = AF_INET, *, scheduler: str = "rr",
                   persistence: int | None = None, netmask: int | str | None = None,
                   one_packet: bool = False, sched_flags: Iterable[str] = (),
                   pe_name: str = "", dests: Iterable[Dest] = ()) -> Service:
    if not 0 < fwmark <= 0xFFFFFFFF:
        raise ValueError(f"fwmark must be 1..4294967295, got {fwmark}")
    return _finish(Service(family, 0, "", 0, fwmark), scheduler, persistence, netmask,
                   one_packet, sched_flags, pe_name, dests)


def _finish(svc: Service, scheduler: str, persistence: int | None, netmask: int | str | None,
            one_packet: bool, sched_flags: Iterable[str], pe_name: str,
            dests: Iterable[Dest]) -> Service:
    flags = sched_flag_bits(scheduler, sched_flags)
    if persistence is not None:
        flags |= F_PERSISTENT
    if one_packet:
        flags |= F_ONEPACKET
    return svc._replace(scheduler=scheduler, flags=flags, timeout=persistence or 0,
                        netmask=netmask_value(svc.family, netmask), pe_name=pe_name,
                        dests=tuple(dests))


def dest(address: str, port: int, *, forward: int | str = Forward.ROUTE, weight: int = 1,
         u_threshold: int = 0, l_threshold: int = 0, tun_type: int = TunnelType.IPIP,
         tun_port: int = 0, tun_flags: int = TunnelCsum.NOCSUM) -> Dest:
    """A real server, e.g. ``dest("10.0.0.11", 6443, forward="dr")``."""
    if isinstance(forward, str):
        forward = {"masq": 0, "nat": 0, "local": 1, "tunnel": 2, "tun": 2, "ipip": 2,
                   "route": 3, "dr": 3, "gatewaying": 3}[forward.lower()]
    family, addr = _family_of(address)
    return Dest(addr, port, family, int(forward), weight, u_threshold, l_threshold,
                int(tun_type), tun_port, int(tun_flags))
