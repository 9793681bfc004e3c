"""Connections across a director failover: the IPVS sync daemon (``node.lvsSyncDaemon``), in
the QEMU guest (issue 11 part 4).

    tests/vm/run .venv/bin/pytest -m kernel tests/kernel/test_sync_daemon.py

With direct routing the director sees only the client's half of a connection, and a new
master knows nothing of the connections the old one was forwarding: the client's next packet
on such a connection reaches the new master's own TCP stack (the VIP is local there), which
answers with a reset. keepalived's sync daemon copies the master's connection table to the
backups, so the new master forwards those packets to the same real server.

The kernel runs IPVS only in a namespace that has a service, so with the sync daemon every
backup carries a standby service (its own apiserver as the only real server): the copied
connections are forwarded the moment the VIP arrives, not only once keepalived has switched
to the full service.

The lab (stand-ins, virtual-servers mode) is built twice, with and without the sync daemon.
Six long-lived HTTPS connections (one per client address; persistence spreads them over the
three real servers) are opened, the master is powered off (switch port down, its agent and
keepalived killed), and as soon as the VIP is on another node each connection sends one more
request. The ones whose real server is
the new master itself survive either way (that node's own stack has the connection), the ones
on the powered-off node die either way; the ones on the third node are the test: they must
survive with the sync daemon and die without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ipvslb.config.model import Role
from ipvslb.lab.nslab import Lab, time_scale, wait_for
from ipvslb.lab.probe import KeepAlive
from ipvslb.lab.topology import LabMode, Topology
from tests.e2e.conftest import lab_requirements, print_logs

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def sync_lab(tmp_path: Path, sync: bool) -> Iterator[Lab]:
    why = lab_requirements()
    if why:
        pytest.skip(why)
    topology = (Topology.load().select(controllers=3, workers=0)
                .with_mode(LabMode.VIRTUAL_SERVERS).with_role(Role.CONTROLLER))
    lab = Lab.plan(topology, state_dir=tmp_path / "lab",
                   prefix=f"ipvslbsy{int(sync)}{os.getpid()}")
    lab.node_settings["lvsSyncDaemon"] = sync
    try:
        lab.up(timeout=90)
        yield lab
    finally:
        print_logs(lab)
        lab.down()


def synced(lab: Lab, node: str, connections: list[KeepAlive]) -> set[str]:
    """Which of ``connections`` (by client address and port) ``node``'s IPVS table knows."""
    out = lab.ipvsadm(node, "-L", "-n", "-c")
    return {f"{c.source}:{c.local_port}" for c in connections
            if f" {c.source}:{c.local_port} " in f" {out} "}


def standby(lab: Lab, node: str) -> bool:
    """``node`` carries the VIP's service with its own apiserver as the only real server."""
    service = f"{lab.vip}:{lab.state.api_port}"
    reals = [r for r in lab.ipvs_rules(node) if r.startswith(f"-a -t {service} ")]
    return (f"-A -t {service} -s rr -p 360" in lab.ipvs_rules(node)
            and reals == [f"-a -t {service} -r {lab.address_of(node)}:{lab.state.api_port} "
                          "-g -w 1"])


@pytest.mark.parametrize("sync", [True, False], ids=["with-sync-daemon", "without"])
def test_connections_survive_a_director_failover_only_with_the_sync_daemon(
        tmp_path: Path, sync: bool) -> None:
    with sync_lab(tmp_path, sync) as lab:
        old = lab.wait_settled(30)
        certs = lab.certificates()
        connections = [KeepAlive(lab.state.client.netns, lab.vip, lab.state.api_port, source,
                                 timeout=10 * time_scale()) for source in lab.sources()]
        try:
            served_by = {}
            for conn in connections:
                name = conn.get()
                assert certs[conn.fingerprint] == name
                served_by[f"{conn.source}:{conn.local_port}"] = name
            assert set(served_by.values()) == set(lab.names()), served_by
            keys = set(served_by)
            backups = [n for n in lab.names() if n != old]
            if sync:  # the master's sync daemon copies every connection to both backups
                for node in backups:  # each with a standby service: itself as real server
                    wait_for(lambda n=node: standby(lab, n), 30,  # type: ignore[misc]
                             f"{node}'s standby service")
                    wait_for(lambda n=node: synced(lab, n, connections) == keys,  # type: ignore[misc]
                             30, f"{node}'s IPVS table to hold the master's connections")
            else:
                for node in backups:
                    assert synced(lab, node, connections) == set(), node
            lab.power_off(old)
            new = wait_for(lambda: next((h for h in lab.holders() if h != old), None), 30,
                           "the VIP on another controller")
            # the connections speak again at once, as a client with data to send would: before
            # the new master's keepalived has switched to the full service
            third = next(n for n in lab.names() if n not in (old, new))

            def again(conn: KeepAlive) -> str:
                try:
                    return conn.get()
                except OSError as err:
                    return f"failed: {err!r}"

            # all at once: one waiting on the powered-off node must not hold up the others
            # past the stand-ins' idle timeout
            with ThreadPoolExecutor(len(connections)) as pool:
                answers = list(pool.map(again, connections))
            outcome = {f"{c.source}:{c.local_port}": a
                       for c, a in zip(connections, answers, strict=True)}
            print(f"sync daemon {'on' if sync else 'off'}: old master {old}, new {new}; "
                  f"served by {served_by}; after the failover {outcome}")
            on_third = [k for k, name in served_by.items() if name == third]
            assert on_third, served_by
            for key in on_third:
                if sync:
                    assert outcome[key] == third, f"{key} on {third}: {outcome[key]}"
                else:
                    assert outcome[key].startswith("failed"), f"{key} on {third} survived"
            for key, name in served_by.items():
                if name == new:  # that node's own stack has these; DR keeps them either way
                    assert outcome[key] == new, f"{key} on {new}: {outcome[key]}"
        finally:
            for conn in connections:
                conn.close()
