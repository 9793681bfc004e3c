"""A real client's view of the API through the VIP: a `kubectl --watch` kept running, and
changes made with `kubectl create` (used by the control-plane tests and bench/controlplane).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from ipvslb.errors import SystemStateError
from ipvslb.lab.procs import wait_for

if TYPE_CHECKING:
    from ipvslb.lab.nslab import Lab

WATCH_LIFETIME = 900.0  # upper bound on how long one Watch keeps restarting kubectl


class Watch:
    """`kubectl get configmaps --watch` through the VIP in the lab's client namespace,
    restarted whenever it ends (as any watching client does); every line it prints is kept
    with the time it arrived. Use as a context manager; leaving it kills kubectl."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.lines: list[tuple[float, str]] = []
        self.runs = 0
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._thread.join(15)

    def _run(self) -> None:
        deadline = time.monotonic() + WATCH_LIFETIME
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.runs += 1
            self._proc = subprocess.Popen(
                self.lab.kubectl_argv("get", "configmaps", "--watch", "--output-watch-events",
                                      "-o", "name", "--request-timeout=0"),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                self.lines.append((time.monotonic(), line.strip()))
            self._proc.wait()
            self._stop.wait(0.2)

    def seen(self, name: str) -> float | None:
        """When the watch printed an event for configmap ``name`` (None: not yet)."""
        return next((t for t, line in self.lines if line.endswith(f"/{name}")), None)


def make_configmap(lab: Lab, name: str, timeout: float = 30.0) -> bool:
    """`kubectl create configmap` through the VIP; True once it exists (a retry after a
    failover may find that the first attempt made it). SystemStateError with kubectl's words
    when it failed (``wait_for`` shows the last one if it never succeeds)."""
    try:
        done = lab.kubectl("create", "configmap", name, "--from-literal=k=v", check=False,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemStateError(f"kubectl create configmap {name}: no answer in {timeout}s"
                               ) from None
    if done.returncode == 0 or "AlreadyExists" in done.stderr:
        return True
    raise SystemStateError(f"kubectl create configmap {name}: {done.stderr.strip()[-300:]}")


BACKENDS_LOGGED = re.compile(r'msg="backends changed" backends=(\S+)')
# The apiservers' lease endpoint reconciler (1.20: TTL 15 s, reconciled every 10 s) drops a
# dead apiserver's address within ~25 s; allow for a loaded machine (scaled in the guest).
LEASE_EXPIRY = 60.0


def agent_backends(lab: Lab, node: str) -> list[str] | None:
    """The backend list ``node``'s agent last adopted, from its own log line."""
    proc = lab.proc("agent", node)
    if proc is None:
        return None
    found = BACKENDS_LOGGED.findall(proc.output())
    return sorted(found[-1].split(",")) if found else None


def all_backends(lab: Lab) -> list[str]:
    return sorted(f"{lab.address_of(n)}:{lab.state.api_port}" for n in lab.names())


def wait_agents_follow(lab: Lab, expected: list[str], nodes: list[str] | None = None) -> None:
    """Wait until every agent (or those of ``nodes``) uses ``expected`` as its backends."""
    for node in nodes or lab.names():
        wait_for(lambda n=node: agent_backends(lab, n) == expected,  # type: ignore[misc]
                 LEASE_EXPIRY, f"{node}'s agent to use {expected}")


def wait_healthy(lab: Lab) -> None:
    """All nodes up, the API listing every apiserver, every agent using them all, and the VIP
    on one controller, serving."""
    for node in lab.names():
        for role in ("etcd", "apiserver", "agent"):
            proc = lab.proc(role, node)
            assert proc is not None and proc.alive(), f"{node}'s {role} is not running"
    wait_for(lambda: lab.published() == sorted(lab.address_of(n) for n in lab.names()),
             LEASE_EXPIRY, "the API to list every apiserver")
    wait_agents_follow(lab, all_backends(lab))
    lab.wait_serving(30)
