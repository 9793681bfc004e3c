"""Time from an endpoint change reaching the agent to the IPVS table updated on the master.

Runs inside the project's QEMU guest (the host kernel has no IPVS):

    tests/vm/run .venv/bin/python bench/endpoint_change/run.py [--changes N]

One director namespace holds the VIP (VRRP master of a single-node instance, virtual-servers
mode, keepalived programming IPVS) and a backend namespace holds 20 apiserver addresses with a
TCP listener. The real agent (ipvslb.agent.Agent) runs in this process; the endpoint source
is the one thing replaced: a source the benchmark drives, so that a change is delivered at a
known instant. Each change adds or removes one backend; the time is measured until the
master's IPVS service lists exactly the new backends (read over netlink every 2 ms). The path
measured is the agent's: render -> atomic write -> SIGHUP -> keepalived reload -> IPVS.

Python runs 15-30x slower in the emulated guest than on a node, so the absolute figures are an
upper bound. Results: bench/results/endpoint-change.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
DIRECTOR, PEER = "ipvslb-bench-ec-d", "ipvslb-bench-ec-b"
VIP, PORT = "10.91.0.100", 6443
BACKENDS = [f"10.91.0.{i}" for i in range(11, 31)]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def build() -> None:
    for ns in (DIRECTOR, PEER):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", DIRECTOR, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", PEER)
    sh("ip", "-n", DIRECTOR, "addr", "add", "10.91.0.1/24", "dev", "eth0")
    sh("ip", "-n", DIRECTOR, "link", "set", "eth0", "up")
    for address in BACKENDS:
        sh("ip", "-n", PEER, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", PEER, "link", "set", "eth0", "up")


def teardown() -> None:
    for ns in (DIRECTOR, PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)


class DrivenSource:
    """The endpoint source the benchmark drives (delivers when told to)."""

    def __init__(self, first: list[object]) -> None:
        self.first = first
        self.on_update = None

    def start(self, on_update) -> None:  # type: ignore[no-untyped-def]
        self.on_update = on_update
        on_update(self.first)

    def stop(self) -> None:
        return None


def ipvs_backends() -> set[str] | None:
    from ipvslb.ipvs.model import TCP, Service
    from ipvslb.ipvs.netlink import IPVS
    from ipvslb.ipvs.read import read_service

    with IPVS(None) as ipvs:
        svc = read_service(ipvs, Service(2, TCP, VIP, PORT))
    return None if svc is None else {d.address for d in svc.dests}


async def wait_for(predicate, timeout: float, interval: float = 0.002) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise TimeoutError("IPVS did not reach the expected state")


async def measure(changes: int, work: Path) -> list[float]:
    import ipvslb.agent as agent_module
    from ipvslb import logfmt
    from ipvslb.config.formats import config_from_document
    from ipvslb.endpoints.source import Backend

    logfmt.setup("warning")
    doc = {
        "node": {"runDir": str(work / "run"), "apiserverHealth": {"enabled": False},
                 "priority": 200},
        "endpoints": {"source": "static", "static": [BACKENDS[0]]},
        "controlPlaneLoadBalancing": {"keepalived": {
            "vrrpInstances": [{"virtualIPs": [f"{VIP}/24"], "interface": "eth0",
                               "advertIntervalSeconds": 1, "authPass": "bench"}],
            "virtualServers": [{"ipAddress": VIP, "delayLoop": "60s"}]}},
    }
    config = config_from_document(doc)
    current = [Backend(BACKENDS[0], PORT), Backend(BACKENDS[1], PORT)]
    source = DrivenSource(list(current))
    agent_module.make_source = lambda _config: source  # the one replaced part
    agent = agent_module.Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_for(lambda: ipvs_backends() == {b.address for b in current}, 600, 0.1)
        times = []
        for i in range(changes):
            if i % 2 == 0 or len(current) <= 2:
                current = current + [Backend(BACKENDS[2 + i % 18], PORT)]
            else:
                current = current[:-1]
            want = {b.address for b in current}
            assert source.on_update is not None
            source.on_update(list(current))
            times.append(await wait_for(lambda want=want: ipvs_backends() == want, 60))
            await asyncio.sleep(0.3)
        return times
    finally:
        stop.set()
        await asyncio.wait_for(task, 120)


def child(changes: int) -> int:
    with tempfile.TemporaryDirectory(prefix="ipvslb-bench-ec-") as tmp:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", PEER, sys.executable, "-c",
             "import socket,time\ns=socket.socket();s.setsockopt(1,2,1)\n"
             "s.bind(('0.0.0.0',6443));s.listen(128)\nwhile True: s.accept()[0].close()"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            times = asyncio.run(measure(changes, Path(tmp)))
        finally:
            listener.kill()
            listener.wait(10)
    print(json.dumps(times))
    return 0


def report(times: Sequence[float]) -> dict[str, object]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(times), "p50_ms": round(statistics.median(times) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1), "max_ms": round(max(times) * 1000, 1),
            "min_ms": round(min(times) * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.changes)
    if os.environ.get("IPVSLB_IN_VM") != "1":
        print("bench/endpoint_change needs IPVS: run it with tests/vm/run", file=sys.stderr)
        return 2
    teardown()
    build()
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", DIRECTOR, sys.executable, __file__, "--child",
             "--changes", str(args.changes)],
            capture_output=True, text=True, timeout=1800, cwd=ROOT)
    finally:
        teardown()
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-5000:], file=sys.stderr)
        return 1
    times = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "where": "QEMU TCG guest (Python 15-30x slower than on a node)",
              "load_before": os.getloadavg()[0], **report(times), "samples_s": times}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "endpoint-change.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "endpoint-change.md").write_text(
        "# Endpoint change -> IPVS updated on the master\n\n"
        f"{result['when']}, {result['where']}, load {result['load_before']:.1f}.\n\n"
        "| changes | p50 | p99 | max | min |\n|---|---|---|---|---|\n"
        f"| {result['n']} | {result['p50_ms']} ms | {result['p99_ms']} ms | "
        f"{result['max_ms']} ms | {result['min_ms']} ms |\n\n"
        "Measured from the source delivering a new list to the agent until the master's "
        "IPVS service lists exactly those real servers (render, atomic write, SIGHUP, "
        "keepalived reload).\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples_s"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
