"""VRRP failover benchmark on the one-machine lab (native network namespaces, real keepalived).

  .venv/bin/python bench/failover/run.py [--short] [--runs N] [--settings NAME,...]

For each setting a lab is built (three controller+worker nodes in userspace mode and a client,
`ipvslb up` on each; ``ipvslb.lab.nslab``) and the VIP holder is failed N times (default 10,
3 with --short) in each of two ways:

- crash: SIGKILL of the holder's agent and keepalived at once (frozen first, like
  ``systemctl kill -s KILL``); its `ipvslb up` is started again right after the takeover;
- keepalived: SIGKILL of keepalived alone; the agent lives, removes the VIP and respawns it.

Per failover: time from the kill to the VIP on another controller (kernel address events),
to the first answer through the VIP to a request sent after that (HTTPS GET from the client
namespace), the time two *live* controllers held the VIP at once (dual masters: the ARP race),
the time the crashed node kept its stale VIP next to the new holder (until its agent restarts),
and stalls (an answer more than 1 s after the takeover, or requests failing after the first
answer). Settings: k0s's VRRPv2 with 1 s adverts, ipvslb's default (VRRPv3, 0.05 s), 0.01 s
(the smallest keepalived accepts), and the default with well-spread explicit priorities.

Results: bench/results/failover.{json,md} (failover-short.* with --short). Needs root, keepalived,
iptables, iproute2, openssl. Timings on 2 shared cores swing with the machine's load (the load
average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from ipvslb.config.model import Role  # noqa: E402
from ipvslb.lab.nslab import Failover, Lab, with_advert  # noqa: E402
from ipvslb.lab.topology import LabMode, Topology  # noqa: E402

STALL = 1.0  # an answer later than this after the takeover counts as a client stall
KINDS = ("crash", "keepalived")


def topology_for(setting: str) -> Topology:
    base = (Topology.load().select(controllers=3, workers=0).with_mode(LabMode.USERSPACE)
            .with_role(Role.CONTROLLER_WORKER))
    if setting == "k0s-vrrp2-1s":
        return with_advert(base, seconds=1)
    if setting == "default-0.05s":
        return with_advert(base)
    if setting == "vrrp3-0.01s":
        return with_advert(base, interval=0.01)
    if setting == "default-spread-priorities":
        spread = tuple(replace(c, priority=p)
                       for c, p in zip(base.controllers, (200, 150, 100), strict=True))
        return replace(with_advert(base), controllers=spread)
    raise SystemExit(f"unknown setting {setting!r}")


SETTINGS = ("k0s-vrrp2-1s", "default-0.05s", "vrrp3-0.01s", "default-spread-priorities")
DESCRIPTION = {
    "k0s-vrrp2-1s": "VRRPv2, advert 1 s (k0s's advertIntervalSeconds default)",
    "default-0.05s": "VRRPv3, advert 0.05 s (ipvslb's default), priorities derived",
    "vrrp3-0.01s": "VRRPv3, advert 0.01 s (smallest keepalived accepts), priorities derived",
    "default-spread-priorities": "VRRPv3, advert 0.05 s, priorities 200/150/100",
}


def stalled(r: Failover) -> bool:
    return (r.served is None or r.vip_moved is None or r.served - r.vip_moved > STALL
            or r.failed_after_served > 0)


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "p90": None}
    ordered = sorted(values)
    return {"n": len(values), "median": statistics.median(ordered), "min": ordered[0],
            "max": ordered[-1], "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def run_setting(setting: str, runs: int, workdir: Path) -> dict[str, Any]:
    lab = Lab.plan(topology_for(setting), state_dir=workdir / setting,
                   prefix=f"ipvslbbench{os.getpid()}")
    out: dict[str, Any] = {"setting": setting, "description": DESCRIPTION[setting]}
    try:
        out["start_to_serving_s"] = lab.up(timeout=60)
        for kind in KINDS:
            results = []
            for i in range(runs):
                r = lab.failover(kind, restart=True)
                results.append(r)
                print(f"  {setting} {kind} {i + 1}/{runs}: moved {r.vip_moved} served "
                      f"{r.served} dual {r.dual_masters:.3f} stale {r.stale_vip:.3f}"
                      f"{' STALL' if stalled(r) else ''}", flush=True)
            out[kind] = {
                "vip_moved_s": summary([r.vip_moved for r in results if r.vip_moved is not None]),
                "served_s": summary([r.served for r in results if r.served is not None]),
                "dual_masters_s": summary([r.dual_masters for r in results]),
                "dual_master_events": sum(r.dual_masters > 0 for r in results),
                "stale_vip_s": summary([r.stale_vip for r in results]),
                "stalls": sum(stalled(r) for r in results),
                "failed_requests_after_first_answer": sum(r.failed_after_served
                                                          for r in results),
                "longest_gap_s": summary([r.longest_gap for r in results]),
                "runs": [asdict(r) for r in results],
            }
    finally:
        lab.down()
    return out


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Failover benchmark (VRRP, native network namespaces)",
        "",
        f"{doc['when']}, {doc['machine']}, keepalived {doc['keepalived']}, "
        f"{doc['runs']} failovers per kind and setting{' (--short)' if doc['short'] else ''}; "
        f"load average before/after: {doc['load_before']} / {doc['load_after']}.",
        "",
        "Times from the SIGKILL. *VIP moved*: the VIP on another controller (kernel address "
        "event). *Served*: first answer through the VIP to a request sent after that (HTTPS "
        "from the client). *Dual masters*: two live controllers holding the VIP at once (the "
        "ARP race). *Stale VIP*: the crashed node still holding its VIP next to the new holder, "
        "until its `ipvslb up` restarted (immediately here; under systemd, RestartSec). "
        f"*Stalls*: answer more than {STALL:.0f} s after the takeover, or requests failing "
        "after the first answer.",
        "",
        "| setting | kind | VIP moved p50 (min–max) | served p50 (min–max) | dual masters: "
        "events, max | stale VIP p50 (max) | stalls |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in doc["results"]:
        for kind in KINDS:
            k = res[kind]
            moved, served = k["vip_moved_s"], k["served_s"]
            lines.append(
                f"| {res['description']} | {kind} | {ms(moved['median'])} ({ms(moved['min'])}–"
                f"{ms(moved['max'])}) | {ms(served['median'])} ({ms(served['min'])}–"
                f"{ms(served['max'])}) | {k['dual_master_events']}/{moved['n']}, "
                f"{ms(k['dual_masters_s']['max'])} | {ms(k['stale_vip_s']['median'])} "
                f"({ms(k['stale_vip_s']['max'])}) | {k['stalls']}/{moved['n']} |")
    total = sum(res[k]["vip_moved_s"]["n"] for res in doc["results"] for k in KINDS)
    stalls = sum(res[k]["stalls"] for res in doc["results"] for k in KINDS)
    lines += ["", f"Client stalls over all {total} failovers: {stalls}.", ""]
    lines += ["Start to serving (lab up): " + ", ".join(
        f"{res['setting']} {res['start_to_serving_s']:.1f} s" for res in doc["results"]), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="3 runs per kind (CI)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--output", type=Path, default=None,
                        help="results path without suffix (default bench/results/failover, "
                             "failover-short with --short)")
    args = parser.parse_args()
    if args.output is None:
        args.output = RESULTS / ("failover-short" if args.short else "failover")
    if os.geteuid() != 0:
        print("bench/failover needs root (network namespaces)", file=sys.stderr)
        return 2
    runs = args.runs or (3 if args.short else 10)
    settings = [s for s in args.settings.split(",") if s]
    keepalived = os.popen("/usr/sbin/keepalived --version 2>&1").read().split()[1:2]
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cpus {platform.release()}",
        "keepalived": keepalived[0] if keepalived else "?",
        "runs": runs, "short": args.short, "stall_bound_s": STALL,
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="ipvslb-bench-failover-") as tmp:
        for setting in settings:
            print(f"== {setting}: {DESCRIPTION[setting]}", flush=True)
            doc["results"].append(run_setting(setting, runs, Path(tmp)))
    doc["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
