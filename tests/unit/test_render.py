"""What ipvslb renders for keepalived (issue 2): golden output and the real `keepalived -t`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import keepalived_conf as kc
from ipvslb.config.formats import config_from_document
from ipvslb.config.mode import decide
from ipvslb.endpoints.source import Backend
from ipvslb.keepalived.desired import CONF, NodeFacts, derive_priority, render_files, vs_file
from ipvslb.keepalived.vs_switch import on_state, point, read_state
from tests.support.keepalived_check import keepalived_config_test

BACKENDS = [Backend("10.77.0.13", 6443), Backend("10.77.0.11", 6443), Backend("10.77.0.12", 6443)]


def document(run_dir: str, instances: list[dict[str, Any]], servers: list[dict[str, Any]],
             **node: Any) -> dict[str, Any]:
    return {
        "node": {"runDir": run_dir, **node},
        "endpoints": {"source": "static", "static": ["10.77.0.11", "[fd00:77::11]:6443"]},
        "controlPlaneLoadBalancing": {"keepalived": {
            "vrrpInstances": instances, "virtualServers": servers}},
    }


def files_for(doc: dict[str, Any], priority: int = 150,
              backends: list[Backend] = BACKENDS) -> dict[str, str]:
    config = config_from_document(doc)
    mode, _ = decide(config)
    facts = NodeFacts(tuple(i.interface or "eth0" for i in config.vrrp_instances), priority,
                      "/usr/local/bin/ipvslb")
    return render_files(config, mode, facts, backends)


GOLDEN = """\
# Written by ipvslb; changes are overwritten. See `ipvslb render --help`.

global_defs {
    vrrp_garp_master_delay 1
    vrrp_garp_master_refresh 10
    vrrp_higher_prio_send_advert
    enable_script_security
    script_user root
}

track_file apiserver {
    file "/run/ipvslb/apiserver-health"
    weight 0
    init_file 1
}

vrrp_instance ipvslb-vip-0 {
    state BACKUP
    interface eth1
    virtual_router_id 51
    priority 150
    version 2
    advert_int 1
    nopreempt
    garp_master_delay 1
    garp_master_refresh 10
    authentication {
        auth_type PASS
        auth_pass k8svip
    }
    virtual_ipaddress {
        10.77.0.100/24 dev eth1
    }
    track_file {
        apiserver
    }
    notify "/usr/local/bin/ipvslb notify --run-dir /run/ipvslb"
}

include /run/ipvslb/vs-active-0.conf
"""

GOLDEN_VS = """\
# Written by ipvslb; changes are overwritten. See `ipvslb render --help`.

virtual_server 10.77.0.100 6443 {
    delay_loop 5
    lb_algo rr
    lb_kind DR
    persistence_timeout 360
    protocol TCP
    real_server 10.77.0.11 6443 {
        weight 1
        TCP_CHECK {
            connect_port 6443
            connect_timeout 3
            retry 1
            delay_before_retry 1
            warmup 0
        }
    }
    real_server 10.77.0.12 6443 {
        weight 1
        TCP_CHECK {
            connect_port 6443
            connect_timeout 3
            retry 1
            delay_before_retry 1
            warmup 0
        }
    }
    real_server 10.77.0.13 6443 {
        weight 1
        TCP_CHECK {
            connect_port 6443
            connect_timeout 3
            retry 1
            delay_before_retry 1
            warmup 0
        }
    }
}
"""


def k0s_like(run_dir: str = "/run/ipvslb") -> dict[str, Any]:
    return document(run_dir, [{"virtualIPs": ["10.77.0.100/24"], "interface": "eth1",
                               "authPass": "k8svip", "advertIntervalSeconds": 1}],
                    [{"ipAddress": "10.77.0.100"}])


def test_golden_virtual_servers_mode() -> None:
    files = files_for(k0s_like())
    assert list(files) == [CONF, vs_file(0)]
    assert files[CONF] == GOLDEN
    assert files[vs_file(0)] == GOLDEN_VS  # real servers sorted, one per backend


def test_rendering_is_deterministic_and_parses_back() -> None:
    first = files_for(k0s_like())
    assert files_for(k0s_like(), backends=list(reversed(BACKENDS))) == first
    for text in first.values():
        body = text.split("\n", 2)[2]  # the parser drops the header comment
        assert kc.render(kc.parse(text)) == body


def test_nothing_rendered_without_backends_and_userspace_has_no_virtual_servers() -> None:
    files = files_for(k0s_like(), backends=[])
    assert "virtual_server" not in files[vs_file(0)]
    doc = k0s_like()
    doc["node"]["role"] = "controller+worker"
    files = files_for(doc)
    assert list(files) == [CONF] and "include" not in files[CONF]


def test_vrrpv3_default_drops_authentication() -> None:
    doc = document("/run/ipvslb", [{"virtualIPs": ["10.77.0.100/24"], "authPass": "x"}], [])
    conf = files_for(doc)[CONF]
    assert "version 3" in conf and "advert_int 0.05" in conf and "authentication" not in conf


def test_derived_priorities_differ_between_neighbours() -> None:
    import ipaddress

    prios = {derive_priority(ipaddress.ip_address(f"10.77.0.{i}")) for i in range(1, 200)}
    assert len(prios) == 199 and all(1 <= p <= 254 for p in prios)


MATRIX: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]] = {
    "multicast-vrrpv2": ([{"virtualIPs": ["10.77.0.100/24"], "interface": "eth1",
                           "authPass": "k8svip", "advertIntervalSeconds": 1}],
                         [{"ipAddress": "10.77.0.100"}], {}),
    "unicast-vrrpv3": ([{"virtualIPs": ["10.77.0.100/24"], "interface": "eth1",
                         "unicastSourceIP": "10.77.0.11",
                         "unicastPeers": ["10.77.0.12", "10.77.0.13"]}],
                       [{"ipAddress": "10.77.0.100", "lbKind": "NAT", "lbAlgo": "wlc"}], {}),
    "several-instances": ([{"virtualIPs": ["10.77.0.100/24"], "interface": "eth1"},
                           {"virtualIPs": ["10.78.0.100/24", "10.78.0.101/24"],
                            "interface": "eth2", "virtualRouterID": 7,
                            "advertInterval": "10ms"}],
                          [{"ipAddress": "10.77.0.100"}, {"ipAddress": "10.78.0.101",
                                                          "delayLoop": "1m"}],
                          {"lvsSyncDaemon": True}),
    "ipv6-vips": ([{"virtualIPs": ["fd00:77::100/64"], "interface": "eth1"}],
                  [{"ipAddress": "fd00:77::100"}], {"realServerCheck": "https"}),
    "ipv6-unicast-vrrpv2": ([{"virtualIPs": ["fd00:77::100/64"], "interface": "eth1",
                              "advertIntervalSeconds": 2, "authPass": "pw",
                              "unicastSourceIP": "fd00:77::11",
                              "unicastPeers": ["fd00:77::12"]}], [], {}),
    "vip-only": ([{"virtualIPs": ["10.77.0.100/24"], "interface": "eth1"}], [], {}),
}


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_real_keepalived_accepts_rendered_config(name: str, tmp_path: Path) -> None:
    instances, servers, node = MATRIX[name]
    run_dir = tmp_path / "run"
    doc = document(str(run_dir), instances, servers, **node)
    if name == "vip-only":
        doc["controlPlaneLoadBalancing"]["keepalived"]["disableLoadBalancer"] = True
    backends = BACKENDS + [Backend("fd00:77::11", 6443), Backend("fd00:77::12", 6443)]
    files = files_for(doc, backends=backends)
    run_dir.mkdir()
    for file_name, text in files.items():
        (run_dir / file_name).write_text(text)
    config = config_from_document(doc)
    for inst in config.vrrp_instances:  # as on the VRRP master: includes the virtual servers
        if (run_dir / vs_file(inst.index)).exists():
            point(run_dir, inst.index, master=True)
    interfaces = sorted({i.interface or "eth0" for i in config.vrrp_instances})
    code, output = keepalived_config_test(files[CONF], interfaces)
    assert code == 0 and output.strip() == "", output  # a missing include only prints
    if servers:
        assert "virtual_server" in "".join(files.values())


def test_real_keepalived_rejects_a_broken_render(tmp_path: Path) -> None:
    """The matrix check can fail: a config naming a missing interface is refused."""
    files = files_for(k0s_like(str(tmp_path)))
    code, output = keepalived_config_test(files[CONF].replace("eth1", "eth9"), ["eth1"])
    assert code != 0, output


def test_notify_switches_only_the_masters_virtual_servers(tmp_path: Path) -> None:
    (tmp_path / vs_file(0)).write_text("# vs\n")
    assert point(tmp_path, 0, master=False)
    assert os.readlink(tmp_path / "vs-active-0.conf") == "/dev/null"
    assert not point(tmp_path, 0, master=False)  # unchanged: no reload needed
    assert on_state(tmp_path, "ipvslb-vip-0", "MASTER") is False  # no keepalived to reload
    assert os.readlink(tmp_path / "vs-active-0.conf") == str(tmp_path / vs_file(0))
    assert read_state(tmp_path, 0) == "MASTER"
    on_state(tmp_path, "ipvslb-vip-0", "FAULT")
    assert os.readlink(tmp_path / "vs-active-0.conf") == "/dev/null"
    on_state(tmp_path, "ipvslb-vip-1", "MASTER")  # instance without virtual servers
    assert read_state(tmp_path, 1) == "MASTER"
    assert not (tmp_path / "vs-active-1.conf").exists()
    assert on_state(tmp_path, "someone-else", "MASTER") is False


def test_with_the_sync_daemon_backups_carry_a_standby_service_of_their_own_apiserver(
        tmp_path: Path) -> None:
    doc = document(str(tmp_path), [{"virtualIPs": ["10.77.0.100/24"], "interface": "eth1"}],
                   [{"ipAddress": "10.77.0.100"}], lvsSyncDaemon=True)
    config = config_from_document(doc)
    mode, _ = decide(config)
    facts = NodeFacts(("eth1",), 150, "/usr/local/bin/ipvslb",
                      frozenset({"10.77.0.12", "192.168.1.5"}))
    files = render_files(config, mode, facts, BACKENDS)
    standby = files["vs-standby-0.conf"]
    assert "virtual_server 10.77.0.100 6443" in standby
    assert "real_server 10.77.0.12 6443" in standby
    assert "10.77.0.11" not in standby and "10.77.0.13" not in standby
    full = files[vs_file(0)]
    assert all(f"real_server 10.77.0.{n} 6443" in full for n in (11, 12, 13))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # a backup points at the standby service, the master at the full one
    point(tmp_path, 0, master=False)
    assert os.readlink(tmp_path / "vs-active-0.conf") == str(tmp_path / "vs-standby-0.conf")
    point(tmp_path, 0, master=True)
    assert os.readlink(tmp_path / "vs-active-0.conf") == str(tmp_path / vs_file(0))
    # the real keepalived accepts the standby include
    point(tmp_path, 0, master=False)
    code, output = keepalived_config_test(files[CONF], ["eth1"])
    assert code == 0 and output.strip() == "", output
    # without the sync daemon nothing changes: no standby file, backups point at /dev/null
    del doc["node"]["lvsSyncDaemon"]
    plain = render_files(config_from_document(doc), mode, facts, BACKENDS)
    assert "vs-standby-0.conf" not in plain
