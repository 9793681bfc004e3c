"""The netlab helpers themselves, on the host kernel: real namespaces, bridge, veths, TCP.

Traffic only flows between namespaces these tests create.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import NetLab, WaitTimeout, run, tcp_request, wait_until


def netns_names() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line}


def test_lan_carries_tcp_over_ipv4_and_ipv6(netlab: NetLab) -> None:
    lan = netlab.lan(["a", "b", "c"], ipv4="10.88.7.0/24", ipv6="fd00:88:7::/64", first_host=10)
    a, b, c = lan.members
    assert [m.ipv4 for m in lan.members] == ["10.88.7.10", "10.88.7.11", "10.88.7.12"]
    assert b.ipv6 == "fd00:88:7::b"
    netlab.name_server(b.netns, "bee", 8080)
    netlab.name_server(c.netns, "sea", 8080)

    assert tcp_request(b.ipv4, 8080, netns=a.netns) == b"bee\n"
    assert tcp_request(f"{c.ipv6}", 8080, netns=a.netns) == b"sea\n"
    assert tcp_request(c.ipv4, 8080, netns=b.netns) == b"sea\n"


def test_namespaces_are_isolated_from_each_other_and_the_test(netlab: NetLab) -> None:
    lone = netlab.netns("lone")
    lan = netlab.lan(["x"], ipv4="10.88.8.0/24", ipv6="fd00:88:8::/64")
    netlab.name_server(lan.members[0].netns, "x", 8080)
    before = os.readlink("/proc/thread-self/ns/net")

    with pytest.raises(OSError):  # no route from a namespace with only a loopback
        tcp_request(lan.members[0].ipv4, 8080, netns=lone, timeout=2)
    names = lone.call(lambda: [name for _, name in socket.if_nameindex()])

    assert names == ["lo"]
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_close_stops_processes_and_deletes_namespaces(tmp_path: Path) -> None:
    lab = NetLab(tmp_path)
    lan = lab.lan(["m"], ipv4="10.88.9.0/24", ipv6="fd00:88:9::/64")
    server = lab.name_server(lan.members[0].netns, "m", 8080)
    created = {ns.name for ns in lab.namespaces}
    assert created <= netns_names()

    lab.close()

    assert not server.alive()
    assert server.popen.returncode == -signal.SIGTERM
    assert not created & netns_names()


def test_stop_kills_what_ignores_sigterm_and_its_group(netlab: NetLab) -> None:
    # The parent ignores SIGTERM and leaves a child (in its process group) running.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = netlab.start([sys.executable, "-c", script], name="stubborn")
    line = wait_until(lambda: proc.output().strip(), 20, what="the child's pid")
    child = int(line.split()[1])

    status = proc.stop(timeout=0.5)

    assert status == -signal.SIGKILL
    assert "child" in proc.output()
    # The orphaned child was killed too; once init reaps it, its pid is gone.
    wait_until(
        lambda: not os.path.exists(f"/proc/{child}") or _is_zombie(child),
        10,
        what="the child to die",
    )


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_wait_until_returns_the_value_or_names_what_it_waited_for() -> None:
    calls = iter([None, 0, "done"])
    assert wait_until(lambda: next(calls), 5, interval=0.01) == "done"

    with pytest.raises(WaitTimeout, match="waiting for the impossible"):
        wait_until(lambda: False, 0.2, interval=0.01, what="the impossible")


def test_run_reports_the_failing_command() -> None:
    with pytest.raises(AssertionError, match="exited 3"):
        run("sh", "-c", "echo oops >&2; exit 3")
    with pytest.raises(subprocess.TimeoutExpired):
        run("sleep", "5", timeout=0.2)
