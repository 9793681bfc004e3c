"""iptables REDIRECT rules on the host kernel, inside network namespaces this test creates.

Real iptables (nft and legacy), real namespaces and veths, real TCP through the REDIRECT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from ipvslb.node import iptables
from ipvslb.node.iptables import Redirect

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("iptables-nft-restore") is None,
                       reason="needs the Debian package iptables"),
]

VIP4, VIP6 = "10.231.0.100", "fd00:231::100"
REDIRECTS = [Redirect(VIP4, 6443, 6444), Redirect(VIP6, 6443, 6444)]

SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(sys.argv[1])))
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        c.sendall(("proxy saw " + c.getsockname()[0] + "\\n").encode())
        c.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        print(c.makefile().readline().strip())
    except OSError as err:
        print(f"error: {type(err).__name__}")
""")


def sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    if netns:
        argv = ("ip", "netns", "exec", netns, *argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} failed: {done.stderr}")
    return done.stdout


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Namespaces (client, node) joined by a veth; the node holds both VIPs on its veth."""
    tag = f"{os.getpid() % 100000}"
    client, node = f"ipvslb-ipt-c{tag}", f"ipvslb-ipt-n{tag}"
    try:
        for ns in (client, node):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        sh("ip", "link", "add", f"vc{tag}", "netns", client, "type", "veth",
           "peer", "name", f"vn{tag}", "netns", node)
        sh("ip", "addr", "add", "10.231.0.1/24", "dev", f"vc{tag}", netns=client)
        sh("ip", "addr", "add", "fd00:231::1/64", "dev", f"vc{tag}", "nodad", netns=client)
        sh("ip", "link", "set", f"vc{tag}", "up", netns=client)
        for addr in ("10.231.0.2/24", f"{VIP4}/24"):
            sh("ip", "addr", "add", addr, "dev", f"vn{tag}", netns=node)
        for addr in ("fd00:231::2/64", f"{VIP6}/64"):
            sh("ip", "addr", "add", addr, "dev", f"vn{tag}", "nodad", netns=node)
        sh("ip", "link", "set", f"vn{tag}", "up", netns=node)
        yield client, node
    finally:
        for ns in (client, node):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def proxy_stand_in(pair: tuple[str, str]) -> Iterator[None]:
    """A TCP server on [::]:6444 in the node namespace (the proxy's place)."""
    _, node = pair
    proc = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", SERVER, "6444"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.terminate()
        proc.wait(5)


def connect(netns: str, host: str, port: int) -> str:
    return sh(sys.executable, "-c", CLIENT, host, str(port), netns=netns).strip()


def save(netns: str, backend: str = "nft") -> str:
    return sh(f"iptables-{backend}-save", "-t", "nat", netns=netns) + sh(
        f"ip6tables-{backend}-save", "-t", "nat", netns=netns)


def ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if "IPVSLB" in line]


def expected(vip: str) -> list[str]:
    prefix = 32 if ":" not in vip else 128
    redirect = f"-d {vip}/{prefix} -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444"
    return sorted([
        ":IPVSLB-OUTPUT - [0:0]",
        ":IPVSLB-PREROUTING - [0:0]",
        "-A PREROUTING -m comment --comment ipvslb -j IPVSLB-PREROUTING",
        "-A OUTPUT -m comment --comment ipvslb -j IPVSLB-OUTPUT",
        f"-A IPVSLB-OUTPUT {redirect}",
        f"-A IPVSLB-PREROUTING {redirect}",
    ])


def assert_exactly_once(netns: str, backend: str = "nft") -> None:
    for tool, vip in (("iptables", VIP4), ("ip6tables", VIP6)):
        lines = ours(sh(f"{tool}-{backend}-save", "-t", "nat", netns=netns))
        assert sorted(lines) == expected(vip), lines


def test_install_twice_leaves_rules_exactly_once(pair: tuple[str, str]) -> None:
    _, node = pair
    assert iptables.install(REDIRECTS, netns=node) == "nft"
    assert iptables.install(REDIRECTS, netns=node) == "nft"
    assert_exactly_once(node)
    assert sorted(iptables.current_rules(netns=node)) == sorted(ours(save(node)))


def test_crash_then_restart_in_new_process_leaves_rules_once(pair: tuple[str, str]) -> None:
    """Each install runs in its own process, killed right after (no cleanup), like a crash."""
    _, node = pair
    code = ("import sys, os, signal; from ipvslb.node import iptables as t; "
            f"t.install([t.Redirect('{VIP4}', 6443, 6444), t.Redirect('{VIP6}', 6443, 6444)], "
            f"netns='{node}'); os.kill(os.getpid(), signal.SIGKILL)")
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
        assert done.returncode == -9
    assert_exactly_once(node)


def test_install_repairs_duplicate_jumps_and_stale_rules(pair: tuple[str, str]) -> None:
    """Duplicates as an append-only tool (k0s) would leave them, and a VIP that went away."""
    _, node = pair
    iptables.install([Redirect("10.231.0.99", 6443, 6444)], netns=node)
    for _ in range(2):
        sh("iptables-nft", "-t", "nat", "-A", "PREROUTING", "-j", "IPVSLB-PREROUTING", netns=node)
    iptables.install(REDIRECTS, netns=node)
    assert_exactly_once(node)
    assert "10.231.0.99" not in save(node)


def test_remove_deletes_only_ipvslb_rules(pair: tuple[str, str]) -> None:
    _, node = pair
    foreign = "-A PREROUTING -d 10.231.0.7/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080"
    sh("iptables-nft", "-t", "nat", *foreign.split(), netns=node)
    iptables.install(REDIRECTS, netns=node)
    iptables.remove(netns=node)
    text = save(node)
    assert ours(text) == []
    assert foreign in text
    iptables.remove(netns=node)  # nothing left to remove: no error
    assert iptables.current_rules(netns=node) == []


def test_ipv4_only_install_removes_ipv6_chains(pair: tuple[str, str]) -> None:
    _, node = pair
    iptables.install(REDIRECTS, netns=node)
    iptables.install(REDIRECTS[:1], netns=node)
    assert ours(sh("ip6tables-nft-save", "-t", "nat", netns=node)) == []
    assert len(ours(sh("iptables-nft-save", "-t", "nat", netns=node))) == 6


@pytest.mark.usefixtures("proxy_stand_in")
def test_traffic_to_vip_is_redirected_to_the_proxy_port(pair: tuple[str, str]) -> None:
    client, node = pair
    for vip in (VIP4, VIP6):
        assert connect(client, vip, 6443) == "error: ConnectionRefusedError"  # no rules yet
    iptables.install(REDIRECTS, netns=node)
    # from another namespace: PREROUTING. REDIRECT rewrites the destination to the first
    # address of the incoming interface, so the proxy must listen on all addresses.
    assert connect(client, VIP4, 6443) == "proxy saw ::ffff:10.231.0.2"
    assert connect(client, VIP6, 6443) in ("proxy saw fd00:231::2", f"proxy saw {VIP6}")
    # from the node itself: OUTPUT (locally generated traffic goes to loopback)
    assert connect(node, VIP4, 6443) == "proxy saw ::ffff:127.0.0.1"
    assert connect(node, VIP6, 6443) == "proxy saw ::1"
    # other ports and addresses are untouched
    assert connect(client, "10.231.0.2", 6443) == "error: ConnectionRefusedError"
    iptables.remove(netns=node)
    time.sleep(0.1)
    for vip in (VIP4, VIP6):
        assert connect(client, vip, 6443) == "error: ConnectionRefusedError"
        assert connect(node, vip, 6443) == "error: ConnectionRefusedError"


def test_backend_detection_follows_the_rules_present(pair: tuple[str, str]) -> None:
    _, node = pair
    assert iptables.detect_backend(node) == "nft"  # nothing anywhere: nft
    sh("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "10.231.0.0/24",
       "-j", "MASQUERADE", netns=node)
    assert iptables.detect_backend(node) == "legacy"
    assert iptables.install(REDIRECTS, netns=node) == "legacy"
    assert_exactly_once(node, "legacy")
    assert ours(save(node, "nft")) == []
    iptables.remove(netns=node)
    assert ours(save(node, "legacy")) == []
