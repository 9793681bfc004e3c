"""The split-brain ARP probe's frames (the real probe runs in tests/e2e/test_split_brain.py)."""

from __future__ import annotations

import struct

from ipvslb.node.arpprobe import ETH_P_ARP, probe_frame, replier

OURS = bytes.fromhex("020000000001")
THEIRS = bytes.fromhex("020000000002")
VIP = "10.77.0.100"


def reply(sender_mac: bytes, sender_ip: bytes, op: int = 2) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sender_mac, sender_ip, OURS,
                      bytes(4))
    return OURS + sender_mac + struct.pack("!H", ETH_P_ARP) + arp


def test_the_probe_asks_everyone_who_has_the_vip_from_0_0_0_0() -> None:
    frame = probe_frame(OURS, VIP)
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == OURS
    assert frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack_from(
        "!HHBBH6s4s6s4s", frame, 14)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert sha == OURS and spa == bytes(4) and tha == bytes(6)  # RFC 5227: teaches nobody
    assert tpa == bytes([10, 77, 0, 100])


def test_only_another_hosts_reply_for_the_vip_counts() -> None:
    vip = bytes([10, 77, 0, 100])
    assert replier(reply(THEIRS, vip), VIP, OURS) == "02:00:00:00:00:02"
    assert replier(reply(OURS, vip), VIP, OURS) is None  # our own
    assert replier(reply(THEIRS, bytes([10, 77, 0, 11])), VIP, OURS) is None  # another address
    assert replier(reply(THEIRS, vip, op=1), VIP, OURS) is None  # a request, not an answer
    assert replier(reply(THEIRS, vip)[:30], VIP, OURS) is None  # truncated
    ipv4 = reply(THEIRS, vip)
    assert replier(ipv4[:12] + b"\x08\x00" + ipv4[14:], VIP, OURS) is None  # not ARP
