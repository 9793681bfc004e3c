"""Desired state for keepalived: config + node facts + backends -> the files keepalived reads.

Files, all in the run directory:
- ``keepalived.conf``: global_defs, one ``vrrp_instance`` per configured instance, and (in
  virtual-servers mode) one ``include vs-active-<i>.conf`` per instance that carries virtual
  servers.
- ``vs-<i>.conf``: the ``virtual_server`` blocks of instance <i>'s VIPs, one ``real_server`` per
  backend (empty while there are no backends).
- ``vs-active-<i>.conf``: a symlink the notify hook points at ``vs-<i>.conf`` while this node is
  MASTER of instance <i> and at /dev/null otherwise, so only the master programs IPVS (with DR
  on every node, a backup that also balanced would bounce packets between directors). Managed
  by ``ipvslb.keepalived.vs_switch``, not rendered here.
- ``vs-standby-<i>.conf`` (only with ``node.lvsSyncDaemon``): what a backup points at instead of
  /dev/null: the same virtual servers with this node's own apiserver as their only real server.
  The kernel runs IPVS only in a namespace that has a service, so without one a backup's copy
  of the master's connections (the sync daemon's) does nothing until keepalived has added the
  service after the takeover, and a client's packet arriving in between is answered by the
  node's own TCP stack with a reset. With the standby service the synced connections are
  forwarded the moment the VIP arrives; packets the master sends this node as a real server are
  scheduled to the only real server there is, itself (local delivery): nothing bounces.
- ``apiserver-health``: the track file the agent writes (0 healthy, 1 not); keepalived moves an
  instance to FAULT, giving up the VIP, while it holds 1.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keepalived_conf as kc
from ipvslb.config.mode import Mode, decide
from ipvslb.config.model import Config, RealServerCheck, VirtualServer, VrrpInstance
from ipvslb.endpoints.source import Backend
from ipvslb.errors import ConfigError

CONF = "keepalived.conf"
HEALTH_FILE = "apiserver-health"
HEADER = "Written by ipvslb; changes are overwritten. See `ipvslb render --help`."
GARP_MASTER_DELAY = 1
GARP_MASTER_REFRESH = 10


def vs_file(index: int) -> str:
    return f"vs-{index}.conf"


def vs_active_file(index: int) -> str:
    return f"vs-active-{index}.conf"


def vs_standby_file(index: int) -> str:
    return f"vs-standby-{index}.conf"


@dataclass(frozen=True)
class NodeFacts:
    """What is true of this node: resolved interface per instance, VRRP priority, own command."""

    interfaces: tuple[str, ...]
    priority: int
    ipvslb_command: str
    own_addresses: frozenset[str] = frozenset()  # this node's addresses (VIPs excluded)


def ipvslb_command() -> str:
    """Absolute path of this ipvslb executable, for keepalived's notify hook."""
    found = shutil.which("ipvslb")
    here = Path(sys.executable).with_name("ipvslb")
    if here.exists():
        return str(here)
    return found or str(here)


PRIORITY_SPREAD = 97  # coprime with 254, close to 254 / golden ratio


def derive_priority(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """A priority from 1 to 254 that differs between nodes whose addresses differ by < 254,
    and lies far from the priorities of neighbouring addresses.

    Equal priorities make surviving nodes claim the VIP at the same instant after a failover,
    and the loser's gratuitous ARP can leave clients on the wrong node for seconds. Adjacent
    priorities are nearly as bad: a backup's master-down timer is 3 adverts plus a skew of
    (256 - priority) / 256 adverts, so priorities one apart time out 0.2 ms apart at 0.05 s
    adverts, and both survivors became MASTER in 8 of 35 failovers in the one-machine lab
    (0 of 40 with 200/150/100). Multiplying by 97 puts neighbours 97 or 157 apart and
    addresses two apart at least 60 apart (>= 12 ms of timer difference at 0.05 s adverts).
    """
    return 1 + (int(address) * PRIORITY_SPREAD) % 254


def resolve_facts(config: Config, priority: int | None = None,
                  netns: str | None = None) -> NodeFacts:
    """Resolve interfaces (name, MAC or default route) and priority on this node."""
    from ipvslb.node import netinfo

    names: list[str] = []
    for inst in config.vrrp_instances:
        if inst.interface:
            names.append(inst.interface)
        elif inst.interface_mac:
            names.append(netinfo.interface_by_mac(inst.interface_mac, netns))
        else:
            names.append(netinfo.default_route_interface(netns))
    chosen = priority or config.node.priority
    if chosen is None:
        chosen = derive_priority(_own_address(config.vrrp_instances[0], names[0], netns))
    return NodeFacts(tuple(names), chosen, ipvslb_command(), _own_addresses(config, netns))


def _own_addresses(config: Config, netns: str | None) -> frozenset[str]:
    from ipvslb.node import netinfo

    vips = {v.ip for v in config.all_vips}
    return frozenset(str(a.ip) for link in netinfo.links(netns) for a in link.addresses
                     if a.ip not in vips and not a.ip.is_link_local)


def _own_address(inst: VrrpInstance, interface: str, netns: str | None
                 ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    from ipvslb.errors import SystemStateError
    from ipvslb.node import netinfo

    if inst.unicast_source_ip is not None:
        return inst.unicast_source_ip
    vips = {v.ip for v in inst.virtual_ips}
    for link in netinfo.links(netns):
        if link.name == interface:
            for addr in link.addresses:
                if addr.version == inst.family and addr.ip not in vips and \
                        not addr.ip.is_link_local:
                    return addr.ip
    raise SystemStateError(f"interface {interface} has no IPv{inst.family} address to derive "
                           "this node's VRRP priority from; set node.priority (1-254)")


def render_files(config: Config, mode: Mode, facts: NodeFacts,
                 backends: Sequence[Backend]) -> dict[str, str]:
    """Every file keepalived reads, by name relative to the run directory."""
    run = config.node.run_dir
    notify = f"{facts.ipvslb_command} notify --run-dir {run}"
    with_vs = mode is Mode.VIRTUAL_SERVERS
    items: list[kc.Item] = [_global_defs(config, facts, with_vs)]
    health = config.node.apiserver_health.enabled
    if health:
        items.append(kc.TrackFile(name="apiserver", file=os.path.join(run, HEALTH_FILE),
                                  weight=0, init_file=1))
    for inst, iface in zip(config.vrrp_instances, facts.interfaces, strict=True):
        items.append(_instance(inst, iface, facts.priority, notify, health))
    files: dict[str, str] = {}
    if with_vs:
        for inst in config.vrrp_instances:
            servers = [vs for vs in config.virtual_servers
                       if any(v.ip == vs.ip_address for v in inst.virtual_ips)]
            if not servers:
                continue
            items.append(kc.Include(os.path.join(run, vs_active_file(inst.index))))
            # A virtual server without a backend of its address family is left out until it
            # has one (keepalived refuses a virtual_server without real servers).
            blocks = [_virtual_server(config, vs, backends) for vs in servers
                      if any(usable(config, vs, b) for b in backends)]
            files[vs_file(inst.index)] = kc.render(kc.Config(tuple(blocks)), header=HEADER)
            if config.node.lvs_sync_daemon:
                # (keepalived ignores a virtual server without real servers: a node that is
                # no backend itself gets an empty standby file)
                own = [b for b in backends if b.address in facts.own_addresses]
                standby = [] if not own else [_virtual_server(config, vs, own)
                                              for vs in servers]
                files[vs_standby_file(inst.index)] = kc.render(kc.Config(tuple(standby)),
                                                               header=HEADER)
    files[CONF] = kc.render(kc.Config(tuple(items)), header=HEADER)
    return dict(sorted(files.items()))


def _global_defs(config: Config, facts: NodeFacts, with_vs: bool) -> kc.GlobalDefs:
    sync = None
    if with_vs and config.node.lvs_sync_daemon:
        first = config.vrrp_instances[0]
        sync = kc.LvsSyncDaemon(interface=facts.interfaces[0], instance=first.name)
    return kc.GlobalDefs(
        enable_script_security=True, script_user="root",
        vrrp_garp_master_delay=GARP_MASTER_DELAY, vrrp_garp_master_refresh=GARP_MASTER_REFRESH,
        # after a split brain heals, the losing masters announce themselves once more, so the
        # winner always sees a lower-priority advert and sends gratuitous ARPs (keepalived's
        # garp_lower_prio_repeat, default 5): clients that last heard a loser move at once
        vrrp_higher_prio_send_advert=True,
        lvs_sync_daemon=sync,
    )


def _instance(inst: VrrpInstance, iface: str, priority: int, notify: str,
              health: bool) -> kc.VrrpInstance:
    auth = None
    if inst.vrrp_version == 2 and inst.auth_pass:
        auth = kc.Authentication(auth_pass=inst.auth_pass)
    return kc.VrrpInstance(
        name=inst.name, interface=iface, virtual_router_id=inst.virtual_router_id,
        priority=priority, state="BACKUP", version=inst.vrrp_version,
        advert_int=inst.advert_interval, nopreempt=True,
        garp_master_delay=GARP_MASTER_DELAY, garp_master_refresh=GARP_MASTER_REFRESH,
        authentication=auth,
        unicast_src_ip=str(inst.unicast_source_ip) if inst.unicast_source_ip else None,
        unicast_peers=tuple(str(p) for p in inst.unicast_peers),
        virtual_ipaddresses=tuple(kc.VirtualIPAddress(str(v), dev=iface)
                                  for v in inst.virtual_ips),
        track_files=(kc.TrackFileRef("apiserver"),) if health else (),
        notify=notify,
    )


def usable(config: Config, vs: VirtualServer, backend: Backend) -> bool:
    """Whether IPVS can forward ``vs`` to ``backend``: same family; DR and TUN keep the port."""
    return backend.ip.version == vs.ip_address.version and (
        vs.lb_kind == "NAT" or backend.port == config.node.api_server_port)


def _virtual_server(config: Config, vs: VirtualServer, backends: Sequence[Backend]
                    ) -> kc.VirtualServer:
    reals = []
    for backend in sorted(set(backends)):
        if not usable(config, vs, backend):
            continue
        checker: kc.Checker
        if config.node.real_server_check is RealServerCheck.HTTPS:
            checker = kc.SslGet(urls=(kc.HttpUrl("/readyz", status_code=200),),
                                connect_port=backend.port, connect_timeout=3, retry=1,
                                delay_before_retry=1)
        else:
            checker = kc.TcpCheck(connect_port=backend.port, connect_timeout=3, retry=1,
                                  delay_before_retry=1, warmup=0)
        reals.append(kc.RealServer(backend.address, backend.port, weight=1, checker=checker))
    return kc.VirtualServer(
        ip=str(vs.ip_address), port=config.node.api_server_port, delay_loop=vs.delay_loop,
        lb_algo=vs.lb_algo, lb_kind=vs.lb_kind, persistence_timeout=vs.persistence_timeout,
        protocol="TCP", real_servers=tuple(reals),
    )


def check_renders(config: Config) -> str | None:
    """Why keepalived's files cannot be rendered for ``config`` on any node, or None.

    Validation runs this with stand-in node facts (each instance's interface or eth0, a mid
    priority, the static backends) in both modes, so that nothing `validate` accepts fails to
    render later in `up`, after the node was changed.
    """
    facts = NodeFacts(tuple(i.interface or "eth0" for i in config.vrrp_instances),
                      config.node.priority or 100, ipvslb_command())
    backends = [Backend(str(ip), port) for ip, port in config.endpoints.static]
    try:
        render_files(config, decide(config)[0], facts, backends)
    except ValueError as err:
        return str(err)
    return None


def require_renders(config: Config) -> Config:
    """``config``, once :func:`check_renders` found nothing; else a ConfigError naming it."""
    why = check_renders(config)
    if why:
        raise ConfigError([f"keepalived cannot be given this configuration: {why}; change the "
                           "value it names"])
    return config
