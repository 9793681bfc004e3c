"""Derived VRRP priorities: distinct for neighbours and far apart (bench/failover shows why).

With priorities one apart, two surviving backups' master-down timers fire 0.2 ms apart at
0.05 s adverts, both become MASTER, and both send gratuitous ARPs (the ARP race).
"""

from __future__ import annotations

import ipaddress

from ipvslb.keepalived.desired import derive_priority


def test_neighbouring_addresses_get_distinct_far_apart_priorities() -> None:
    for base in ("10.0.0.0", "192.168.56.0", "172.16.255.0", "fd00::"):
        start = int(ipaddress.ip_address(base))
        for offset in range(1, 250):
            here = derive_priority(ipaddress.ip_address(start + offset))
            assert 1 <= here <= 254
            for step in (1, 2):
                there = derive_priority(ipaddress.ip_address(start + offset + step))
                assert abs(here - there) >= 60, (base, offset, step)


def test_distinct_over_254_consecutive_addresses() -> None:
    start = int(ipaddress.ip_address("10.77.0.1"))
    prios = {derive_priority(ipaddress.ip_address(start + i)) for i in range(254)}
    assert len(prios) == 254
