"""Which load-balancing mode a node runs, and why."""

from __future__ import annotations

import enum

from ipvslb.config.model import Config, Role


class Mode(enum.StrEnum):
    VIRTUAL_SERVERS = "virtual-servers"  # keepalived virtual_server blocks program IPVS (DR)
    USERSPACE = "userspace"  # ipvslb's TCP proxy + iptables REDIRECT
    VIP_ONLY = "vip-only"  # VRRP only: bring your own load balancer


def decide(config: Config) -> tuple[Mode, str]:
    """The mode for this node and a sentence saying why (logged once at start)."""
    if config.disable_load_balancer:
        return Mode.VIP_ONLY, "disableLoadBalancer is true: VIP only, no load balancer"
    if not config.virtual_servers:
        return Mode.USERSPACE, "no virtualServers configured: userspace proxy"
    if config.node.role is Role.CONTROLLER_WORKER:
        return Mode.USERSPACE, (
            "node role is controller+worker: IPVS DR with the VIP on dummyvip0 breaks hairpin "
            "traffic from local pods, so the userspace proxy is used despite virtualServers"
        )
    return Mode.VIRTUAL_SERVERS, "virtualServers configured on a controller: keepalived + IPVS"
