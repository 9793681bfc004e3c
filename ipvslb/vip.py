"""VIP addresses on the VRRP interfaces: find and remove the ones keepalived left behind.

After keepalived is killed (SIGKILL, OOM, crash) its VIPs stay on the interface, and the node
keeps answering ARP and TCP for them while the new master holds them too. ipvslb removes them
the moment keepalived dies and again on start, before a new keepalived runs.
"""

from __future__ import annotations

import errno

from ipvslb import logfmt
from ipvslb.config import Config

log = logfmt.get("vip")


def held(config: Config, interfaces: tuple[str, ...], netns: str | None = None
         ) -> list[tuple[str, str]]:
    """(interface, VIP/prefix) pairs of configured VIPs currently on the VRRP interfaces."""
    from ipvslb import netinfo

    by_name = {link.name: link for link in netinfo.links(netns)}
    found = []
    for inst, iface in zip(config.vrrp_instances, interfaces, strict=True):
        link = by_name.get(iface)
        if link is None:
            continue
        present = {a.ip for a in link.addresses}
        found += [(iface, str(v)) for v in inst.virtual_ips if v.ip in present]
    return found


def remove_stale(config: Config, interfaces: tuple[str, ...], netns: str | None = None) -> int:
    """Delete every configured VIP from the VRRP interfaces; return how many were removed.

    Only call this while no keepalived of this node runs.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    stale = held(config, interfaces, netns)
    if not stale:
        return 0
    removed = 0
    with (IPRoute(netns=netns, flags=0) if netns else IPRoute()) as ipr:
        for iface, vip in stale:
            index = ipr.link_lookup(ifname=iface)
            if not index:
                continue
            address, prefix = vip.split("/")
            try:
                ipr.addr("del", index=index[0], address=address, prefixlen=int(prefix))
                removed += 1
                log.warning("removed a stale VIP left by a dead keepalived", extra={
                    "interface": iface, "vip": vip})
            except NetlinkError as err:
                if err.code != errno.EADDRNOTAVAIL:
                    raise
    return removed
