"""Read the kernel's IPVS table: one service dump, one real-server dump per service."""

from __future__ import annotations

from ipvslb.errors import SystemStateError
from ipvslb.ipvs.model import Service, Table
from ipvslb.ipvs.netlink import IPVS
from ipvslb.node import netns as netns_mod

CONN_PROC_FILE = "/proc/net/ip_vs_conn"


def read_table(ipvs: IPVS, stats: bool = False, info: bool = True) -> Table:
    """The whole table (services with their real servers) in the kernel's order.

    ``stats``: also decode counters and rates (``--stats``, ``--rate``, ``--json``).
    """
    information = ipvs.info() if info else None
    full = tuple([s._replace(dests=tuple(ipvs.dests(s, stats))) for s in ipvs.services(stats)])
    return Table(full, information)


def read_service(ipvs: IPVS, key: Service, stats: bool = False) -> Service | None:
    """One service (found by ``key``'s identity) with its real servers, or None."""
    svc = ipvs.service(key, stats)
    if svc is None:
        return None
    return svc._replace(dests=tuple(ipvs.dests(svc, stats)))


def read_connections(netns: str | None = None) -> str:
    """The text of /proc/net/ip_vs_conn as seen from ``netns``."""
    with netns_mod.entered(netns):
        try:  # thread-self: the namespace of this thread, which `entered` switched
            with open("/proc/thread-self/net/ip_vs_conn", encoding="ascii",
                      errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            raise SystemStateError(f"cannot open {CONN_PROC_FILE} (is ip_vs loaded?)") from None
