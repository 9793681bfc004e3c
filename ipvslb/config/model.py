"""The validated configuration of one ipvslb node.

Everything here is already checked and defaulted: ``ipvslb.config.validate`` builds it from a YAML
document (ipvslb's own format, a k0s ClusterConfig or a k0sctl Cluster file) and nothing else
constructs it from user input.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEFAULT_API_PORT = 6443
DEFAULT_PROXY_PORT = 6444
DEFAULT_RUN_DIR = "/run/ipvslb"
DEFAULT_KEEPALIVED = "/usr/sbin/keepalived"
DEFAULT_DUMMY_INTERFACE = "dummyvip0"
DEFAULT_FIRST_VRID = 51
DEFAULT_ADDRESS_LABEL = 10000
# VRRPv3 advert interval used when the config names none: failover in about 3.5 adverts
# (~0.2 s) at 20 packets/s per instance. See README "Failover timing".
DEFAULT_ADVERT_INTERVAL = 0.05
DEFAULT_DELAY_LOOP = 5.0
DEFAULT_PERSISTENCE = 360
LB_ALGOS = ("rr", "wrr", "lc", "wlc", "lblc", "dh", "sh", "sed", "nq")
LB_KINDS = ("NAT", "DR", "TUN")


class Role(enum.StrEnum):
    CONTROLLER = "controller"
    CONTROLLER_WORKER = "controller+worker"


class EndpointSourceKind(enum.StrEnum):
    KUBERNETES = "kubernetes"
    STATIC = "static"


class RealServerCheck(enum.StrEnum):
    TCP = "tcp"
    HTTPS = "https"


class SourceFormat(enum.StrEnum):
    NATIVE = "ipvslb"
    K0S_CLUSTER_CONFIG = "k0s ClusterConfig"
    K0SCTL_CLUSTER = "k0sctl Cluster"


@dataclass(frozen=True)
class VrrpInstance:
    index: int
    virtual_ips: tuple[IPInterface, ...]
    virtual_router_id: int
    auth_pass: str | None
    # None: the interface owning the default route, found on the node at run time.
    interface: str | None
    # Set when the interface was given as a MAC address (resolved on the node).
    interface_mac: str | None
    # VRRPv2 with whole seconds (k0s's advertIntervalSeconds) or VRRPv3 with a fraction.
    advert_interval: float
    vrrp_version: int
    unicast_source_ip: IPAddress | None
    unicast_peers: tuple[IPAddress, ...]
    address_label: int

    @property
    def family(self) -> int:
        return self.virtual_ips[0].version

    @property
    def name(self) -> str:
        return f"ipvslb-vip-{self.index}"


@dataclass(frozen=True)
class VirtualServer:
    ip_address: IPAddress
    delay_loop: float
    lb_algo: str
    lb_kind: str
    persistence_timeout: int


@dataclass(frozen=True)
class ApiserverHealth:
    """The local-apiserver check that makes a node give up the VIP when its apiserver is down."""

    enabled: bool = True
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2


@dataclass(frozen=True)
class NodeSettings:
    role: Role = Role.CONTROLLER
    api_server_port: int = DEFAULT_API_PORT
    run_dir: str = DEFAULT_RUN_DIR
    keepalived_path: str = DEFAULT_KEEPALIVED
    dummy_interface: str = DEFAULT_DUMMY_INTERFACE
    # VRRP priority of this node (1-254). None: derived from the node's address so that
    # nodes get distinct priorities (see README "Why distinct priorities").
    priority: int | None = None
    kubeconfig: str | None = None
    apiserver_health: ApiserverHealth = field(default_factory=ApiserverHealth)
    real_server_check: RealServerCheck = RealServerCheck.TCP
    lvs_sync_daemon: bool = False
    # node.metrics.listen: (host, port) of the Prometheus endpoint; None: no metrics (default)
    metrics_listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class EndpointSettings:
    source: EndpointSourceKind = EndpointSourceKind.KUBERNETES
    # (address, port) pairs for the static source.
    static: tuple[tuple[IPAddress, int], ...] = ()


@dataclass(frozen=True)
class Config:
    source_format: SourceFormat
    node: NodeSettings
    endpoints: EndpointSettings
    vrrp_instances: tuple[VrrpInstance, ...]
    virtual_servers: tuple[VirtualServer, ...]
    user_space_proxy_bind_port: int
    disable_load_balancer: bool
    # Warnings that do not stop the agent (printed by validate, logged by up).
    warnings: tuple[str, ...] = ()

    @property
    def all_vips(self) -> tuple[IPInterface, ...]:
        return tuple(vip for inst in self.vrrp_instances for vip in inst.virtual_ips)

    def instance_of(self, address: IPAddress) -> VrrpInstance:
        """The VRRP instance that carries VIP ``address``."""
        for inst in self.vrrp_instances:
            if any(vip.ip == address for vip in inst.virtual_ips):
                return inst
        raise KeyError(str(address))
