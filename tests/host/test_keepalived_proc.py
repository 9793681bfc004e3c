"""The keepalived supervisor (ipvslb.keepalived.process) with the real keepalived, in a network
namespace on the host kernel (VRRP only: no IPVS needed)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from ipvslb.keepalived.process import Keepalived
from tests.support.netlab import NetLab

KEEPALIVED = "/usr/sbin/keepalived"

CONF = """\
global_defs {{
    router_id test
}}
vrrp_instance test {{
    state BACKUP
    interface eth0
    virtual_router_id 77
    priority 100
    advert_int 1
    virtual_ipaddress {{
        10.88.9.100/24 dev eth0
    }}
}}
"""


@pytest.fixture
def node(netlab: NetLab) -> str:
    if not os.access(KEEPALIVED, os.X_OK):
        pytest.skip("keepalived missing (apt-get install keepalived)")
    lan = netlab.lan(["node", "peer"], ipv4="10.88.9.0/24", ipv6="fd00:88:9::/64")
    return lan.members[0].netns.name


def test_a_reload_asked_for_while_keepalived_starts_waits_until_it_is_ready(
        tmp_path: Path, node: str, caplog: pytest.LogCaptureFixture) -> None:
    # Seen in the emulated guest: the agent's first render changed keepalived's files right
    # after the spawn; the SIGHUP arrived before keepalived handled it and killed it.
    conf = tmp_path / "keepalived.conf"
    conf.write_text(CONF)
    caplog.set_level(logging.INFO, logger="ipvslb")

    def relayed(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    async def scenario() -> int:
        ka = Keepalived(KEEPALIVED, tmp_path, conf, netns=node)
        await ka.start()
        try:
            assert ka.reload() is True  # at once: keepalived is still being exec-ed
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not relayed("Reload complete"):
                await asyncio.sleep(0.05)
            return ka.restarts
        finally:
            await ka.stop()

    restarts = asyncio.run(scenario())
    assert restarts == 0, "the early SIGHUP killed keepalived"
    assert relayed("Reload complete"), "keepalived never re-read its files"
