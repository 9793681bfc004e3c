"""Fixtures for the end-to-end tests: the one-machine lab (``ipvslb.lab.nslab``).

Each test gets its own lab: a bridge, three controller namespaces (apiserver stand-in on
:6443 + `ipvslb up` with real keepalived) and a client namespace, all named
``ipvslbe2e<pid>-...`` and removed afterwards (processes stopped by pid, namespaces deleted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvslb.config.model import Role
from ipvslb.lab.nslab import Lab
from ipvslb.lab.topology import LabMode, Topology


def lab_requirements() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces)"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            return f"`{tool}` missing (apt-get install {package})"
    if not os.access("/usr/sbin/keepalived", os.X_OK):
        return "keepalived missing (apt-get install keepalived)"
    return None


def print_logs(lab: Lab) -> None:
    for proc in lab.state.processes:
        print(f"--- {proc.node} {proc.role} (pid {proc.pid})\n{proc.output()[-6000:]}")


@contextlib.contextmanager
def running_lab(tmp_path: Path, mode: LabMode, role: Role, prefix: str,
                timeout: float) -> Iterator[Lab]:
    """Three controllers in ``mode``/``role`` and a client, up and serving; always torn down
    (skips with the reason when the lab cannot run here)."""
    why = lab_requirements()
    if why:
        pytest.skip(why)
    topology = Topology.load().select(controllers=3, workers=0).with_mode(mode).with_role(role)
    lab = Lab.plan(topology, state_dir=tmp_path / "lab", prefix=f"{prefix}{os.getpid()}")
    try:
        lab.up(timeout=timeout)
        yield lab
    finally:
        print_logs(lab)
        lab.down()


@contextlib.contextmanager
def real_control_plane(state_dir: Path, mode: LabMode, role: Role, prefix: str
                       ) -> Iterator[Lab]:
    """Three controllers with a real control plane (etcd, kube-apiserver, `ipvslb up` with
    ``endpoints: kubernetes``) in ``mode``/``role`` and a kubectl client; always torn down.
    Skips with the reason when it cannot run here, fails instead under
    IPVSLB_REQUIRE_APISERVER=1 (CI: the tier must run)."""
    from ipvslb.lab import controlplane

    why = lab_requirements() or controlplane.missing()
    if why:
        if os.environ.get("IPVSLB_REQUIRE_APISERVER") == "1":
            pytest.fail(f"real control-plane lab required but {why}")
        pytest.skip(f"real control-plane lab: {why}")
    topology = Topology.load().select(controllers=3, workers=0).with_mode(mode).with_role(role)
    lab = Lab.plan(topology, state_dir=state_dir, prefix=f"{prefix}{os.getpid()}",
                   apiserver="kube")
    try:
        print(f"real control plane up in {lab.up(timeout=120):.0f}s")
        yield lab
    finally:
        print_logs(lab)
        lab.down()


@pytest.fixture
def userspace_lab(tmp_path: Path) -> Iterator[Lab]:
    """Three controller+worker nodes (userspace mode) and a client, up and serving."""
    with running_lab(tmp_path, LabMode.USERSPACE, Role.CONTROLLER_WORKER, "ipvslbe2e",
                     60) as lab:
        yield lab
