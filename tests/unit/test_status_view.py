"""The status snapshot's rules, its human view, its metrics and the notify protocol (issue 12;
no root, no processes: the real agent is exercised in tests/host/test_observability_host.py and
tests/e2e/test_status_e2e.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ipvslb.cli.status import exit_code, human
from ipvslb.node.sdnotify import Notifier
from ipvslb.status import state
from ipvslb.status.metrics import families


def snapshot(**changes: Any) -> state.Snapshot:
    snap = state.Snapshot(
        node="ctrl-1", pid=42, mode="userspace", why="no virtualServers", started_at=100.0,
        time=200.0,
        instances=[state.Instance("ipvslb-vip-0", "eth0", ["10.0.0.10/24"], "MASTER", 150.0, 2,
                                  ["10.0.0.10/24"], effective_priority=150, base_priority=150,
                                  adverts_sent=40, adverts_received=3, became_master=1,
                                  released_master=0, auth_failures=0)],
        backends=[state.BackendView("10.0.0.11:6443", True, True, 10, 0, 199.0, 0.002),
                  state.BackendView("10.0.0.12:6443", True, True, 10, 1, 199.5, 0.003)],
        source={"kind": "kubernetes", "connected": True, "retrying": False, "errors": 1,
                "watches": 2, "lists": 1, "events": 7, "lastSync": 198.0},
        keepalived=state.KeepalivedView(True, 77, 101.0, 1, 3, -9),
        local_apiserver=state.LocalApiserver(True, True, 199.0),
        proxy=state.ProxyView("[::]:6444", 2, 9, 0, 1, 5000, 70000),
    )
    for key, value in changes.items():
        setattr(snap, key, value)
    snap.problems = state.problems(snap)
    return snap


def test_a_healthy_node_has_no_problems_and_camel_case_json() -> None:
    snap = snapshot()
    assert snap.problems == [] and exit_code(snap.to_json()) == 0
    data = snap.to_json()
    assert data["schema"] == "ipvslb.status/v1" and data["healthy"] is True
    assert data["instances"][0]["vipsHeld"] == ["10.0.0.10/24"]
    assert data["localApiserver"]["healthy"] is True
    assert data["proxy"]["bytesToClients"] == 70000


@pytest.mark.parametrize("change, expected", [
    ({"keepalived": state.KeepalivedView(False, None, None, 3, 0, 1)},
     "keepalived is not running"),
    ({"instances": [state.Instance("ipvslb-vip-0", "eth0", ["10.0.0.10/24"], "FAULT", 1.0, 1,
                                   [])]}, "ipvslb-vip-0 is FAULT"),
    ({"instances": [state.Instance("ipvslb-vip-0", "eth0", ["10.0.0.10/24"], "MASTER", 1.0, 1,
                                   [])]}, "MASTER but does not hold all its VIPs"),
    ({"backends": [state.BackendView("10.0.0.11:6443", False, False, reason="refused")]},
     "backend 10.0.0.11:6443 is down: refused"),
    ({"backends": []}, "no backends"),
    ({"source": {"kind": "kubernetes", "retrying": True, "lastError": "timed out"}},
     "endpoint watch is retrying: timed out"),
    ({"local_apiserver": state.LocalApiserver(True, False)}, "local apiserver is unhealthy"),
])
def test_each_kind_of_trouble_makes_the_node_degraded(change: dict[str, Any],
                                                      expected: str) -> None:
    snap = snapshot(**change)
    assert any(expected in p for p in snap.problems), snap.problems
    assert exit_code(snap.to_json()) == 1


def test_a_backup_is_healthy() -> None:
    inst = state.Instance("ipvslb-vip-0", "eth0", ["10.0.0.10/24"], "BACKUP", 1.0, 1, [])
    assert snapshot(instances=[inst]).problems == []


def test_the_human_view_has_a_block_per_instance_and_a_backend_table() -> None:
    down = state.BackendView("10.0.0.12:6443", False, False, 10, 4, 199.0, None,
                             "connection refused")
    text = human(snapshot(backends=[snapshot().backends[0], down]).to_json())
    lines = text.splitlines()
    assert lines[0] == "ipvslb 0.1.0 on ctrl-1 (pid 42): DEGRADED"
    assert any(line.startswith("ipvslb-vip-0: MASTER since ") and "2 transition(s)" in line
               for line in lines)
    assert "  VIPs 10.0.0.10/24 on eth0; held here: 10.0.0.10/24" in lines
    header = next(line for line in lines if line.startswith("BACKEND"))
    assert header.split() == ["BACKEND", "ROTATION", "CHECK", "LATENCY", "CONNS", "LAST",
                              "CHECK", "/", "REASON"]
    row = next(line for line in lines if line.startswith("10.0.0.12:6443"))
    assert row.split()[:3] == ["10.0.0.12:6443", "no", "DOWN"] and "connection refused" in row
    assert "keepalived: running, pid 77" in text and "last exit code -9" in text
    assert text.endswith("  - backend 10.0.0.12:6443 is down: connection refused")


class _Fixed(Collector):
    def __init__(self, snap: dict[str, Any]) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        return families(self.snap)


def scrape(snap: state.Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(snap.to_json()))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_parse_with_prometheus_clients_parser_and_follow_the_snapshot() -> None:
    m = scrape(snapshot())
    inst = (("vrrp_instance", "ipvslb-vip-0"),)
    assert m[("ipvslb_vrrp_state", (("state", "MASTER"), *inst))] == 1
    assert m[("ipvslb_vrrp_state", (("state", "BACKUP"), *inst))] == 0
    assert m[("ipvslb_vrrp_transitions_total", inst)] == 2
    assert m[("ipvslb_vrrp_adverts_received_total", inst)] == 3
    assert m[("ipvslb_vip_held", (("vip", "10.0.0.10/24"), *inst))] == 1
    assert m[("ipvslb_backends", (("state", "up"),))] == 2
    assert m[("ipvslb_endpoint_watch_errors_total", ())] == 1
    assert m[("ipvslb_keepalived_restarts_total", ())] == 1
    assert m[("ipvslb_proxy_bytes_total", (("direction", "to_clients"),))] == 70000
    assert m[("ipvslb_healthy", ())] == 1
    down = state.BackendView("10.0.0.12:6443", False, False, reason="refused")
    m = scrape(snapshot(backends=[down]))
    assert m[("ipvslb_backends", (("state", "down"),))] == 1
    assert m[("ipvslb_backend_up", (("backend", "10.0.0.12:6443"),))] == 0
    assert m[("ipvslb_healthy", ())] == 0


def test_ipvs_counters_per_real_server() -> None:
    svc = state.IpvsService("10.0.0.10:6443", "rr", 5, 100, 0, [
        state.RealServer("10.0.0.11:6443", 1, 2, 1, 5, 100, 0)])
    m = scrape(snapshot(mode="virtual-servers", proxy=None, ipvs=[svc]))
    key = (("real_server", "10.0.0.11:6443"), ("service", "10.0.0.10:6443"))
    assert m[("ipvslb_ipvs_connections_total", key)] == 5
    assert m[("ipvslb_ipvs_active_connections", key)] == 2
    assert m[("ipvslb_ipvs_bytes_total", (("direction", "in"), *key))] == 100


def test_notify_protocol_on_a_real_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert n.watchdog_interval == 15.0
        assert n.ready("running") and sock.recv(100) == b"READY=1\nSTATUS=running"
        assert n.watchdog() and sock.recv(100) == b"WATCHDOG=1"
        assert n.stopping() and sock.recv(100) == b"STOPPING=1"
    assert not Notifier({}).ready() and not Notifier({}).enabled
    # the watchdog of another process (WATCHDOG_PID) is not ours to feed
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready()


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9450", ("127.0.0.1", 9450)), ("[::1]:9450", ("::1", 9450)), (None, None)])
def test_metrics_listen_is_parsed(listen: str | None, expected: tuple[str, int] | None) -> None:
    from ipvslb.config.formats import config_from_document

    doc: dict[str, Any] = {
        "endpoints": {"source": "static", "static": ["10.0.0.11"]},
        "controlPlaneLoadBalancing": {"keepalived": {"vrrpInstances": [{"virtualIPs": [
            "10.0.0.10/24"]}]}}}
    if listen is not None:
        doc["node"] = {"metrics": {"listen": listen}}
    assert config_from_document(doc).node.metrics_listen == expected


@pytest.mark.parametrize("listen", ["localhost:9450", "127.0.0.1", "127.0.0.1:0",
                                    "127.0.0.1:99999", "fe80::1%eth0:9450", ":9450", 9450])
def test_a_bad_metrics_listen_is_one_line_naming_the_field(listen: object) -> None:
    from ipvslb.config.formats import config_from_document
    from ipvslb.errors import ConfigError

    doc = {"node": {"metrics": {"listen": listen}},
           "endpoints": {"source": "static", "static": ["10.0.0.11"]},
           "controlPlaneLoadBalancing": {"keepalived": {"vrrpInstances": [{"virtualIPs": [
               "10.0.0.10/24"]}]}}}
    with pytest.raises(ConfigError) as err:
        config_from_document(doc)
    assert "node.metrics.listen" in str(err.value) and len(str(err.value).splitlines()) == 1
