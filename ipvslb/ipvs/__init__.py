"""The IPVS layer: typed model, netlink client, reader, ipvsadm-identical formatter, applier.

The netlink client is pyroute2 (imported on first use). The functions below are what
the agent calls; the modules hold the rest (model, netlink, read, apply, format).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipvslb.ipvs.model import Table


# per-namespace IPVS sysctls ipvslb sets (they exist once ip_vs is loaded)
OWNED_SYSCTLS: dict[str, str] = {
    # drop connections whose real server was deleted, so their clients reconnect at once
    "net.ipv4.vs.expire_nodest_conn": "1",
    # let persistence templates of a drained (weight 0) real server expire, so persistent
    # clients move to another server instead of sticking to a leaving one
    "net.ipv4.vs.expire_quiescent_template": "1",
}


def set_sysctls(netns: str | None = None) -> list[str]:
    """Set :data:`OWNED_SYSCTLS` (loading ip_vs first if needed); return those changed."""
    from ipvslb.ipvs.netlink import IPVS
    from ipvslb.node import sysctl

    IPVS(netns).close()  # loads ip_vs, or raises SystemStateError if the kernel has none
    return sysctl.ensure(OWNED_SYSCTLS, netns)


def remove_services(targets: Iterable[tuple[object, int]], netns: str | None = None,
                    protocol: str = "tcp") -> int:
    """Delete the services ADDRESS:PORT (``targets``: (address, port) pairs) if present.

    Returns how many were deleted. Does nothing (returns 0) when IPVS is not loaded; never
    loads it. Other services are left alone.
    """
    from ipvslb.errors import SystemStateError
    from ipvslb.ipvs.model import SCTP, TCP, UDP, Service, canonical
    from ipvslb.ipvs.netlink import IPVS, NetlinkError

    proto = {"tcp": TCP, "udp": UDP, "sctp": SCTP}[protocol.lower()]
    try:
        ipvs = IPVS(netns, load=False)
    except SystemStateError:
        return 0
    removed = 0
    with ipvs:
        for address, port in targets:
            family, text = canonical(address)
            key = Service(family, proto, text, port)
            try:
                ipvs.delete_service(key)
            except NetlinkError as err:
                if err.errno == errno.ESRCH:
                    continue
                raise SystemStateError(f"IPVS: cannot delete {key.describe()}: "
                                       f"{err.strerror}") from None
            removed += 1
    return removed


def read_table_stats(netns: str | None = None) -> Table | None:
    """The whole IPVS table with kernel counters (for `ipvslb status` and metrics).

    None when IPVS is not loaded; never loads it.
    """
    from ipvslb.errors import SystemStateError
    from ipvslb.ipvs.netlink import IPVS
    from ipvslb.ipvs.read import read_table

    try:
        ipvs = IPVS(netns, load=False)
    except SystemStateError:
        return None
    with ipvs:
        return read_table(ipvs, stats=True, info=False)
