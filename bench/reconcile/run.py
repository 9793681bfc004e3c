"""Endpoint reconciler benchmark against a real kube-apiserver 1.20.2.

  .venv/bin/python bench/reconcile/run.py [--short] [--changes N] [--idle SECONDS]

Starts etcd and apiserver A in a private network namespace (tests/support/apiserver_cluster.py), the
reconciler as its own process (bench/reconcile/child.py, default settings) and, next to it, a
bare reference watch on the same EndpointSlices. Then apiserver B joins and leaves N times
(default 20 changes) and for each change records:

- event_to_update: from the reference watch receiving the API event to the reconciler's
  on_update (the reconciler's own latency, "after the API event");
- action_to_update: from starting B / sending it SIGTERM to on_update (includes the apiserver's
  own start-up and lease reconciler, for context).

Then the reconciler sits idle (default 60 s, 10 s with --short) and its CPU time and memory
are read from /proc. Results: bench/results/reconcile.json and bench/results/reconcile.md.
Needs root (network namespace), etcd, openssl and the apiserver from tests/apiserver/build.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from tests.support.apiserver_cluster import (  # noqa: E402
    ADMIN_TOKEN,
    K8S_VERSION,
    SECURE_PORT,
    Cluster,
    missing_prerequisite,
)

SLICES = "/apis/discovery.k8s.io/v1beta1/namespaces/default/endpointslices"
Seen = list[tuple[float, frozenset[str]]]


class Timeline:
    """Time-stamped backend sets, appended by one thread and awaited by another."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: Seen = []

    def add(self, when: float, backends: frozenset[str]) -> None:
        with self.cond:
            self.seen.append((when, backends))
            self.cond.notify_all()

    def first(self, backends: frozenset[str], after: float, timeout: float) -> float:
        """When ``backends`` was first seen at or after ``after``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for when, seen in self.seen:
                    if when >= after and seen == backends:
                        return when
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self.seen[-1][1] if self.seen else None
                    raise SystemExit(f"timed out waiting for {sorted(backends)}; last {last}")
                self.cond.wait(remaining)


class ReferenceWatch(threading.Thread):
    """A bare watch on the EndpointSlices: when the API event reaches a client at all."""

    def __init__(self, cluster: Cluster, timeline: Timeline) -> None:
        super().__init__(daemon=True, name="reference-watch")
        self.cluster = cluster
        self.timeline = timeline
        self.stopping = threading.Event()
        self.conn: http.client.HTTPSConnection | None = None

    def run(self) -> None:
        context = ssl.create_default_context(cafile=str(self.cluster.pki / "ca.crt"))
        slices: dict[str, frozenset[str]] = {}
        while not self.stopping.is_set():
            self.conn = http.client.HTTPSConnection(
                self.cluster.address(0), SECURE_PORT, context=context, timeout=None
            )
            try:
                self.conn.request("GET", f"{SLICES}?watch=true&timeoutSeconds=3600&labelSelector="
                                  "kubernetes.io%2Fservice-name%3Dkubernetes",
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                response = self.conn.getresponse()
                while line := response.readline():
                    now = time.monotonic()
                    event = json.loads(line)
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if event["type"] == "DELETED":
                        slices.pop(name, None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        slices[name] = frozenset(
                            f"{e['addresses'][0]}:{SECURE_PORT}" for e in obj.get("endpoints") or []
                            if (e.get("conditions") or {}).get("ready") is not False
                        )
                    self.timeline.add(now, frozenset().union(*slices.values()))
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(0.2)
            finally:
                self.conn.close()

    def stop(self) -> None:
        self.stopping.set()
        conn = self.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(2)
            except OSError:
                pass
        self.join(5)


def proc_usage(pid: int) -> tuple[float, float, float, int]:
    """(CPU seconds, RSS MiB, peak RSS MiB, threads) of ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024,
            int(status["Threads"]))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2), "min_ms": round(min(ms), 2),
            "max_ms": round(max(ms), 2)}


def start_child(cluster: Cluster, kubeconfig: Path, log: Path,
                timeline: Timeline) -> subprocess.Popen[bytes]:
    argv = cluster.netns.exec_argv([sys.executable, str(HERE / "child.py"),
                                    "--kubeconfig", str(kubeconfig)])
    with open(log, "ab") as stderr:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                                 stdin=subprocess.DEVNULL)

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            update = json.loads(line)
            timeline.add(update["t"], frozenset(update["backends"]))

    threading.Thread(target=read, daemon=True, name="child-reader").start()
    return child


def run(changes: int, idle: float, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    cluster = Cluster(workdir)
    child: subprocess.Popen[bytes] | None = None
    reference: ReferenceWatch | None = None
    try:
        say("starting etcd and apiserver A")
        cluster.start(apiservers=1)
        a, b = (f"{cluster.address(i)}:{SECURE_PORT}" for i in (0, 1))
        updates, events = Timeline(), Timeline()
        reference = ReferenceWatch(cluster, events)
        with cluster.netns.entered():
            reference.start()
        started = time.monotonic()
        child = start_child(cluster, cluster.kubeconfig(0), workdir / "reconciler.log", updates)
        first = updates.first(frozenset({a}), started, 60) - started
        say(f"reconciler's first list after {first:.2f}s")

        samples: list[dict[str, Any]] = []
        for i in range(changes):
            joining = i % 2 == 0
            expected = frozenset({a, b} if joining else {a})
            action = time.monotonic()
            if joining:
                cluster.start_apiserver(1, wait=False)
            else:
                cluster.stop_apiserver(1)
            updated = updates.first(expected, action, 120)
            event = events.first(expected, action, 30)
            samples.append({"change": "join" if joining else "leave",
                            "event_to_update_s": round(updated - event, 6),
                            "action_to_update_s": round(updated - action, 4)})
            say(f"{samples[-1]['change']:5} event->update "
                f"{(updated - event) * 1000:7.2f} ms, action->update {updated - action:6.2f} s")
            if joining:
                cluster.wait_ready(1)
            time.sleep(0.5)

        say(f"idle for {idle:g}s")
        time.sleep(2)
        cpu0, _, _, _ = proc_usage(child.pid)
        t0 = time.monotonic()
        time.sleep(idle)
        cpu1, rss, hwm, threads = proc_usage(child.pid)
        wall = time.monotonic() - t0
        return {
            "kubernetes": K8S_VERSION,
            "resource": "EndpointSlice (discovery.k8s.io/v1beta1)",
            "first_list_s": round(first, 3),
            "event_to_update": summary([s["event_to_update_s"] for s in samples]),
            "action_to_update_join": summary(
                [s["action_to_update_s"] for s in samples if s["change"] == "join"]),
            "action_to_update_leave": summary(
                [s["action_to_update_s"] for s in samples if s["change"] == "leave"]),
            "idle": {"seconds": round(wall, 1),
                     "cpu_percent_of_one_core": round((cpu1 - cpu0) / wall * 100, 3),
                     "cpu_seconds": round(cpu1 - cpu0, 3),
                     "rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1),
                     "threads": threads},
            "samples": samples,
        }
    finally:
        if child is not None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        if reference is not None:
            reference.stop()
        cluster.close()


def markdown(result: dict[str, Any]) -> str:
    e, j, le = (result["event_to_update"], result["action_to_update_join"],
                result["action_to_update_leave"])
    idle = result["idle"]
    return "\n".join([
        "# Endpoint reconciler benchmark",
        "",
        f"{result['date']}, {result['host']}, real kube-apiserver {result['kubernetes']}, "
        f"following {result['resource']}, {result['mode']} run.",
        "",
        "| measure | n | p50 | p99 | max |",
        "|---|---|---|---|---|",
        f"| API event → on_update | {e['n']} | {e['p50_ms']} ms | {e['p99_ms']} ms "
        f"| {e['max_ms']} ms |",
        f"| apiserver start → on_update (join) | {j['n']} | {j['p50_ms'] / 1000:.2f} s "
        f"| {j['p99_ms'] / 1000:.2f} s | {j['max_ms'] / 1000:.2f} s |",
        f"| SIGTERM → on_update (leave) | {le['n']} | {le['p50_ms'] / 1000:.2f} s "
        f"| {le['p99_ms'] / 1000:.2f} s | {le['max_ms'] / 1000:.2f} s |",
        "",
        f"Idle for {idle['seconds']} s: {idle['cpu_percent_of_one_core']} % of one core "
        f"({idle['cpu_seconds']} s CPU), RSS {idle['rss_mib']} MiB "
        f"(peak {idle['peak_rss_mib']} MiB), {idle['threads']} threads "
        f"(CPU time from /proc, in {1000 // os.sysconf('SC_CLK_TCK')} ms clock ticks).",
        f"First list {result['first_list_s']} s after the reconciler process started "
        "(includes importing the Kubernetes client).",
        "",
        "API event time = a bare reference watch on the same EndpointSlices receiving it; the",
        "join/leave rows include the apiserver's own start-up and lease reconciler.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="6 changes, 10 s idle")
    parser.add_argument("--changes", type=int, help="number of joins+leaves (default 20)")
    parser.add_argument("--idle", type=float, help="idle seconds (default 60)")
    args = parser.parse_args()
    reason = missing_prerequisite()
    if reason:
        raise SystemExit(f"reconcile benchmark: {reason}")
    changes = args.changes or (6 if args.short else 20)
    idle = args.idle or (10.0 if args.short else 60.0)

    def say(message: str) -> None:
        print(f"[reconcile] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ipvslb-bench-reconcile-") as tmp:
        result = run(changes, idle, Path(tmp), say)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "host": f"{platform.node()} {os.cpu_count()} cpus {platform.release()}",
              "mode": "short" if args.short else "full", **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reconcile.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "reconcile.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
