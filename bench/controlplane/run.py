"""Client-observed unavailability of a real Kubernetes control plane behind the VIP.

  .venv/bin/python bench/controlplane/run.py [--mode userspace|virtual-servers]
      [--apiserver kube|standin] [--runs N] [--kinds power-off,apiserver,stop] [--short: 1 run each]
  tests/vm/run .venv/bin/python bench/controlplane/run.py --mode virtual-servers ...

The one-machine lab (``ipvslb.lab.nslab``): three controllers, each with an etcd member, a
real kube-apiserver 1.20.2 and `ipvslb up` (``endpoints: kubernetes``), and a client running
Debian's kubectl and a request loop through the VIP. For each setting (ipvslb's default,
VRRPv3 with 0.05 s adverts, and k0s's, VRRPv2 with 1 s adverts) a lab is built and the VIP
holder is failed N times (default 10) in each way:

- power-off: the holder's switch port goes down and its apiserver, etcd member, keepalived and
  agent are killed together; it is powered on again after the measurement;
- apiserver: the holder's kube-apiserver is killed (its agent and keepalived live);
- stop: a planned stop of the holder (SIGTERM to its agent, as `systemctl stop ipvslb`, then
  its apiserver and etcd stop), then it starts again: one step of a rolling restart.

Per failure, from the kill: the VIP on another controller (kernel address events), in
virtual-servers mode the IPVS service on the new master, the first answer through the VIP to
a request sent after the kill (HTTPS GET /readyz, a fresh connection each, from six client
addresses in turn), the requests that failed, and (real apiservers) the watch gap: from the
kill until a `kubectl get --watch` through the VIP shows a change made after the kill (the
change is retried through the VIP until it is accepted).

Results: bench/results/controlplane-<mode>.{json,md}. Needs root and the apiserver build
(tests/apiserver/build). In virtual-servers mode it must run where the kernel has IPVS (the
QEMU guest here): those figures come from the emulated guest (15-30x slower than a node for
Python, timers drift) and are an upper bound. The load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from ipvslb.config.model import Role  # noqa: E402
from ipvslb.errors import SystemStateError  # noqa: E402
from ipvslb.lab.kubewatch import Watch, make_configmap, wait_healthy  # noqa: E402
from ipvslb.lab.nslab import (  # noqa: E402
    SLOW_NODE_SETTINGS,
    Lab,
    sh,
    time_scale,
    wait_for,
    with_advert,
)
from ipvslb.lab.topology import LabMode, Topology  # noqa: E402

KINDS = ("power-off", "apiserver", "stop")
SETTINGS = {
    "ipvslb-default": "VRRPv3, advert 0.05 s (ipvslb's default)",
    "k0s-vrrp2-1s": "VRRPv2, advert 1 s (k0s's advertIntervalSeconds default)",
}
OBSERVE = 12.0  # seconds of request loop after each kill (failures are counted in it)


def topology_for(setting: str, mode: LabMode) -> Topology:
    role = Role.CONTROLLER_WORKER if mode is LabMode.USERSPACE else Role.CONTROLLER
    base = Topology.load().select(controllers=3, workers=0).with_mode(mode).with_role(role)
    return with_advert(base, seconds=1) if setting == "k0s-vrrp2-1s" else with_advert(base)


def settle(lab: Lab) -> None:
    if lab.real:
        wait_healthy(lab)
    else:
        lab.wait_serving(60)
    lab.wait_settled(60)


def fail(lab: Lab, kind: str, node: str) -> None:
    if kind == "power-off":
        lab.power_off(node)
    elif kind == "apiserver":
        proc = lab.proc("apiserver" if lab.real else "standin", node)
        assert proc is not None
        proc.signal(signal.SIGKILL)
    else:
        agent = lab.proc("agent", node)
        assert agent is not None
        agent.stop(10)  # Proc.stop scales its grace itself
        for role in ("apiserver", "etcd", "standin"):
            proc = lab.proc(role, node)
            if proc is not None and proc.alive():
                proc.stop(20)


def recover(lab: Lab, kind: str, node: str) -> None:
    if kind == "power-off":
        lab.power_on(node)
    elif kind == "apiserver":
        lab.start_apiserver(node)
    else:
        if lab.real:
            lab.start_etcd(node)
        lab.start_apiserver(node)
        lab.restart_agent(node, 60)
    settle(lab)


def revive(lab: Lab) -> None:
    """After a failed run: every switch port up and every dead process started again."""
    for node in lab.names():
        sh("ip", "-n", lab.state.switch, "link", "set", lab.switch_port(node), "up")
        roles = ("etcd", "apiserver") if lab.real else ("standin",)
        for role in roles:
            proc = lab.proc(role, node)
            if proc is None or not proc.alive():
                lab.start_etcd(node) if role == "etcd" else lab.start_apiserver(node)
        agent = lab.proc("agent", node)
        if agent is None or not agent.alive():
            lab.restart_agent(node, 60)
    settle(lab)


def service_on(lab: Lab, node: str) -> bool:
    return any(rule.startswith("-A -t") for rule in lab.ipvs_rules(node))


def one_run(lab: Lab, kind: str, index: int) -> dict[str, Any]:
    old = lab.wait_serving(60)
    limit = 60 * time_scale()  # for the waits that are not scaled by themselves
    name = f"bench-{kind}-{index}-{os.getpid()}"
    with ExitStack() as stack:
        watch = stack.enter_context(Watch(lab)) if lab.real else None
        vips = stack.enter_context(lab.watch())
        loop = stack.enter_context(lab.prober())
        if watch is not None:  # the watch is up once it shows a change made before the kill
            wait_for(lambda: make_configmap(lab, f"{name}-before", 10), 60, "kubectl create")
            wait_for(lambda: watch.seen(f"{name}-before"), 60, "the watch to see a change")
        vips.reset()
        began = time.monotonic()
        fail(lab, kind, old)
        moved = vips.wait_for(lambda h: any(n != old for n in h), limit)
        new = next((n for n in moved[1] if n != old), None) if moved else None
        service = None
        if lab.mode is LabMode.VIRTUAL_SERVERS and new is not None:
            service = wait_for(lambda: time.monotonic() if service_on(lab, new) else None,
                               60, f"the IPVS service on {new}", interval=0.02)
        first_ok = loop.first_ok(began, limit)
        change_seen = None
        if watch is not None:
            wait_for(lambda: make_configmap(lab, name, 10), 60, "kubectl create", 0.1)
            change_seen = wait_for(lambda: watch.seen(name), 60, "the watch to see it")
        time.sleep(max(0.0, began + OBSERVE - time.monotonic()))
    after = [a for a in loop.attempts if a.start >= began]
    failed = [a for a in after if not a.ok]
    result = {
        "kind": kind, "old": old, "new": new,
        "vip_moved_s": (moved[0] - began) if moved else None,
        "ipvs_service_s": (service - began) if service is not None else None,
        "first_answer_s": (first_ok - began) if first_ok is not None else None,
        "requests": len(after), "failed": len(failed),
        "failed_at_s": [round(a.start - began, 3) for a in failed],
        "last_failure_s": max((a.end - began for a in failed), default=None),
        "watch_gap_s": (change_seen - began) if change_seen is not None else None,
    }
    if lab.real:
        lab.kubectl("delete", "configmap", name, f"{name}-before", check=False)
    recover(lab, kind, old)
    return result


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def run_setting(setting: str, mode: LabMode, apiserver: str, kinds: list[str], runs: int,
                workdir: Path) -> dict[str, Any]:
    lab = Lab.plan(topology_for(setting, mode), state_dir=workdir / setting,
                   prefix=f"ipvslbcpb{os.getpid()}", apiserver=apiserver, slow=False)
    if time_scale() > 1:
        # In the emulated guest the adverts stay what the setting says, but the local
        # apiserver check allows a slow TLS handshake (as every guest lab does).
        lab.node_settings = dict(SLOW_NODE_SETTINGS)
    out: dict[str, Any] = {"setting": setting, "description": SETTINGS[setting]}
    try:
        out["start_to_serving_s"] = lab.up(timeout=180)
        settle(lab)
        for kind in kinds:
            results: list[dict[str, Any]] = []
            errors: list[str] = []
            out[kind] = {"runs": results, "errors": errors}
            for i in range(runs):
                try:
                    r = one_run(lab, kind, i)
                except SystemStateError as err:  # recorded, the lab put right, and on
                    errors.append(f"run {i + 1}: {err}")
                    print(f"  {setting} {kind} {i + 1}/{runs}: ERROR {err}", flush=True)
                    revive(lab)
                    continue
                results.append(r)
                print(f"  {setting} {kind} {i + 1}/{runs}: VIP {r['vip_moved_s']} first answer "
                      f"{r['first_answer_s']} failed {r['failed']}/{r['requests']} watch "
                      f"{r['watch_gap_s']}", flush=True)
            out[kind].update({
                key: summary([r[key] for r in results if r[key] is not None])
                for key in ("vip_moved_s", "ipvs_service_s", "first_answer_s", "failed",
                            "last_failure_s", "watch_gap_s")})
    finally:
        lab.down()
    return out


def fmt(s: dict[str, Any], unit: str = "s") -> str:
    if not s["n"]:
        return "–"
    if unit == "n":
        return f"{s['median']:g} ({s['min']:g}–{s['max']:g})"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def markdown(doc: dict[str, Any]) -> str:
    where = ("the emulated QEMU guest (an upper bound: 15-30x slower than a node)"
             if doc["in_guest"] else "the host, native network namespaces")
    lines = [
        f"# Control-plane failover as a client sees it ({doc['mode']} mode, "
        f"{doc['apiserver']} apiservers)",
        "",
        f"{doc['when']}, {doc['machine']}, measured on {where}; {doc['runs']} runs per kind "
        f"and setting; load average before/after: {doc['load_before']} / {doc['load_after']}.",
        "",
        "Seconds from the kill, median (min–max). *VIP*: on another controller. *IPVS*: the "
        "service on the new master (virtual-servers). *First answer*: a request sent after "
        "the kill answered through the VIP (fresh HTTPS connections, six client addresses in "
        "turn). *Failed*: requests that failed in the "
        f"{OBSERVE:.0f} s after the kill, and when the last failure ended. *Watch*: a change made "
        "after the kill seen by `kubectl get --watch` through the VIP.",
        "",
        "| setting | failure | runs | VIP | IPVS | first answer | failed requests | "
        "last failure | watch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in doc["results"]:
        for kind in doc["kinds"]:
            k = res[kind]
            broken = f" ({len(k['errors'])} broken)" if k["errors"] else ""
            lines.append(
                f"| {res['description']} | {kind} | {len(k['runs'])}{broken} | "
                f"{fmt(k['vip_moved_s'])} | "
                f"{fmt(k['ipvs_service_s'])} | {fmt(k['first_answer_s'])} | "
                f"{fmt(k['failed'], 'n')} | {fmt(k['last_failure_s'])} | "
                f"{fmt(k['watch_gap_s'])} |")
    lines.append("")
    for res in doc["results"]:
        for kind in doc["kinds"]:
            for error in res[kind]["errors"]:
                lines.append(f"- broken run, {res['setting']} {kind} {error}")
    lines += ["", "Start to serving (lab up): " + ", ".join(
        f"{res['setting']} {res['start_to_serving_s']:.1f} s" for res in doc["results"]), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=[m.value for m in LabMode],
                        default=LabMode.USERSPACE.value)
    parser.add_argument("--apiserver", choices=["kube", "standin"], default="kube")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--short", action="store_true", help="1 run per kind (CI)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--output", type=Path, default=None,
                        help="results path without suffix (default "
                             "bench/results/controlplane-<mode>[-<apiserver>][-short])")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/controlplane needs root (network namespaces)", file=sys.stderr)
        return 2
    mode = LabMode(args.mode)
    kinds = [k for k in args.kinds.split(",") if k]
    settings = [s for s in args.settings.split(",") if s]
    for value, known in ((kinds, KINDS), (settings, tuple(SETTINGS))):
        unknown = set(value) - set(known)
        if unknown:
            print(f"unknown {sorted(unknown)}; use some of {', '.join(known)}", file=sys.stderr)
            return 2
    runs = args.runs or (1 if args.short else 10)
    if args.output is None:
        name = f"controlplane-{mode.value}"
        name += "" if args.apiserver == "kube" else f"-{args.apiserver}"
        args.output = RESULTS / (name + ("-short" if args.short else ""))
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cpus {platform.release()}",
        "in_guest": os.environ.get("IPVSLB_IN_VM") == "1",
        "mode": mode.value, "apiserver": args.apiserver, "kinds": kinds, "runs": runs,
        "observe_s": OBSERVE,
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="ipvslb-bench-cp-") as tmp:
        for setting in settings:
            print(f"== {setting}: {SETTINGS[setting]}", flush=True)
            doc["results"].append(run_setting(setting, mode, args.apiserver, kinds, runs,
                                              Path(tmp)))
    doc["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
