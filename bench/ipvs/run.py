"""IPVS benchmark: ipvslb vs ipvsadm on the same kernel, in the same run.

  tests/vm/run -e IPVSLB_HOST_LOADAVG="$(cat /proc/loadavg)" \
      .venv/bin/python bench/ipvs/run.py [--quick]

Runs inside the QEMU guest (the host kernel has no IPVS), each table in a fresh network
namespace. Measures, with repetitions interleaved between the two tools:

- listing: `ipvslb show` vs `ipvsadm -Ln` (both as processes, output to /dev/null) on
  1,000 and 10,000 TCP services x 3 real servers; plus ipvslb's listing in-process (the
  same code without Python's start-up);
- full apply of 1,000 x 3 into an empty table: Applier.apply vs `ipvsadm -R`;
- one changed real server in a 10,000 x 3 table: Applier.update (the changed service
  only), Applier.apply of the whole desired table from memory, Applier.apply re-reading
  the kernel first, and `ipvsadm -e` - time and netlink messages each.

Results: bench/results/ipvs.json and bench/results/ipvs.md. Guest timings are 15-30x the
host's for CPU-bound work (software emulation) and swing with the host's load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ipvslb.cli.show import render  # noqa: E402
from ipvslb.ipvs import model  # noqa: E402
from ipvslb.ipvs.apply import Applier  # noqa: E402
from ipvslb.ipvs.netlink import IPVS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IPVSLB = str(Path(sys.executable).with_name("ipvslb"))


def table(n: int) -> list[model.Service]:
    out = []
    for i in range(n):
        vip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        out.append(model.service("tcp", vip, 6443, scheduler="rr", dests=[
            model.dest(f"10.{200 + j}.{(i // 256) % 256}.{i % 256}", 6443, forward="dr")
            for j in range(3)]))
    return out


def restore_text(services: list[model.Service]) -> str:
    lines = []
    for s in services:
        lines.append(f"-A -t {s.address}:{s.port} -s {s.scheduler}")
        lines += [f"-a -t {s.address}:{s.port} -r {d.address}:{d.port} -g -w {d.weight}"
                  for d in s.dests]
    return "\n".join(lines) + "\n"


class Namespace:
    def __init__(self, tag: str) -> None:
        self.name = f"ipvslb-bench-{os.getpid()}-{tag}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def run(self, argv: list[str], stdin: str | None = None, out: Any = subprocess.DEVNULL
            ) -> float:
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", self.name, *argv], input=stdin, text=True,
                       stdout=out, check=True, timeout=3600)
        return time.perf_counter() - start

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
            "n": len(values), "runs_s": [round(v, 4) for v in values]}


def bench_show(n: int, reps: int) -> dict[str, Any]:
    ns = Namespace(f"show{n}")
    try:
        with IPVS(ns.name) as ipvs:
            assert Applier(ipvs).apply(table(n)).errors == []
        # the two outputs must be identical before timing them
        with tempfile.TemporaryDirectory() as tmp:
            a, b = Path(tmp) / "a", Path(tmp) / "b"
            with a.open("w") as fa, b.open("w") as fb:
                ns.run(["ipvsadm", "-Ln"], out=fa)
                ns.run([IPVSLB, "show"], out=fb)
            assert a.read_bytes() == b.read_bytes(), "outputs differ"
        ipvsadm, ipvslb, inproc = [], [], []
        ns.run([IPVSLB, "--help"])  # warm the page cache for the interpreter's files
        for _ in range(reps):
            ipvsadm.append(ns.run(["ipvsadm", "-Ln"]))
            ipvslb.append(ns.run([IPVSLB, "show"]))
            inproc.append(timed(lambda: render(netns=ns.name)))
        start_only = [ns.run([sys.executable, "-c", "import ipvslb.cli.main, ipvslb.cli.show"])
                      for _ in range(reps)]
        result: dict[str, Any] = {
            "services": n, "real_servers": 3 * n, "ipvsadm -Ln": summary(ipvsadm),
            "ipvslb show": summary(ipvslb), "ipvslb show in-process": summary(inproc),
            "python start + imports": summary(start_only)}
        result["ratio_ipvslb_to_ipvsadm"] = (result["ipvslb show"]["median_s"]
                                             / result["ipvsadm -Ln"]["median_s"])
        return result
    finally:
        ns.close()


def apply_fresh(ipvs: IPVS, desired: list[model.Service]) -> None:
    """A new applier (it reads the kernel's table first) applying the whole table."""
    assert Applier(ipvs).apply(desired).errors == []


def bench_full_apply(n: int, reps: int) -> dict[str, Any]:
    ns = Namespace(f"apply{n}")
    desired = table(n)
    text = restore_text(desired)
    try:
        ipvsadm: list[float] = []
        ipvslb: list[float] = []
        messages: list[int] = []
        for _ in range(reps):
            ns.run(["ipvsadm", "-C"])
            ipvsadm.append(ns.run(["ipvsadm", "-R"], stdin=text))
            ns.run(["ipvsadm", "-C"])
            with IPVS(ns.name) as ipvs:
                before = ipvs.sent
                ipvslb.append(timed(partial(apply_fresh, ipvs, desired)))
                messages.append(ipvs.sent - before)
        return {"services": n, "real_servers": 3 * n, "ipvsadm -R": summary(ipvsadm),
                "ipvslb Applier.apply": summary(ipvslb),
                "ipvslb messages": messages[-1], "ipvsadm messages": 4 * n * 2,
                "note": "ipvsadm -R opens a socket and resolves the IPVS family for every "
                        "line (2 requests per line); ipvslb reads the (empty) table and "
                        "sends every change in batches of up to 512 per write",
                "ratio_ipvslb_to_ipvsadm": statistics.median(ipvslb) /
                statistics.median(ipvsadm)}
    finally:
        ns.close()


def bench_one_change(n: int, reps: int) -> dict[str, Any]:
    ns = Namespace(f"change{n}")
    desired = table(n)
    weights = iter(range(2, 100_000))
    modes = ("update", "apply", "apply_after_reread", "apply_refresh")
    try:
        with IPVS(ns.name) as ipvs:
            applier = Applier(ipvs)
            assert applier.apply(desired).errors == []
            target = n // 2
            rows: dict[str, list[float]] = {k: [] for k in (*modes, "ipvsadm -e")}
            msgs: dict[str, list[int]] = {k: [] for k in rows}

            def change_one() -> model.Service:
                svc = desired[target]
                changed = svc._replace(dests=(svc.dests[0]._replace(weight=next(weights)),
                                              *svc.dests[1:]))
                desired[target] = changed
                return changed

            for _rep in range(reps):
                for mode in modes:
                    changed = change_one()
                    if mode == "apply_after_reread":
                        applier.refresh()  # not timed: known = objects read from the kernel
                    before = ipvs.sent
                    if mode == "update":
                        rows[mode].append(timed(partial(applier.update, [changed])))
                    elif mode == "apply_refresh":
                        rows[mode].append(timed(lambda: applier.apply(desired, refresh=True)))
                    else:
                        rows[mode].append(timed(lambda: applier.apply(desired)))
                    msgs[mode].append(ipvs.sent - before)
                    assert msgs[mode][-1] == (1 if mode != "apply_refresh" else n + 2)
                d = desired[target].dests[0]
                weight = next(weights)
                rows["ipvsadm -e"].append(ns.run(["ipvsadm", "-e", "-t",
                                                  f"{desired[target].address}:6443", "-r",
                                                  f"{d.address}:6443", "-g", "-w",
                                                  str(weight)]))
                msgs["ipvsadm -e"].append(2)
                desired[target] = desired[target]._replace(
                    dests=(d._replace(weight=weight), *desired[target].dests[1:]))
                applier.update([desired[target]])  # not timed: back in step with the kernel
        return {"services": n, "real_servers": 3 * n,
                **{k: {**summary(v), "netlink_messages": msgs[k][-1]} for k, v in rows.items()},
                "note": "update = Applier.update([changed service]); apply = Applier.apply("
                        "whole desired table) when the previous apply used the same service "
                        "objects (skipped by identity, in C); apply_after_reread = the same "
                        "right after the applier re-read the kernel (every service compared "
                        "by value once); apply_refresh = re-read the kernel (1 + one dump per "
                        "service) and apply; ipvsadm -e = one process (socket + family "
                        "lookup + the change)"}
    finally:
        ns.close()


def fmt_load(load: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def markdown(doc: dict[str, Any]) -> str:
    out = ["# IPVS benchmark: ipvslb vs ipvsadm 1.31", "",
           f"{doc['when']}, {doc['where']}. Median of {doc['reps']} runs (min-max), the "
           "two tools' runs interleaved. Host load average when it started: "
           f"{doc['host_loadavg_start']} (guest: {fmt_load(doc['loadavg_start'])} -> "
           f"{fmt_load(doc.get('loadavg_end', os.getloadavg()))}). The host's 2 cores were "
           "shared with other jobs, so absolute times swing 2-5x between runs; compare within "
           f"a row. The one-change section: {doc.get('change_reps', doc['reps'])} runs.", ""]

    def cell(s: dict[str, Any]) -> str:
        return f"{s['median_s'] * 1000:.1f} ms ({s['min_s'] * 1000:.1f}-{s['max_s'] * 1000:.1f})"

    out += ["## Listing (`ipvslb show` vs `ipvsadm -Ln`)", "",
            "| services x 3 | ipvsadm -Ln | ipvslb show | ratio | ipvslb in-process | "
            "python start + imports |", "|---|---|---|---|---|---|"]
    for r in doc.get("show", []):
        out.append(f"| {r['services']} | {cell(r['ipvsadm -Ln'])} | {cell(r['ipvslb show'])} "
                   f"| {r['ratio_ipvslb_to_ipvsadm']:.2f}x | "
                   f"{cell(r['ipvslb show in-process'])} | "
                   f"{cell(r['python start + imports'])} |")
    f = doc.get("full_apply")
    if f is None:
        return "\n".join(out + ["", "(not measured yet)"]) + "\n"
    out += ["", f"## Full apply of {f['services']} x 3 into an empty table", "",
            "| tool | time | netlink messages |", "|---|---|---|",
            f"| ipvsadm -R | {cell(f['ipvsadm -R'])} | {f['ipvsadm messages']} |",
            f"| ipvslb Applier.apply | {cell(f['ipvslb Applier.apply'])} | "
            f"{f['ipvslb messages']} |", "", f["note"] + "."]
    c = doc.get("one_change")
    if c is None:
        return "\n".join(out + ["", "(one changed real server: not measured yet)"]) + "\n"
    out += ["", f"## One changed real server in a {c['services']} x 3 table", "",
            "| how | time | netlink messages |", "|---|---|---|"]
    for k in ("update", "apply", "apply_after_reread", "apply_refresh", "ipvsadm -e"):
        out.append(f"| {k} | {cell(c[k])} | {c[k]['netlink_messages']} |")
    out += ["", c["note"] + "."]
    return "\n".join(out) + "\n"


def progress(what: str) -> None:
    """One line on stderr per section, so a slow guest shows where it is."""
    print(f"bench/ipvs: {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller tables, fewer runs")
    parser.add_argument("--change-reps", type=int, default=None,
                        help="repetitions of the one-change section (each re-reads the big "
                             "table twice: 2 x 10,001 dumps, minutes in the emulated guest)")
    args = parser.parse_args()
    big, small, reps = (2000, 200, 2) if args.quick else (10000, 1000, 5)
    name = "ipvs-quick" if args.quick else "ipvs"
    uname = os.uname()
    doc: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "where": f"{'QEMU guest (TCG)' if os.environ.get('IPVSLB_IN_VM') else 'host'}, "
                 f"{os.cpu_count()} cpus, kernel {uname.release}, Python "
                 f"{platform.python_version()}",
        "reps": reps, "quick": args.quick, "loadavg_start": os.getloadavg(),
        "host_loadavg_start": os.environ.get("IPVSLB_HOST_LOADAVG", "not given")}
    change_reps = args.change_reps or reps
    doc["change_reps"] = change_reps

    def save() -> None:  # after every section: a run cut short keeps what it measured
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(doc))

    progress(f"listing {small} x 3")
    doc["show"] = [bench_show(small, reps)]
    save()
    progress(f"listing {big} x 3")
    doc["show"].append(bench_show(big, max(3, reps - 2)))
    save()
    progress(f"full apply of {small} x 3")
    doc["full_apply"] = bench_full_apply(small, reps)
    save()
    progress(f"one changed real server in {big} x 3 ({change_reps} repetitions)")
    doc["one_change"] = bench_one_change(big, change_reps)
    progress("done")
    doc["loadavg_end"] = os.getloadavg()
    save()
    print(markdown(doc))


if __name__ == "__main__":
    main()
