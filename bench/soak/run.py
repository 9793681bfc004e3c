"""Soak of the userspace proxy: mixed load and a flapping backend for minutes, ipvslb's proxy
beside HAProxy in the same run.

  .venv/bin/python bench/soak/run.py [--seconds 600] [--short] [--subjects ipvslb,haproxy]

Three HTTPS apiserver stand-ins on loopback (``ipvslb.lab.standin``); each subject in front of
them on loopback: ipvslb's proxy wired as the agent wires it (active health checks, passive
ejection; bench/soak/ipvslb_subject.py) and HAProxy 2.6 in TCP mode with the same checks (1 s,
fall 2, rise 2, three connect attempts). The load (bench/soak/load.py, its own process): 20
watch-like long responses reopened as they end, 4 loops of fresh TLS connections, 4
keep-alive request loops. The third stand-in is killed every ``--flap`` seconds (5) and
restarted half-way to the next kill.

Reported per subject: client failures, and how many of them fall outside the windows in which
the flapping backend was down (from its kill to one second after its restart: connections on
a killed backend break by nature; anything else is unexplained); open file descriptors and RSS
sampled every 5 s with their slope after the first fifth of the run (a leak shows as a steady
rise), ipvslb's asyncio task count and threads (HAProxy has neither). Results:
bench/results/soak.{json,md} (soak-short.* with --short: 60 s per subject, what CI runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
HOST = "127.0.0.1"
SAMPLE = 5.0
HAPROXY_CFG = """\
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch
frontend soak
    bind {host}:{port}
    default_backend apiservers
backend apiservers
    balance roundrobin
{servers}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Backends:
    """Three stand-ins; ``flap`` kills and restarts the last one on a schedule."""

    def __init__(self, cert_dir: Path) -> None:
        self.cert_dir = cert_dir
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = [self._start(i) for i in range(3)]
        self.down: list[tuple[float, float]] = []  # (killed, restarted) monotonic times
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [PY, "-m", "ipvslb.lab.standin", "--name", f"s{index}", "--address", HOST,
             "--port", str(self.ports[index]), "--cert-dir", str(self.cert_dir)],
            cwd=ROOT, stdout=subprocess.DEVNULL)
        wait_listening(self.ports[index], proc)
        return proc

    @property
    def targets(self) -> list[str]:
        return [f"{HOST}:{p}" for p in self.ports]

    def flap(self, every: float) -> None:
        def run() -> None:
            while not self._stop.wait(every / 2):
                killed = time.monotonic()
                self.procs[2].kill()
                self.procs[2].wait(10)
                if self._stop.wait(every / 2):
                    self.down.append((killed, time.monotonic()))
                    break
                self.procs[2] = self._start(2)
                self.down.append((killed, time.monotonic()))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def settle(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.procs[2].poll() is not None:
            self.procs[2] = self._start(2)
        self._stop = threading.Event()
        self.down = []

    def close(self) -> None:
        self.settle()
        for proc in self.procs:
            stop(proc)


@contextlib.contextmanager
def subject(name: str, targets: list[str], workdir: Path
            ) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    if name == "haproxy":
        servers = "".join(f"    server s{i} {t} check inter 1s fall 2 rise 2\n"
                          for i, t in enumerate(targets))
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(host=HOST, port=port, servers=servers))
        cmd = ["haproxy", "-db", "-f", str(cfg)]
    else:
        cmd = [PY, str(HERE / "ipvslb_subject.py"), "--port", str(port),
               "--sample", str(SAMPLE), *targets]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        wait_listening(port, proc)
        yield port, proc
    finally:
        stop(proc)


def proc_sample(pid: int, began: float) -> dict[str, Any]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"t": time.monotonic() - began, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "rss_kb": rss}


def slope_per_min(samples: list[dict[str, Any]], key: str) -> float | None:
    """Least-squares slope of ``key`` per minute over the samples after the first fifth."""
    if not samples:
        return None
    start = samples[-1]["t"] / 5
    points = [(s["t"], s[key]) for s in samples if s["t"] >= start]
    if len(points) < 3:
        return None
    slope = statistics.linear_regression([p[0] for p in points], [p[1] for p in points]).slope
    return slope * 60


def soak(name: str, backends: Backends, seconds: float, flap: float,
         workdir: Path) -> dict[str, Any]:
    backends.settle()
    samples: list[dict[str, Any]] = []
    with subject(name, backends.targets, workdir) as (port, proc):
        if name != "haproxy":  # ipvslb's subject prints "ready", then one sample a line
            assert proc.stdout is not None
            out = proc.stdout

            def read() -> None:
                for line in out:
                    if line.startswith("{"):
                        samples.append(json.loads(line))

            threading.Thread(target=read, daemon=True).start()
        time.sleep(3.0)  # the first health checks pass
        began = time.monotonic()
        backends.flap(flap)
        load = subprocess.Popen([PY, str(HERE / "load.py"), "--target", f"{HOST}:{port}",
                                 "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
        while load.poll() is None:
            if name == "haproxy":
                samples.append(proc_sample(proc.pid, began))
            try:
                load.wait(SAMPLE)
            except subprocess.TimeoutExpired:
                pass
        result = json.loads(load.stdout.read() if load.stdout else "{}")
        windows = [(k - began - 0.5, r - began + 1.0) for k, r in backends.down]
        backends.settle()
    if name != "haproxy":  # its own clock: from its start, shift to the load's
        offset = samples[0]["t"] if samples else 0.0
        samples = [dict(s, t=s["t"] - offset) for s in samples]
    failures = result.get("failures", [])
    unexplained = [f for f in failures if not any(a <= f["t"] <= b for a, b in windows)]
    out: dict[str, Any] = {
        "subject": name, "seconds": seconds, "ok": result.get("ok", {}),
        "failures": len(failures), "unexplained": len(unexplained),
        "unexplained_examples": unexplained[:10], "flaps": len(windows),
        "samples": samples,
    }
    for key in ("fds", "rss_kb", "tasks", "threads"):
        values = [s[key] for s in samples if key in s]
        if values:
            out[key] = {"min": min(values), "max": max(values), "last": values[-1],
                        "slope_per_min": slope_per_min([s for s in samples if key in s], key)}
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Soak: the userspace proxy under mixed load with a flapping backend", "",
        f"{doc['when']}, {doc['machine']}, {doc['seconds']:.0f} s per subject, a backend "
        f"killed every {doc['flap']:.0f} s; load average before/after: {doc['load_before']} / "
        f"{doc['load_after']}.", "",
        "Failures *outside* the windows in which the flapping backend was down are "
        "unexplained. Slopes per minute after the first fifth of the run.", "",
        "| subject | requests ok (watch/churn/keepalive) | failures | unexplained | fds min–max "
        "(slope/min) | RSS MiB min–max (slope/min) | asyncio tasks min–max (slope/min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        ok = r["ok"]
        fds, rss = r.get("fds"), r.get("rss_kb")
        tasks = r.get("tasks")
        lines.append(
            f"| {r['subject']} | {ok.get('watch', 0)}/{ok.get('churn', 0)}/"
            f"{ok.get('keepalive', 0)} | {r['failures']} | {r['unexplained']} | "
            + (f"{fds['min']}–{fds['max']} ({fds['slope_per_min']:+.2f}) | " if fds else "– | ")
            + (f"{rss['min'] / 1024:.1f}–{rss['max'] / 1024:.1f} "
               f"({rss['slope_per_min'] / 1024:+.3f}) | " if rss else "– | ")
            + (f"{tasks['min']}–{tasks['max']} ({tasks['slope_per_min']:+.2f}) |" if tasks
               else "– |"))
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--short", action="store_true", help="60 s per subject (CI)")
    ap.add_argument("--flap", type=float, default=5.0)
    ap.add_argument("--subjects", default="ipvslb,haproxy")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    seconds = args.seconds or (60.0 if args.short else 600.0)
    output = args.output or RESULTS / ("soak-short" if args.short else "soak")
    subjects = [s for s in args.subjects.split(",") if s]
    if set(subjects) - {"ipvslb", "haproxy"}:
        print("--subjects: use ipvslb and/or haproxy", file=sys.stderr)
        return 2
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cpus {platform.release()}",
        "seconds": seconds, "flap": args.flap,
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()), "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="ipvslb-soak-") as tmp:
        backends = Backends(Path(tmp) / "certs")
        try:
            for name in subjects:
                print(f"== {name}: {seconds:.0f} s", flush=True)
                doc["results"].append(soak(name, backends, seconds, args.flap, Path(tmp)))
        finally:
            backends.close()
    doc["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
