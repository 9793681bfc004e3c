"""The lab topology (addresses, VIP, roles) and each controller's ipvslb config made from it.

One YAML file (``examples/lab-topology.yaml``) describes the lab. The Vagrantfile reads it to
create the VMs, and both labs (Vagrant and the one-machine lab in network namespaces) call
``node_config`` to write each controller's config, so there is one code path for the
configuration. The one-machine lab moves the addresses into a subnet of its own with
``Topology.rebased``.

Problems are collected and raised together as a ``ConfigError``, one line each, naming the
field and the fix, like ipvslb's own configuration.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ipvslb.config import yamlread
from ipvslb.config.model import DEFAULT_API_PORT, IPAddress, IPInterface, Role
from ipvslb.config.validate import MAX_AUTH_PASS, UNSAFE_CHARS, Problems, Section, valid_ifname
from ipvslb.errors import ConfigError, UserError
from ipvslb.files import write_atomic

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The topology shipped with the project (a clone; not part of an installed wheel).
# Shipped as package data (a symlink to examples/lab-topology.yaml in the checkout), so an
# installed ipvslb finds it too.
DEFAULT_TOPOLOGY = Path(str(resources.files("ipvslb.lab") / "lab-topology.yaml"))
DEFAULT_INTERFACE = "eth1"  # the private-network NIC of Debian's Vagrant boxes
K0S_ADMIN_KUBECONFIG = "/var/lib/k0s/pki/admin.conf"
# A node name is a hostname, a Kubernetes node name, a Vagrant machine name and part of a
# network namespace name: keep it a short DNS label.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
K0S_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+\+k0s\.\d+$")
BOX_RE = re.compile(r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")

TOP_FIELDS = ("name", "mode", "network", "controllers", "workers", "vagrant")
NETWORK_FIELDS = ("subnet", "vip", "virtualRouterID", "authPass", "advertInterval",
                  "advertIntervalSeconds", "unicast", "apiServerPort")
CONTROLLER_FIELDS = ("name", "address", "role", "priority")
WORKER_FIELDS = ("name", "address")
VAGRANT_FIELDS = ("box", "k0sVersion", "cpus", "controllerMemory", "workerMemory")


class LabMode(enum.StrEnum):
    VIRTUAL_SERVERS = "virtual-servers"  # keepalived virtual_server blocks, IPVS DR
    USERSPACE = "userspace"  # ipvslb's proxy on 6444 behind an iptables REDIRECT


class NodeKind(enum.StrEnum):
    CONTROLLER = "controller"
    WORKER = "worker"


class EndpointsFrom(enum.StrEnum):
    STATIC = "static"  # the controllers' addresses, fixed
    KUBERNETES = "kubernetes"  # follow the `kubernetes` Endpoints through a kubeconfig


@dataclass(frozen=True)
class Network:
    subnet: IPNetwork
    vip: IPInterface
    virtual_router_id: int = 51
    auth_pass: str | None = None
    # VRRPv3 fractional seconds; None and no advert_interval_seconds: ipvslb's default.
    advert_interval: float | None = None
    # VRRPv2 whole seconds (k0s's advertIntervalSeconds); then auth_pass is used.
    advert_interval_seconds: int | None = None
    unicast: bool = False
    api_server_port: int = DEFAULT_API_PORT


@dataclass(frozen=True)
class Node:
    name: str
    address: IPAddress
    kind: NodeKind
    role: Role | None = None  # controllers only
    priority: int | None = None  # controllers only; None: ipvslb derives it from the address


@dataclass(frozen=True)
class VagrantSettings:
    box: str = "debian/bookworm64"
    k0s_version: str = "v1.32.2+k0s.0"
    cpus: int = 2
    controller_memory: int = 2048
    worker_memory: int = 1536


@dataclass(frozen=True)
class Topology:
    name: str
    mode: LabMode
    network: Network
    controllers: tuple[Node, ...]
    workers: tuple[Node, ...] = ()
    vagrant: VagrantSettings = VagrantSettings()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_TOPOLOGY) -> Topology:
        """Read and check a topology file; UserError/ConfigError with one line per problem."""
        file = Path(path)
        doc = yamlread.read(file, "pass an existing one (see examples/lab-topology.yaml)",
                            kind="topology")
        try:
            return cls.from_document(doc)
        except ConfigError as err:
            raise ConfigError([f"{file}: {p}" for p in err.problems]) from None

    @classmethod
    def from_document(cls, doc: Any) -> Topology:
        return _parse(doc)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.controllers + self.workers

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise UserError(f"no node {name!r} in the lab topology; known nodes: {known}")

    def select(self, controllers: int | None = None, workers: int | None = None) -> Topology:
        """The lab with only the first ``controllers`` controllers and ``workers`` workers."""
        if controllers is not None and not 1 <= controllers <= len(self.controllers):
            raise UserError(f"controllers count {controllers} is out of range; the topology "
                            f"lists {len(self.controllers)} (use 1 to {len(self.controllers)}, "
                            "or add controllers to the file)")
        if workers is not None and not 0 <= workers <= len(self.workers):
            raise UserError(f"workers count {workers} is out of range; the topology lists "
                            f"{len(self.workers)} (use 0 to {len(self.workers)}, or add workers "
                            "to the file)")
        return replace(self, controllers=self.controllers[:controllers],
                       workers=self.workers[:workers])

    def with_role(self, role: Role | str) -> Topology:
        """Every controller with ``role`` (the controller+worker variant of the lab)."""
        try:
            new = Role(role)
        except ValueError:
            raise UserError(f"{role!r} is not a controller role; use controller or "
                            "controller+worker") from None
        return replace(self, controllers=tuple(replace(n, role=new) for n in self.controllers))

    def with_mode(self, mode: LabMode | str) -> Topology:
        try:
            return replace(self, mode=LabMode(mode))
        except ValueError:
            raise UserError(f"{mode!r} is not a lab mode; use virtual-servers or "
                            "userspace") from None

    def rebased(self, subnet: str | IPNetwork) -> Topology:
        """The same lab moved into ``subnet``: every address keeps its offset in the subnet.

        The one-machine lab uses this to put the lab inside network namespaces of its own
        (e.g. 192.168.56.11 -> 10.77.0.11 for subnet 10.77.0.0/24).
        """
        try:
            new = ipaddress.ip_network(subnet, strict=True)
        except ValueError:
            raise UserError(f"{subnet!r} is not a subnet (address/prefix with no host "
                            "bits set), e.g. 10.77.0.0/24") from None
        old = self.network.subnet
        if new.version != old.version:
            raise UserError(f"{new} is IPv{new.version} but the lab is IPv{old.version}; "
                            "rebase into a subnet of the same family")

        def move(address: IPAddress) -> IPAddress:
            offset = int(address) - int(old.network_address)
            if offset >= new.num_addresses:
                raise UserError(f"{new} is too small for the lab: {address} is at offset "
                                f"{offset}; use a subnet of at least /{old.prefixlen}")
            return ipaddress.ip_address(int(new.network_address) + offset)

        vip = ipaddress.ip_interface(f"{move(self.network.vip.ip)}/{new.prefixlen}")
        network = replace(self.network, subnet=new, vip=vip)
        return replace(
            self, network=network,
            controllers=tuple(replace(n, address=move(n.address)) for n in self.controllers),
            workers=tuple(replace(n, address=move(n.address)) for n in self.workers),
        )


def node_config(
    topology: Topology,
    node_name: str,
    *,
    interface: str = DEFAULT_INTERFACE,
    endpoints: EndpointsFrom | str = EndpointsFrom.STATIC,
    kubeconfig: str | None = None,
    run_dir: str | None = None,
    keepalived_path: str | None = None,
) -> dict[str, Any]:
    """The ipvslb native config document (YAML-serialisable) for controller ``node_name``.

    ``interface`` is the node's NIC on the lab network (VRRP runs there). ``endpoints``:
    ``static`` lists every controller's address; ``kubernetes`` follows the apiserver's
    ``kubernetes`` Endpoints through ``kubeconfig`` (default: k0s's admin kubeconfig).
    In virtual-servers mode every controller gets the virtual server; a controller+worker node
    then still runs userspace mode (ipvslb decides and logs why).
    """
    node = topology.node(node_name)
    if node.kind is not NodeKind.CONTROLLER:
        raise UserError(f"{node_name} is a worker; ipvslb runs on controllers only")
    why = valid_ifname(interface)
    if why:
        raise UserError(f"interface {interface!r} {why}; give the node's NIC on the lab network")
    source = _endpoints_from(endpoints)
    net = topology.network

    node_doc: dict[str, Any] = {"role": (node.role or Role.CONTROLLER).value,
                                "apiServerPort": net.api_server_port}
    if node.priority is not None:
        node_doc["priority"] = node.priority
    if run_dir is not None:
        node_doc["runDir"] = run_dir
    if keepalived_path is not None:
        node_doc["keepalivedPath"] = keepalived_path

    endpoints_doc: dict[str, Any] = {"source": source.value}
    if source is EndpointsFrom.STATIC:
        endpoints_doc["static"] = [str(c.address) for c in topology.controllers]
    else:
        node_doc["kubeconfig"] = kubeconfig or K0S_ADMIN_KUBECONFIG

    instance: dict[str, Any] = {
        "virtualIPs": [str(net.vip)],
        "interface": interface,
        "virtualRouterID": net.virtual_router_id,
    }
    if net.advert_interval_seconds is not None:
        # VRRPv2, k0s's setting: the only case where keepalived uses the password.
        instance["advertIntervalSeconds"] = net.advert_interval_seconds
        if net.auth_pass is not None:
            instance["authPass"] = net.auth_pass
    elif net.advert_interval is not None:
        instance["advertInterval"] = net.advert_interval
    if net.unicast:
        instance["unicastSourceIP"] = str(node.address)
        instance["unicastPeers"] = [str(c.address) for c in topology.controllers
                                    if c.name != node.name]

    keepalived: dict[str, Any] = {"vrrpInstances": [instance]}
    if topology.mode is LabMode.VIRTUAL_SERVERS:
        keepalived["virtualServers"] = [{"ipAddress": str(net.vip.ip)}]
    return {
        "node": node_doc,
        "endpoints": endpoints_doc,
        "controlPlaneLoadBalancing": {"enabled": True, "type": "Keepalived",
                                      "keepalived": keepalived},
    }


def render_node(topology: Topology, node_name: str, **params: Any) -> str:
    """``node_config`` as YAML text with a header saying where it came from."""
    doc = node_config(topology, node_name, **params)
    header = (f"# ipvslb config for {node_name} of lab {topology.name!r}, generated from the "
              "lab topology by ipvslb.lab.topology (do not edit: regenerate).\n")
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def render_lab(topology: Topology, directory: str | Path, **params: Any) -> dict[str, Path]:
    """Write ``<name>.yaml`` (mode 0600) for every controller; name -> path."""
    out = Path(directory)
    written: dict[str, Path] = {}
    for node in topology.controllers:
        path = out / f"{node.name}.yaml"
        write_atomic(path, render_node(topology, node.name, **params), mode=0o600)
        written[node.name] = path
    return written


def check_node_configs(topology: Topology, **params: Any) -> None:
    """Validate every controller's generated config with ipvslb's own validation."""
    from ipvslb.config.formats import config_from_document
    from ipvslb.keepalived.desired import require_renders

    problems: list[str] = []
    for node in topology.controllers:
        try:
            require_renders(config_from_document(node_config(topology, node.name, **params)))
        except ConfigError as err:
            problems += [f"the config generated for {node.name} is invalid: {p}"
                         for p in err.problems]
    if problems:
        raise ConfigError(problems)


def _endpoints_from(value: EndpointsFrom | str) -> EndpointsFrom:
    try:
        return EndpointsFrom(value)
    except ValueError:
        raise UserError(f"endpoints {value!r} is not an endpoint source; use static or "
                        "kubernetes") from None


# --- parsing -----------------------------------------------------------------------------------

def _parse(doc: Any) -> Topology:
    problems = Problems()
    if not isinstance(doc, dict):
        raise ConfigError(["the topology must be a YAML mapping with network, controllers and "
                           "workers; see examples/lab-topology.yaml"])
    top = Section(doc, problems, TOP_FIELDS)
    name = top.str_("name", "ipvslb-lab") or "ipvslb-lab"
    if not NAME_RE.match(name):
        problems.add("name", f"{name!r} must be a short DNS label (a-z, 0-9, '-')")
    mode = LabMode.VIRTUAL_SERVERS
    mode_text = top.str_("mode", mode.value) or mode.value
    try:
        mode = LabMode(mode_text)
    except ValueError:
        problems.add("mode", f"{mode_text!r} is not a lab mode; use virtual-servers or userspace")

    with problems.at("network"):
        if not top.has("network"):
            problems.add("", "is required; give subnet and vip, e.g. subnet: 192.168.56.0/24, "
                         "vip: 192.168.56.10/24")
        network = _network(problems, top.raw("network"))

    taken_names: dict[str, str] = {}
    taken_addresses: dict[IPAddress, str] = {}
    if network is not None:
        taken_addresses[network.vip.ip] = "network.vip"
    controllers: list[Node] = []
    raw_controllers = top.list_("controllers")
    if not raw_controllers:
        problems.add("controllers", "is empty; list at least one controller with name and "
                     "address")
    for i, raw in enumerate(raw_controllers):
        with problems.at(f"controllers[{i}]"):
            node = _node(problems, raw, NodeKind.CONTROLLER, network, taken_names,
                         taken_addresses, f"controllers[{i}]")
        if node is not None:
            controllers.append(node)
    priorities: dict[int, str] = {}
    for i, node in enumerate(controllers):
        if node.priority is None:
            continue
        if node.priority in priorities:
            problems.add(f"controllers[{i}].priority", f"{node.priority} is also "
                         f"{priorities[node.priority]}'s; give every controller its own "
                         "priority (equal priorities race for the VIP on failover)")
        priorities[node.priority] = node.name
    workers: list[Node] = []
    for i, raw in enumerate(top.list_("workers")):
        with problems.at(f"workers[{i}]"):
            node = _node(problems, raw, NodeKind.WORKER, network, taken_names,
                         taken_addresses, f"workers[{i}]")
        if node is not None:
            workers.append(node)

    with problems.at("vagrant"):
        vagrant = _vagrant(problems, top.raw("vagrant"))

    if problems.items or network is None:
        raise ConfigError(problems.items)
    topology = Topology(name=name, mode=mode, network=network, controllers=tuple(controllers),
                        workers=tuple(workers), vagrant=vagrant)
    # Anything ipvslb itself would refuse in the generated configs is a topology problem too.
    check_node_configs(topology)
    return topology


def _network(problems: Problems, raw: Any) -> Network | None:
    s = Section(raw, problems, NETWORK_FIELDS)
    before = len(problems.items)
    subnet: IPNetwork | None = None
    text = s.str_("subnet")
    if text is None and s.data:
        problems.add("subnet", "is required; give the lab network as address/prefix, e.g. "
                     "192.168.56.0/24")
    elif text is not None:
        try:
            subnet = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError:
            problems.add("subnet", f"{text!r} is not a subnet (address/prefix with no host bits "
                         "set), e.g. 192.168.56.0/24")
    vip: IPInterface | None = None
    text = s.str_("vip")
    if text is None and s.data:
        problems.add("vip", "is required; give the VIP with the subnet's prefix, e.g. "
                     "192.168.56.10/24")
    elif text is not None:
        if "/" not in text:
            problems.add("vip", f"{text!r} has no prefix length; write it as address/prefix "
                         "with the subnet's prefix, e.g. 192.168.56.10/24")
        else:
            try:
                vip = ipaddress.ip_interface(text.strip())
            except ValueError:
                problems.add("vip", f"{text!r} is not an address/prefix, e.g. 192.168.56.10/24")
    if subnet is not None and vip is not None:
        if vip.version != subnet.version or vip.ip not in subnet or vip.ip in (
                subnet.network_address, subnet.broadcast_address):
            problems.add("vip", f"{vip.ip} is not a host address of subnet {subnet}; pick an "
                         "unused address inside it")
        elif vip.network.prefixlen != subnet.prefixlen:
            problems.add("vip", f"/{vip.network.prefixlen} is not the subnet's prefix; write "
                         f"{vip.ip}/{subnet.prefixlen}")
    vrid = s.int_("virtualRouterID", 51, 1, 255) or 51
    auth = s.str_("authPass")
    if auth is not None and (not auth or len(auth.encode()) > MAX_AUTH_PASS
                             or UNSAFE_CHARS.search(auth)):
        problems.add("authPass", "must be 1 to 8 characters without whitespace, quotes, braces, "
                     "'#', '!' or '\\' (keepalived PASS authentication)")
    advert: float | None = None
    if s.has("advertInterval"):
        value = s.raw("advertInterval")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.add("advertInterval", f"must be a positive number of seconds such as 0.05, "
                         f"got {value!r}")
        else:
            advert = float(value)
    seconds = s.int_("advertIntervalSeconds", None, 1, 255)
    if advert is not None and seconds is not None:
        problems.add("advertInterval", "is set together with advertIntervalSeconds; keep one "
                     "(advertInterval: VRRPv3, advertIntervalSeconds: VRRPv2 with authPass)")
    if seconds is not None and auth is None:
        problems.add("authPass", "is required with advertIntervalSeconds (VRRPv2); set a "
                     "password of 1 to 8 characters")
    unicast = s.bool_("unicast", False)
    port = s.int_("apiServerPort", DEFAULT_API_PORT, 1, 65535) or DEFAULT_API_PORT
    if len(problems.items) != before or subnet is None or vip is None:
        return None
    return Network(subnet=subnet, vip=vip, virtual_router_id=vrid, auth_pass=auth,
                   advert_interval=advert, advert_interval_seconds=seconds, unicast=unicast,
                   api_server_port=port)


def _node(
    problems: Problems, raw: Any, kind: NodeKind, network: Network | None,
    taken_names: dict[str, str], taken_addresses: dict[IPAddress, str], where: str,
) -> Node | None:
    s = Section(raw, problems,
                CONTROLLER_FIELDS if kind is NodeKind.CONTROLLER else WORKER_FIELDS)
    before = len(problems.items)
    name = s.str_("name")
    if name is None:
        problems.add("name", "is required; give the node a short name such as ctrl-1")
    elif not NAME_RE.match(name):
        problems.add("name", f"{name!r} must be a DNS label of at most 32 characters (a-z, 0-9, "
                     "'-', not at either end)")
    elif name in taken_names:
        problems.add("name", f"{name!r} is also {taken_names[name]}'s name; names must be unique")
    else:
        taken_names[name] = where
    address: IPAddress | None = None
    text = s.raw("address")
    if text is None:
        problems.add("address", "is required; give the node's address in the lab subnet")
    else:
        try:
            address = ipaddress.ip_address(str(text).strip())
        except ValueError:
            problems.add("address", f"{text!r} is not an IP address")
    if address is not None and network is not None:
        subnet = network.subnet
        if address.version != subnet.version or address not in subnet or address in (
                subnet.network_address, subnet.broadcast_address):
            problems.add("address", f"{address} is not a host address of subnet {subnet}")
        elif address in taken_addresses:
            problems.add("address", f"{address} is already {taken_addresses[address]}'s; every "
                         "node needs its own address, different from the VIP")
        else:
            taken_addresses[address] = where
    role: Role | None = None
    priority: int | None = None
    if kind is NodeKind.CONTROLLER:
        text = s.str_("role", Role.CONTROLLER.value) or Role.CONTROLLER.value
        try:
            role = Role(text)
        except ValueError:
            problems.add("role", f"{text!r} is not a controller role; use controller or "
                         "controller+worker (list workers under workers)")
        priority = s.int_("priority", None, 1, 254,
                          "; VRRP priorities are 1-254 (255 is the address owner's)")
    if len(problems.items) != before or name is None or address is None:
        return None
    return Node(name=name, address=address, kind=kind, role=role, priority=priority)


def _vagrant(problems: Problems, raw: Any) -> VagrantSettings:
    s = Section(raw, problems, VAGRANT_FIELDS)
    d = VagrantSettings()
    box = s.str_("box", d.box) or d.box
    if not BOX_RE.match(box):
        problems.add("box", f"{box!r} is not a Vagrant box name such as debian/bookworm64")
    version = s.str_("k0sVersion", d.k0s_version) or d.k0s_version
    if not K0S_VERSION_RE.match(version):
        problems.add("k0sVersion", f"{version!r} is not a k0s release such as v1.32.2+k0s.0")
    return VagrantSettings(
        box=box, k0s_version=version,
        cpus=s.int_("cpus", d.cpus, 1, 64) or d.cpus,
        controller_memory=s.int_("controllerMemory", d.controller_memory, 1024, 65536,
                                 " (MiB; a k0s controller needs at least 1024)")
        or d.controller_memory,
        worker_memory=s.int_("workerMemory", d.worker_memory, 512, 65536, " (MiB)")
        or d.worker_memory,
    )
