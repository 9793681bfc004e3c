"""A monitoring client for bench/idle, run inside one lab node's network namespace.

  python bench/idle/scrape.py --port 9450 --interval 15 --seconds 120 [--status-config FILE
                              --status-interval 5]

GETs http://127.0.0.1:PORT/metrics every ``--interval`` seconds (as a Prometheus server
would) and, with ``--status-config``, runs ``ipvslb status -c FILE --json`` every
``--status-interval`` seconds (as a monitoring script would), for ``--seconds``. Prints one
JSON line: scrapes, bytes, failures, scrape latency (median/max ms), status calls and their
exit codes. Only 127.0.0.1 of the namespace it runs in is ever contacted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--interval", type=float, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--status-config", default=None)
    ap.add_argument("--status-interval", type=float, default=5.0)
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}/metrics"
    began = time.monotonic()
    deadline = began + args.seconds
    next_scrape = began
    next_status = began if args.status_config else float("inf")
    latencies: list[float] = []
    size = failures = 0
    codes: Counter[int] = Counter()
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_scrape:
            next_scrape += args.interval
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    size += len(resp.read())
                latencies.append(time.monotonic() - t0)
            except OSError:
                failures += 1
        if now >= next_status:
            next_status += args.status_interval
            proc = subprocess.run(
                [sys.executable, "-m", "ipvslb", "status", "-c", args.status_config, "--json"],
                capture_output=True, timeout=30, check=False)
            codes[proc.returncode] += 1
        time.sleep(max(0.0, min(next_scrape, next_status, deadline) - time.monotonic()))
    print(json.dumps({
        "scrapes": len(latencies), "failures": failures, "bytes": size,
        "scrape_ms_median": statistics.median(latencies) * 1000 if latencies else None,
        "scrape_ms_max": max(latencies) * 1000 if latencies else None,
        "status_calls": sum(codes.values()), "status_exit_codes": dict(codes),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
