"""VIP addresses on the VRRP interfaces: find and remove the ones keepalived left behind.

After keepalived is killed (SIGKILL, OOM, crash) its VIPs stay on the interface, and the node
keeps answering ARP and TCP for them while the new master holds them too. ipvslb removes them
the moment keepalived dies and again on start, before a new keepalived runs.

Only an address keepalived added is removed: that of an instance whose last recorded state
(``ipvslb notify``, in the run directory) is MASTER. A configured VIP that is on the node
without that record is the node's own address: ``check_not_node_address`` refuses to start.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ipvslb import logfmt
from ipvslb.config.model import Config
from ipvslb.errors import UserError

log = logfmt.get("vip")


def held(config: Config, interfaces: tuple[str, ...], netns: str | None = None,
         is_master: Callable[[int], bool] | None = None,
         added: bool | None = None) -> list[tuple[str, str]]:
    """(interface, VIP/prefix) pairs of configured VIPs currently on the VRRP interfaces.

    With ``added`` True (False) only those keepalived added (did not add): the VIPs of the
    instances ``is_master(index)`` says this node is master of (is not); None: all.
    """
    from ipvslb.node import netinfo

    by_name = {link.name: link for link in netinfo.links(netns)}
    found = []
    for inst, iface in zip(config.vrrp_instances, interfaces, strict=True):
        link = by_name.get(iface)
        if link is None:
            continue
        if added is not None and is_master is not None:
            if is_master(inst.index) != added:
                continue
        present = {a.ip for a in link.addresses}
        found += [(iface, str(v)) for v in inst.virtual_ips if v.ip in present]
    return found


def check_not_node_address(config: Config, interfaces: tuple[str, ...],
                           is_master: Callable[[int], bool], netns: str | None = None) -> None:
    """Refuse a VIP that is already an address of this node that keepalived did not add
    (``is_master(index)``: keepalived's last recorded state of instance ``index``)."""
    own = held(config, interfaces, netns, is_master, added=False)
    if own:
        iface, address = own[0]
        raise UserError(f"VIP {address} is already an address of this node on {iface}, not one "
                        "keepalived added; a VIP must be an address no node has (keepalived "
                        "adds and deletes it): choose another VIP, or remove the address from "
                        f"{iface} if it is a leftover")


def remove_stale(config: Config, interfaces: tuple[str, ...], is_master: Callable[[int], bool],
                 netns: str | None = None) -> int:
    """Delete the VIPs keepalived added (``is_master``, as for :func:`held`) from the VRRP
    interfaces; return how many were removed.

    Only call this while no keepalived of this node runs.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    from ipvslb.node.netns import iproute

    stale = held(config, interfaces, netns, is_master, added=True)
    if not stale:
        return 0
    removed = 0
    with iproute(netns) as ipr:
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
