"""Rendered configs against the REAL keepalived (Debian's 2.2.7): ``keepalived -t``.

Each config is checked inside a throwaway network namespace holding veth links with the
configured names (tests/support/keepalived_check.py). A config passes when keepalived exits 0
and prints nothing (no warning either).
"""

from __future__ import annotations

import dataclasses

import pytest

from keepalived_conf import (
    Authentication,
    Config,
    GlobalDefs,
    HttpGet,
    HttpUrl,
    Include,
    LvsSyncDaemon,
    RealServer,
    SslGet,
    TcpCheck,
    TrackFile,
    TrackFileRef,
    TrackScript,
    VirtualIPAddress,
    VirtualServer,
    VrrpInstance,
    VrrpScript,
    render,
)
from keepalived_conf.model import MAX_PERSISTENCE, MAX_SECONDS, MAX_TIMER
from tests.support.keepalived_check import keepalived_config_test, unavailable_reason

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

VIP4 = VirtualIPAddress("192.168.56.10/24")
VIP6 = VirtualIPAddress("2001:db8:56::10/64")


def instance(name: str = "k0s-vip-0", **kwargs: object) -> VrrpInstance:
    settings: dict[str, object] = dict(
        interface="eth0", virtual_router_id=51, priority=200, virtual_ipaddresses=[VIP4])
    settings.update(kwargs)
    return VrrpInstance(name, **settings)  # type: ignore[arg-type]


def real_servers(addresses: list[str], port: int = 6443) -> list[RealServer]:
    checks: list[TcpCheck | HttpGet | SslGet] = [
        TcpCheck(connect_port=port, connect_timeout=3, retry=1, delay_before_retry=1, warmup=0),
        HttpGet(urls=[HttpUrl("/healthz", 200)], connect_timeout=2),
        SslGet(urls=[HttpUrl("/readyz?verbose"), HttpUrl("/livez", 200)], retry=2),
    ]
    return [RealServer(address, port, weight=1, inhibit_on_failure=index == 0,
                       checker=checks[index % len(checks)])
            for index, address in enumerate(addresses)]


SCRIPTS = GlobalDefs(router_id="ctrl-1", enable_script_security=True, script_user="root")

MATRIX: dict[str, tuple[Config, list[str]]] = {
    "k0s-multicast-v2": (Config([
        instance(advert_int=1, authentication=Authentication("k0spass1")),
    ]), ["eth0"]),
    "unicast-v2": (Config([
        GlobalDefs(router_id="ctrl-1"),
        instance(priority=150, nopreempt=True, authentication=Authentication("k0s"),
                 unicast_src_ip="198.18.0.1", unicast_peers=["198.18.0.2", "198.18.0.3"]),
    ]), ["eth0"]),
    "vrrp3-fast-failover": (Config([
        GlobalDefs(vrrp_version=3, vrrp_garp_master_delay=1, vrrp_garp_master_repeat=2,
                   vrrp_garp_master_refresh=1),
        instance(advert_int=0.1, nopreempt=True, garp_master_delay=1, garp_master_refresh=1,
                 virtual_ipaddresses=[VirtualIPAddress("192.168.56.10/24", dev="eth0",
                                                       label="eth0:vip")]),
    ]), ["eth0"]),
    "several-instances": (Config([
        instance("k0s-vip-0", advert_int=1),
        instance("k0s-vip-1", virtual_router_id=52, virtual_ipaddresses=[
            VirtualIPAddress("192.168.56.11/24"), VirtualIPAddress("192.168.56.12/24")]),
        instance("k0s-vip-2", interface="ens3", virtual_router_id=53, state="MASTER",
                 virtual_ipaddresses=[VirtualIPAddress("10.10.0.10/16")]),
    ]), ["eth0", "ens3"]),
    "ipv6": (Config([
        instance(advert_int=0.5, virtual_ipaddresses=[VIP6],
                 unicast_src_ip="2001:db8:56::1", unicast_peers=["2001:db8:56::2"]),
        VirtualServer("2001:db8:56::10", 6443, delay_loop=1, persistence_timeout=360,
                      real_servers=real_servers(["2001:db8:56::1", "2001:db8:56::2"])),
    ]), ["eth0"]),
    "virtual-servers": (Config([
        instance(advert_int=1),
        VirtualServer("192.168.56.10", 6443, delay_loop=60.0, persistence_timeout=360,
                      quorum=1, hysteresis=0, alpha=True,
                      real_servers=real_servers(["192.168.56.21", "192.168.56.22",
                                                 "192.168.56.23"])),
        VirtualServer("192.168.56.10", 9443, delay_loop=0.5, lb_algo="wlc", lb_kind="NAT",
                      protocol="TCP", real_servers=real_servers(["192.168.56.21"], 9443)),
    ]), ["eth0"]),
    "health-tracking": (Config([
        SCRIPTS,
        VrrpScript("apiserver", "/bin/true --port 6443", interval=1, timeout=2, rise=2,
                   fall=3, weight=-50, user="root"),
        TrackFile("apiserver-down", "/dev/null", weight=0, init_file=0),
        instance(track_scripts=[TrackScript("apiserver"), TrackScript("apiserver", 10)][:1],
                 track_files=[TrackFileRef("apiserver-down")],
                 notify_master="/bin/true MASTER k0s-vip-0",
                 notify_backup="/bin/true BACKUP", notify_fault="/bin/true FAULT",
                 notify_stop="/bin/true STOP", notify="/bin/true"),
    ]), ["eth0"]),
    "lvs-sync-daemon": (Config([
        GlobalDefs(lvs_sync_daemon=LvsSyncDaemon("eth0", "k0s-vip-0", 51)),
        instance(),
    ]), ["eth0"]),
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_rendered_config_passes_keepalived_t(name: str) -> None:
    config, interfaces = MATRIX[name]
    status, output = keepalived_config_test(render(config), interfaces)
    assert (status, output) == (0, "")


def test_include_of_a_rendered_file_passes() -> None:
    servers = Config([VirtualServer("192.168.56.10", 6443, persistence_timeout=360,
                                    real_servers=real_servers(["192.168.56.21"]))])
    main = Config([instance(), Include("virtual-servers.conf")])
    status, output = keepalived_config_test(
        render(main), ["eth0"], files={"virtual-servers.conf": render(servers)})
    assert (status, output) == (0, "")
    # A missing include is only a message (exit status 0): check the output as well.
    status, output = keepalived_config_test(render(main), ["eth0"])
    assert status == 0 and "missing 'virtual-servers.conf'" in output


def _all_numbers(high: bool) -> Config:
    """Every numeric setting at the low or the high end of what the model allows."""
    def pick(low: float, top: float) -> float:
        return top if high else low

    seconds = pick(0.000001, MAX_SECONDS)
    return Config([
        GlobalDefs(vrrp_version=int(pick(3, 2)), vrrp_garp_master_delay=int(pick(0, MAX_TIMER)),
                   vrrp_garp_master_repeat=int(pick(1, 255)),
                   vrrp_garp_master_refresh=int(pick(0, MAX_TIMER)),
                   enable_script_security=True, script_user="root", script_group="root",
                   lvs_sync_daemon=LvsSyncDaemon("eth0", "VI_1", int(pick(0, 255))),
                   max_auto_priority=int(pick(-1, 99))),
        VrrpScript("chk", "/bin/true", interval=int(pick(1, 4294)), timeout=int(pick(1, 4294)),
                   rise=int(pick(1, 65535)), fall=int(pick(1, 65535)),
                   weight=int(pick(-253, 253))),
        TrackFile("tf", "/dev/null", weight=int(pick(-254, 254)), init_file=int(pick(-254, 254))),
        # priority 255 (address owner) would ignore the tracking weights, with a warning
        VrrpInstance("VI_1", "eth0", int(pick(1, 255)), int(pick(1, 254)),
                     advert_int=pick(0.01, 255), garp_master_delay=int(pick(0, MAX_TIMER)),
                     garp_master_refresh=int(pick(0, MAX_TIMER)),
                     virtual_ipaddresses=[VirtualIPAddress(f"10.0.0.10/{int(pick(0, 32))}")],
                     track_scripts=[TrackScript("chk", int(pick(-253, 253)))],
                     track_files=[TrackFileRef("tf", int(pick(-254, 254)))]),
        VirtualServer("10.0.0.10", int(pick(1, 65535)), delay_loop=seconds,
                      persistence_timeout=int(pick(1, MAX_PERSISTENCE)),
                      quorum=int(pick(1, 65536)), hysteresis=int(pick(0, 65535)),
                      real_servers=[
                          RealServer("10.0.0.2", int(pick(1, 65535)), weight=int(pick(0, 65535)),
                                     checker=TcpCheck(
                                         connect_port=int(pick(1, 65535)),
                                         connect_timeout=pick(0.000001, MAX_TIMER),
                                         retry=int(pick(0, 65535)), delay_before_retry=seconds,
                                         warmup=seconds)),
                          RealServer("10.0.0.3", int(pick(1, 65535)), checker=HttpGet(urls=[
                              HttpUrl("/", int(pick(100, 599)))])),
                      ]),
    ])


@pytest.mark.parametrize("high", [False, True], ids=["lowest", "highest"])
def test_model_bounds_are_accepted_by_keepalived(high: bool) -> None:
    """The model's numeric limits are keepalived's (measured: garp delays and connect_timeout
    stop at 4294 s, track_file init values at +-254, VRRPv3 adverts at 40.95 s)."""
    status, output = keepalived_config_test(render(_all_numbers(high)), ["eth0"])
    assert (status, output) == (0, "")


def test_a_config_for_a_missing_interface_fails() -> None:
    status, output = keepalived_config_test(render(Config([instance(interface="eth9")])),
                                            ["eth0"])
    assert status != 0
    assert "eth9" in output


def test_vrrp_on_loopback_fails() -> None:
    status, output = keepalived_config_test(render(Config([instance(interface="lo")])), ["eth0"])
    assert status != 0 and output


def test_scripts_without_script_security_fail() -> None:
    """keepalived refuses to run scripts as root unless enable_script_security is set."""
    config = Config([instance(notify_master="/bin/true")])
    status, output = keepalived_config_test(render(config), ["eth0"])
    assert status != 0
    assert "SECURITY VIOLATION" in output
    fixed = Config([SCRIPTS, *config.items])
    assert keepalived_config_test(render(fixed), ["eth0"]) == (0, "")


def test_what_the_model_rejects_is_what_keepalived_rejects() -> None:
    """Rules between settings live in the model because keepalived -t fails on each of them.

    The broken configs are written by hand (the model refuses to build them)."""
    base = render(Config([
        instance(advert_int=1, authentication=Authentication("pw")),
        VirtualServer("192.168.56.10", 6443, real_servers=[RealServer("192.168.56.21", 6443)]),
    ]))
    broken = {
        "DR to another port": base.replace("real_server 192.168.56.21 6443",
                                           "real_server 192.168.56.21 6444"),
        "no real server": base.replace(
            "    real_server 192.168.56.21 6443 {\n    }\n", ""),
        "no scheduler": base.replace("    lb_algo rr\n", ""),
        "no forwarding method": base.replace("    lb_kind DR\n", ""),
        "no protocol": base.replace("    protocol TCP\n", ""),
        "v3 with authentication": base.replace("    advert_int 1", "    version 3"),
        "v2 with a fractional advert": base.replace("advert_int 1", "advert_int 0.5"),
        "no virtual address": base.replace("        192.168.56.10/24\n", ""),
        "mixed families": base.replace("        192.168.56.10/24\n",
                                       "        192.168.56.10/24\n        2001:db8::1\n"),
    }
    assert keepalived_config_test(base, ["eth0"]) == (0, "")
    for name, text in broken.items():
        assert text != base, name
        status, output = keepalived_config_test(text, ["eth0"])
        assert status != 0 and output, name


def test_injected_text_would_be_caught() -> None:
    """What the renderer prevents, written by hand: keepalived reads a second instance."""
    text = render(Config([instance()])).replace(
        "interface eth0", "interface eth0\n}\nvrrp_instance evil {\n    interface eth0")
    status, output = keepalived_config_test(text, ["eth0"])
    assert status != 0 and output


def test_harness_refuses_names_it_cannot_create() -> None:
    for bad in (["eth0", "eth0"], ["x" * 16], ["a b"], ["kcpeer0x"]):
        with pytest.raises(ValueError):
            keepalived_config_test("", bad)
    with pytest.raises(ValueError):
        keepalived_config_test("", ["eth0"], files={"../x": ""})


def test_matrix_configs_are_distinct() -> None:
    rendered = {render(config) for config, _ in MATRIX.values()}
    assert len(rendered) == len(MATRIX)
    assert dataclasses.is_dataclass(MATRIX["ipv6"][0])
