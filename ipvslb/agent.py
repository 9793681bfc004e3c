"""The node agent behind `ipvslb up`: config -> desired state -> reconcile, until stopped.

Order of work on start (every step idempotent, so a restart after a crash repairs):
1. decide the mode and resolve node facts (interfaces, priority) before touching anything;
2. replace a keepalived left by a previous agent, remove stale VIPs and stale state;
3. mode-specific plumbing: dummyvip0 (virtual servers) or the proxy + iptables (userspace);
4. render keepalived's files, start keepalived under supervision;
5. follow the local apiserver's health (track file) and the backends (endpoint source),
   re-rendering and reloading keepalived or updating the proxy only on real change.
On stop everything added is removed again; `ipvslb down` runs the same cleanup for an agent
that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipvslb import logfmt
from ipvslb.config.mode import Mode, decide
from ipvslb.config.model import Config, EndpointSourceKind
from ipvslb.config.validate import loop_backend
from ipvslb.endpoints.source import Backend, EndpointSource, StaticSource
from ipvslb.errors import UserError
from ipvslb.files import claim_run_dir, executable_problem, remove_run_files, write_atomic
from ipvslb.keepalived import desired as kf
from ipvslb.keepalived import vs_switch
from ipvslb.keepalived.process import JSON_FILE, Keepalived, stop_leftover
from ipvslb.node import vip
from ipvslb.node.sdnotify import Notifier
from ipvslb.status import state
from ipvslb.status.server import SOCKET as STATUS_SOCKET
from ipvslb.status.server import StatusServer

if TYPE_CHECKING:
    from ipvslb.endpoints.health import HealthChecker
    from ipvslb.node.dummywatch import DummyWatch
    from ipvslb.proxy import Proxy
    from ipvslb.status.metrics import Metrics

log = logfmt.get("agent")
# how often the holder asks who else answers ARP for its VIPs (split brain), seconds
SPLIT_BRAIN_INTERVAL = 2.0


def make_source(config: Config) -> EndpointSource:
    if config.endpoints.source is EndpointSourceKind.STATIC:
        return StaticSource([Backend(str(ip), port) for ip, port in config.endpoints.static])
    from ipvslb.endpoints.kube import KubernetesSource

    return KubernetesSource(kubeconfig=config.node.kubeconfig)


class Agent:
    def __init__(self, config: Config, priority: int | None = None,
                 netns: str | None = None) -> None:
        self.config = config
        self.mode, self.why = decide(config)
        self.netns = netns
        self.run_dir = Path(config.node.run_dir)
        self.facts = kf.resolve_facts(config, priority, netns)
        self._preflight()
        self.backends: list[Backend] = []
        self._refused_seen: set[Backend] = set()
        self.keepalived: Keepalived | None = None
        self.proxy: Proxy | None = None
        self.source: EndpointSource | None = None
        self.health: HealthChecker | None = None  # the local apiserver (track file)
        self.backend_health: HealthChecker | None = None  # userspace mode's backends
        self.iptables_backend: str | None = None  # userspace mode: the one holding our rules
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self._stop_event = asyncio.Event()
        # introspection: `ipvslb status`, metrics, systemd
        self.started_at = time.time()
        self.vrrp = state.VrrpTracker(self.run_dir,
                                      [inst.name for inst in config.vrrp_instances])
        self.notifier = Notifier()
        self.status_server: StatusServer | None = None
        self.metrics: Metrics | None = None
        self._tick_task: asyncio.Task[None] | None = None
        # virtual-servers mode: dummyvip0 repaired when someone else changes it
        self.dummy_watch: DummyWatch | None = None
        self.dummy_repairs = 0
        self.dummy_last_repair: float | None = None
        self.dummy_refused: str | None = None  # why the link is not ours to repair
        self._dummy_task: asyncio.Task[None] | None = None
        self._dummy_again = False
        self._dummy_lock = asyncio.Lock()  # one dummy.ensure at a time (start-up, repairs)
        # split brain: VIP -> MACs of other nodes answering ARP for a VIP this node holds
        self.foreign_holders: dict[str, list[str]] = {}
        self.split_brains = 0  # times one was detected
        self._split_task: asyncio.Task[None] | None = None
        self._split_error: str | None = None

    def _preflight(self) -> None:
        """Every check that can fail on this node's facts, before anything is changed."""
        why = executable_problem(self.config.node.keepalived_path)
        if why:
            raise UserError(f"node.keepalivedPath {self.config.node.keepalived_path} {why}; "
                            "install Debian's keepalived package or set node.keepalivedPath to "
                            "the keepalived program")
        try:
            kf.render_files(self.config, self.mode, self.facts, [])
        except ValueError as err:
            raise UserError(f"keepalived cannot be given this configuration on this node: "
                            f"{err}") from None
        vip.check_not_node_address(self.config, self.facts.interfaces,
                                   vs_switch.recorded_master(self.run_dir), self.netns)

    # -- start ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        log.info(f"mode {self.mode.value}: {self.why}", extra={
            "priority": self.facts.priority, "interfaces": ",".join(self.facts.interfaces)})
        for warning in self.config.warnings:
            log.warning(warning)
        self._stop_event = stop
        try:
            await self._start()
            log.info("running", extra={"run_dir": str(self.run_dir)})
            self.notifier.ready(f"running, mode {self.mode.value}")
            await stop.wait()
            self.notifier.stopping()
            log.info("stopping")
        finally:
            await self._stop()
        if self.failure is not None:
            raise self.failure

    def _give_up(self, error: BaseException) -> None:
        """keepalived can never run: stop the agent and exit non-zero with the reason."""
        self.failure = error
        self._stop_event.set()

    async def _start(self) -> None:
        claim_run_dir(self.run_dir)
        if self.config.node.metrics_listen is not None:
            from ipvslb.status.metrics import Metrics

            self.metrics = Metrics()
        # pyroute2's sockets run their own event loop: netlink work goes to a worker thread.
        if await asyncio.to_thread(stop_leftover, self.run_dir):
            log.info("replaced the keepalived of a previous agent")
        await asyncio.to_thread(vip.remove_stale, self.config, self.facts.interfaces,
                                vs_switch.recorded_master(self.run_dir), self.netns)
        await self._start_mode()
        self._write_files()
        self.keepalived = Keepalived(
            self.config.node.keepalived_path, self.run_dir, self.run_dir / kf.CONF,
            on_exit=self._keepalived_died, netns=self.netns, on_give_up=self._give_up)
        await self.keepalived.start()
        await self._start_health()
        self.source = make_source(self.config)
        self.source.start(self._on_update_threadsafe)
        await self._start_introspection()

    async def _start_introspection(self) -> None:
        """The status socket, the metrics endpoint and the 1 s tick (VRRP state, watchdog)."""
        self.status_server = StatusServer(self.run_dir, self.snapshot)
        await self.status_server.start()
        listen = self.config.node.metrics_listen
        if self.metrics is not None and listen is not None:
            assert self.loop is not None
            try:
                self.metrics.serve(listen[0], listen[1], self.loop, self.metrics_snapshot)
            except OSError as err:
                raise UserError(f"node.metrics.listen {listen[0]}:{listen[1]}: cannot listen "
                                f"({err.strerror}); choose a free port or an address of this "
                                "node") from None
        self._tick_task = asyncio.create_task(self._tick())
        self._split_task = asyncio.create_task(self._watch_split_brain())

    async def _tick(self) -> None:
        """Follow the VRRP state files and feed systemd's watchdog from the agent's loop: a
        wedged loop stops the WATCHDOG=1 messages and systemd restarts the agent."""
        interval = self.notifier.watchdog_interval
        period = min(1.0, interval) if interval else 1.0
        while True:
            try:
                self.vrrp.poll()
            except Exception:
                log.exception("reading the VRRP state files failed")
            if interval:
                self.notifier.watchdog()
            await asyncio.sleep(period)

    async def _watch_split_brain(self) -> None:
        """Every SPLIT_BRAIN_INTERVAL seconds, ask (ARP, ``node.arpprobe``) who else answers for
        each IPv4 VIP this node holds; log each start and end of a split brain once."""
        while True:
            try:
                found = await asyncio.to_thread(self._probe_foreign_holders)
            except Exception as err:  # a probe must not end the agent; said once per reason
                found = self.foreign_holders
                if str(err) != self._split_error:
                    log.warning("split-brain probe failed", extra={"error": str(err)})
                self._split_error = str(err)
            else:
                self._split_error = None
            for vip_text, macs in found.items():
                if vip_text not in self.foreign_holders:
                    self.split_brains += 1
                    log.error("split brain: another node answers for a VIP this node holds",
                              extra={"event": "split_brain", "vip": vip_text,
                                     "foreign_mac": ",".join(macs)})
            for vip_text in self.foreign_holders:
                if vip_text not in found:
                    log.warning("split brain resolved: no other node answers for the VIP",
                                extra={"event": "split_brain_resolved", "vip": vip_text})
            self.foreign_holders = found
            await asyncio.sleep(SPLIT_BRAIN_INTERVAL)

    def _probe_foreign_holders(self) -> dict[str, list[str]]:
        """VIP -> other MACs answering for it, for the IPv4 VIPs held here (worker thread)."""
        from ipvslb.node import arpprobe

        found: dict[str, list[str]] = {}
        for iface, held_vip in vip.held(self.config, self.facts.interfaces, self.netns):
            address = held_vip.split("/")[0]
            if ":" in address:
                continue  # IPv4 only (see arpprobe)
            macs = arpprobe.probe(iface, address, self.netns)
            if macs:
                found[held_vip] = sorted(macs)
        return found

    async def snapshot(self) -> dict[str, Any]:
        """The agent's state, as `ipvslb status --json` prints it (schema ipvslb.status/v1)."""
        return (await state.build(self, self.vrrp)).to_json()

    async def metrics_snapshot(self) -> dict[str, Any]:
        """The snapshot a scrape needs: without the iptables rules, which no metric uses and
        which cost iptables-save processes (most of a scrape's CPU; bench/idle)."""
        return (await state.build(self, self.vrrp, rules=False)).to_json()

    def in_rotation(self) -> list[Backend]:
        """The backends new connections go to, as far as the agent decides it."""
        if self.proxy is not None:
            return list(self.proxy.backends)
        return list(self.backends)

    async def _start_mode(self) -> None:
        node = self.config.node
        vips = [v.ip for v in self.config.all_vips]
        if self.mode is Mode.VIRTUAL_SERVERS:
            from ipvslb import ipvs
            from ipvslb.node import dummy
            from ipvslb.node.dummywatch import DummyWatch

            # listening before the first ensure: a change in between is not missed
            self.dummy_watch = DummyWatch(node.dummy_interface, self.netns,
                                          self._dummy_event_threadsafe)
            await asyncio.to_thread(self.dummy_watch.start)
            async with self._dummy_lock:
                await asyncio.to_thread(dummy.ensure, node.dummy_interface, vips,
                                        label=self._dummy_label(), netns=self.netns)
            await asyncio.to_thread(ipvs.set_sysctls, self.netns)
            await asyncio.to_thread(remove_vip_services, self.config, self.netns)
            for inst in self.config.vrrp_instances:
                vs_switch.point(self.run_dir, inst.index, master=False)
            return
        # left over from virtual-servers mode (a no-op when there is none)
        await asyncio.to_thread(remove_dummy, self.config, self.netns)
        if self.mode is Mode.USERSPACE:
            from ipvslb.endpoints.health import HealthChecker
            from ipvslb.node import iptables
            from ipvslb.proxy import Proxy

            proxy = self.proxy = Proxy(None, self.config.user_space_proxy_bind_port, [])
            await proxy.start()
            # Active checks narrow the rotation; the proxy's own passive ejection reports back.
            checker = self.backend_health = HealthChecker(
                [], on_change=proxy.update, on_result=self._backend_result,
                mode="https" if node.real_server_check.value == "https" else "tcp",
                fail_open=True)
            if self.metrics is not None:
                checker.on_probe = self.metrics.probe_hook("backend")
            proxy.on_eject = checker.report_failure
            await checker.start()
            self.iptables_backend = await asyncio.to_thread(
                iptables.install,
                [iptables.Redirect(str(v), node.api_server_port,
                                   self.config.user_space_proxy_bind_port) for v in vips],
                netns=self.netns)

    def _dummy_label(self) -> int | None:
        labels = {inst.address_label for inst in self.config.vrrp_instances}
        return labels.pop() if labels else None

    def _dummy_event_threadsafe(self, reason: str) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._dummy_changed, reason)

    def _dummy_changed(self, reason: str) -> None:
        """A kernel event about dummyvip0: ensure it again (one repair at a time; events
        arriving meanwhile make it run once more)."""
        if self._dummy_task is not None and not self._dummy_task.done():
            self._dummy_again = True
            return
        self._dummy_task = asyncio.create_task(self._repair_dummy(reason))

    async def _repair_dummy(self, reason: str) -> None:
        from ipvslb.errors import SystemStateError
        from ipvslb.node import dummy

        name = self.config.node.dummy_interface
        vips = [v.ip for v in self.config.all_vips]
        while True:
            self._dummy_again = False
            try:
                async with self._dummy_lock:
                    result = await asyncio.to_thread(
                        dummy.ensure, name, vips, label=self._dummy_label(),
                        netns=self.netns, sysctls=False)
            except (SystemStateError, UserError) as err:
                if str(err) != self.dummy_refused:  # said once, never fought over
                    log.error("not repairing the dummy link", extra={
                        "event": "dummy_not_repaired", "link": name, "reason": reason,
                        "error": str(err)})
                self.dummy_refused = str(err)
            else:
                self.dummy_refused = None
                if result.changed:
                    self.dummy_repairs += 1
                    self.dummy_last_repair = time.time()
                    log.warning("repaired the dummy link changed by someone else", extra={
                        "event": "dummy_repaired", "link": name, "reason": reason,
                        "link_created": result.created, "link_state_set": result.state_set,
                        "added": ",".join(result.added),
                        "removed": ",".join(result.removed)})
            if not self._dummy_again:
                return

    def _backend_result(self, backend: Backend, ok: bool) -> None:
        if ok and self.proxy is not None:
            self.proxy.readmit([backend])

    async def _start_health(self) -> None:
        """Feed keepalived's track file from the local apiserver's health (rise/fall)."""
        settings = self.config.node.apiserver_health
        if not settings.enabled:
            return
        from ipvslb.endpoints.health import HealthChecker

        path = self.run_dir / kf.HEALTH_FILE

        def changed(healthy: Sequence[Backend]) -> None:
            ok = bool(healthy)
            write_atomic(path, "0\n" if ok else "1\n", 0o600)
            log.info("local apiserver " + ("healthy: may hold the VIP" if ok else
                                           "unhealthy: giving up the VIP"))

        local = Backend("127.0.0.1", self.config.node.api_server_port)
        # The local apiserver's certificate is not verified: this asks "is my own apiserver
        # ready", over loopback, not "is this server who it claims to be".
        self.health = HealthChecker(
            [local], on_change=changed, mode="https", interval=settings.interval,
            timeout=settings.timeout, rise=settings.rise, fall=settings.fall, fail_open=False,
        )
        if self.metrics is not None:
            self.health.on_probe = self.metrics.probe_hook("local_apiserver")
        await self.health.start()

    # -- changes ----------------------------------------------------------------------------

    def _refused(self, backend: Backend) -> bool:
        """A backend the API lists that would loop clients back to ipvslb (an apiserver
        advertising the VIP, say): dropped, said once per backend."""
        vips = {v.ip for inst in self.config.vrrp_instances for v in inst.virtual_ips}
        why = loop_backend(backend.ip, backend.port, vips,
                           self.config.user_space_proxy_bind_port)
        if why and backend not in self._refused_seen:
            self._refused_seen.add(backend)
            log.warning("ignored a backend", extra={"backend": str(backend), "why": why})
        return why is not None

    def _on_update_threadsafe(self, backends: Sequence[Backend]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.update_backends, list(backends))

    def update_backends(self, backends: list[Backend]) -> None:
        new = sorted(b for b in set(backends) if not self._refused(b))
        if not new:
            log.warning("ignored an empty backend list; keeping the last known backends",
                        extra={"kept": len(self.backends)})
            return
        if new == self.backends:
            return
        self.backends = new
        log.info("backends changed", extra={"backends": ",".join(map(str, new))})
        if self.mode is Mode.USERSPACE and self.proxy is not None:
            self.proxy.update(new)
            if self.backend_health is not None:
                self.backend_health.update(new)
        changed = self._write_files()
        if self.keepalived is not None and changed:
            self.keepalived.reload()

    def _write_files(self) -> bool:
        """Render and write keepalived's files; True when one changed."""
        files = kf.render_files(self.config, self.mode, self.facts, self.backends)
        changed = False
        for name, text in files.items():
            changed |= write_atomic(self.run_dir / name, text, 0o600)
        health = self.run_dir / kf.HEALTH_FILE
        if self.config.node.apiserver_health.enabled and not health.exists():
            write_atomic(health, "1\n", 0o600)  # not healthy until the first checks pass
        return changed

    async def _keepalived_died(self, code: int) -> None:
        """keepalived is gone: nothing may keep answering for the VIPs on this node."""
        removed = await asyncio.to_thread(
            vip.remove_stale, self.config, self.facts.interfaces,
            vs_switch.recorded_master(self.run_dir), self.netns)
        if self.mode is Mode.VIRTUAL_SERVERS:
            await asyncio.to_thread(remove_vip_services, self.config, self.netns)
            for inst in self.config.vrrp_instances:
                vs_switch.point(self.run_dir, inst.index, master=False)
        log.warning("cleaned up after keepalived died", extra={"stale_vips_removed": removed})

    # -- stop -------------------------------------------------------------------------------

    async def _stop(self) -> None:
        if self.dummy_watch is not None:  # first: removing the link must not look foreign
            await asyncio.to_thread(self.dummy_watch.stop)
        if self._dummy_task is not None:
            with contextlib.suppress(Exception):
                await self._dummy_task
        for task in (self._tick_task, self._split_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.status_server is not None:
            await self.status_server.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.source is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.source.stop)
        if self.keepalived is not None:
            await self.keepalived.stop()  # first: the VIP moves to a peer (priority 0 advert)
        if self.proxy is not None:
            await self._hand_over()
            await self.proxy.stop(grace=5.0)
        for checker in (self.health, self.backend_health):  # the proxy used them until now
            if checker is not None:
                await checker.stop()
        await asyncio.to_thread(cleanup, self.config, self.facts.interfaces, self.netns, True)
        log.info("stopped; removed what ipvslb added")

    async def _hand_over(self) -> None:
        """Keep the proxy answering for a moment after the VIP was released.

        A client keeps sending to this node's MAC until the new holder's gratuitous ARP reaches
        it: the peer takes over one skew time after our priority-0 advert and announces itself
        at once, but a new connection sent here meanwhile would be reset if the proxy had
        already closed its port. The REDIRECT rule and the proxy stay until then."""
        delay = handover_seconds(self.config)
        log.info("VIP released; the proxy keeps answering clients that have not switched yet",
                 extra={"handover_s": delay})
        await asyncio.sleep(delay)


def handover_seconds(config: Config) -> float:
    """How long a releasing node keeps serving: three adverts of its slowest instance (a peer
    takes over within one, plus its gratuitous ARP), and at least one second."""
    interval = max((i.advert_interval for i in config.vrrp_instances), default=1.0)
    return max(1.0, 3 * interval)


def cleanup(config: Config, interfaces: tuple[str, ...], netns: str | None = None,
            keepalived_stopped: bool = False) -> None:
    """Remove everything ipvslb adds on a node (also for `ipvslb down` after a crash)."""
    from ipvslb.node import iptables

    run_dir = Path(config.node.run_dir)
    if not keepalived_stopped:
        stop_leftover(run_dir)
    vip.remove_stale(config, interfaces, vs_switch.recorded_master(run_dir), netns)
    remove_vip_services(config, netns)
    remove_dummy(config, netns)
    iptables.remove(netns=netns)
    names = [kf.CONF, kf.HEALTH_FILE, STATUS_SOCKET, JSON_FILE] + [
        n for i in range(len(config.vrrp_instances))
        for n in (kf.vs_file(i), kf.vs_active_file(i), kf.vs_standby_file(i),
                  vs_switch.state_file(run_dir, i).name)]
    remove_run_files(run_dir, names)  # only in a run directory ipvslb owns


def remove_vip_services(config: Config, netns: str | None = None) -> None:
    """Delete the IPVS services of the configured virtual servers (nothing without IPVS)."""
    if config.virtual_servers:
        from ipvslb.ipvs import remove_services

        port = config.node.api_server_port
        remove_services([(vs.ip_address, port) for vs in config.virtual_servers], netns=netns)


def remove_dummy(config: Config, netns: str | None = None) -> None:
    """Remove ipvslb's dummy link if there is one (dummy.remove leaves other links alone)."""
    from ipvslb.node import dummy

    dummy.remove(config.node.dummy_interface, netns=netns)
