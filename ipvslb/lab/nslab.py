"""The one-machine lab: controllers and a client in network namespaces on one bridge.

Built from the lab topology (``ipvslb.lab.topology``, moved into a subnet of its own with
``Topology.rebased``) so each controller's ipvslb config comes from the same code path as the
Vagrant lab's:

    <prefix>-switch   a bridge br0 with one veth port per member (nothing on the host's links)
    <prefix>-ctrl-N   eth0 with the controller's address; an apiserver stand-in on :6443
                      (HTTPS, its own certificate) and `ipvslb up` (real keepalived)
    <prefix>-client   eth0 with several addresses, to reach the VIP from several sources

Everything the lab creates is recorded in ``<state dir>/lab.json`` *before* it is created, so
``Lab.load(state_dir).down()`` removes it all, also after ``up`` crashed half-way: processes are
stopped by pid (checked against their start time, never a recycled pid), then any process still
running inside a lab namespace, then the namespaces. Every wait is bounded; waits are stretched
by ``IPVSLB_TIMEOUT_SCALE`` (default 8 inside the project's QEMU guest, where Python is slow).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ipvslb.errors import SystemStateError, UserError
from ipvslb.files import write_atomic
from ipvslb.lab.probe import Failover, Fetch, Prober, fingerprint, https_get, time_where
from ipvslb.lab.procs import (
    Proc,
    netns_inode,
    pids_in_netns,
    sh,
    start_time,
    time_scale,
    wait_for,
)
from ipvslb.lab.topology import LabMode, Topology, node_config

if TYPE_CHECKING:
    from ipvslb.lab.vipwatch import VipWatch

__all__ = ["Failover", "Fetch", "Lab", "Proc", "sh", "time_scale", "wait_for"]

DEFAULT_STATE_DIR = Path("/run/ipvslb-lab")
DEFAULT_PREFIX = "ipvslb-lab"
DEFAULT_SUBNET = "10.77.0.0/24"
IFNAME = "eth0"
STATE_FILE = "lab.json"
CLIENT_FIRST_OFFSET = 50  # client addresses: subnet offsets 50, 51, ... (free in the topology)
# On a slow machine (the QEMU guest runs Python 15-30x slower, and keepalived's timers drift
# under emulation) the lab uses timings that machine can keep: 1 s adverts, and a local
# apiserver check that allows a slow TLS handshake. Production defaults stay as they are.
SLOW_ADVERT_INTERVAL = 1.0
SLOW_NODE_SETTINGS: dict[str, Any] = {"apiserverHealth": {"interval": "3s", "timeout": "20s"}}
KEEPALIVED_PID_FILES = ("keepalived.pid", "vrrp.pid", "checkers.pid")
APISERVER_KINDS = ("standin", "kube")
READY_TIMEOUT = 120.0  # a real apiserver: ~4 s alone, far more with three on a loaded machine


# --- the lab's description ----------------------------------------------------------------------

METRICS_PORT = 9450  # every lab agent's metrics, on its namespace's 127.0.0.1


@dataclass
class Member:
    name: str  # topology name (ctrl-1) or "client"
    netns: str
    addresses: list[str]  # on eth0, the first is the node's own address
    config: str = ""  # controllers: the ipvslb config file
    run_dir: str = ""  # controllers: node.runDir


@dataclass
class LabState:
    prefix: str
    mode: str
    subnet: str
    vip: str  # address/prefix
    api_port: int
    switch: str  # netns holding the bridge
    controllers: list[Member]
    client: Member
    namespaces: list[str] = field(default_factory=list)  # created (or about to be), in order
    processes: list[Proc] = field(default_factory=list)
    # "standin": an HTTPS stand-in per controller; "kube": etcd + a real kube-apiserver
    # (ipvslb.lab.controlplane) and `endpoints: kubernetes` in every agent's config.
    apiserver: str = "standin"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        data["controllers"] = [Member(**m) for m in data["controllers"]]
        data["client"] = Member(**data["client"])
        data["processes"] = [Proc(**p) for p in data["processes"]]
        return cls(**data)


class Lab:
    """A lab described by its state directory; see the module docstring."""

    def __init__(self, state: LabState, state_dir: Path,
                 topology: Topology | None = None) -> None:
        self.state = state
        self.state_dir = state_dir
        self._topology = topology  # set while planning; a loaded lab is up already
        self.node_settings: dict[str, Any] = {}  # merged into each config's node section

    # -- planning and state ------------------------------------------------------------------

    @classmethod
    def plan(cls, topology: Topology, *, state_dir: Path = DEFAULT_STATE_DIR,
             prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET,
             client_sources: int = 6, slow: bool | None = None,
             apiserver: str = "standin") -> Lab:
        """Describe the lab (nothing is created yet): the topology moved into ``subnet``.

        ``slow`` (default: when waits are scaled, as in the QEMU guest) uses the timings in
        SLOW_ADVERT_INTERVAL and SLOW_NODE_SETTINGS. ``apiserver``: ``standin`` or ``kube``
        (real etcd + kube-apiservers; :func:`ipvslb.lab.controlplane.missing` says why not).
        """
        if apiserver not in APISERVER_KINDS:
            raise UserError(f"--apiserver {apiserver!r}: use one of {', '.join(APISERVER_KINDS)}")
        if apiserver == "kube":
            from ipvslb.lab import controlplane

            why = controlplane.missing()
            if why:
                raise UserError(f"--apiserver kube: {why}")
        if slow is None:
            slow = time_scale() > 1
        if slow:
            topology = with_advert(topology, interval=SLOW_ADVERT_INTERVAL)
        topo = topology.rebased(subnet)
        net = topo.network
        taken = {net.vip.ip, *(n.address for n in topo.nodes)}
        free = [a for a in list(net.subnet.hosts())[CLIENT_FIRST_OFFSET - 1:] if a not in taken]
        if len(free) < client_sources:
            raise UserError(f"subnet {subnet} has no room for {client_sources} client addresses "
                            "from offset 50; use a /24")
        nodes_dir = state_dir / "nodes"
        controllers = [
            Member(name=c.name, netns=f"{prefix}-{c.name}",
                   addresses=[f"{c.address}/{net.subnet.prefixlen}"],
                   config=str(nodes_dir / c.name / "ipvslb.yaml"),
                   run_dir=str(nodes_dir / c.name / "run"))
            for c in topo.controllers]
        client = Member(name="client", netns=f"{prefix}-client",
                        addresses=[f"{a}/{net.subnet.prefixlen}" for a in free[:client_sources]])
        state = LabState(prefix=prefix, mode=topo.mode.value, subnet=str(net.subnet),
                         vip=str(net.vip), api_port=net.api_server_port,
                         switch=f"{prefix}-switch", controllers=controllers, client=client,
                         apiserver=apiserver)
        lab = cls(state, state_dir, topo)
        lab.node_settings = dict(SLOW_NODE_SETTINGS) if slow else {}
        return lab

    @classmethod
    def load(cls, state_dir: Path = DEFAULT_STATE_DIR) -> Lab:
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"no lab is up (no {path}); start one with `ipvslb lab up`") from None
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is unreadable ({err}); remove the lab with "
                            "`ipvslb lab down`") from None
        return cls(LabState.from_json(data), state_dir)

    @staticmethod
    def exists(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
        return (state_dir / STATE_FILE).exists()

    def save(self) -> None:
        write_atomic(self.state_dir / STATE_FILE, json.dumps(asdict(self.state), indent=1), 0o600)

    @property
    def vip(self) -> str:
        return self.state.vip.split("/")[0]

    @property
    def mode(self) -> LabMode:
        return LabMode(self.state.mode)

    def controller(self, name: str) -> Member:
        for member in self.state.controllers:
            if member.name == name:
                return member
        known = ", ".join(m.name for m in self.state.controllers)
        raise UserError(f"no controller {name!r} in this lab; controllers: {known}")

    def names(self) -> list[str]:
        return [m.name for m in self.state.controllers]

    # -- building ----------------------------------------------------------------------------

    def up(self, timeout: float = 60.0) -> float:
        """Build everything, start stand-ins and agents; return seconds until the VIP served."""
        if self._topology is None:
            raise UserError("this lab was loaded from its state; it is up already")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        try:
            fd = os.open(self.state_dir / STATE_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o600)
        except FileExistsError:
            raise UserError(f"a lab is up already ({self.state_dir / STATE_FILE}); see "
                            "`ipvslb lab status`, or remove it with `ipvslb lab down`") from None
        os.close(fd)
        self.save()
        self._build_network()
        if self.real:
            self._make_pki()
        self._write_configs()
        began = time.monotonic()
        if self.real:
            self._start_control_plane()
        else:
            self._start_standins()
        for member in self.state.controllers:
            self.start_agent(member.name)
        self.wait_serving(timeout)
        self.wait_settled(timeout)
        return time.monotonic() - began

    @property
    def real(self) -> bool:
        """Whether the controllers run a real control plane (etcd + kube-apiserver)."""
        return self.state.apiserver == "kube"

    def _start_standins(self) -> None:
        for member in self.state.controllers:
            self.start_standin(member.name, wait=False)
        for proc in self.procs("standin"):
            wait_for(lambda p=proc: "ready" in p.output() or not p.alive(), 30,  # type: ignore[misc]
                     f"the apiserver stand-in of {proc.node}")
            if not proc.alive():
                raise SystemStateError(f"lab: the stand-in of {proc.node} exited: "
                                       f"{proc.output().strip()[-500:]}")

    # -- the real control plane --------------------------------------------------------------

    def address_of(self, node: str) -> str:
        return self.controller(node).addresses[0].split("/")[0]

    @property
    def pki(self) -> Path:
        return self.state_dir / "certs"

    @property
    def client_kubeconfig(self) -> Path:
        """kubectl's kubeconfig in the client namespace: server https://VIP:port, the lab CA."""
        return self.state_dir / "client.kubeconfig"

    def _make_pki(self) -> None:
        from ipvslb.lab import controlplane as cp

        nodes = {m.name: self.address_of(m.name) for m in self.state.controllers}
        cp.make_pki(self.pki, nodes, self.vip)
        cp.write_kubeconfig(self.client_kubeconfig, f"https://{self.vip}:{self.state.api_port}",
                            self.pki / "ca.crt")

    def _start_control_plane(self) -> None:

        nodes = [m.name for m in self.state.controllers]
        for name in nodes:
            self.start_etcd(name)
        for name in nodes:
            self.start_apiserver(name, wait=False)
        for name in nodes:
            self.wait_apiserver(name)

    def start_etcd(self, node: str) -> Proc:
        from ipvslb.lab import controlplane as cp

        members = {m.name: self.address_of(m.name) for m in self.state.controllers}
        data = Path(self.controller(node).run_dir).parent / "etcd"
        return self._start(node, "etcd", self.controller(node).netns,
                           cp.etcd_argv(node, members[node], members, data))

    def start_apiserver(self, node: str, wait: bool = True) -> Proc:
        """Start ``node``'s kube-apiserver (or its stand-in in a stand-in lab)."""
        if not self.real:
            return self.start_standin(node, wait)
        from ipvslb.lab import controlplane as cp

        member = self.controller(node)
        argv = cp.apiserver_argv(node, self.address_of(node), self.state.api_port, self.pki,
                                 Path(member.run_dir).parent / "apiserver-certs")
        proc = self._start(node, "apiserver", member.netns, argv)
        if wait:
            self.wait_apiserver(node)
        return proc

    def wait_apiserver(self, node: str, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``node``'s apiserver answers /readyz with 200 on its own address."""
        proc = self.proc("apiserver", node)
        assert proc is not None

        def dead() -> str | None:
            if proc.alive():
                return None
            return f"it exited: {proc.output().strip()[-800:]}"

        wait_for(lambda: self.fetch(target=self.address_of(node), timeout=2.0), timeout,
                 f"the kube-apiserver of {node} to be ready", interval=0.2, abort=dead)

    def kubectl(self, *args: str, timeout: float = 30.0, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl in the client namespace against https://VIP (lab CA)."""
        from ipvslb.lab import controlplane as cp

        binary = cp.kubectl_binary()
        if binary is None:
            raise UserError("kubectl is not installed: apt-get install kubernetes-client")
        argv = ["ip", "netns", "exec", self.state.client.netns, str(binary),
                f"--kubeconfig={self.client_kubeconfig}", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise SystemStateError(f"kubectl {' '.join(args)} failed: "
                                   f"{(done.stderr or done.stdout).strip()[-500:]}")
        return done

    def kubectl_argv(self, *args: str) -> list[str]:
        """The argv of a kubectl run in the client namespace (for long-running ones)."""
        from ipvslb.lab import controlplane as cp

        return ["ip", "netns", "exec", self.state.client.netns, str(cp.kubectl_binary()),
                f"--kubeconfig={self.client_kubeconfig}", *args]

    def published(self) -> list[str]:
        """The addresses ``default/kubernetes`` lists, asked through the VIP with kubectl."""
        out = self.kubectl("get", "endpoints", "kubernetes", "-o", "json").stdout
        subsets = json.loads(out).get("subsets") or []
        return sorted(a["ip"] for s in subsets for a in s.get("addresses") or [])

    def power_off(self, node: str) -> list[int]:
        """The node loses power: its apiserver (or stand-in), etcd member, keepalived and agent
        are frozen,
        then SIGKILLed, all together (nothing gets to clean up). Returns the pids killed."""
        # no power, no carrier: first the node's switch port goes down (it falls silent at
        # once; the VIP address its dead keepalived leaves on eth0 answers nobody)
        sh("ip", "-n", self.state.switch, "link", "set", self.switch_port(node), "down")
        victims = [p.pid for role in ("apiserver", "etcd", "standin")
                   if (p := self.proc(role, node)) is not None and p.alive()]
        for sig in (signal.SIGSTOP,):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        killed = self.crash(node)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for role in ("apiserver", "etcd", "standin"):
            proc = self.proc(role, node)
            if proc is not None:
                wait_for(lambda p=proc: not p.alive(), 10,  # type: ignore[misc]
                         f"the {role} of {node} to die")
        return victims + killed

    def switch_port(self, node: str) -> str:
        """The bridge port (in the switch namespace) of ``node``'s eth0."""
        return f"p{self.names().index(node)}"

    def power_on(self, node: str, timeout: float = READY_TIMEOUT) -> None:
        """Start a powered-off node again: etcd (rejoining with its data), its apiserver,
        then `ipvslb up`; wait until the agent is a VRRP backup."""
        # a reboot forgets run-time addresses: the VIP the dead keepalived left goes too
        netns = self.controller(node).netns
        if any(a.split("/")[0] == self.vip for a in self.addresses(netns) or []):
            sh("ip", "-n", netns, "addr", "del", self.state.vip, "dev", IFNAME)
        sh("ip", "-n", self.state.switch, "link", "set", self.switch_port(node), "up")
        if self.real:
            self.start_etcd(node)
            self.start_apiserver(node, wait=True)
        else:
            self.start_standin(node)
        self.restart_agent(node, timeout)

    def wait_settled(self, timeout: float = 30.0) -> str:
        """Wait until the VIP holder's agent was told MASTER and every other one BACKUP (the
        notify hook runs a moment after keepalived changes state); return the holder."""
        def settled() -> str | None:
            holder = self.holder()
            if holder is None:
                return None
            states = {n: self.vrrp_state(n) for n in self.names()}
            want = {n: "MASTER" if n == holder else "BACKUP" for n in self.names()}
            return holder if states == want else None

        return wait_for(settled, timeout, "the VRRP states to settle (one MASTER holding "
                        "the VIP, the others BACKUP)", interval=0.05, abort=self.dead_agents)

    def _netns_add(self, name: str) -> None:
        self.state.namespaces.append(name)
        self.save()  # recorded before it exists: `down` finds it even if we crash right after
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build_network(self) -> None:
        switch = self.state.switch
        self._netns_add(switch)
        sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge", "stp_state", "0",
           "mcast_snooping", "0")
        sh("ip", "-n", switch, "link", "set", "br0", "up")
        for index, member in enumerate([*self.state.controllers, self.state.client]):
            self._netns_add(member.netns)
            port = f"p{index}"
            sh("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", IFNAME,
               "netns", member.netns)
            sh("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            for address in member.addresses:
                sh("ip", "-n", member.netns, "addr", "add", address, "dev", IFNAME)
            sh("ip", "-n", member.netns, "link", "set", IFNAME, "up")

    def _write_configs(self) -> None:
        assert self._topology is not None
        for member in self.state.controllers:
            extra: dict[str, Any] = {}
            if self.real:
                from ipvslb.lab import controlplane as cp

                kubeconfig = Path(member.config).parent / "kubeconfig"
                address = member.addresses[0].split("/")[0]
                cp.write_kubeconfig(kubeconfig, f"https://{address}:{self.state.api_port}",
                                    self.pki / "ca.crt")
                extra = {"endpoints": "kubernetes", "kubeconfig": str(kubeconfig)}
                # A restarted apiserver listens before it is ready (/readyz 500 for seconds):
                # a TCP check would route clients to it. Real clusters want the HTTPS check.
                self.node_settings.setdefault("realServerCheck", "https")
            doc = node_config(self._topology, member.name, interface=IFNAME,
                              run_dir=member.run_dir, **extra)
            # each controller's namespace has its own loopback: the same address on every one
            doc["node"]["metrics"] = {"listen": f"127.0.0.1:{METRICS_PORT}"}
            doc["node"].update(self.node_settings)
            header = (f"# ipvslb config for {member.name} of the one-machine lab, generated "
                      "from the lab topology by ipvslb.lab.nslab.\n")
            text = header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
            write_atomic(Path(member.config), text, 0o600)

    # -- processes ---------------------------------------------------------------------------

    def procs(self, role: str | None = None, node: str | None = None) -> list[Proc]:
        return [p for p in self.state.processes
                if (role is None or p.role == role) and (node is None or p.node == node)]

    def proc(self, role: str, node: str) -> Proc | None:
        found = self.procs(role, node)
        return found[-1] if found else None

    def _start(self, node: str, role: str, netns: str, argv: list[str]) -> Proc:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{node}-{role}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        began = start_time(popen.pid)
        proc = Proc(node=node, role=role, pid=popen.pid, start=began or 0, log=str(log))
        self.state.processes = [p for p in self.state.processes
                                if not (p.node == node and p.role == role)] + [proc]
        self.save()
        return proc

    def start_standin(self, node: str, wait: bool = True) -> Proc:
        member = self.controller(node)
        proc = self._start(node, "standin", member.netns, [
            sys.executable, "-m", "ipvslb.lab.standin", "--name", node,
            "--port", str(self.state.api_port), "--cert-dir", str(self.state_dir / "certs")])
        if wait:
            wait_for(lambda: "ready" in proc.output() or not proc.alive(), 30,
                     f"the apiserver stand-in of {node}")
        return proc

    def start_agent(self, node: str) -> Proc:
        member = self.controller(node)
        return self._start(node, "agent", member.netns,
                           [sys.executable, "-m", "ipvslb", "up", "-c", member.config])

    def keepalived_pids(self, node: str) -> list[int]:
        """keepalived's processes of ``node`` (main, VRRP, checker) from its pid files."""
        run_dir = Path(self.controller(node).run_dir)
        pids = []
        for name in KEEPALIVED_PID_FILES:
            try:
                pid = int((run_dir / name).read_text().strip())
                if Path(f"/proc/{pid}/comm").read_text().strip() == "keepalived":
                    pids.append(pid)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                continue
        return pids

    def crash(self, node: str, agent: bool = True, keepalived: bool = True) -> list[int]:
        """SIGKILL ``node``'s agent and/or its keepalived processes, as a crash would.

        Like ``systemctl kill -s KILL`` on the unit, all at once: every victim is frozen
        (SIGSTOP) before any is killed, so none can react to another's death (keepalived's
        children get a parent-death signal, the agent cleans up when keepalived dies).
        Returns the pids killed.
        """
        proc = self.proc("agent", node) if agent else None
        victims = self.keepalived_pids(node) if keepalived else []
        if proc is not None and proc.alive():
            victims.append(proc.pid)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if proc is not None:
            wait_for(lambda: not proc.alive(), 10, f"the agent of {node} to die")
        return victims

    def restart_agent(self, node: str, timeout: float = 30.0) -> float:
        """Start ``node``'s `ipvslb up` again and wait until it is a VRRP backup and the VIP
        is on one controller only; return the seconds that took."""
        began = time.monotonic()
        self.start_agent(node)
        wait_for(lambda: self.vrrp_state(node) == "BACKUP", timeout,
                 f"{node}'s agent to rejoin as a VRRP backup", abort=self.dead_agents)
        wait_for(lambda: len(self.holders()) == 1, timeout, "the VIP on one controller only")
        return time.monotonic() - began

    def stop_agent(self, node: str, grace: float = 10.0) -> None:
        """SIGTERM the agent (a clean stop: it removes what it added) and wait for it."""
        proc = self.proc("agent", node)
        if proc is not None:
            proc.stop(grace)

    # -- looking at it -----------------------------------------------------------------------

    def addresses(self, netns: str, ifname: str = IFNAME) -> list[str] | None:
        """Addresses (address/prefix) on ``ifname`` in ``netns``; None when there is no link."""
        out = sh("ip", "-j", "-n", netns, "addr", "show", "dev", ifname, check=False)
        if not out.strip():
            return None
        return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
                for a in link.get("addr_info", [])]

    def holders(self) -> list[str]:
        """Controllers whose eth0 holds the VIP."""
        return [m.name for m in self.state.controllers
                if any(a.split("/")[0] == self.vip for a in self.addresses(m.netns) or [])]

    def holder(self) -> str | None:
        found = self.holders()
        return found[0] if len(found) == 1 else None

    def dummy_addresses(self, node: str, ifname: str = "dummyvip0") -> list[str] | None:
        return self.addresses(self.controller(node).netns, ifname)

    def brief(self, node: str) -> str:
        """`ip -br addr show dev eth0` in the node's namespace (the walkthrough's view)."""
        return sh("ip", "-n", self.controller(node).netns, "-br", "addr", "show", "dev",
                  IFNAME).strip()

    def vrrp_state(self, node: str) -> str:
        """The VRRP state keepalived last reported to ``node``'s agent (``-``: none yet)."""
        from ipvslb.keepalived.vs_switch import read_state

        try:
            return read_state(Path(self.controller(node).run_dir), 0) or "-"
        except PermissionError:
            return "-"

    def iptables_rules(self, node: str) -> list[str]:
        from ipvslb.node import iptables

        return iptables.current_rules(netns=self.controller(node).netns)

    def ipvs_rules(self, node: str) -> list[str]:
        """The node's IPVS table as `ipvsadm -S -n` prints it (virtual-servers mode)."""
        netns = self.controller(node).netns
        if shutil.which("ipvsadm"):
            out = sh("ipvsadm", "-S", "-n", netns=netns)
        else:
            out = sh(sys.executable, "-m", "ipvslb", "show", "-S", "--netns", netns)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def ipvsadm(self, node: str, *args: str) -> str:
        """The real ipvsadm's output in ``node``'s namespace (e.g. ``-L -n -c``)."""
        if not shutil.which("ipvsadm"):
            raise UserError("ipvsadm is not installed: apt-get install ipvsadm")
        return sh("ipvsadm", *args, netns=self.controller(node).netns)

    def certificates(self) -> dict[str, str]:
        """Fingerprint -> controller name, from the stand-ins' certificate files."""
        found = {}
        for name in self.names():
            try:
                pem = (self.state_dir / "certs" / f"{name}.crt").read_text()
            except FileNotFoundError:
                continue
            found[fingerprint(ssl.PEM_cert_to_DER_cert(pem))] = name
        return found

    def fetch(self, source: str | None = None, timeout: float = 2.0,
              target: str | None = None, port: int | None = None,
              connect_timeout: float | None = None) -> Fetch:
        """GET / over HTTPS from the client namespace to the VIP (or ``target``), from
        ``source`` (one of the client's addresses); raises OSError when it fails."""
        got = https_get(self.state.client.netns, target or self.vip,
                        port or self.state.api_port, source, timeout, connect_timeout,
                        path=self.probe_path)
        if self.real:  # a real apiserver says "ok"; who it is, its certificate tells
            got = replace(got, name=self.certificates().get(got.fingerprint, "?"))
        return got

    @property
    def probe_path(self) -> str:
        """What a probe GETs: the stand-in's / (its name) or the apiserver's /readyz."""
        return "/readyz" if self.real else "/"

    def sources(self) -> list[str]:
        return [a.split("/")[0] for a in self.state.client.addresses]

    def fetch_round(self, rounds: int = 2, timeout: float = 2.0) -> list[Fetch]:
        """One request from each client source address, ``rounds`` times."""
        return [self.fetch(src, timeout) for _ in range(rounds) for src in self.sources()]

    def wait_serving(self, timeout: float = 60.0) -> str:
        """Wait until exactly one controller holds the VIP and a request through it succeeds;
        return the holder."""
        def ready() -> str | None:
            holder = self.holder()
            if holder is None:
                return None
            self.fetch(timeout=1.0)
            return holder

        return wait_for(ready, timeout, f"the VIP {self.vip} on one controller, serving",
                        interval=0.05, abort=self.dead_agents)

    def dead_agents(self) -> str | None:
        """Which agents have exited (with the last line each logged), or None."""
        dead = []
        for proc in self.procs("agent"):
            if not proc.alive():
                last = (proc.output().strip().splitlines() or ["(no output)"])[-1]
                dead.append(f"the agent of {proc.node} exited ({last[-300:]})")
        return "; ".join(dead) or None

    def prober(self, connect_timeout: float = 0.1, path: str | None = None) -> Prober:
        """A request loop through the VIP from the client (start it with ``with``); it GETs
        ``path`` (default :attr:`probe_path`)."""
        return Prober(self.state.client.netns, self.vip, self.state.api_port, self.sources(),
                      connect_timeout * time_scale(), 2.0 * time_scale(),
                      path=path or self.probe_path)

    def watch(self) -> VipWatch:
        """A VipWatch over the controllers (event-driven: sees every moment of two holders)."""
        from ipvslb.lab.vipwatch import VipWatch

        return VipWatch({m.name: m.netns for m in self.state.controllers}, self.vip, IFNAME)

    # -- failover ----------------------------------------------------------------------------

    def failover(self, how: str = "crash", restart: bool = True, timeout: float = 15.0,
                 probe_timeout: float = 0.1) -> Failover:
        """Take the VIP holder down, time the takeover, and bring the node back.

        ``how``: ``crash`` (SIGKILL its agent and keepalived), ``keepalived`` (SIGKILL
        keepalived only: the agent lives, must remove the VIP at once and respawns keepalived),
        ``term`` (SIGTERM the agent: a clean stop). With ``restart`` (crash, term) the node's
        `ipvslb up` is started again. Requests go through the VIP the whole time; the VIP's
        holders are followed from kernel events.
        """
        if how not in ("crash", "keepalived", "term"):
            raise UserError(f"failover {how!r}: use crash, keepalived or term")
        old = self.wait_serving(timeout)
        limit = timeout * time_scale()
        prober = self.prober(probe_timeout)
        with self.watch() as watch, prober:
            watch.reset()
            began = time.monotonic()
            if how == "term":
                agent = self.proc("agent", old)
                killed = [agent.pid] if agent is not None and agent.signal(signal.SIGTERM) else []
            else:
                killed = self.crash(old, agent=how == "crash")
            moved = watch.wait_for(lambda h: any(n != old for n in h), limit)
            served = prober.first_ok(moved[0], limit) if moved else None
            restarted: float | None = None
            if how == "keepalived":
                # the agent's respawn backoff grows while keepalived keeps dying (up to
                # 30 s; it starts over after a minute of stable running)
                wait_for(lambda: self.keepalived_pids(old) and
                         self.vrrp_state(old) == "BACKUP", max(timeout, 45.0),
                         f"{old}'s agent to respawn keepalived", abort=self.dead_agents)
            else:
                agent = self.proc("agent", old)
                if agent is not None:
                    wait_for(lambda: not agent.alive(), timeout, f"the agent of {old} to exit")
                if restart:
                    self.restart_agent(old, timeout)
                    restarted = time.monotonic()
            if restart or how != "crash":  # a crashed node keeps its VIP until restarted
                wait_for(lambda: len(self.holders()) == 1, timeout, "one VIP holder")
            time.sleep(0.2)  # a little more probing with the node back
            ended = time.monotonic()
        new = next((n for n in moved[1] if n != old), None) if moved else None
        timeline = tuple((round(t - began, 4), h) for t, h in watch.timeline)
        ok_after = [a for a in prober.attempts if served is not None and a.start >= served]
        return Failover(
            how=how, old=old, new=new, killed=tuple(killed),
            vip_moved=(moved[0] - began) if moved else None,
            served=(served - began) if served is not None else None,
            two_holders=watch.two_holder_seconds(), max_holders=watch.max_holders,
            probes=len(prober.attempts),
            failed_after_served=sum(not a.ok for a in ok_after),
            longest_gap=prober.longest_gap(began),
            timeline=timeline, restarted=(restarted - began) if restarted is not None else None,
            dual_masters=time_where(timeline, ended - began,
                                    lambda h: len([n for n in h if n != old]) >= 2),
            stale_vip=time_where(timeline, ended - began,
                                 lambda h: old in h and len(h) >= 2))

    # -- tearing down ------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every process (by pid), delete every namespace, remove the state directory.

        Returns what it did, one line each. Idempotent; keeps going past errors and raises
        one SystemStateError listing them at the end.
        """
        done: list[str] = []
        errors: list[str] = []
        running = [p for p in self.state.processes if p.alive()]
        for proc in running:
            if proc.role == "agent":  # agents first: each cleans up after itself
                proc.signal(signal.SIGCONT)  # a frozen agent cannot stop cleanly
                proc.signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.stop(grace=10.0)
                done.append(f"stopped {proc.role} of {proc.node} (pid {proc.pid})")
            except SystemStateError as err:
                errors.append(str(err))
        for name in self.state.namespaces:
            for pid in pids_in_netns(name):  # keepalived of a killed agent, anything else
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                done.append(f"killed pid {pid} left in {name}")
        for name in reversed(self.state.namespaces):
            if netns_inode(name) is None:
                continue
            with contextlib.suppress(SystemStateError):
                wait_for(lambda n=name: not pids_in_netns(n), 5,  # type: ignore[misc]
                         f"processes in {name} to exit")
            out = subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                                 text=True, check=False)
            if out.returncode == 0:
                done.append(f"deleted netns {name}")
            else:
                errors.append(f"deleting netns {name}: {out.stderr.strip()}")
        if not errors:
            self._remove_state_dir()
        if errors:
            raise SystemStateError("lab down: " + "; ".join(errors))
        return done

    def _remove_state_dir(self) -> None:
        for sub in ("nodes", "certs", "logs"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()


def leftover_namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Namespaces named like a lab's (``<prefix>-...``), e.g. after the state dir was lost."""
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def down_leftovers(prefix: str = DEFAULT_PREFIX, state_dir: Path = DEFAULT_STATE_DIR
                   ) -> list[str]:
    """Remove a lab whose state file is gone: its namespaces and what runs in them."""
    names = leftover_namespaces(prefix)
    if not names:
        return []
    state = LabState(prefix=prefix, mode="", subnet="", vip="", api_port=0, switch="",
                     controllers=[], client=Member("client", "", []), namespaces=names)
    return Lab(state, state_dir).down()


def with_advert(topology: Topology, interval: float | None = None,
                seconds: int | None = None) -> Topology:
    """The topology with another VRRP advert interval (VRRPv3 ``interval`` or VRRPv2
    ``seconds``, k0s's setting); both None: ipvslb's default."""
    net = replace(topology.network, advert_interval=interval, advert_interval_seconds=seconds)
    if seconds is not None and net.auth_pass is None:
        net = replace(net, auth_pass="ipvslab")
    return replace(topology, network=net)


def kernel_has_ipvs(probe_netns: str) -> tuple[bool, str]:
    """Whether this kernel can run virtual-servers mode (IPVS and dummy links); and why not.

    Tries ``modprobe`` quietly, then creates a dummy link in a throw-away namespace.
    """
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "-a", "ip_vs", "ip_vs_rr", "dummy"],
                       capture_output=True, check=False, timeout=30)
    missing = []
    if not Path("/proc/net/ip_vs").exists():
        missing.append("IPVS")
    created = subprocess.run(["ip", "netns", "add", probe_netns], capture_output=True,
                             check=False).returncode == 0
    try:
        ok = created and subprocess.run(
            ["ip", "-n", probe_netns, "link", "add", "probe0", "type", "dummy"],
            capture_output=True, check=False).returncode == 0
    finally:
        if created:
            subprocess.run(["ip", "netns", "delete", probe_netns], capture_output=True,
                           check=False)
    if not ok:
        missing.append("dummy links")
    return not missing, " and ".join(missing)

