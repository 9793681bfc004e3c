"""The agent's idle cost with metrics on: CPU, wake-ups and memory of `ipvslb up` on a quiet
lab, keepalived's in the same run beside it.

  .venv/bin/python bench/idle/run.py [--short] [--seconds N]

One-machine lab (``ipvslb.lab.nslab``: three controller+worker nodes in userspace mode,
real keepalived with ipvslb's default VRRP timings, stand-in apiservers, each agent's metrics
on its namespace's 127.0.0.1), no client traffic. Four phases, each measured for
``--seconds`` (120, 20 with --short) after a settle time:

- metrics on, nobody asks;
- scraped every 15 s over HTTP (a Prometheus server's usual interval);
- scraped every 1 s and `ipvslb status --json` every 5 s (far more than any monitoring does);
- metrics off (``node.metrics`` removed, agents restarted): what the endpoint itself costs.

Per node and phase: the agent's CPU (user + system of all its threads and of the children it
waited for, from /proc/PID/stat) as a percentage of one core, its context switches per second
(wake-ups, from /proc/PID/task/*/status), RSS and threads; keepalived's CPU (all its
processes) in the same window, and the ratio. The target (issue 12): the agent's idle CPU
with metrics on stays below 1 % of a core (the first two phases; the third is a stress case,
reported beside it). Results: bench/results/idle.{json,md}
(idle-short.* with --short). Needs root (network namespaces) and keepalived.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from ipvslb.config.model import Role  # noqa: E402
from ipvslb.lab.nslab import METRICS_PORT, Lab  # noqa: E402
from ipvslb.lab.topology import LabMode, Topology  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
TARGET_PCT = 1.0  # of one core, agent with metrics on


@dataclass(frozen=True)
class Phase:
    name: str
    description: str
    scrape_interval: float | None = None  # seconds between metric scrapes; None: none
    status_interval: float | None = None  # seconds between `ipvslb status` calls
    metrics: bool = True
    target: bool = False  # the target applies: idle, metrics on, usual monitoring


PHASES = (
    Phase("quiet", "metrics on, nobody asks", target=True),
    Phase("scrape-15s", "metrics scraped every 15 s", scrape_interval=15.0, target=True),
    Phase("scrape-1s+status-5s", "scraped every 1 s, `ipvslb status` every 5 s",
          scrape_interval=1.0, status_interval=5.0),
    Phase("metrics-off", "node.metrics removed (agents restarted)", metrics=False),
)


def cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` (all threads, waited-for children)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15])


def switches(pid: int) -> int:
    """Voluntary + involuntary context switches over all of ``pid``'s threads."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except FileNotFoundError:  # a thread that just ended
            continue
    return total


def proc_status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"])}


def agent_pids(lab: Lab) -> dict[str, int]:
    found = {}
    for node in lab.names():
        proc = lab.proc("agent", node)
        if proc is None or not proc.alive():
            raise SystemExit(f"bench/idle: the agent of {node} is not running "
                             f"({lab.dead_agents()})")
        found[node] = proc.pid
    return found


def start_monitors(lab: Lab, phase: Phase, seconds: float) -> list[subprocess.Popen[str]]:
    if phase.scrape_interval is None:
        return []
    procs = []
    for node in lab.names():
        member = lab.controller(node)
        argv = ["ip", "netns", "exec", member.netns, sys.executable, str(HERE / "scrape.py"),
                "--port", str(METRICS_PORT), "--interval", str(phase.scrape_interval),
                "--seconds", str(seconds)]
        if phase.status_interval is not None:
            argv += ["--status-config", member.config,
                     "--status-interval", str(phase.status_interval)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                      cwd=ROOT, start_new_session=True))
    return procs


def finish_monitors(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise SystemExit(f"bench/idle: monitor pid {proc.pid} did not finish") from None
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def measure(lab: Lab, phase: Phase, seconds: float, settle: float) -> dict[str, Any]:
    time.sleep(settle)
    agents = agent_pids(lab)
    keepalived = {node: lab.keepalived_pids(node) for node in lab.names()}
    monitors = start_monitors(lab, phase, seconds)
    t0 = time.monotonic()
    a0 = {n: cpu_ticks(p) for n, p in agents.items()}
    s0 = {n: switches(p) for n, p in agents.items()}
    k0 = {n: sum(cpu_ticks(p) for p in pids) for n, pids in keepalived.items()}
    time.sleep(seconds)
    a1 = {n: cpu_ticks(p) for n, p in agents.items()}
    s1 = {n: switches(p) for n, p in agents.items()}
    k1 = {n: sum(cpu_ticks(p) for p in pids) for n, pids in keepalived.items()}
    wall = time.monotonic() - t0
    if agent_pids(lab) != agents or {n: lab.keepalived_pids(n) for n in lab.names()} \
            != keepalived:
        raise SystemExit(f"bench/idle: a process was restarted during phase {phase.name}")
    monitor = finish_monitors(monitors, seconds + 60)
    holder = lab.holder()
    nodes: dict[str, dict[str, Any]] = {}
    for node in lab.names():
        agent_pct = 100.0 * (a1[node] - a0[node]) / TICK / wall
        keep_pct = 100.0 * (k1[node] - k0[node]) / TICK / wall
        nodes[node] = {
            "vrrp": "MASTER" if node == holder else "BACKUP",
            "agent_cpu_pct": agent_pct,
            "keepalived_cpu_pct": keep_pct,
            "agent_to_keepalived": agent_pct / keep_pct if keep_pct else None,
            "agent_wakeups_per_s": (s1[node] - s0[node]) / wall,
            **proc_status(agents[node]),
        }
    worst = max(n["agent_cpu_pct"] for n in nodes.values())
    return {"phase": phase.name, "description": phase.description, "seconds": wall,
            "nodes": nodes, "monitors": monitor, "agent_cpu_pct_max": worst,
            "agent_cpu_pct_median": statistics.median(n["agent_cpu_pct"]
                                                      for n in nodes.values()),
            "keepalived_cpu_pct_median": statistics.median(n["keepalived_cpu_pct"]
                                                           for n in nodes.values()),
            "target_met": worst < TARGET_PCT if phase.target else None}


def restart_without_metrics(lab: Lab) -> None:
    """Every agent stopped cleanly, its config without node.metrics, started again."""
    for node in lab.names():
        lab.stop_agent(node)
    for node in lab.names():
        path = Path(lab.controller(node).config)
        doc = yaml.safe_load(path.read_text())
        doc["node"].pop("metrics", None)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for node in lab.names():
        lab.start_agent(node)
    lab.wait_serving(60)
    lab.wait_settled(60)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} %"


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Agent idle cost (bench/idle)",
        "",
        f"{doc['when']} · {'--short' if doc['short'] else 'full mode'} · {doc['machine']} · "
        f"keepalived {doc['keepalived']} · Python {doc['python']} · load average "
        f"{doc['load_before']} → {doc['load_after']} · {doc['seconds']:.0f} s per phase after "
        f"{doc['settle']:.0f} s settling.",
        "",
        "One-machine lab: three controller+worker nodes in userspace mode in network "
        "namespaces, real keepalived with ipvslb's default VRRP timings (VRRPv3, 0.05 s "
        "adverts), stand-in apiservers health-checked by each agent, no client traffic. CPU = "
        "user + system time of the process (all threads, and children it waited for) per "
        "second of wall time, in % of one core; keepalived = all its processes on that node. "
        "Measured on the host kernel, not in the QEMU guest.",
        "",
        "| phase | agent CPU median (max) | keepalived CPU median | agent / keepalived "
        "(median) | agent wake-ups/s (max) | agent RSS MB (max) | scrape ms median | target "
        f"< {TARGET_PCT:.0f} % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in doc["phases"]:
        nodes = res["nodes"].values()
        ratios = [n["agent_to_keepalived"] for n in nodes if n["agent_to_keepalived"]]
        scrape = [m["scrape_ms_median"] for m in res["monitors"] if m["scrape_ms_median"]]
        met = {None: "–", True: "met", False: "MISSED"}[res["target_met"]]
        scrape_ms = f"{statistics.median(scrape):.1f}" if scrape else "–"
        lines.append(
            f"| {res['description']} | {pct(res['agent_cpu_pct_median'])} "
            f"({pct(res['agent_cpu_pct_max'])}) | {pct(res['keepalived_cpu_pct_median'])} | "
            f"{statistics.median(ratios):.2f}× | "
            f"{max(n['agent_wakeups_per_s'] for n in nodes):.1f} | "
            f"{max(n['rss_kb'] for n in nodes) / 1024:.1f} | {scrape_ms} | {met} |")
    lines += ["", "Per node (agent CPU / keepalived CPU, VRRP state):", ""]
    for res in doc["phases"]:
        per = ", ".join(f"{name} {n['vrrp']} {pct(n['agent_cpu_pct'])} / "
                        f"{pct(n['keepalived_cpu_pct'])}" for name, n in res["nodes"].items())
        failures = sum(m["failures"] for m in res["monitors"])
        extra = f"; {failures} failed scrapes" if res["monitors"] else ""
        lines.append(f"- {res['phase']}: {per}{extra}")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="20 s per phase (CI)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--output", type=Path, default=None,
                    help="results path without suffix (default bench/results/idle, "
                         "idle-short with --short)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/idle needs root (network namespaces)", file=sys.stderr)
        return 2
    seconds = args.seconds or (20.0 if args.short else 120.0)
    settle = 5.0 if args.short else 15.0
    output = args.output or RESULTS / ("idle-short" if args.short else "idle")
    version = subprocess.run(["keepalived", "--version"], capture_output=True, text=True,
                             check=False).stderr.split()
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "short": args.short,
        "machine": f"{os.cpu_count()} CPUs, kernel {platform.release()}",
        "keepalived": version[1] if len(version) > 1 else "?",
        "python": platform.python_version(), "seconds": seconds, "settle": settle,
        "target_pct_of_core": TARGET_PCT,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "phases": [],
    }
    topology = (Topology.load().select(controllers=3, workers=0).with_mode(LabMode.USERSPACE)
                .with_role(Role.CONTROLLER_WORKER))
    with tempfile.TemporaryDirectory(prefix="ipvslb-bench-idle-") as tmp:
        lab = Lab.plan(topology, state_dir=Path(tmp) / "lab", prefix=f"ipvslbidle{os.getpid()}",
                       subnet="10.78.0.0/24")
        try:
            lab.up(timeout=60)
            for phase in PHASES:
                if not phase.metrics:
                    restart_without_metrics(lab)
                print(f"== {phase.name}: {phase.description} ({seconds:.0f} s)", flush=True)
                result = measure(lab, phase, seconds, settle)
                print(f"   agent CPU median {pct(result['agent_cpu_pct_median'])}, max "
                      f"{pct(result['agent_cpu_pct_max'])}; keepalived median "
                      f"{pct(result['keepalived_cpu_pct_median'])}", flush=True)
                doc["phases"].append(result)
        finally:
            lab.down()
    doc["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
