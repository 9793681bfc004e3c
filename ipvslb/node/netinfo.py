"""Facts read from the node's network: default-route interface, MAC lookup, own addresses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ipvslb.errors import SystemStateError
from ipvslb.node.netns import iproute


@dataclass(frozen=True)
class Link:
    name: str
    mac: str
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


def links(netns: str | None = None) -> list[Link]:
    with iproute(netns) as ipr:
        by_index: dict[int, tuple[str, str]] = {}
        for msg in ipr.get_links():
            by_index[msg["index"]] = (msg.get_attr("IFLA_IFNAME"),
                                      (msg.get_attr("IFLA_ADDRESS") or "").lower())
        addrs: dict[int, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = {}
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                addrs.setdefault(msg["index"], []).append(
                    ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
    return [Link(name, mac, tuple(addrs.get(idx, []))) for idx, (name, mac) in
            sorted(by_index.items())]


def default_route_interface(netns: str | None = None) -> str:
    """The interface of the first default route (IPv4 first, then IPv6), as k0s picks it."""
    with iproute(netns) as ipr:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        for family in (2, 10):
            for route in ipr.get_routes(family=family, table=254):
                if route["dst_len"] == 0 and route.get_attr("RTA_OIF") in names:
                    return str(names[route.get_attr("RTA_OIF")])
    raise SystemStateError("no default route on this node to pick the VRRP interface from; "
                           "set vrrpInstances[].interface")


def interface_by_mac(mac: str, netns: str | None = None) -> str:
    for link in links(netns):
        if link.mac == mac.lower():
            return link.name
    raise SystemStateError(f"no interface has MAC address {mac}; fix vrrpInstances[].interface")

