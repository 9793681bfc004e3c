"""Real traffic through services ipvslb applied, in direct-routing mode as ipvslb runs it.

One LAN: a director, two real servers and a client, each a namespace. The director holds
the VIP on its LAN interface (as the keepalived master does) and, like every node, on
dummyvip0 (down); the real servers hold it only on dummyvip0, whose ARP sysctls keep them
from answering for it. Then: connections reach both real servers (IPv4 and IPv6), and a
removed real server is drained: weight 0, live connections keep working, new ones go
elsewhere, deleted once its connections are gone (or when the drain time is up).
"""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter

import pytest

from ipvslb import ipvs
from ipvslb.ipvs import model
from ipvslb.ipvs.apply import Applier
from ipvslb.ipvs.netlink import IPVS
from ipvslb.node import dummy
from tests.support.netlab import Lan, NetLab, Netns, wait_until

pytestmark = pytest.mark.kernel


PORT = 6443
VIP4 = "10.88.0.100"
VIP6 = "fd00:88::100"

# Answers each connection with its name, then echoes lines until the client closes.
HOLD_SERVER = """
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(64)
print("ready", flush=True)
def serve(conn):
    with conn:
        conn.sendall(name.encode() + b"\\n")
        while data := conn.recv(4096):
            conn.sendall(data)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class Lab:
    def __init__(self, netlab: NetLab) -> None:
        self.lan: Lan = netlab.lan(["lb", "rs1", "rs2", "client"])
        self.lb, self.rs1, self.rs2, self.client = (m.netns for m in self.lan.members)
        # the VRRP master's VIP on its LAN interface (keepalived's job in production)
        self.lb.ip("addr", "add", f"{VIP4}/24", "dev", "eth0")
        self.lb.ip("addr", "add", f"{VIP6}/64", "dev", "eth0", "nodad")
        for ns in (self.lb, self.rs1, self.rs2):
            dummy.ensure("dummyvip0", [VIP4, VIP6], netns=ns.name)
            ipvs.set_sysctls(ns.name)
        for ns in (self.rs1, self.rs2):
            proc = netlab.start([sys.executable, "-c", HOLD_SERVER, ns.name.rsplit("-", 1)[1],
                                 str(PORT)], ns, name=f"hold-{ns.name}")
            wait_until(proc.output, 20, what="real server to listen")
        self.rs1_ip = self.lan.member(self.rs1).ipv4
        self.rs2_ip = self.lan.member(self.rs2).ipv4

    def service(self, *servers: str, family: int = 4) -> model.Service:
        v6 = {self.rs1_ip: self.lan.member(self.rs1).ipv6,
              self.rs2_ip: self.lan.member(self.rs2).ipv6}
        return model.service("tcp", VIP6 if family == 6 else VIP4, PORT, scheduler="rr",
                             dests=[model.dest(v6[s] if family == 6 else s, PORT,
                                               forward="dr") for s in servers])

    def ask(self, vip: str = VIP4) -> str:
        """Connect through the VIP, read who answered, close."""
        conn, name = self.hold(vip)
        conn.close()
        return name

    def hold(self, vip: str = VIP4) -> tuple[socket.socket, str]:
        """An open connection from the client through the VIP, and who answered."""

        def connect() -> socket.socket:
            return socket.create_connection((vip, PORT), timeout=30)

        conn = self.client.call(connect)
        name = conn.recv(64).decode().strip()
        return conn, name


def ipvsadm_dest(ns: Netns, address: str) -> list[str] | None:
    """[forward, weight, active, inactive] of a real server in `ipvsadm -L -n`, or None."""
    for line in ns.run("ipvsadm", "-L", "-n").splitlines():
        parts = line.split()
        if parts[:2] == ["->", f"{address}:{PORT}"]:
            return parts[2:6]
    return None


def test_dr_traffic_reaches_both_real_servers(netlab: NetLab) -> None:
    lab = Lab(netlab)
    with IPVS(lab.lb.name) as ipvs:
        result = Applier(ipvs).apply([lab.service(lab.rs1_ip, lab.rs2_ip),
                                      lab.service(lab.rs1_ip, lab.rs2_ip, family=6)])
        assert result.errors == []
    for vip in (VIP4, VIP6):
        answers = Counter(lab.ask(vip) for _ in range(6))
        assert answers == {"rs1": 3, "rs2": 3}, f"{vip}: {answers}"
    # only the director answers ARP/ND for the VIP: the real servers hold it on dummyvip0
    lb_mac = lab.lb.ip("-br", "link", "show", "dev", "eth0").split()[2]
    for vip in (VIP4, VIP6):
        neigh = lab.client.ip("neigh", "show", vip)
        assert lb_mac in neigh, f"{vip} resolved to {neigh!r}, not the director {lb_mac}"


def test_removed_real_server_is_drained(netlab: NetLab) -> None:
    lab = Lab(netlab)
    with IPVS(lab.lb.name) as ipvs:
        ipvs.set_timeouts(tcp_fin=2)  # closed connections leave the table quickly
        applier = Applier(ipvs, drain_timeout=3600)
        assert applier.apply([lab.service(lab.rs1_ip, lab.rs2_ip)]).errors == []
        held = [lab.hold() for _ in range(4)]
        on_rs1 = [conn for conn, name in held if name == "rs1"]
        assert len(on_rs1) == 2, held

        result = applier.apply([lab.service(lab.rs2_ip)])
        assert (result.dests_drain_started, result.dests_deleted) == (1, 0)
        assert ipvsadm_dest(lab.lb, lab.rs1_ip) == ["Route", "0", "2", "0"]
        assert Counter(lab.ask() for _ in range(4)) == {"rs2": 4}, "new connections avoid rs1"
        for conn in on_rs1:  # established connections still work while draining
            conn.sendall(b"still there\n")
            assert conn.recv(64) == b"still there\n"
        again = applier.apply([lab.service(lab.rs2_ip)])
        assert again.messages == 0 and len(applier.draining) == 1

        for conn, _ in held:
            conn.close()

        def deleted() -> bool:
            return applier.apply([lab.service(lab.rs2_ip)]).dests_deleted == 1

        wait_until(deleted, 30, interval=0.5, what="rs1 to be deleted once its connections end")
        assert ipvsadm_dest(lab.lb, lab.rs1_ip) is None
        assert applier.draining == []


def test_drain_is_bounded_and_can_be_skipped(netlab: NetLab) -> None:
    lab = Lab(netlab)
    with IPVS(lab.lb.name) as ipvs:
        applier = Applier(ipvs, drain_timeout=1.0)
        assert applier.apply([lab.service(lab.rs1_ip, lab.rs2_ip)]).errors == []
        held = [lab.hold() for _ in range(2)]
        assert applier.apply([lab.service(lab.rs2_ip)]).dests_drain_started == 1
        time.sleep(1.2)
        result = applier.apply([lab.service(lab.rs2_ip)])
        assert result.dests_deleted == 1, "the drain time is up: deleted despite connections"
        assert ipvsadm_dest(lab.lb, lab.rs1_ip) is None

        at_once = Applier(ipvs, drain=False)
        assert at_once.apply([lab.service(lab.rs1_ip, lab.rs2_ip)]).dests_added == 1
        more = [lab.hold() for _ in range(2)]
        result = at_once.apply([lab.service(lab.rs1_ip)])
        assert (result.dests_deleted, result.dests_drain_started) == (1, 0)
        assert ipvsadm_dest(lab.lb, lab.rs2_ip) is None
        for conn, _ in held + more:
            conn.close()


def test_listings_with_live_connections_match_ipvsadm(netlab: NetLab) -> None:
    """Counters, rates, connection entries and persistence templates are non-zero here, so
    the number formats and /proc/net/ip_vs_conn parsing are compared for real. Rates and the
    connection countdown move, so ipvslb's output must equal ipvsadm's from just before or
    just after it (retried a few times)."""
    from tests.kernel.test_ipvs_compat import render_cli

    lab = Lab(netlab)
    with IPVS(lab.lb.name) as ipvs:
        svc = lab.service(lab.rs1_ip, lab.rs2_ip)._replace(flags=model.F_PERSISTENT, timeout=60)
        assert Applier(ipvs).apply([svc]).errors == []
    held = [lab.hold() for _ in range(3)]
    for _ in range(5):
        lab.ask()
    for args in ([], ["--stats"], ["--stats", "--exact"], ["--rate"], ["--rate", "--exact"],
                 ["--persistent-conn"], ["--thresholds"], ["-c"], ["-c", "--persistent-conn"],
                 ["-t", f"{VIP4}:{PORT}", "--stats"]):
        for _attempt in range(5):
            before = lab.lb.run("ipvsadm", "-L", "-n", *args)
            ours = render_cli(lab.lb.name, args)
            after = lab.lb.run("ipvsadm", "-L", "-n", *args)
            if ours in (before, after):
                break
            assert before != after, f"ipvslb show {args} differs:\n{before}\n---\n{ours}"
        else:
            pytest.fail(f"ipvslb show {args} never matched ipvsadm:\n{before}\n---\n{ours}")
        if args[:1] == ["-c"]:
            assert "ESTABLISHED" in ours and "ASSURED" in ours, ours  # + persistence template
        if args == ["--stats"]:
            assert any(line.split()[1:2] != ["0"] for line in ours.splitlines()[3:]), ours
    for conn, _ in held:
        conn.close()

    # a connection-sync daemon, then zeroing the counters and flushing, all through ipvslb
    lab.lb.run("ipvsadm", "--start-daemon", "master", "--mcast-interface", "eth0",
               "--syncid", "7")
    assert render_cli(lab.lb.name, ["--daemon"]) == lab.lb.run("ipvsadm", "-L", "-n",
                                                               "--daemon") != ""
    with IPVS(lab.lb.name) as ipvs:
        assert ipvs.daemons()[0].mcast_ifn == "eth0"
        ipvs.zero(svc)
        zeroed = lab.lb.run("ipvsadm", "-L", "-n", "--stats").splitlines()[3:]
        assert zeroed and all(line.split()[2] == "0" for line in zeroed), zeroed  # Conns
        ipvs.set_timeouts(tcp=901, tcp_fin=91, udp=31)
        assert lab.lb.run("ipvsadm", "-L", "-n", "--timeout") == \
            "Timeout (tcp tcpfin udp): 901 91 31\n"
        ipvs.flush()
    assert lab.lb.run("ipvsadm", "-S", "-n") == ""
    lab.lb.run("ipvsadm", "--stop-daemon", "master")
