"""Prometheus metrics (``node.metrics.listen``), with the official prometheus_client.

Every scrape builds the agent's status snapshot on the agent's event loop (the same one
`ipvslb status` reads) and turns it into metric families; the only live metric objects are
the health checks' counters and latency histogram, fed as the probes run. The registry is
the agent's own (not the library's global one), so nothing else gets exported by accident.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ipvslb import __version__, logfmt
from ipvslb.endpoints.source import Backend
from ipvslb.keepalived.vs_switch import STATES as VRRP_STATES

log = logfmt.get("metrics")

SCRAPE_TIMEOUT = 10.0
Snapshot = Callable[[], Coroutine[Any, Any, dict[str, Any]]]


class SnapshotCollector(Collector):
    """Metric families from the agent's status snapshot, built at scrape time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: Snapshot) -> None:
        self.loop = loop
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        future: concurrent.futures.Future[dict[str, Any]] = asyncio.run_coroutine_threadsafe(
            self.snapshot(), self.loop)
        try:
            snap = future.result(SCRAPE_TIMEOUT)
        except Exception as err:  # a failed scrape must not raise into the HTTP server
            future.cancel()
            log.warning("metrics scrape could not read the agent's state",
                        extra={"error": str(err) or type(err).__name__})
            up = GaugeMetricFamily("ipvslb_status_up", "1 when the agent's state was read")
            up.add_metric([], 0)
            yield up
            return
        yield from families(snap)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one status snapshot (its JSON form, schema ipvslb.status/v1)."""
    up = _gauge("ipvslb_status_up", "1 when the agent's state was read")
    up.add_metric([], 1)
    yield up
    info = _gauge("ipvslb_build_info", "ipvslb's version and mode (always 1)",
                  ("version", "mode"))
    info.add_metric([__version__, snap["mode"]], 1)
    yield info
    healthy = _gauge("ipvslb_healthy", "1 when `ipvslb status` would exit 0 (no problems)")
    healthy.add_metric([], 1 if snap["healthy"] else 0)
    yield healthy

    state = _gauge("ipvslb_vrrp_state", "1 for the VRRP state the instance is in (from "
                   "keepalived's notify hook), 0 for the others", ("vrrp_instance", "state"))
    trans = _counter("ipvslb_vrrp_transitions", "VRRP state changes seen by this agent",
                     ("vrrp_instance",))
    held = _gauge("ipvslb_vip_held", "1 when the VIP is on this node's VRRP interface",
                  ("vrrp_instance", "vip"))
    prio = _gauge("ipvslb_vrrp_effective_priority", "keepalived's effective VRRP priority",
                  ("vrrp_instance",))
    ka_counters = {
        "advertsSent": _counter("ipvslb_vrrp_adverts_sent", "VRRP adverts sent (keepalived)",
                                ("vrrp_instance",)),
        "advertsReceived": _counter("ipvslb_vrrp_adverts_received",
                                    "VRRP adverts received (keepalived)", ("vrrp_instance",)),
        "becameMaster": _counter("ipvslb_vrrp_became_master",
                                 "times keepalived became MASTER", ("vrrp_instance",)),
        "releasedMaster": _counter("ipvslb_vrrp_released_master",
                                   "times keepalived released MASTER", ("vrrp_instance",)),
        "authFailures": _counter("ipvslb_vrrp_auth_failures",
                                 "VRRP adverts failing authentication (keepalived)",
                                 ("vrrp_instance",)),
    }
    for inst in snap["instances"]:
        name = inst["name"]
        for s in VRRP_STATES:
            state.add_metric([name, s], 1 if inst["state"] == s else 0)
        trans.add_metric([name], inst["transitions"])
        for v in inst["vips"]:
            held.add_metric([name, v], 1 if v in inst["vipsHeld"] else 0)
        if inst.get("effectivePriority") is not None:
            prio.add_metric([name], inst["effectivePriority"])
        for key, family in ka_counters.items():
            if inst.get(key) is not None:
                family.add_metric([name], inst[key])
    yield from (state, trans, held, prio, *ka_counters.values())

    by_state = _gauge("ipvslb_backends", "backends by health check state", ("state",))
    counts = {"up": 0, "down": 0, "unknown": 0}
    b_up = _gauge("ipvslb_backend_up", "1 when the backend's active check passes "
                  "(userspace mode)", ("backend",))
    rot = _gauge("ipvslb_backend_in_rotation", "1 when the backend receives new connections",
                 ("backend",))
    for b in snap["backends"]:
        counts["unknown" if b["up"] is None else "up" if b["up"] else "down"] += 1
        if b["up"] is not None:
            b_up.add_metric([b["address"]], 1 if b["up"] else 0)
        rot.add_metric([b["address"]], 1 if b["inRotation"] else 0)
    for key, n in counts.items():
        by_state.add_metric([key], n)
    yield from (by_state, b_up, rot)

    yield from _source(snap["source"])
    ka = snap["keepalived"]
    yield _one(_gauge("ipvslb_keepalived_up", "1 while keepalived runs"), int(ka["running"]))
    yield _one(_counter("ipvslb_keepalived_restarts", "keepalived restarts after it exited"),
               ka["restarts"])
    yield _one(_counter("ipvslb_keepalived_reloads", "keepalived reloads (SIGHUP)"),
               ka["reloads"])
    if ka["startedAt"] is not None:
        yield _one(_gauge("ipvslb_keepalived_start_time_seconds",
                          "unix time the running keepalived started"), ka["startedAt"])
    local = snap["localApiserver"]
    if local["enabled"] and local["healthy"] is not None:
        yield _one(_gauge("ipvslb_local_apiserver_healthy",
                          "1 when the local apiserver's health check passes"),
                   int(local["healthy"]))
    if snap.get("proxy"):
        yield from _proxy(snap["proxy"], snap["backends"])
    if snap.get("ipvs") is not None:
        yield from _ipvs(snap["ipvs"])
    split = _gauge("ipvslb_split_brain", "1 while another node answers ARP for a VIP this "
                   "node holds (two VRRP masters)", ("vip",))
    for vip_text in snap.get("foreignHolders", {}):
        split.add_metric([vip_text], 1)
    yield split
    yield _one(_counter("ipvslb_split_brains", "times another holder of a VIP this node held "
                        "was detected"), snap.get("splitBrains", 0))
    if snap.get("dummy"):
        yield _one(_gauge("ipvslb_dummy_watching", "1 while changes to the dummy link by others "
                          "are followed (virtual-servers mode)"), int(snap["dummy"]["watching"]))
        yield _one(_counter("ipvslb_dummy_repairs", "times the dummy link was restored after "
                            "someone else changed it"), snap["dummy"]["repairs"])


def _one(family: GaugeMetricFamily | CounterMetricFamily, value: float) -> Metric:
    family.add_metric([], value)
    return family


def _source(src: dict[str, Any]) -> Iterator[Metric]:
    kind = src.get("kind", "")
    yield _one(_gauge("ipvslb_endpoint_watch_connected",
                      "1 while the endpoint source is in sync (static: always)"),
               int(bool(src.get("connected"))))
    if kind != "kubernetes":
        return
    yield _one(_counter("ipvslb_endpoint_watch_errors", "failed lists and watches (retried)"),
               src.get("errors", 0))
    yield _one(_counter("ipvslb_endpoint_watches", "watches started (restarts included)"),
               src.get("watches", 0))
    yield _one(_counter("ipvslb_endpoint_lists", "full lists of the endpoints"),
               src.get("lists", 0))
    yield _one(_counter("ipvslb_endpoint_events", "watch events received"),
               src.get("events", 0))
    if src.get("lastSync") is not None:
        yield _one(_gauge("ipvslb_endpoint_last_sync_timestamp_seconds",
                          "unix time of the last successful list or watch event"),
                   src["lastSync"])


def _proxy(p: dict[str, Any], backends: list[dict[str, Any]]) -> Iterator[Metric]:
    yield _one(_gauge("ipvslb_proxy_active_connections", "client connections open now"),
               p["activeConnections"])
    yield _one(_counter("ipvslb_proxy_connections", "client connections accepted"),
               p["totalConnections"])
    yield _one(_counter("ipvslb_proxy_rejected_connections",
                        "client connections refused by the connection limit"),
               p["rejectedConnections"])
    yield _one(_counter("ipvslb_proxy_failed_connections",
                        "client connections closed because no backend could be reached"),
               p["failedConnections"])
    relayed = _counter("ipvslb_proxy_bytes", "bytes relayed", ("direction",))
    relayed.add_metric(["to_backends"], p["bytesToBackends"])
    relayed.add_metric(["to_clients"], p["bytesToClients"])
    yield relayed
    fails = _counter("ipvslb_proxy_backend_connect_failures", "failed connects to a backend",
                     ("backend",))
    ejected = _gauge("ipvslb_proxy_backend_ejected",
                     "1 while the proxy skips the backend after connect failures", ("backend",))
    active = _gauge("ipvslb_proxy_backend_active_connections", "connections open to the backend",
                    ("backend",))
    for b in backends:
        if b.get("connectFailures") is not None:
            fails.add_metric([b["address"]], b["connectFailures"])
            ejected.add_metric([b["address"]], int(bool(b["ejected"])))
            active.add_metric([b["address"]], b["activeConnections"])
    yield from (fails, ejected, active)


def _ipvs(services: list[dict[str, Any]]) -> Iterator[Metric]:
    labels = ("service", "real_server")
    conns = _counter("ipvslb_ipvs_connections", "connections scheduled (kernel counter)", labels)
    octets = _counter("ipvslb_ipvs_bytes", "bytes (kernel counter)", (*labels, "direction"))
    active = _gauge("ipvslb_ipvs_active_connections", "active connections (kernel)", labels)
    inactive = _gauge("ipvslb_ipvs_inactive_connections", "inactive connections (kernel)",
                      labels)
    weight = _gauge("ipvslb_ipvs_weight", "real server weight", labels)
    for svc in services:
        for rs in svc["realServers"]:
            key = [svc["address"], rs["address"]]
            conns.add_metric(key, rs["connections"])
            octets.add_metric([*key, "in"], rs["bytesIn"])
            octets.add_metric([*key, "out"], rs["bytesOut"])
            active.add_metric(key, rs["activeConnections"])
            inactive.add_metric(key, rs["inactiveConnections"])
            weight.add_metric(key, rs["weight"])
    yield from (conns, octets, active, inactive, weight)


class Metrics:
    """The agent's registry and HTTP endpoint."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the output for nothing
        self.registry = CollectorRegistry(auto_describe=False)
        self.check_duration = Histogram(
            "ipvslb_health_check_duration_seconds", "duration of active health checks",
            ["check", "result"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.checks = Counter("ipvslb_health_checks", "active health checks by result",
                              ["check", "backend", "result"], registry=self.registry)
        self._server: Any = None

    def probe_hook(self, check: str) -> Callable[[Backend, bool, float], None]:
        """A HealthChecker.on_probe callback for the checker named ``check``."""
        def hook(backend: Backend, ok: bool, seconds: float) -> None:
            result = "success" if ok else "failure"
            self.check_duration.labels(check, result).observe(seconds)
            self.checks.labels(check, str(backend), result).inc()
        return hook

    def serve(self, host: str, port: int, loop: asyncio.AbstractEventLoop,
              snapshot: Snapshot) -> None:
        self.registry.register(SnapshotCollector(loop, snapshot))
        started = start_http_server(port, addr=host, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None
        log.info("serving metrics", extra={"listen": f"{host}:{port}"})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
