"""ipvslb's userspace proxy for the soak, wired as the agent wires it in userspace mode: the
Proxy, an active HealthChecker narrowing its rotation, the proxy's passive ejections reported
back to the checker. Every ``--sample`` seconds it prints one JSON line of its own state: open
file descriptors, RSS, asyncio tasks, threads, the proxy's counters. Runs until SIGTERM.

Usage: ipvslb_subject.py --port P [--sample S] BACKEND...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ipvslb.endpoints.health import HealthChecker  # noqa: E402
from ipvslb.endpoints.source import Backend  # noqa: E402
from ipvslb.proxy import Proxy  # noqa: E402


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def serve(port: int, backends: list[Backend], sample: float) -> None:
    proxy = Proxy("127.0.0.1", port, [])
    await proxy.start()

    def readmit(backend: Backend, ok: bool) -> None:
        if ok:
            proxy.readmit([backend])

    health = HealthChecker(backends, on_change=proxy.update, on_result=readmit, mode="tcp",
                           fail_open=True)
    proxy.on_eject = health.report_failure
    await health.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    began = time.monotonic()
    while not stop.is_set():
        stats = proxy.stats()
        print(json.dumps({
            "t": time.monotonic() - began, "fds": len(os.listdir("/proc/self/fd")),
            "rss_kb": rss_kb(), "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(), "active": stats.active, "total": stats.total,
            "failed": stats.failed,
        }), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), sample)
        except TimeoutError:
            pass
    await health.stop()
    await proxy.stop(grace=1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sample", type=float, default=5.0)
    ap.add_argument("backends", nargs="+")
    args = ap.parse_args()
    backends = [Backend(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backends]
    asyncio.run(serve(args.port, backends, args.sample))


if __name__ == "__main__":
    main()
