"""The agent's state as one typed snapshot: what `ipvslb status` prints and metrics export.

The snapshot is built on the agent's event loop from its collaborators (keepalived, health
checkers, endpoint source, proxy) plus what the kernel says (VIPs on the interfaces, the IPVS
table, ipvslb's iptables rules), read in a worker thread. It is serialised as JSON with the
versioned schema ``ipvslb.status/v1`` (camelCase keys; times are unix seconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipvslb import __version__, logfmt
from ipvslb.endpoints.source import Backend
from ipvslb.keepalived import vs_switch

if TYPE_CHECKING:
    from ipvslb.agent import Agent

log = logfmt.get("agent")

SCHEMA = "ipvslb.status/v1"


@dataclass
class Instance:
    name: str
    interface: str
    vips: list[str]
    state: str | None  # from keepalived's notify hook; None before the first notification
    since: float | None
    transitions: int
    vips_held: list[str]  # of this instance's VIPs, those on its interface now
    # from keepalived's own JSON (None when keepalived did not answer)
    effective_priority: int | None = None
    base_priority: int | None = None
    adverts_sent: int | None = None
    adverts_received: int | None = None
    became_master: int | None = None
    released_master: int | None = None
    auth_failures: int | None = None


@dataclass
class BackendView:
    address: str
    in_rotation: bool  # published to keepalived / the proxy (health and ejection applied)
    up: bool | None  # the active check's verdict (None: not checked yet or not checked)
    checks: int = 0
    failed_checks: int = 0
    last_check: float | None = None
    last_latency_seconds: float | None = None
    reason: str = ""
    # userspace proxy
    active_connections: int | None = None
    total_connections: int | None = None
    connect_failures: int | None = None
    ejected: bool | None = None


@dataclass
class KeepalivedView:
    running: bool
    pid: int | None
    started_at: float | None
    restarts: int
    reloads: int
    last_exit_code: int | None


@dataclass
class DummyView:
    """Virtual-servers mode: ipvslb's dummy link and its repairs after foreign changes."""
    name: str
    watching: bool
    repairs: int
    last_repair: float | None
    refused: str | None  # why the link is not repaired (not ipvslb's), or None


@dataclass
class LocalApiserver:
    enabled: bool
    healthy: bool | None
    last_check: float | None = None
    reason: str = ""


@dataclass
class ProxyView:
    listen: str
    active_connections: int
    total_connections: int
    rejected_connections: int
    failed_connections: int
    bytes_to_backends: int
    bytes_to_clients: int


@dataclass
class RealServer:
    address: str
    weight: int
    active_connections: int
    inactive_connections: int
    connections: int
    bytes_in: int
    bytes_out: int


@dataclass
class IpvsService:
    address: str
    scheduler: str
    connections: int
    bytes_in: int
    bytes_out: int
    real_servers: list[RealServer]


@dataclass
class Snapshot:
    node: str
    pid: int
    mode: str
    why: str
    started_at: float
    time: float
    instances: list[Instance]
    backends: list[BackendView]
    source: dict[str, Any]
    keepalived: KeepalivedView
    local_apiserver: LocalApiserver
    proxy: ProxyView | None = None
    ipvs: list[IpvsService] | None = None
    iptables_rules: list[str] | None = None
    dummy: DummyView | None = None
    # split brain: VIP -> MACs of other nodes answering ARP for it while this node holds it
    foreign_holders: dict[str, list[str]] = field(default_factory=dict)
    split_brains: int = 0
    problems: list[str] = field(default_factory=list)
    schema: str = SCHEMA
    version: str = __version__

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        data = _camel(dataclasses.asdict(self))
        data["healthy"] = self.healthy
        return data


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w.capitalize() for w in rest)


def problems(snap: Snapshot) -> list[str]:
    """Why the node is degraded (empty: healthy). BACKUP is healthy: one node is MASTER."""
    out = []
    if not snap.keepalived.running:
        out.append("keepalived is not running")
    for inst in snap.instances:
        if inst.state == "FAULT":
            out.append(f"{inst.name} is FAULT")
        elif inst.state is None:
            out.append(f"{inst.name} has no VRRP state yet")
        if inst.state == "MASTER" and len(inst.vips_held) < len(inst.vips):
            out.append(f"{inst.name} is MASTER but does not hold all its VIPs")
    for b in snap.backends:
        if b.up is False:
            out.append(f"backend {b.address} is down: {b.reason or 'failed checks'}")
    if not snap.backends:
        out.append("no backends")
    if snap.source.get("retrying"):
        out.append(f"endpoint watch is retrying: {snap.source.get('lastError') or 'error'}")
    if snap.dummy is not None and snap.dummy.refused:
        out.append(f"{snap.dummy.name} is not repaired: {snap.dummy.refused}")
    elif snap.dummy is not None and not snap.dummy.watching:
        out.append(f"{snap.dummy.name} is not watched (changes by others go unrepaired)")
    for vip_text, macs in snap.foreign_holders.items():
        out.append(f"split brain: {vip_text} is also held by {', '.join(macs)}")
    if snap.local_apiserver.enabled and snap.local_apiserver.healthy is False:
        out.append("the local apiserver is unhealthy (this node may not hold the VIP)")
    return out


class VrrpTracker:
    """Follows the per-instance state files ``ipvslb notify`` writes for keepalived; logs each
    transition once (``event=vrrp_transition``) and counts them."""

    def __init__(self, run_dir: Path, names: list[str]) -> None:
        self.run_dir = run_dir
        self.names = names
        self.states: list[str | None] = [None] * len(names)
        self.since: list[float | None] = [None] * len(names)
        self.transitions: list[int] = [0] * len(names)

    def poll(self) -> None:
        for i, name in enumerate(self.names):
            path = vs_switch.state_file(self.run_dir, i)
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            state = vs_switch.read_state(self.run_dir, i)
            if state is None or state == self.states[i]:
                continue
            log.info("vrrp transition", extra={
                "event": "vrrp_transition", "instance": name, "from": self.states[i] or "INIT",
                "to": state})
            self.states[i], self.since[i] = state, mtime
            self.transitions[i] += 1


def _kernel_views(agent: Agent, rules_wanted: bool
                  ) -> tuple[list[tuple[str, str]], list[IpvsService] | None, list[str] | None]:
    """VIPs on the VRRP interfaces, and the IPVS table or (``rules_wanted``) the iptables
    rules (worker thread)."""
    from ipvslb.config.mode import Mode
    from ipvslb.node import vip

    held = vip.held(agent.config, agent.facts.interfaces, agent.netns)
    services = rules = None
    if agent.mode is Mode.VIRTUAL_SERVERS:
        services = _ipvs_services(agent.netns)
    elif agent.mode is Mode.USERSPACE and rules_wanted:
        from ipvslb.node import iptables

        try:
            rules = iptables.current_rules(netns=agent.netns, backend=agent.iptables_backend)
        except Exception as err:  # status must answer even when iptables does not
            rules = [f"# iptables-save failed: {err}"]
    return held, services, rules


def _ipvs_services(netns: str | None) -> list[IpvsService] | None:
    from ipvslb.ipvs import read_table_stats
    from ipvslb.ipvs.model import Stats, join_host_port

    table = read_table_stats(netns)
    if table is None:
        return None
    out = []
    for svc in table.services:
        st = svc.stats or Stats()
        address = (f"fwmark {svc.fwmark}" if svc.fwmark else
                   join_host_port(svc.family, svc.address, svc.port))
        reals = []
        for d in svc.dests:
            ds = d.stats or Stats()
            reals.append(RealServer(join_host_port(d.family, d.address, d.port), d.weight,
                                    d.active_conns, d.inactive_conns, ds.conns, ds.inbytes,
                                    ds.outbytes))
        out.append(IpvsService(address, svc.scheduler, st.conns, st.inbytes, st.outbytes,
                               reals))
    return out


async def build(agent: Agent, tracker: VrrpTracker, rules: bool = True) -> Snapshot:
    """The snapshot now (on the agent's loop; the kernel is read in a worker thread).
    ``rules``: include ipvslb's iptables rules (userspace mode; iptables-save processes)."""
    tracker.poll()
    held, ipvs, iptables_rules = await asyncio.to_thread(_kernel_views, agent, rules)
    kad = agent.keepalived
    vrrp_json = await kad.vrrp_json(timeout=1.0) if kad is not None else None
    by_name = {d.get("data", {}).get("iname"): d for d in vrrp_json or []}
    instances = []
    for i, inst in enumerate(agent.config.vrrp_instances):
        iface = agent.facts.interfaces[i]
        vips = [str(v) for v in inst.virtual_ips]
        view = Instance(inst.name, iface, vips, tracker.states[i], tracker.since[i],
                        tracker.transitions[i], [v for f, v in held if f == iface and v in vips])
        _enrich(view, by_name.get(inst.name))
        instances.append(view)
    backends = _backends(agent)
    if ipvs is not None:  # virtual-servers master: keepalived's checks decide the real servers
        port = agent.config.node.api_server_port
        ours = {str(Backend(str(vs.ip_address), port)) for vs in agent.config.virtual_servers}
        reals = {rs.address for svc in ipvs if svc.address in ours for rs in svc.real_servers
                 if rs.weight > 0}
        if any(svc.address in ours for svc in ipvs):
            for b in backends:
                b.in_rotation = b.up = b.address in reals
    snap = Snapshot(
        node=os.uname().nodename, pid=os.getpid(), mode=agent.mode.value, why=agent.why,
        started_at=agent.started_at, time=time.time(), instances=instances,
        backends=backends, source=_source(agent),
        keepalived=KeepalivedView(
            kad is not None and kad.running, kad.process.pid if kad and kad.process else None,
            kad.started_at if kad else None, kad.restarts if kad else 0,
            kad.reloads if kad else 0, kad.last_exit_code if kad else None),
        local_apiserver=_local(agent), proxy=_proxy(agent), ipvs=ipvs,
        iptables_rules=iptables_rules, dummy=_dummy(agent),
        foreign_holders=dict(agent.foreign_holders), split_brains=agent.split_brains)
    snap.problems = problems(snap)
    return snap


def _enrich(view: Instance, entry: dict[str, Any] | None) -> None:
    if not entry:
        return
    data, stats = entry.get("data") or {}, entry.get("stats") or {}

    def num(d: dict[str, Any], key: str) -> int | None:
        v = d.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    view.effective_priority = num(data, "effective_priority")
    view.base_priority = num(data, "base_priority")
    view.adverts_sent = num(stats, "advert_sent")
    view.adverts_received = num(stats, "advert_rcvd")
    view.became_master = num(stats, "become_master")
    view.released_master = num(stats, "release_master")
    view.auth_failures = num(stats, "auth_failure")


def _backends(agent: Agent) -> list[BackendView]:
    in_rotation = set(agent.in_rotation())
    checked = {t.backend: t for t in agent.backend_health.targets()} \
        if agent.backend_health is not None else {}
    proxied = {b.backend: b for b in agent.proxy.stats().backends} \
        if agent.proxy is not None else {}
    out = []
    for b in agent.backends:
        view = BackendView(str(b), b in in_rotation, None)
        t = checked.get(b)
        if t is not None:
            view.up, view.checks, view.failed_checks = t.up, t.checks, t.failed_checks
            view.last_check, view.last_latency_seconds, view.reason = (
                t.last_check, t.last_latency, t.reason if t.up is False else "")
        p = proxied.get(b)
        if p is not None:
            view.active_connections, view.total_connections = p.active, p.total
            view.connect_failures, view.ejected = p.failures, p.ejected
        out.append(view)
    return out


def _source(agent: Agent) -> dict[str, Any]:
    if agent.source is None:
        return {"kind": agent.config.endpoints.source.value, "connected": False}
    return _camel(dataclasses.asdict(agent.source.status()))  # type: ignore[no-any-return]


def _local(agent: Agent) -> LocalApiserver:
    if agent.health is None:
        return LocalApiserver(enabled=False, healthy=None)
    targets = agent.health.targets()
    if not targets:
        return LocalApiserver(enabled=True, healthy=None)
    t = targets[0]
    return LocalApiserver(True, t.up, t.last_check, t.reason if t.up is False else "")


def _proxy(agent: Agent) -> ProxyView | None:
    if agent.proxy is None:
        return None
    st = agent.proxy.stats()
    return ProxyView(st.listen, st.active, st.total, st.rejected, st.failed,
                     st.bytes_to_backends, st.bytes_to_clients)


def _dummy(agent: Agent) -> DummyView | None:
    watch = agent.dummy_watch
    if watch is None:
        return None
    return DummyView(watch.name, watch.watching, agent.dummy_repairs, agent.dummy_last_repair,
                     agent.dummy_refused)
