"""Network-namespace labs for tests: namespaces, bridged LANs, processes, bounded waits.

Everything here works on the host kernel (network namespaces, veth, bridge) and inside the
QEMU guest of the kernel tier (``tests/vm/run``). A :class:`NetLab` owns what it creates:
:meth:`NetLab.close` stops every process it started (by pid: SIGTERM, a bounded wait, then
SIGKILL) and deletes every namespace it created, which also removes their links. Traffic
stays inside these namespaces: addresses are only ever assigned to links in them.

Timeouts given to :func:`wait_until` and :meth:`Process.stop` are in host seconds and are
multiplied by :func:`timeout_scale` (8 inside the emulated guest, where code runs 15-30x
slower; override with ``IPVSLB_TIMEOUT_SCALE``), so one test body serves both tiers.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

IN_VM = os.environ.get("IPVSLB_IN_VM") == "1"
_names = itertools.count(1)

# A TCP server answering every connection with its name and a newline, then closing it.
# argv: NAME PORT [ADDRESS]; prints "ready" once listening. Dual-stack on "::" by default.
NAME_SERVER = """
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
address = sys.argv[3] if len(sys.argv) > 3 else "::"
family = socket.AF_INET6 if ":" in address else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind((address, port))
s.listen(64)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(name.encode() + b"\\n")
    conn.close()
"""


def timeout_scale() -> float:
    """Factor applied to the bounded waits: IPVSLB_TIMEOUT_SCALE, else 8 in the guest, else 1."""
    value = os.environ.get("IPVSLB_TIMEOUT_SCALE")
    if value:
        return float(value)
    return 8.0 if IN_VM else 1.0


class WaitTimeout(AssertionError):
    """A bounded wait ran out of time."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Exceptions from ``predicate`` count as "not yet". Gives up after ``timeout`` (host
    seconds, scaled by :func:`timeout_scale`) with :class:`WaitTimeout` naming ``what`` and
    the last value or exception seen.
    """
    limit = timeout * timeout_scale()
    deadline = time.monotonic() + limit
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as err:  # noqa: BLE001 - reported below if it never succeeds
            last = err
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {limit:.1f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class CommandError(AssertionError):
    """A command run by :func:`run` exited non-zero."""


def run(
    *argv: str,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
) -> str:
    """Run a command (inside ``netns`` when given) to completion and return its stdout.

    Raises :class:`CommandError` with its stderr when ``check`` and it fails; the command
    is killed after ``timeout`` (scaled) seconds.
    """
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    done = subprocess.run(
        full,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout * timeout_scale(),
        check=False,
    )
    if check and done.returncode != 0:
        raise CommandError(
            f"{' '.join(full)} exited {done.returncode}: {done.stderr.strip() or done.stdout}"
        )
    return done.stdout


@dataclass(frozen=True)
class Netns:
    """A named network namespace (``ip netns``) created by a :class:`NetLab`."""

    name: str

    def argv(self, *argv: str) -> list[str]:
        """The command line running ``argv`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """Run a command inside this namespace; see :func:`run`."""
        return run(*argv, netns=self.name, check=check, timeout=timeout)

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS...`` (iproute2 switches namespace itself: no extra exec)."""
        return run("ip", "-n", self.name, *args)

    def batch(self, commands: Sequence[str]) -> str:
        """Run several ``ip`` commands (lines without the leading ``ip``) in this namespace
        with one process (``ip -n NAME -batch -``): each process start is slow in the guest."""
        return run("ip", "-n", self.name, "-batch", "-", input="".join(f"{c}\n" for c in commands))

    def sysctl(self, **settings: str | int) -> None:
        """Set per-namespace sysctls: ``sysctl(**{"net.ipv4.ip_forward": 1})``."""
        self.run("sysctl", "-q", "-w", *(f"{key}={value}" for key, value in settings.items()))

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run ``fn`` in this namespace, in-process (see :func:`call_in_netns`)."""
        return call_in_netns(self.name, fn, timeout)


@dataclass(frozen=True)
class Member:
    """A namespace on a :class:`Lan`: its link's name and addresses (without prefix)."""

    netns: Netns
    ifname: str
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class Lan:
    """A bridge (``br0`` in its own namespace) with one veth to each member namespace."""

    switch: Netns
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network
    members: list[Member]

    def member(self, netns: Netns | str) -> Member:
        name = netns if isinstance(netns, str) else netns.name
        for member in self.members:
            if member.netns.name == name:
                return member
        raise KeyError(name)


@dataclass
class Process:
    """A process started by :meth:`NetLab.start`; its stdout and stderr go to ``log``."""

    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    netns: Netns | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running (an exited one is not reaped here)."""
        if self.popen.returncode is not None:
            return False
        try:
            state = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return state is None

    def output(self) -> str:
        """Everything the process has written so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (by pid) if it is still running."""
        if self.popen.returncode is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait (bounded, scaled) for the process to exit; return its exit status."""
        return self.popen.wait(timeout * timeout_scale())

    def _wait_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout * timeout_scale()
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 5) -> int:
        """Stop the process: SIGTERM, wait up to ``timeout`` (scaled), then SIGKILL.

        Returns its exit status (negative: killed by that signal). It was started in a new
        session; while it is not yet reaped (so its pid cannot have been reused), whatever
        is left of its process group is killed too.
        """
        if self.popen.returncode is None:
            self.signal(signal.SIGTERM)
            if not self._wait_exited(timeout):
                self.signal(signal.SIGKILL)
                self._wait_exited(10)
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        returncode = self.popen.wait(10 * timeout_scale())
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return returncode


class NetLab:
    """Creates namespaces, LANs and processes for one test, and removes them all on close."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tag = f"{os.getpid()}-{next(_names)}"
        self.namespaces: list[Netns] = []
        self.processes: list[Process] = []
        self._count = itertools.count(1)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, role: str) -> Netns:
        """A new namespace named ``ipvslb-<pid>-<n>-<role>``, with its loopback up."""
        (ns,) = self._create([role])
        ns.batch(["link set lo up"])
        return ns

    def _create(self, roles: Sequence[str]) -> list[Netns]:
        """Create namespaces (loopback still down) with one ``ip`` process."""
        created = [Netns(f"ipvslb-{self.tag}-{role}") for role in roles]
        self.namespaces.extend(created)  # close() skips any that were not created
        run("ip", "-batch", "-", input="".join(f"netns add {ns.name}\n" for ns in created))
        return created

    def veth(self, a: Netns, a_ifname: str, b: Netns, b_ifname: str) -> None:
        """A veth pair from ``a`` (named ``a_ifname``) to ``b`` (``b_ifname``), both up."""
        a.batch(
            [
                f"link add {a_ifname} type veth peer name {b_ifname} netns {b.name}",
                f"link set {a_ifname} up",
            ]
        )
        b.batch([f"link set {b_ifname} up"])

    def lan(
        self,
        members: Sequence[Netns | str],
        ipv4: str = "10.88.0.0/24",
        ipv6: str = "fd00:88::/64",
        ifname: str = "eth0",
        first_host: int = 1,
    ) -> Lan:
        """A bridged LAN joining ``members`` (namespaces, or roles to create namespaces for).

        The bridge ``br0`` lives in its own namespace. Member ``i`` gets a link ``ifname``
        with the ``first_host + i``-th address of ``ipv4`` and of ``ipv6`` (IPv6 without
        duplicate address detection, so it is usable at once).
        """
        net4 = ipaddress.IPv4Network(ipv4)
        net6 = ipaddress.IPv6Network(ipv6)
        roles = [f"sw{next(self._count)}", *(m for m in members if isinstance(m, str))]
        switch, *created = self._create(roles)
        new = iter(created)
        namespaces = [m if isinstance(m, Netns) else next(new) for m in members]

        commands = [
            "link set lo up",
            "link add br0 type bridge stp_state 0 mcast_snooping 0",
            "link set br0 up",
        ]
        for index, ns in enumerate(namespaces):
            commands += [
                f"link add p{index} type veth peer name {ifname} netns {ns.name}",
                f"link set p{index} master br0",
                f"link set p{index} up",
            ]
        switch.batch(commands)

        joined = []
        for index, ns in enumerate(namespaces):
            host4 = net4.network_address + first_host + index
            host6 = net6.network_address + first_host + index
            ns.batch(
                (["link set lo up"] if ns in created else [])
                + [
                    f"link set {ifname} up",
                    f"addr add {host4}/{net4.prefixlen} dev {ifname}",
                    f"addr add {host6}/{net6.prefixlen} dev {ifname} nodad",
                ]
            )
            joined.append(Member(ns, ifname, str(host4), str(host6)))
        return Lan(switch, net4, net6, joined)

    def start(
        self,
        argv: Sequence[str],
        netns: Netns | None = None,
        name: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv`` (inside ``netns`` when given) in a new session, stdin from
        /dev/null, stdout and stderr to ``<workdir>/<name>.log``. Stopped by :meth:`close`."""
        label = name or Path(argv[0]).name
        log = self.workdir / f"{next(self._count):02d}-{label}.log"
        full = netns.argv(*argv) if netns else list(argv)
        log_file = log.open("wb")
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        proc = Process(list(full), log, popen, netns, log_file)
        self.processes.append(proc)
        return proc

    def name_server(
        self, netns: Netns, name: str, port: int, address: str = "::", wait: bool = True
    ) -> Process:
        """Start a TCP server in ``netns`` that answers each connection with ``name`` and a
        newline (on ``address``; "::" is dual-stack), and wait until it listens unless
        ``wait`` is false (then call :meth:`wait_ready` later: servers start in parallel)."""
        proc = self.start(
            [sys.executable, "-c", NAME_SERVER, name, str(port), address], netns, name=name
        )
        if wait:
            self.wait_ready(proc)
        return proc

    @staticmethod
    def wait_ready(proc: Process, timeout: float = 20) -> None:
        """Wait until a process started by :meth:`name_server` prints "ready"."""
        wait_until(
            lambda: "ready" in proc.output() or not proc.alive(),
            timeout,
            what=f"{proc.log.stem} to print ready",
        )
        if "ready" not in proc.output():
            raise AssertionError(f"{' '.join(proc.argv)} exited: {proc.output()}")

    def close(self) -> None:
        """Stop every process (newest first), then delete every namespace."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as err:  # noqa: BLE001 - keep cleaning up, report at the end
                errors.append(f"stopping {proc.argv}: {err}")
        self.processes.clear()
        existing = [ns for ns in self.namespaces if os.path.exists(f"/run/netns/{ns.name}")]
        if existing:
            done = subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input="".join(f"netns delete {ns.name}\n" for ns in reversed(existing)),
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                errors.append(f"deleting namespaces: {done.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise RuntimeError("netlab clean-up failed: " + "; ".join(errors))


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def call_in_netns(name: str, fn: Callable[[], T], timeout: float = 30) -> T:
    """Run ``fn`` inside network namespace ``name`` and return its result.

    ``fn`` runs in a fresh thread that first switches its own network namespace
    (setns(2) only affects the calling thread), so the test process itself never moves and
    sockets ``fn`` creates belong to that namespace. Much faster than starting a process
    with ``ip netns exec`` (Python starts slowly in the emulated guest).
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            with open(f"/run/netns/{name}", "rb") as handle:
                if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            result.append(fn())
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(err)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout * timeout_scale())
    if thread.is_alive():
        raise WaitTimeout(f"function in netns {name} still running after {timeout}s")
    if failure:
        raise failure[0]
    return result[0]


def tcp_request(
    host: str, port: int, data: bytes = b"", netns: Netns | None = None, timeout: float = 5
) -> bytes:
    """Connect to ``host:port`` (from inside ``netns`` when given), send ``data``, and
    return everything the server sends until it closes the connection."""

    def request() -> bytes:
        with socket.create_connection((host, port), timeout=timeout * timeout_scale()) as conn:
            if data:
                conn.sendall(data)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    if netns is None:
        return request()
    return netns.call(request, timeout=timeout + 5)
