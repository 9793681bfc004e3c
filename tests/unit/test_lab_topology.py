"""The lab topology file and the per-node ipvslb configs generated from it (issue 8).

Every generated config is checked with ipvslb's own validation (the same code `ipvslb up`
runs), and the mode ipvslb would choose for it is asserted.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipvslb.config import model as c
from ipvslb.config.formats import config_from_document
from ipvslb.config.mode import Mode, decide
from ipvslb.errors import ConfigError, UserError
from ipvslb.lab import gen
from ipvslb.lab.topology import (
    DEFAULT_TOPOLOGY,
    K0S_ADMIN_KUBECONFIG,
    LabMode,
    NodeKind,
    Topology,
    node_config,
    render_lab,
    render_node,
)

ROOT = Path(__file__).resolve().parents[2]
# tests/ is a package at the project root; make it importable however pytest was started.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.support import keepalived_check  # noqa: E402


def default_doc() -> dict[str, Any]:
    doc = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    assert isinstance(doc, dict)
    return doc


def problems_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Topology.from_document(doc)
    return info.value.problems


@pytest.fixture(scope="module")
def lab() -> Topology:
    return Topology.load(DEFAULT_TOPOLOGY)


def test_the_shipped_topology_is_the_documented_lab(lab: Topology) -> None:
    # the packaged default is the documented example itself (a symlink), not a copy
    assert DEFAULT_TOPOLOGY.resolve() == (ROOT / "examples" / "lab-topology.yaml").resolve()
    assert lab.mode is LabMode.VIRTUAL_SERVERS
    assert lab.network.subnet == ipaddress.ip_network("192.168.56.0/24")
    assert str(lab.network.vip) == "192.168.56.10/24"
    assert [n.name for n in lab.controllers] == ["ctrl-1", "ctrl-2", "ctrl-3"]
    assert [n.name for n in lab.workers] == ["worker-1", "worker-2", "worker-3"]
    assert all(n.kind is NodeKind.CONTROLLER and n.role is c.Role.CONTROLLER
               for n in lab.controllers)
    assert lab.vagrant.box == "debian/bookworm64"


def test_every_controller_gets_a_valid_virtual_servers_config(lab: Topology) -> None:
    addresses = [n.address for n in lab.controllers]
    for node in lab.controllers:
        config = config_from_document(node_config(lab, node.name))
        assert config.warnings == ()
        assert decide(config)[0] is Mode.VIRTUAL_SERVERS
        inst = config.vrrp_instances[0]
        assert inst.virtual_ips == (lab.network.vip,)
        assert inst.interface == "eth1" and inst.virtual_router_id == 51
        assert inst.unicast_peers == () and inst.unicast_source_ip is None
        assert [vs.ip_address for vs in config.virtual_servers] == [lab.network.vip.ip]
        assert config.endpoints.source is c.EndpointSourceKind.STATIC
        assert [ip for ip, _ in config.endpoints.static] == addresses
        assert {port for _, port in config.endpoints.static} == {6443}


def test_controller_worker_variant_falls_back_to_userspace(lab: Topology) -> None:
    variant = lab.with_role("controller+worker")
    for node in variant.controllers:
        config = config_from_document(node_config(variant, node.name))
        assert config.node.role is c.Role.CONTROLLER_WORKER
        # The virtual server is still configured: ipvslb itself refuses IPVS DR there.
        assert config.virtual_servers
        mode, why = decide(config)
        assert mode is Mode.USERSPACE and "controller+worker" in why


def test_userspace_mode_has_no_virtual_servers(lab: Topology) -> None:
    userspace = lab.with_mode("userspace")
    for node in userspace.controllers:
        config = config_from_document(node_config(userspace, node.name))
        assert config.virtual_servers == ()
        assert decide(config)[0] is Mode.USERSPACE


def test_kubernetes_endpoints_use_a_kubeconfig(lab: Topology) -> None:
    config = config_from_document(node_config(lab, "ctrl-2", endpoints="kubernetes"))
    assert config.endpoints.source is c.EndpointSourceKind.KUBERNETES
    assert config.endpoints.static == ()
    assert config.node.kubeconfig == K0S_ADMIN_KUBECONFIG
    custom = node_config(lab, "ctrl-2", endpoints="kubernetes", kubeconfig="/etc/k.conf")
    assert config_from_document(custom).node.kubeconfig == "/etc/k.conf"


def test_unicast_peers_are_the_other_controllers() -> None:
    doc = default_doc()
    doc["network"]["unicast"] = True
    lab = Topology.from_document(doc)
    for node in lab.controllers:
        inst = config_from_document(node_config(lab, node.name)).vrrp_instances[0]
        assert inst.unicast_source_ip == node.address
        assert set(inst.unicast_peers) == {n.address for n in lab.controllers} - {node.address}


def test_vrrp_v2_uses_the_password_and_v3_does_not() -> None:
    doc = default_doc()
    lab = Topology.from_document(doc)
    v3 = node_config(lab, "ctrl-1")["controlPlaneLoadBalancing"]["keepalived"]
    assert "authPass" not in v3["vrrpInstances"][0]  # VRRPv3 would ignore it (and warn)
    doc["network"]["advertIntervalSeconds"] = 1
    v2 = config_from_document(node_config(Topology.from_document(doc), "ctrl-1"))
    inst = v2.vrrp_instances[0]
    assert (inst.vrrp_version, inst.advert_interval, inst.auth_pass) == (2, 1.0, "ipvslab")
    doc["network"].pop("advertIntervalSeconds")
    doc["network"]["advertInterval"] = 0.1
    inst = config_from_document(node_config(Topology.from_document(doc), "ctrl-1")) \
        .vrrp_instances[0]
    assert (inst.vrrp_version, inst.advert_interval) == (3, 0.1)


def test_priority_and_node_settings_pass_through() -> None:
    doc = default_doc()
    doc["controllers"][0]["priority"] = 200
    lab = Topology.from_document(doc)
    first = config_from_document(node_config(lab, "ctrl-1", interface="enp0s8",
                                             run_dir="/run/lab-ctrl-1",
                                             keepalived_path="/opt/ka/keepalived"))
    assert first.node.priority == 200
    assert first.vrrp_instances[0].interface == "enp0s8"
    assert first.node.run_dir == "/run/lab-ctrl-1"
    assert first.node.keepalived_path == "/opt/ka/keepalived"
    assert config_from_document(node_config(lab, "ctrl-2")).node.priority is None


def test_rebased_lab_keeps_host_parts_and_stays_valid(lab: Topology) -> None:
    moved = lab.rebased("10.77.0.0/24")
    assert str(moved.network.vip) == "10.77.0.10/24"
    assert [str(n.address) for n in moved.nodes] == [
        "10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.21", "10.77.0.22", "10.77.0.23"]
    wider = lab.rebased("10.78.0.0/16")
    assert str(wider.network.vip) == "10.78.0.10/16"
    for topo in (moved, wider):
        for node in topo.controllers:
            config = config_from_document(node_config(topo, node.name, interface="veth0"))
            assert config.vrrp_instances[0].virtual_ips == (topo.network.vip,)
            assert [ip for ip, _ in config.endpoints.static] == [n.address for n in
                                                                  topo.controllers]
    assert lab.network.subnet == ipaddress.ip_network("192.168.56.0/24")  # unchanged


@pytest.mark.parametrize("subnet, message", [
    ("10.77.0.0/28", "too small for the lab"),
    ("fd00::/64", "same family"),
    ("10.77.0.1/24", "not a subnet"),
])
def test_rebase_refuses_what_cannot_hold_the_lab(lab: Topology, subnet: str,
                                                  message: str) -> None:
    with pytest.raises(UserError, match=message):
        lab.rebased(subnet)


def test_counts_select_the_first_nodes(lab: Topology) -> None:
    small = lab.select(controllers=2, workers=0)
    assert [n.name for n in small.nodes] == ["ctrl-1", "ctrl-2"]
    config = config_from_document(node_config(small, "ctrl-2"))
    assert [str(ip) for ip, _ in config.endpoints.static] == ["192.168.56.11", "192.168.56.12"]
    with pytest.raises(UserError, match="no node 'ctrl-3'"):
        node_config(small, "ctrl-3")
    for kwargs in ({"controllers": 0}, {"controllers": 4}, {"workers": 4}, {"workers": -1}):
        with pytest.raises(UserError, match="out of range"):
            lab.select(**kwargs)


def test_workers_and_bad_parameters_are_refused(lab: Topology) -> None:
    with pytest.raises(UserError, match="worker-1 is a worker"):
        node_config(lab, "worker-1")
    with pytest.raises(UserError, match="interface 'eth 1'"):
        node_config(lab, "ctrl-1", interface="eth 1")
    with pytest.raises(UserError, match="not an endpoint source"):
        node_config(lab, "ctrl-1", endpoints="dns")
    with pytest.raises(UserError, match="not a controller role"):
        lab.with_role("worker")
    with pytest.raises(UserError, match="not a lab mode"):
        lab.with_mode("ipvs")


def _edit(path: list[Any], value: Any) -> dict[str, Any]:
    doc = default_doc()
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, expected", [
    (["mode"], "ipvs", "mode: 'ipvs' is not a lab mode"),
    (["name"], "My Lab", "name: 'My Lab' must be a short DNS label"),
    (["colour"], "blue", "colour: unknown field"),
    (["network"], KeyError, "network: is required"),
    (["network", "subnet"], "192.168.56.1/24", "network.subnet: '192.168.56.1/24' is not a "
                                               "subnet"),
    (["network", "subnet"], KeyError, "network.subnet: is required"),
    (["network", "vip"], "192.168.56.10", "network.vip: '192.168.56.10' has no prefix"),
    (["network", "vip"], "10.0.0.100/24", "network.vip: 10.0.0.100 is not a host address of "
                                          "subnet 192.168.56.0/24"),
    (["network", "vip"], "192.168.56.10/32", "network.vip: /32 is not the subnet's prefix; "
                                              "write 192.168.56.10/24"),
    (["network", "vip"], "192.168.56.11/24", "controllers[0].address: 192.168.56.11 is already "
                                             "network.vip's"),
    (["network", "virtualRouterID"], 256, "network.virtualRouterID: must be from 1 to 255"),
    (["network", "authPass"], "toolongpass", "network.authPass: must be 1 to 8 characters"),
    (["network", "authPass"], "a b", "network.authPass: must be 1 to 8 characters"),
    (["network", "advertInterval"], -1, "network.advertInterval: must be a positive number"),
    (["network", "advertInterval"], 0.001, "the config generated for ctrl-1 is invalid: "
                                           "controlPlaneLoadBalancing.keepalived.vrrpInstances[0]"
                                           ".advertInterval"),
    (["network", "unicast"], "yes", "network.unicast: must be true or false"),
    (["network", "apiServerPort"], 6444, "the config generated for ctrl-1 is invalid: "
                                         "controlPlaneLoadBalancing.keepalived."
                                         "userSpaceProxyBindPort: 6444 is the apiserver port"),
    (["controllers"], [], "controllers: is empty"),
    (["controllers", 1, "name"], "ctrl-1", "controllers[1].name: 'ctrl-1' is also "
                                           "controllers[0]'s name"),
    (["controllers", 1, "name"], "Ctrl_2", "controllers[1].name: 'Ctrl_2' must be a DNS label"),
    (["controllers", 1, "name"], KeyError, "controllers[1].name: is required"),
    (["controllers", 1, "address"], KeyError, "controllers[1].address: is required"),
    (["controllers", 1, "address"], "192.168.57.12", "controllers[1].address: 192.168.57.12 is "
                                                     "not a host address of subnet"),
    (["controllers", 1, "address"], "192.168.56.255", "controllers[1].address: 192.168.56.255 "
                                                      "is not a host address of subnet"),
    (["controllers", 1, "address"], "ctrl-2.lab", "controllers[1].address: 'ctrl-2.lab' is not "
                                                  "an IP address"),
    (["controllers", 1, "role"], "worker", "controllers[1].role: 'worker' is not a controller "
                                           "role"),
    (["controllers", 1, "priority"], 255, "controllers[1].priority: must be from 1 to 254"),
    (["controllers", 1, "port"], 22, "controllers[1].port: unknown field"),
    (["workers", 0, "role"], "worker", "workers[0].role: unknown field"),
    (["workers", 2, "address"], "192.168.56.12", "workers[2].address: 192.168.56.12 is already "
                                                 "controllers[1]'s"),
    (["workers", 2, "name"], "ctrl-3", "workers[2].name: 'ctrl-3' is also controllers[2]'s"),
    (["vagrant", "k0sVersion"], "1.32", "vagrant.k0sVersion: '1.32' is not a k0s release"),
    (["vagrant", "box"], "bookworm", "vagrant.box: 'bookworm' is not a Vagrant box name"),
    (["vagrant", "controllerMemory"], 512, "vagrant.controllerMemory: must be from 1024"),
])
def test_bad_topologies_name_the_field_and_the_fix(path: list[Any], value: Any,
                                                   expected: str) -> None:
    problems = problems_of(_edit(path, value))
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_equal_priorities_are_refused() -> None:
    doc = default_doc()
    doc["controllers"][0]["priority"] = 100
    doc["controllers"][2]["priority"] = 100
    assert problems_of(doc) == [
        "controllers[2].priority: 100 is also ctrl-1's; give every controller its own priority "
        "(equal priorities race for the VIP on failover)"]


def test_vrrp_v2_needs_a_password_and_one_interval() -> None:
    doc = _edit(["network", "authPass"], KeyError)
    doc["network"]["advertIntervalSeconds"] = 1
    assert problems_of(doc) == ["network.authPass: is required with advertIntervalSeconds "
                                "(VRRPv2); set a password of 1 to 8 characters"]
    doc = default_doc()
    doc["network"].update(advertIntervalSeconds=1, advertInterval=0.1)
    assert problems_of(doc)[0].startswith("network.advertInterval: is set together with")


def test_all_problems_are_reported_together() -> None:
    doc = default_doc()
    doc["mode"] = "ipvs"
    doc["controllers"][0]["address"] = "nowhere"
    doc["workers"][0]["name"] = "W1"
    problems = problems_of(doc)
    assert len(problems) == 3, problems


@pytest.mark.parametrize("doc", [None, [], "lab", 3])
def test_a_non_mapping_is_one_clear_error(doc: Any) -> None:
    assert problems_of(doc) == ["the topology must be a YAML mapping with network, controllers "
                                "and workers; see examples/lab-topology.yaml"]


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such topology file"):
        Topology.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line 2"):
        Topology.load(bad)
    wrong = tmp_path / "wrong.yaml"
    doc = default_doc()
    doc["mode"] = "ipvs"
    wrong.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        Topology.load(wrong)
    assert info.value.problems == [f"{wrong}: mode: 'ipvs' is not a lab mode; use "
                                   "virtual-servers or userspace"]


def test_render_lab_writes_private_files_that_round_trip(lab: Topology, tmp_path: Path) -> None:
    written = render_lab(lab, tmp_path / "out", endpoints="kubernetes")
    assert sorted(written) == ["ctrl-1", "ctrl-2", "ctrl-3"]
    for name, path in written.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # authPass may be inside
        text = path.read_text()
        assert text.startswith(f"# ipvslb config for {name} of lab 'ipvslb-lab'")
        assert text == render_node(lab, name, endpoints="kubernetes")
        assert yaml.safe_load(text) == node_config(lab, name, endpoints="kubernetes")


def test_gen_writes_what_ipvslb_validate_accepts(tmp_path: Path) -> None:
    out = tmp_path / "ctrl-2.yaml"
    assert gen.main(["render", "--node", "ctrl-2", "--role", "controller+worker",
                     "--endpoints", "kubernetes", "--interface", "enp0s8", "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    proc = subprocess.run([sys.executable, "-m", "ipvslb", "validate", "-c", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "mode userspace, endpoints from kubernetes" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["render", "--node", "worker-1"], "error: worker-1 is a worker; ipvslb runs on controllers "
                                       "only\n"),
    (["render", "--node", "ctrl-1", "--controllers", "9"], "error: controllers count 9 is out "
                                                           "of range"),
    (["check", "--topology", "/nonexistent.yaml"], "error: /nonexistent.yaml: no such topology "
                                                   "file"),
])
def test_gen_reports_bad_input_in_one_line_without_traceback(args: list[str],
                                                              message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "ipvslb.lab.gen", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message)
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_gen_check_summarises(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["check", "--workers", "1", "--mode", "userspace"]) == 0
    assert capsys.readouterr().out == (
        f"ok: {DEFAULT_TOPOLOGY}: lab 'ipvslb-lab', mode userspace, VIP 192.168.56.10/24, "
        "3 controller(s), 1 worker(s)\n")


def test_original_document_is_not_modified() -> None:
    doc = default_doc()
    before = copy.deepcopy(doc)
    lab = Topology.from_document(doc)
    lab.rebased("10.9.0.0/24").with_role("controller+worker").select(2, 1)
    assert doc == before


KEEPALIVED_SKIP = keepalived_check.unavailable_reason()


@pytest.mark.skipif(KEEPALIVED_SKIP is not None, reason=KEEPALIVED_SKIP or "")
@pytest.mark.parametrize("variant", ["default", "unicast", "userspace", "controller+worker",
                                     "vrrp2"])
def test_real_keepalived_accepts_what_ipvslb_renders_for_the_lab(tmp_path: Path,
                                                                  variant: str) -> None:
    """`ipvslb render` of each generated config, then the real `keepalived -t` on it, inside a
    throwaway namespace that has the lab NIC (eth1)."""
    doc = default_doc()
    if variant == "unicast":
        doc["network"]["unicast"] = True
    elif variant == "vrrp2":
        doc["network"]["advertIntervalSeconds"] = 1
    lab = Topology.from_document(doc)
    if variant == "userspace":
        lab = lab.with_mode("userspace")
    elif variant == "controller+worker":
        lab = lab.with_role("controller+worker")
    for name, path in render_lab(lab, tmp_path / "configs").items():
        out = tmp_path / "rendered" / name
        proc = subprocess.run(
            [sys.executable, "-m", "ipvslb", "render", "-c", str(path), "--priority", "100",
             "--output-dir", str(out)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        files = {p.name: p.read_text() for p in out.iterdir()}
        main = files.pop("keepalived.conf")
        status, output = keepalived_check.keepalived_config_test(
            main, ["eth1"], addresses={"eth1": [f"{lab.node(name).address}/24"]}, files=files)
        assert status == 0, output
