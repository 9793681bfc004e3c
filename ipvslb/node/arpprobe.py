"""Who else answers ARP for a VIP: the split-brain probe (IPv4).

While this node holds a VIP, any other MAC that answers an ARP request for it is a second
holder: two VRRP masters that lost each other's adverts (a partition between the controllers)
while both still reach the client LAN. :func:`probe` sends one RFC 5227 ARP probe (sender
address 0.0.0.0, so no neighbour cache learns anything from it) on the VRRP interface through
an AF_PACKET socket and collects the replies for a short while. This node's own kernel never
answers its own probe, so every reply names a foreign holder.

IPv6 VIPs are not probed (Neighbor Solicitation for them is not implemented): split brain on
an IPv6-only instance shows in the VRRP state of the nodes (two MASTERs), not here.
A backup in virtual-servers mode holds the VIP on ``dummyvip0`` but does not answer ARP for it
(``arp_ignore=1``), so it is not mistaken for a holder.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

from ipvslb.node import netns as netns_mod

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype ptype hlen plen op sha spa tha tpa
_REQUEST, _REPLY = 1, 2


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def probe_frame(our_mac: bytes, vip: str) -> bytes:
    """An Ethernet broadcast ARP probe for ``vip``: who has it (asked from 0.0.0.0)."""
    arp = _ARP.pack(1, 0x0800, 6, 4, _REQUEST, our_mac, bytes(4), bytes(6),
                    ipaddress.IPv4Address(vip).packed)
    return _BROADCAST + our_mac + struct.pack("!H", ETH_P_ARP) + arp


def replier(frame: bytes, vip: str, our_mac: bytes) -> str | None:
    """The MAC (text) of a host saying it has ``vip`` in ``frame``, or None for any other
    frame (not ARP, not a reply, another address, or from ``our_mac``)."""
    if len(frame) < 14 + _ARP.size or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    _, ptype, hlen, plen, op, sha, spa, _, _ = _ARP.unpack_from(frame, 14)
    if ptype != 0x0800 or hlen != 6 or plen != 4 or op != _REPLY:
        return None
    if spa != ipaddress.IPv4Address(vip).packed or sha == our_mac:
        return None
    return mac_text(sha)


def probe(ifname: str, vip: str, netns: str | None = None, wait: float = 0.3) -> set[str]:
    """The MACs other than this node's that answer ARP for ``vip`` on ``ifname`` within
    ``wait`` seconds (empty: nobody else holds it). OSError if the interface is missing."""
    with netns_mod.entered(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    with sock:
        sock.bind((ifname, ETH_P_ARP))
        our_mac = sock.getsockname()[4]
        sock.setblocking(False)
        sock.send(probe_frame(our_mac, vip))
        found: set[str] = set()
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                frame = sock.recv(128)
            except BlockingIOError:
                continue
            mac = replier(frame, vip, our_mac)
            if mac is not None:
                found.add(mac)
        return found
