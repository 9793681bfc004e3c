"""Every validation rule and default of the configuration (issue 2)."""

from __future__ import annotations

import copy
import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipvslb.config import model as c
from ipvslb.config.formats import config_from_document, load
from ipvslb.config.mode import Mode, decide
from ipvslb.config.validate import parse_duration
from ipvslb.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[2]
KA = "controlPlaneLoadBalancing.keepalived"


def base() -> dict[str, Any]:
    return {
        "controlPlaneLoadBalancing": {
            "keepalived": {
                "vrrpInstances": [{"virtualIPs": ["10.0.0.100/24"], "authPass": "secret"}],
                "virtualServers": [{"ipAddress": "10.0.0.100"}],
            }
        }
    }


def problems_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_document(doc)
    return info.value.problems


def with_instance(**fields: Any) -> dict[str, Any]:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"][0].update(fields)
    return doc


def test_defaults() -> None:
    cfg = config_from_document(base())
    inst = cfg.vrrp_instances[0]
    assert inst.virtual_router_id == 51
    assert inst.vrrp_version == 3 and inst.advert_interval == c.DEFAULT_ADVERT_INTERVAL
    assert inst.interface is None and inst.address_label == 10000
    vs = cfg.virtual_servers[0]
    assert (vs.lb_algo, vs.lb_kind, vs.persistence_timeout) == ("rr", "DR", 360)
    assert vs.delay_loop == c.DEFAULT_DELAY_LOOP
    assert cfg.user_space_proxy_bind_port == 6444
    assert cfg.node.api_server_port == 6443 and cfg.node.role is c.Role.CONTROLLER
    assert cfg.node.run_dir == "/run/ipvslb" and cfg.node.dummy_interface == "dummyvip0"
    assert cfg.endpoints.source is c.EndpointSourceKind.KUBERNETES
    # authPass is kept but VRRPv3 does not use it: that is said as a warning
    assert any("authPass: is not used" in w for w in cfg.warnings)


def test_vrid_numbering_follows_index() -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"] = [
        {"virtualIPs": [f"10.0.{i}.100/24"]} for i in range(3)
    ]
    cfg = config_from_document(doc)
    assert [i.virtual_router_id for i in cfg.vrrp_instances] == [51, 52, 53]


def test_k0s_advert_seconds_means_vrrpv2_and_requires_authpass() -> None:
    cfg = config_from_document(with_instance(advertIntervalSeconds=2))
    assert cfg.vrrp_instances[0].vrrp_version == 2
    assert cfg.vrrp_instances[0].advert_interval == 2.0
    doc = with_instance(advertIntervalSeconds=1)
    del doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"][0]["authPass"]
    assert problems_of(doc) == [
        f"{KA}.vrrpInstances[0].authPass: is required with advertIntervalSeconds (VRRPv2); set a "
        "password of 1 to 8 characters, the same on every node"
    ]


def test_fractional_advert_interval() -> None:
    assert config_from_document(with_instance(advertInterval="100ms")).vrrp_instances[
        0].advert_interval == 0.1
    assert config_from_document(with_instance(advertInterval=0.5)).vrrp_instances[
        0].advert_interval == 0.5


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"virtualIPs": [""]}, "virtualIPs[0]: is empty; give the VIP as address/prefix"),
        ({"virtualIPs": []}, "virtualIPs: is required"),
        ({"virtualIPs": ["192.168.1.1"]}, "virtualIPs[0]: '192.168.1.1' has no prefix length"),
        ({"virtualIPs": ["300.1.1.1/24"]}, "virtualIPs[0]: '300.1.1.1/24' is not an address"),
        ({"virtualIPs": ["127.0.0.5/8"]}, "cannot be a VIP"),
        ({"virtualIPs": ["10.0.0.100/24", "fd00::100/64"]}, "virtualIPs: mixes IPv4 and IPv6"),
        ({"virtualIPs": ["10.0.0.100/24", "10.0.0.100/24"]}, "lists the same address twice"),
        ({"virtualIPs": "10.0.0.100/24"}, "virtualIPs: must be a list, got a string"),
        ({"authPass": "123456789"}, "authPass: must be at most 8 bytes (keepalived PASS "
         "authentication)"),
        ({"authPass": "a b"}, "authPass: may hold only printable ASCII"),
        ({"authPass": "pa}ss"}, "authPass: may hold only printable ASCII"),
        ({"authPass": "pa#ss"}, "authPass: may hold only printable ASCII"),
        ({"authPass": "p\n"}, "authPass: 'p\\n' has control characters"),
        ({"authPass": ""}, "authPass: is empty"),
        ({"authPass": 12345}, "authPass: must be a string, got a number"),
        ({"virtualRouterID": 0}, "virtualRouterID: must be from 1 to 255, got 0"),
        ({"virtualRouterID": 256}, "virtualRouterID: must be from 1 to 255, got 256"),
        ({"virtualRouterID": "51"}, "virtualRouterID: must be a whole number from 1 to 255"),
        ({"advertIntervalSeconds": 0}, "advertIntervalSeconds: must be from 1 to 255, got 0"),
        ({"advertIntervalSeconds": -1}, "advertIntervalSeconds: must be from 1 to 255, got -1"),
        ({"advertInterval": 0}, "advertInterval: must be from 0.01 to 40.95 seconds"),
        ({"advertInterval": "-1s"}, "advertInterval: must be from 0.01 to 40.95 seconds"),
        ({"advertInterval": 0.001}, "advertInterval: must be from 0.01 to 40.95 seconds"),
        ({"advertInterval": 0.1, "advertIntervalSeconds": 1}, "advertInterval: set together"),
        ({"interface": "eth 0"}, "interface: 'eth 0' may hold only ASCII letters"),
        ({"interface": "averyveryverylongname"}, "interface: 'averyveryverylongname' must be at "
         "most 15 bytes"),
        ({"interface": "a/b"}, "interface: 'a/b' may hold only ASCII letters"),
        ({"interface": ".."}, "interface: '..' must not be"),
        ({"interface": "eth0{"}, "may hold only ASCII letters"),
        ({"unicastPeers": ["10.0.0.2"]}, "unicastSourceIP: is required with unicastPeers"),
        ({"unicastSourceIP": "10.0.0.1"}, "unicastPeers: is empty while unicastSourceIP is set"),
        ({"unicastSourceIP": "10.0.0.1", "unicastPeers": ["10.0.0.1"]},
         "unicastPeers[0]: 10.0.0.1 is this node's unicastSourceIP"),
        ({"unicastSourceIP": "node1", "unicastPeers": ["10.0.0.2"]},
         "unicastSourceIP: 'node1' is not an IP address"),
        ({"unicastSourceIP": "10.0.0.1", "unicastPeers": ["x"]},
         "unicastPeers[0]: 'x' is not an IP address"),
        ({"unicastSourceIP": "10.0.0.1", "unicastPeers": ["fd00::2"]},
         "unicastPeers[0]: fd00::2 is IPv6 but the VIPs are IPv4"),
        ({"unicastSourceIP": "10.0.0.1", "unicastPeers": ["10.0.0.2", "10.0.0.2"]},
         "unicastPeers[1]: 10.0.0.2 is listed twice"),
        ({"addressLabel": 5}, "addressLabel: applies only to IPv6 VIPs"),
        ({"virtualIPS": ["10.0.0.1/24"]}, "virtualIPS: unknown field; did you mean 'virtualIPs'?"),
    ],
)
def test_instance_rules(fields: dict[str, Any], expected: str) -> None:
    found = problems_of(with_instance(**fields))
    assert any(expected in p for p in found), found
    assert all(p.startswith(KA) for p in found), found


def test_ipv6_address_label_bounds() -> None:
    doc = with_instance(virtualIPs=["fd00::100/64"], addressLabel=0xFFFFFFFF)
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"] = []
    assert any("addressLabel: must be from 0 to 4294967294" in p for p in problems_of(doc))
    doc = with_instance(virtualIPs=["fd00::100/64"], addressLabel=7)
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"] = [{"ipAddress": "fd00::100"}]
    inst = config_from_document(doc).vrrp_instances[0]
    assert inst.address_label == 7 and inst.family == 6


def test_mac_interface_is_kept_for_resolution_on_the_node() -> None:
    inst = config_from_document(with_instance(interface="AA-BB-CC-DD-EE-0F")).vrrp_instances[0]
    assert inst.interface is None and inst.interface_mac == "aa:bb:cc:dd:ee:0f"


def test_duplicate_vrids_and_vips_across_instances() -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"] = [
        {"virtualIPs": ["10.0.0.100/24"], "virtualRouterID": 7},
        {"virtualIPs": ["10.0.0.100/24"], "virtualRouterID": 7},
    ]
    found = problems_of(doc)
    assert any("vrrpInstances[1].virtualRouterID: 7 is already used by vrrpInstances[0]" in p
               for p in found)
    assert any("vrrpInstances[1].virtualIPs: 10.0.0.100 is also a VIP of vrrpInstances[0]" in p
               for p in found)


def test_automatic_vrid_past_255() -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"] = [
        {"virtualIPs": [f"10.{i // 250}.{i % 250}.1/32"], **({"virtualRouterID": i + 1}
                                                           if i < 204 else {})}
        for i in range(206)
    ]
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"] = []
    found = problems_of(doc)
    assert any("vrrpInstances[205].virtualRouterID: the automatic value 256 is past 255" in p
               for p in found), found


def test_too_many_instances() -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["vrrpInstances"] = [
        {"virtualIPs": ["10.0.0.1/24"]}] * 256
    assert any("has 256 entries; at most 255" in p for p in problems_of(doc))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"ipAddress": "10.0.0.9"}, "ipAddress: 10.0.0.9 is not one of the VIPs (10.0.0.100)"),
        ({"ipAddress": "10.0.0.100/24"}, "ipAddress: '10.0.0.100/24' is not an IP address"),
        ({"ipAddress": None}, "ipAddress: is required"),
        ({"delayLoop": "0s"}, "delayLoop: must be a duration from 1s to 1h"),
        ({"delayLoop": "-1m"}, "delayLoop: must be a duration from 1s to 1h"),
        ({"delayLoop": "soon"}, "delayLoop: must be a duration from 1s to 1h"),
        # issue 17: extremes a validator must bound (busy loops, never-run checks)
        ({"delayLoop": "1ns"}, "delayLoop: must be a duration from 1s to 1h"),
        ({"delayLoop": "1000000h"}, "delayLoop: must be a duration from 1s to 1h"),
        ({"delayLoop": float("nan")}, "delayLoop: must be a duration from 1s to 1h"),
        ({"delayLoop": float("inf")}, "delayLoop: must be a duration from 1s to 1h"),
        ({"delayLoop": "9" * 400 + "s"}, "delayLoop: must be a duration from 1s to 1h"),
        ({"lbAlgo": "random"}, "lbAlgo: 'random' is not a scheduler; use one of rr, wrr"),
        ({"lbKind": "dr"}, "lbKind: 'dr' is not a forwarding method; use one of NAT, DR, TUN"),
        ({"persistenceTimeoutSeconds": 0}, "persistenceTimeoutSeconds: must be from 1 to 2678400"),
        ({"persistenceTimeoutSeconds": 2678401},
         "persistenceTimeoutSeconds: must be from 1 to 2678400, got 2678401"),
        ({"weight": 1}, "weight: unknown field"),
    ],
)
def test_virtual_server_rules(fields: dict[str, Any], expected: str) -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"][0].update(fields)
    found = problems_of(doc)
    assert any(f"{KA}.virtualServers[0].{expected}" in p for p in found), found


def test_virtual_server_duplicates_and_durations() -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"] = [
        {"ipAddress": "10.0.0.100", "delayLoop": "1m30s"}, {"ipAddress": "10.0.0.100"}]
    assert any("virtualServers[1].ipAddress: 10.0.0.100 has a virtual server already" in p
               for p in problems_of(doc))
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"].pop()
    assert config_from_document(doc).virtual_servers[0].delay_loop == 90.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("1.5h", 5400.0), (3, 3.0), ("0", 0.0),
     ("", None), ("1x", None), ("m1", None), (True, None), ("1m 2s", None)],
)
def test_parse_duration(value: Any, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("section", "fields", "expected"),
    [
        ("node", {"role": "worker"}, "node.role: 'worker' is not a node role; use controller or "
         "controller+worker; ipvslb runs on control-plane nodes only"),
        ("node", {"apiServerPort": 70000}, "node.apiServerPort: must be from 1 to 65535"),
        ("node", {"runDir": "run"}, "node.runDir: 'run' must be an absolute path"),
        ("node", {"keepalivedPath": "/usr/sbin/keep alived"}, "node.keepalivedPath:"),
        ("node", {"dummyInterface": "dummy vip"}, "node.dummyInterface: 'dummy vip' may hold only"),
        ("node", {"priority": 255}, "node.priority: must be from 1 to 254, got 255"),
        ("node", {"realServerCheck": "icmp"}, "node.realServerCheck: 'icmp' is not a check"),
        ("node", {"apiserverHealth": {"rise": 0}}, "node.apiserverHealth.rise: must be from 1"),
        ("node", {"apiserverHealth": {"interval": "0s"}}, "node.apiserverHealth.interval: must be"),
        ("node", {"apiserverHealth": {"interval": "1ns"}},
         "node.apiserverHealth.interval: must be a duration from 100ms to 10m"),
        ("node", {"apiserverHealth": {"interval": float("nan")}},
         "node.apiserverHealth.interval: must be a duration from 100ms to 10m"),
        ("node", {"apiserverHealth": {"timeout": float("inf")}},
         "node.apiserverHealth.timeout: must be a duration from 100ms to 10m"),
        ("node", {"lvsSyncDaemon": "yes"}, "node.lvsSyncDaemon: must be true or false"),
        ("endpoints", {"source": "dns"}, "endpoints.source: 'dns' is not an endpoint source"),
        ("endpoints", {"source": "static"}, "endpoints.static: is required with source: static"),
        ("endpoints", {"source": "static", "static": ["10.0.0.1:99999"]},
         "endpoints.static[0]: '10.0.0.1:99999' has a bad port"),
        ("endpoints", {"source": "static", "static": ["host"]},
         "endpoints.static[0]: 'host' is not an apiserver address"),
        ("endpoints", {"static": ["10.0.0.1"]},
         "endpoints.static: is set but source is kubernetes"),
    ],
)
def test_node_and_endpoint_rules(section: str, fields: dict[str, Any], expected: str) -> None:
    doc = base()
    doc[section] = fields
    found = problems_of(doc)
    assert any(expected in p for p in found), found


def test_static_endpoints_parse_ports_and_ipv6() -> None:
    doc = base()
    doc["node"] = {"apiServerPort": 7443}
    del doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"]  # userspace: any port
    doc["endpoints"] = {"source": "static",
                        "static": ["10.0.0.1", "10.0.0.2:6443", "[fd00::3]:9443", "fd00::4"]}
    cfg = config_from_document(doc)
    assert [(str(a), p) for a, p in cfg.endpoints.static] == [
        ("10.0.0.1", 7443), ("10.0.0.2", 6443), ("fd00::3", 9443), ("fd00::4", 7443)]


def test_proxy_port_collides_with_apiserver_port() -> None:
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["userSpaceProxyBindPort"] = 6443
    assert any("userSpaceProxyBindPort: 6443 is the apiserver port" in p for p in problems_of(doc))


def test_native_top_level_and_switches() -> None:
    assert problems_of({"controlPlaneLoadBalancin": {}})[0].startswith(
        "controlPlaneLoadBalancin: unknown field; did you mean 'controlPlaneLoadBalancing'?")
    doc = base()
    doc["controlPlaneLoadBalancing"]["enabled"] = False
    assert "controlPlaneLoadBalancing.enabled: is false" in problems_of(doc)[0]
    doc = base()
    doc["controlPlaneLoadBalancing"]["type"] = "HAProxy"
    assert "controlPlaneLoadBalancing.type: 'HAProxy' is not supported" in problems_of(doc)[0]
    assert problems_of({})[0].startswith("controlPlaneLoadBalancing: is missing")
    assert problems_of([1, 2])[0].startswith("the file must hold a YAML mapping")


def test_all_problems_reported_together() -> None:
    doc = with_instance(authPass="waytoolongpassword", virtualRouterID=999, interface="a b")
    doc["node"] = {"role": "boss"}
    found = problems_of(doc)
    assert len(found) == 4, found


def test_modes() -> None:
    assert decide(config_from_document(base()))[0] is Mode.VIRTUAL_SERVERS
    doc = base()
    doc["node"] = {"role": "controller+worker"}
    mode, why = decide(config_from_document(doc))
    assert mode is Mode.USERSPACE and "hairpin" in why
    doc = base()
    doc["controlPlaneLoadBalancing"]["keepalived"]["virtualServers"] = []
    assert decide(config_from_document(doc))[0] is Mode.USERSPACE
    doc["controlPlaneLoadBalancing"]["keepalived"]["disableLoadBalancer"] = True
    assert decide(config_from_document(doc))[0] is Mode.VIP_ONLY


def test_k0s_clusterconfig_example() -> None:
    cfg = load(ROOT / "examples/k0s-clusterconfig.yaml")
    assert cfg.source_format is c.SourceFormat.K0S_CLUSTER_CONFIG
    assert cfg.vrrp_instances[0].virtual_ips == (ipaddress.ip_interface("192.168.122.100/24"),)
    assert cfg.virtual_servers[0].ip_address == ipaddress.ip_address("192.168.122.100")


def test_k0s_api_port_and_enabled_warning() -> None:
    doc = yaml.safe_load((ROOT / "examples/k0s-clusterconfig.yaml").read_text())
    doc["spec"]["api"]["port"] = 7443
    doc["spec"]["network"]["controlPlaneLoadBalancing"]["enabled"] = True
    cfg = config_from_document(doc)
    assert cfg.node.api_server_port == 7443
    assert any("k0s will run its own keepalived" in w for w in cfg.warnings)
    doc["spec"]["api"]["port"] = "x"
    assert problems_of(doc) == ["spec.api.port: must be a port from 1 to 65535, got 'x'"]


def test_k0sctl_seed_with_empty_vip_is_a_clear_error() -> None:
    """The seed document's k0sctl example has `virtualIPs: [""]`."""
    doc = yaml.safe_load((ROOT / "examples/k0sctl.yaml").read_text())
    assert config_from_document(doc).source_format is c.SourceFormat.K0SCTL_CLUSTER
    broken = copy.deepcopy(doc)
    cplb = broken["spec"]["k0s"]["config"]["spec"]["network"]["controlPlaneLoadBalancing"]
    cplb["keepalived"]["vrrpInstances"][0]["virtualIPs"] = [""]
    assert problems_of(broken) == [
        "spec.k0s.config.spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0]"
        ".virtualIPs[0]: is empty; give the VIP as address/prefix, e.g. 192.168.1.100/24 (the "
        "VIP with its subnet's prefix length)"
    ]


def test_k0s_file_without_cplb_section() -> None:
    doc = {"apiVersion": "k0s.k0sproject.io/v1beta1", "kind": "ClusterConfig", "spec": {}}
    assert problems_of(doc)[0].startswith(
        "spec.network.controlPlaneLoadBalancing: is missing")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipvslb", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_validate_ok_and_errors(tmp_path: Path) -> None:
    ok = run_cli("validate", "-c", str(ROOT / "examples/ipvslb.yaml"))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
    assert "mode virtual-servers" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_instance(authPass="123456789", virtualRouterID=0)))
    res = run_cli("validate", "-c", str(bad))
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"error: {KA}.vrrpInstances[0].virtualRouterID: must be from 1 to 255, got 0",
        f"error: {KA}.vrrpInstances[0].authPass: must be at most 8 bytes (keepalived PASS "
        "authentication)",
    ]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("content", ["a: [1, 2", "\t- x", "", "- just a list"])
def test_cli_never_tracebacks_on_bad_files(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    res = run_cli("validate", "-c", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="cannot read it"):
        load(tmp_path)


@pytest.mark.parametrize(("static", "expected"), [
    (["10.0.0.100"], "endpoints.static[0]: 10.0.0.100:6443 is a VIP, not an apiserver"),
    (["10.0.0.1", "10.0.0.2:6444"],
     "endpoints.static[1]: 10.0.0.2:6444 uses the userspace proxy's port 6444"),
])
def test_a_backend_that_loops_back_to_ipvslb_is_refused(static: list[str], expected: str) -> None:
    # issue 17: the proxy connected to itself until every file descriptor was gone
    doc = base()
    doc["endpoints"] = {"source": "static", "static": static}
    found = problems_of(doc)
    assert any(expected in p for p in found), found


def test_an_api_listed_backend_that_is_a_vip_is_dropped_once(caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    from ipvslb.agent import Agent
    from ipvslb.endpoints.source import Backend

    agent = Agent(config_from_document(base()))
    good, vip = Backend("10.0.0.1", 6443), Backend("10.0.0.100", 6443)
    assert agent._refused(vip) and agent._refused(vip) and not agent._refused(good)
    assert sum("ignored a backend" in r.getMessage() for r in caplog.records) == 1


def test_many_endpoints_are_checked_for_duplicates_in_linear_time() -> None:
    doc = base()
    addresses = [f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, 20001)]
    doc["endpoints"] = {"source": "static", "static": [*addresses, addresses[7]]}
    found = problems_of(doc)  # a list took 11 s here; a set takes milliseconds
    assert found == [f"endpoints.static[20000]: {addresses[7]!r} is listed twice; remove the "
                     "duplicate"]
