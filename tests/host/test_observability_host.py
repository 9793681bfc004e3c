"""systemd readiness/watchdog and the status socket of a real `ipvslb up` (issue 12).

The node is a network namespace this test creates (veth to a peer namespace), the agent runs
real keepalived in userspace mode, and systemd's side of the notify protocol is a real
AF_UNIX datagram socket the test binds and names in $NOTIFY_SOCKET, as systemd does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.netlab import NetLab, Netns, wait_until

ADDRESS, VIP = "10.98.0.1", "10.98.0.10"


def node_doc(run_dir: Path) -> dict[str, Any]:
    return {
        "node": {"runDir": str(run_dir), "priority": 100, "apiserverHealth": {"enabled": False},
                 "metrics": {"listen": "127.0.0.1:9451"}},
        "endpoints": {"source": "static", "static": [f"{ADDRESS}:6443"]},
        "controlPlaneLoadBalancing": {"keepalived": {
            "vrrpInstances": [{"virtualIPs": [f"{VIP}/24"], "interface": "eth0"}]}},
    }


def node(netlab: NetLab) -> Netns:
    ns, peer = netlab.netns("node"), netlab.netns("peer")
    netlab.veth(ns, "eth0", peer, "eth0")
    ns.batch([f"addr add {ADDRESS}/24 dev eth0", "link set lo up"])
    return ns


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def messages(sock: socket.socket, seconds: float) -> list[str]:
    """Datagrams received within ``seconds``."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def ask(path: Path, data: bytes, uid: int | None = None) -> dict[str, Any]:
    """Send ``data`` to the status socket (as ``uid`` in a forked child when given)."""
    if uid is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(15)
            s.connect(str(path))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            return json.loads(s.makefile().read())  # type: ignore[no-any-return]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a non-root user on this node
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            answer = json.dumps(ask(path, data)).encode()
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            answer = json.dumps({"child": type(err).__name__}).encode()
        os.write(write, answer)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        body = f.read()
    os.waitpid(pid, 0)
    return json.loads(body)  # type: ignore[no-any-return]


def test_ready_watchdog_stopping_and_a_root_only_status_socket(
        netlab: NetLab, tmp_path: Path, notify_socket: socket.socket,
        request: pytest.FixtureRequest) -> None:
    ns = node(netlab)
    # a directory every user may traverse (pytest's tmp_path is root's alone), for the case
    # of a status socket chmod-ed open by mistake
    top = Path(tempfile.mkdtemp(prefix="ipvslb-status-", dir="/tmp"))
    top.chmod(0o711)
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    run_dir = top / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(node_doc(run_dir)))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    agent = netlab.start([sys.executable, "-m", "ipvslb", "up", "-c", str(cfg)], netns=ns,
                         name="agent", env=env)

    # READY=1 only once keepalived runs and its configuration is rendered
    ready_at = None
    deadline = time.monotonic() + 60
    while ready_at is None and time.monotonic() < deadline and agent.alive():
        for msg in messages(notify_socket, 0.5):
            if "READY=1" in msg.split("\n"):
                pid = int((run_dir / "keepalived.pid").read_text())
                assert Path(f"/proc/{pid}/comm").read_text().strip() == "keepalived"
                assert "vrrp_instance ipvslb-vip-0" in (run_dir / "keepalived.conf").read_text()
                ready_at = time.monotonic()
    assert ready_at is not None, agent.output()
    # keepalived gets neither the notify socket (it would report READY for the agent's unit)
    # nor the shared /tmp for its JSON dump
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in environ if e.startswith(b"NOTIFY_SOCKET=")]
    assert f"TMPDIR={run_dir}".encode() in environ

    # the watchdog is fed from the agent's loop at half of WATCHDOG_USEC (0.2 s)
    fed = [m for m in messages(notify_socket, 2.0) if m == "WATCHDOG=1"]
    assert 5 <= len(fed) <= 20, fed

    sock_path = run_dir / "status.sock"
    assert sock_path.stat().st_mode & 0o777 == 0o600
    snap = ask(sock_path, b'{"get": "status"}\n')
    assert snap["schema"] == "ipvslb.status/v1" and snap["mode"] == "userspace"
    # malformed, unknown, oversized and empty requests: an error each, the agent unharmed
    assert "not JSON" in ask(sock_path, b"hello\n")["error"]
    assert "unknown request" in ask(sock_path, b'{"get": "secrets"}\n')["error"]
    assert "longer than" in ask(sock_path, b"x" * 10000 + b"\n")["error"]
    assert "one JSON line" in ask(sock_path, b"")["error"]
    # a non-root user: the socket's mode keeps it out; chmod-ed open by mistake, SO_PEERCRED
    assert ask(sock_path, b'{"get": "status"}\n', uid=65534) == {"child": "PermissionError"}
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-m", "ipvslb", "status", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2 and "run ipvslb status as root" in res.stderr, res
    run_dir.chmod(0o755)
    sock_path.chmod(0o666)
    assert ask(sock_path, b'{"get": "status"}\n', uid=65534) == {
        "error": "permission denied: root only"}
    assert ask(sock_path, b'{"get": "status"}\n')["pid"] == agent.pid  # still answering
    assert agent.alive()

    # SIGTERM (systemctl stop): STOPPING=1, a clean exit, the socket gone
    agent.signal(signal.SIGTERM)
    assert "STOPPING=1" in messages(notify_socket, 3.0)
    assert agent.wait(30) == 0, agent.output()
    wait_until(lambda: not sock_path.exists(), 5, what="the status socket removed")
