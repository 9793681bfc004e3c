"""Fixtures for the kernel tier (tests that need IPVS and dummy links).

These tests run inside the QEMU guest (``tests/vm/run .venv/bin/pytest -m kernel``), where
all tests share one kernel: each builds its own namespaces with ``netlab`` and programs IPVS
only inside them. tests/conftest.py marks everything here ``kernel`` and skips it on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.netlab import Lan, Member, NetLab, Netns

VIP4 = "10.77.0.100"
VIP6 = "fd00:77::100"


@dataclass(frozen=True)
class DirectorLab:
    """client --LAN 10.77.10.0/24-- director --LAN 10.77.20.0/24-- real servers.

    The director forwards (IPv4 and IPv6) and holds the VIPs on a dummy link ``dummyvip0``;
    the client routes the VIPs via the director; the real servers' default routes point at
    the director (what IPVS NAT needs: replies return through it). The client is on a
    different subnet than the real servers.
    """

    client: Member
    director: Netns
    front: Lan
    back: Lan
    reals: list[Member]

    def ipvsadm(self, *args: str) -> str:
        return self.director.run("ipvsadm", *args)


def build_director_lab(lab: NetLab, reals: int = 3) -> DirectorLab:
    director = lab.netns("director")
    front = lab.lan(["client", director], ipv4="10.77.10.0/24", ipv6="fd00:77:10::/64")
    back = lab.lan(
        [director, *(f"real{i}" for i in range(1, reals + 1))],
        ipv4="10.77.20.0/24",
        ipv6="fd00:77:20::/64",
        ifname="eth1",
    )
    client, front_director = front.members
    back_director, *servers = back.members

    director.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
    director.batch(
        [
            "link add dummyvip0 type dummy",
            f"addr add {VIP4}/32 dev dummyvip0",
            f"addr add {VIP6}/128 dev dummyvip0 nodad",
            "link set dummyvip0 up",
        ]
    )
    client.netns.batch(
        [
            f"route add {VIP4}/32 via {front_director.ipv4}",
            f"route add {VIP6}/128 via {front_director.ipv6}",
        ]
    )
    for real in servers:
        real.netns.batch(
            [
                f"route add default via {back_director.ipv4}",
                f"route add default via {back_director.ipv6}",
            ]
        )
    return DirectorLab(client, director, front, back, servers)


@pytest.fixture
def director_lab(netlab: NetLab) -> DirectorLab:
    """A client, an IPVS director with the VIPs on dummyvip0, and three real servers."""
    return build_director_lab(netlab)


@pytest.fixture(autouse=True)
def debug_logging() -> Iterator[None]:
    """Log at debug level in every kernel test: a bad log call (e.g. a reserved key in
    ``extra``) must fail here, not only in a running agent."""
    logger = logging.getLogger("ipvslb")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(level)
