"""Checks of the Vagrant lab that run without a hypervisor (issue 8, host tier).

`vagrant validate --ignore-provider` (Debian's vagrant) loads the Vagrantfile, reads the lab
topology and checks every machine and provisioner without creating anything; `ruby -c` checks
the syntax; shellcheck every provisioning script; `systemd-analyze verify` the ipvslb unit.
The shell helpers the provisioning relies on (bounded waits, the encrypted join-token share,
the k0s config template) run for real here, on loopback only.
Each check is skipped, saying so, only when its tool is missing.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from ipvslb.lab.topology import DEFAULT_TOPOLOGY, Topology

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
SCRIPTS = sorted(VAGRANT_DIR.glob("*.sh"))
ENTRY_SCRIPTS = [p for p in SCRIPTS if p.name != "lib.sh"]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {package})")
    return path


def vagrant(tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = need("vagrant", "vagrant")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPVSLB_LAB_")}
    env.update(
        VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
        VAGRANT_HOME=str(tmp_path / "vagrant-home"),  # nothing written to ~/.vagrant.d
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"),  # nor to the project's .vagrant/
        IPVSLB_LAB_PRINT_PLAN="1",
        **extra_env,
    )
    return subprocess.run([binary, "validate", "--ignore-provider"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def plan_of(output: str) -> list[tuple[str, str, str, str]]:
    plan = []
    for line in output.splitlines():
        if line.startswith("ipvslb-lab: node "):
            name, address, kind, role = line.split()[2:6]
            plan.append((name, address, kind, role))
    return plan


def python_plan(topology: Topology) -> list[tuple[str, str, str, str]]:
    return [(n.name, str(n.address), n.kind.value, n.role.value if n.role else "worker")
            for n in topology.nodes]


@pytest.mark.parametrize("overrides", [
    {},
    {"IPVSLB_LAB_CONTROLLERS": "2", "IPVSLB_LAB_WORKERS": "0",
     "IPVSLB_LAB_ROLE": "controller+worker"},
    {"IPVSLB_LAB_WORKERS": "1", "IPVSLB_LAB_MODE": "userspace",
     "IPVSLB_LAB_BOX": "generic/debian12", "IPVSLB_LAB_K0S_VERSION": "v1.33.1+k0s.0"},
])
def test_vagrant_validate_plans_the_same_lab_as_the_topology_module(
        tmp_path: Path, overrides: dict[str, str]) -> None:
    proc = vagrant(tmp_path, overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully." in proc.stdout
    expected = Topology.load(DEFAULT_TOPOLOGY).select(
        int(overrides["IPVSLB_LAB_CONTROLLERS"]) if "IPVSLB_LAB_CONTROLLERS" in overrides
        else None,
        int(overrides["IPVSLB_LAB_WORKERS"]) if "IPVSLB_LAB_WORKERS" in overrides else None)
    if "IPVSLB_LAB_ROLE" in overrides:
        expected = expected.with_role(overrides["IPVSLB_LAB_ROLE"])
    assert plan_of(proc.stdout) == python_plan(expected)
    header = next(line for line in proc.stdout.splitlines()
                  if line.startswith("ipvslb-lab: box="))
    assert f"box={overrides.get('IPVSLB_LAB_BOX', 'debian/bookworm64')} " in header
    assert f"k0s={overrides.get('IPVSLB_LAB_K0S_VERSION', 'v1.32.2+k0s.0')} " in header
    assert f"mode={overrides.get('IPVSLB_LAB_MODE', 'virtual-servers')} " in header
    assert "vip=192.168.56.10/24 topology=/vagrant/examples/lab-topology.yaml" in header
    secret = tmp_path / "dotfile" / "ipvslb-lab" / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text()) == 48


@pytest.mark.parametrize("overrides, message", [
    ({"IPVSLB_LAB_WORKERS": "9"}, "IPVSLB_LAB_WORKERS=9 must be a whole number from 0 to 3"),
    ({"IPVSLB_LAB_CONTROLLERS": "0"}, "IPVSLB_LAB_CONTROLLERS=0 must be a whole number from 1"),
    ({"IPVSLB_LAB_ROLE": "worker"}, "IPVSLB_LAB_ROLE=worker is not one of controller, "
                                    "controller+worker"),
    ({"IPVSLB_LAB_MODE": "ipvs"}, "IPVSLB_LAB_MODE=ipvs is not one of virtual-servers, "
                                  "userspace"),
    ({"IPVSLB_LAB_K0S_VERSION": "latest"}, "k0s version latest is not a k0s release"),
    ({"IPVSLB_LAB_TOPOLOGY": "/etc/hostname"}, "IPVSLB_LAB_TOPOLOGY=/etc/hostname must be "
                                               "inside"),
    ({"IPVSLB_LAB_TOPOLOGY": "missing.yaml"}, "missing.yaml: no such topology file"),
])
def test_bad_overrides_stop_vagrant_with_one_clear_line(tmp_path: Path, overrides: dict[str, str],
                                                        message: str) -> None:
    proc = vagrant(tmp_path, overrides)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("ipvslb lab: ") and message in proc.stderr, proc.stderr


def test_vagrantfile_ruby_syntax() -> None:
    ruby = need("ruby", "ruby")
    proc = subprocess.run([ruby, "-c", str(ROOT / "Vagrantfile")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "Syntax OK", proc.stderr


def test_shellcheck_every_provisioning_script() -> None:
    shellcheck = need("shellcheck", "shellcheck")
    assert len(SCRIPTS) >= 5
    proc = subprocess.run([shellcheck, "--external-sources", "--shell=bash",
                           *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_script_is_strict_and_used() -> None:
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    for script in ENTRY_SCRIPTS:
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash", script.name
        assert "set -euo pipefail" in lines[:5], f"{script.name}: no set -euo pipefail at the top"
        assert '. "${LAB_ROOT:-/vagrant}/vagrant/lib.sh"' in lines, script.name
        assert f'path: "vagrant/{script.name}"' in vagrantfile, f"{script.name} is never run"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def bash(script: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = f"set -euo pipefail\n. {VAGRANT_DIR / 'lib.sh'}\n{script}"
    return subprocess.run(["bash", "-c", full], capture_output=True, text=True, timeout=timeout,
                          check=False, env={"PATH": os.environ["PATH"], "LAB_NODE": "test-node",
                                            **(env or {})})


def test_k0s_template_renders_a_cluster_config_without_k0s_cplb() -> None:
    proc = bash(f"render_k0s_config {VAGRANT_DIR / 'k0s.yaml.tmpl'} 192.168.56.12 "
                "192.168.56.10 6443")
    assert proc.returncode == 0, proc.stderr
    assert "@" not in proc.stdout
    doc = yaml.safe_load(proc.stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("k0s.k0sproject.io/v1beta1", "ClusterConfig")
    api = doc["spec"]["api"]
    assert (api["address"], api["externalAddress"], api["port"]) == (
        "192.168.56.12", "192.168.56.10", 6443)
    assert api["sans"] == ["192.168.56.10", "192.168.56.12"]
    assert doc["spec"]["storage"]["etcd"]["peerAddress"] == "192.168.56.12"
    assert doc["spec"]["network"]["controlPlaneLoadBalancing"] == {"enabled": False}


def test_ipvslb_unit_has_what_the_lab_needs_and_systemd_accepts_it(tmp_path: Path) -> None:
    unit = (VAGRANT_DIR / "ipvslb.service").read_text()
    for directive in ("ExecStart=/opt/ipvslb/venv/bin/ipvslb up -c /etc/ipvslb/config.yaml",
                      "Restart=always", "KillSignal=SIGTERM", "TimeoutStopSec=15",
                      "KillMode=mixed", "WantedBy=multi-user.target", "Type=notify",
                      "NotifyAccess=main", "WatchdogSec=30"):
        assert f"\n{directive}\n" in unit, directive
    assert re.search(r"^After=network-online\.target\b", unit, re.M)
    analyze = need("systemd-analyze", "systemd")
    # A throwaway root with the ExecStart binary in place, so verify checks only the unit.
    root = tmp_path / "root"
    binary = root / "opt/ipvslb/venv/bin/ipvslb"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    target = root / "etc/systemd/system/ipvslb.service"
    target.parent.mkdir(parents=True)
    target.write_text(unit)
    proc = subprocess.run([analyze, "verify", "--man=no", "--recursive-errors=no",
                           f"--root={root}", "/etc/systemd/system/ipvslb.service"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_wait_for_is_bounded_and_names_what_it_waited_for() -> None:
    proc = bash("wait_for 'the moon' 3 0 false")
    assert proc.returncode == 1
    assert proc.stderr == "error: ipvslb-lab test-node: timed out after 0 s waiting for the moon\n"
    assert bash("n=0; wait_for counter 5 0 test -e /\necho ok").stdout == "ok\n"


def test_interface_of_finds_the_nic_holding_an_address() -> None:
    need("ip", "iproute2")
    proc = bash("interface_of 127.0.0.1; echo \"[$(interface_of 198.51.100.77)]\"")
    assert proc.stdout == "lo\n[]\n", proc.stderr


def test_install_if_changed_reports_changes(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "sub" / "dest"
    src.write_text("one\n")
    script = f"""
install_if_changed {src} {dest} 0600 && echo changed || echo same
install_if_changed {src} {dest} 0600 && echo changed || echo same
install_if_changed {src} {dest} 0644 && echo changed || echo same
echo two > {src}
install_if_changed {src} {dest} 0644 && echo changed || echo same
"""
    proc = bash(script)
    assert proc.stdout.split() == ["changed", "same", "changed", "changed"], proc.stderr
    assert dest.read_text() == "two\n" and dest.stat().st_mode & 0o777 == 0o644


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def share(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A static HTTP server on loopback, like the first controller's join share."""
    directory = tmp_path / "share"
    directory.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield directory, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_join_share_round_trip_and_wrong_secret(tmp_path: Path,
                                                share: tuple[Path, int]) -> None:
    need("openssl", "openssl")
    need("curl", "curl")
    directory, port = share
    token = tmp_path / "worker.token"
    token.write_text("H4sIAAAAAAAC/secret-token-body\n")
    env = {"LAB_SECRET": "s3cret-lab", "LAB_FIRST_ADDRESS": "127.0.0.1",
           "LAB_FIRST_CONTROLLER": "ctrl-1", "LAB_SHARE_PORT": str(port)}
    assert bash(f"encrypt_to {token} {directory}/worker.token.enc", env).returncode == 0
    encrypted = (directory / "worker.token.enc").read_bytes()
    assert b"secret-token-body" not in encrypted  # never served in the clear
    dest = tmp_path / "etc" / "worker.token"
    proc = bash(f"fetch_shared worker.token {dest}", env)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_text() == token.read_text()
    assert dest.stat().st_mode & 0o777 == 0o600
    wrong = bash(f"fetch_shared worker.token {tmp_path / 'other'}", {**env, "LAB_SECRET": "nope"})
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines()[-1] == (
        "error: ipvslb-lab test-node: cannot decrypt worker.token: the lab secret differs from "
        "ctrl-1's (re-provision it: vagrant provision ctrl-1)")


def test_scripts_refuse_to_run_outside_the_vagrantfile() -> None:
    for script in ENTRY_SCRIPTS:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                              check=False, env={"PATH": os.environ["PATH"],
                                                "LAB_ROOT": str(ROOT)})
        assert proc.returncode == 1, script.name
        assert proc.stderr.startswith("error: ipvslb-lab ?: LAB_"), (script.name, proc.stderr)
        assert "is not set (run this script through the Vagrantfile)" in proc.stderr
