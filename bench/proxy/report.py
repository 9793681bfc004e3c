"""Figures, ratios, targets and markdown for the proxy benchmark (bench/proxy/run.py).

Every figure is reported as its median with the spread (min–max) over the repetitions.
Ratios between two subjects are also taken per repetition (the subjects of one repetition
run minutes apart at most, under the same other load): their min–max shows whether a
verdict (ahead/behind) is decided in a run. ``compare`` checks a run against an earlier one:
does each median lie within the other run's spread, and does any decided verdict flip.

Re-render a result file (e.g. after a change to this module), optionally against an
earlier run:  .venv/bin/python bench/proxy/report.py RESULTS.json [--compare EARLIER.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

Spread = dict[str, float]  # {"min", "median", "max"}

# (ratio name, test, figure); the names of the rates (higher is better) are in RATES,
# everything else (p99 latency, CPU, memory) is better lower.
RATIO_KEYS = [
    ("bulk1", "bulk1", "gbit_s"), ("bulk8", "bulk8", "gbit_s"),
    ("rr1", "rr1", "req_s"), ("rr16", "rr16", "req_s"),
    ("rr1_p99", "rr1", "p99_us"), ("rr16_p99", "rr16", "p99_us"),
    ("newconn", "newconn", "conn_s"),
    ("cpu_bulk1", "bulk1", "cpu_ms_per_gb"), ("cpu_bulk8", "bulk8", "cpu_ms_per_gb"),
    ("cpu_rr1", "rr1", "cpu_us_per_req"), ("cpu_rr16", "rr16", "cpu_us_per_req"),
    ("cpu_newconn", "newconn", "cpu_us_per_conn"),
]
RATES = {"bulk1", "bulk8", "rr1", "rr16", "newconn"}

# The headline: the proxy's own CPU per unit of work. (label, test, figure, format)
HEADLINE = [
    ("CPU µs/conn (new conn)", "newconn", "cpu_us_per_conn", ".0f"),
    ("CPU µs/req (rr 1)", "rr1", "cpu_us_per_req", ".1f"),
    ("CPU µs/req (rr 16)", "rr16", "cpu_us_per_req", ".1f"),
    ("CPU ms/GB (bulk 1)", "bulk1", "cpu_ms_per_gb", ".0f"),
    ("CPU ms/GB (bulk 8)", "bulk8", "cpu_ms_per_gb", ".0f"),
]
# Figures checked against an earlier run: the headline, then rates and p99 latency.
COMPARED = [(label, test, figure) for label, test, figure, _ in HEADLINE] + [
    ("bulk 1 Gbit/s", "bulk1", "gbit_s"), ("bulk 8 Gbit/s", "bulk8", "gbit_s"),
    ("rr 1 req/s", "rr1", "req_s"), ("rr 1 p99 µs", "rr1", "p99_us"),
    ("rr 16 req/s", "rr16", "req_s"), ("rr 16 p99 µs", "rr16", "p99_us"),
    ("new conn/s", "newconn", "conn_s"),
]
RATIO_LABELS = {
    "bulk1": "bulk 1", "bulk8": "bulk 8", "rr1": "rr 1", "rr16": "rr 16",
    "rr1_p99": "p99 rr 1", "rr16_p99": "p99 rr 16", "newconn": "new conns",
    "cpu_newconn": "CPU new conn", "cpu_rr1": "CPU rr 1", "cpu_rr16": "CPU rr 16",
    "cpu_bulk1": "CPU bulk 1", "cpu_bulk8": "CPU bulk 8", "kb_per_conn": "memory/idle conn",
}
RATIO_ORDER = ["cpu_newconn", "cpu_rr1", "cpu_rr16", "cpu_bulk1", "cpu_bulk8", "bulk1",
               "bulk8", "rr1", "rr16", "rr1_p99", "rr16_p99", "newconn", "kb_per_conn"]


def spreads(runs: dict[str, dict[str, list[dict[str, Any]]]]
            ) -> dict[str, dict[str, dict[str, Spread]]]:
    """min/median/max of every figure of every test of every subject."""
    out: dict[str, dict[str, dict[str, Spread]]] = {}
    for name, tests in runs.items():
        out[name] = {}
        for test, results in tests.items():
            out[name][test] = {}
            for key in results[0]:
                values = [r[key] for r in results]
                out[name][test][key] = {"min": min(values), "median": statistics.median(values),
                                        "max": max(values)}
    return out


def medians_of(spread: dict[str, dict[str, dict[str, Spread]]]
               ) -> dict[str, dict[str, dict[str, float]]]:
    return {name: {test: {key: s["median"] for key, s in figures.items()}
                   for test, figures in tests.items()}
            for name, tests in spread.items()}


def _ratio(me: dict[str, float], base: dict[str, float], key: str) -> float | None:
    if key not in me or key not in base or not base[key]:
        return None  # e.g. CPU of "direct", which has no proxy process
    return me[key] / base[key]


def ratios(medians: dict[str, Any], memory: dict[str, Any], name: str,
           base_name: str = "haproxy") -> dict[str, float | None]:
    """``name`` relative to ``base_name`` (HAProxy's defaults unless told)."""
    base, me = medians[base_name], medians[name]
    out = {key: _ratio(me[test], base[test], figure) for key, test, figure in RATIO_KEYS}
    if name in memory and base_name in memory:
        out["kb_per_conn"] = memory[name]["kb_per_conn"] / memory[base_name]["kb_per_conn"]
    return out


def paired_ratios(runs: dict[str, dict[str, list[dict[str, Any]]]], name: str,
                  base_name: str = "haproxy") -> dict[str, Spread]:
    """min/median/max over the repetitions of ``name``'s figure / ``base_name``'s figure
    in the same repetition."""
    out: dict[str, Spread] = {}
    for key, test, figure in RATIO_KEYS:
        pairs = zip(runs[name][test], runs[base_name][test], strict=True)
        values = [a[figure] / b[figure] for a, b in pairs
                  if figure in a and figure in b and b[figure]]
        if values:
            out[key] = {"min": min(values), "median": statistics.median(values),
                        "max": max(values)}
    return out


# (row label, subject, base) of the ratio tables
PAIRS = [("direct", "direct", "haproxy"), ("haproxy-splice", "haproxy-splice", "haproxy"),
         ("k0s-style", "k0s-style", "haproxy"),
         ("ipvslb", "ipvslb", "haproxy"), ("ipvslb vs k0s-style", "ipvslb", "k0s-style")]


def finish(results: dict[str, Any], previous: dict[str, Any] | None = None,
           previous_path: str | None = None) -> None:
    """Add ratios, per-repetition ratios, targets and the comparison to a measured run."""
    runs, medians, memory = results["runs"], results["medians"], results["memory"]
    results["ratios"] = {n: ratios(medians, memory, n) for n in medians if n != "haproxy"}
    if "k0s-style" in medians and "ipvslb" in medians:
        results["vs_k0s"] = ratios(medians, memory, "ipvslb", "k0s-style")
    results["paired_ratios"] = {f"{me} vs {base}": paired_ratios(runs, me, base)
                                for _, me, base in PAIRS if me in runs and base in runs}
    results["targets"] = targets_met(medians, memory, "ipvslb")
    if previous is not None:
        results["comparison"] = {"previous": previous_path, **compare(previous, results)}


def targets_met(medians: dict[str, Any], memory: dict[str, Any], name: str) -> dict[str, bool]:
    me, ha, sp = medians[name], medians["haproxy"], medians["haproxy-splice"]
    out = {
        "bulk 1 stream >= haproxy-splice": me["bulk1"]["gbit_s"] >= sp["bulk1"]["gbit_s"],
        "bulk 8 streams >= haproxy-splice": me["bulk8"]["gbit_s"] >= sp["bulk8"]["gbit_s"],
        "rr 1 conn rate >= haproxy": me["rr1"]["req_s"] >= ha["rr1"]["req_s"],
        "rr 16 conns rate >= haproxy": me["rr16"]["req_s"] >= ha["rr16"]["req_s"],
        "rr 1 conn p99 <= haproxy": me["rr1"]["p99_us"] <= ha["rr1"]["p99_us"],
        "rr 16 conns p99 <= haproxy": me["rr16"]["p99_us"] <= ha["rr16"]["p99_us"],
        "new conns >= 0.85x haproxy": me["newconn"]["conn_s"] >= 0.85 * ha["newconn"]["conn_s"],
        "memory/idle conn <= haproxy": (memory[name]["kb_per_conn"]
                                        <= memory["haproxy"]["kb_per_conn"]),
        "CPU per new conn <= haproxy": (me["newconn"]["cpu_us_per_conn"]
                                        <= ha["newconn"]["cpu_us_per_conn"]),
    }
    if "k0s-style" in medians:  # ahead of the Go proxy on every rate and on memory
        k0s = medians["k0s-style"]
        for label, test, figure in [("bulk 1 stream", "bulk1", "gbit_s"),
                                    ("bulk 8 streams", "bulk8", "gbit_s"),
                                    ("rr 1 conn", "rr1", "req_s"), ("rr 16 conns", "rr16", "req_s"),
                                    ("new conns", "newconn", "conn_s")]:
            out[f"{label} >= k0s-style"] = me[test][figure] >= k0s[test][figure]
        if "k0s-style" in memory:
            out["memory/idle conn <= k0s-style"] = (memory[name]["kb_per_conn"]
                                                    <= memory["k0s-style"]["kb_per_conn"])
    return out


def ratio_range(runs: dict[str, Any], memory: dict[str, Any], me: str, base: str,
                key: str) -> tuple[float, float] | None:
    """min and max of the per-repetition ratio (memory: one measurement each)."""
    if key == "kb_per_conn":
        if me not in memory or base not in memory:
            return None
        r = memory[me]["kb_per_conn"] / memory[base]["kb_per_conn"]
        return r, r
    paired = paired_ratios(runs, me, base).get(key)
    return None if paired is None else (paired["min"], paired["max"])


def verdict(key: str, low: float, high: float) -> str:
    """ahead/behind when the ratio in every repetition is on one side of 1, else undecided
    (with 5 repetitions: all 5 the same way, a sign test at p = 1/16)."""
    if low > 1 or high < 1:
        return "ahead" if (low > 1) == (key in RATES) else "behind"
    return "undecided"


def agreement(a: Spread, b: Spread) -> str:
    """"agree": each median within the other run's min–max; "overlap": only the ranges
    overlap; "differ": disjoint ranges."""
    if a["min"] <= b["median"] <= a["max"] and b["min"] <= a["median"] <= b["max"]:
        return "agree"
    if a["min"] <= b["max"] and b["min"] <= a["max"]:
        return "overlap"
    return "differ"


def compare(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Check ``current`` against the ``previous`` report (both as written by run.py; the
    previous one may predate the spread fields: its per-repetition runs are enough)."""
    before, now = spreads(previous["runs"]), current["spread"]
    subjects = [s for s in now if s in before and s != "direct"]
    figures = []
    for label, test, figure in COMPARED:
        for name in subjects:
            a, b = before[name][test].get(figure), now[name][test].get(figure)
            if a is None or b is None:
                continue
            figures.append({"subject": name, "figure": label, "test": test, "key": figure,
                            "previous": a, "current": b, "agreement": agreement(a, b)})
    verdicts: list[dict[str, Any]] = []
    med_before, med_now = medians_of(before), current["medians"]
    mem_before, mem_now = previous.get("memory", {}), current["memory"]
    for me, base in [("ipvslb", "haproxy"), ("ipvslb", "k0s-style"), ("k0s-style", "haproxy")]:
        if not all(n in med_before and n in med_now for n in (me, base)):
            continue
        r1 = ratios(med_before, mem_before, me, base)
        r2 = ratios(med_now, mem_now, me, base)
        for key in RATIO_ORDER:
            x, y = r1.get(key), r2.get(key)
            range1 = ratio_range(previous["runs"], mem_before, me, base, key)
            range2 = ratio_range(current["runs"], mem_now, me, base, key)
            if x is None or y is None or range1 is None or range2 is None:
                continue
            v1, v2 = verdict(key, *range1), verdict(key, *range2)
            verdicts.append({"pair": f"{me} vs {base}", "ratio": key, "previous": x,
                             "current": y, "previous_range": range1, "current_range": range2,
                             "previous_verdict": v1, "current_verdict": v2,
                             "same": v1 == v2})
    counts = {k: sum(f["agreement"] == k for f in figures) for k in ("agree", "overlap", "differ")}
    decided = {"ahead", "behind"}
    return {
        "previous_date": previous["meta"]["date"],
        "previous_pinning": previous["meta"].get("pinning", {}).get("note", "not pinned"),
        "figures": figures,
        "verdicts": verdicts,
        "counts": counts,
        # decided in both runs, opposite ways: the verdict flipped
        "flips": [f"{v['pair']} {RATIO_LABELS[v['ratio']]}" for v in verdicts
                  if {v["previous_verdict"], v["current_verdict"]} == decided],
        "stable": [f"{v['pair']} {RATIO_LABELS[v['ratio']]}: {v['current_verdict']}"
                   for v in verdicts if v["same"] and v["current_verdict"] in decided],
        "undecided": [f"{v['pair']} {RATIO_LABELS[v['ratio']]}" for v in verdicts
                      if "undecided" in (v["previous_verdict"], v["current_verdict"])],
    }


def _cell(s: Spread | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    if s is None:
        return "–"
    med = format(s["median"] / scale, spec) + unit
    if s["min"] == s["max"]:
        return med
    return f"{med} ({format(s['min'] / scale, spec)}–{format(s['max'] / scale, spec)})"


def _ratio_cell(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}"


def _ratio_table(report: dict[str, Any]) -> list[str]:
    """Rows: ratios; columns: subject pairs; cell: ratio of the medians, (min–max) of the
    per-repetition ratios beside it."""
    paired = report.get("paired_ratios", {})
    columns = [(label, me, base) for label, me, base in PAIRS if f"{me} vs {base}" in paired]
    lines = ["| ratio | " + " | ".join(label for label, *_ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for key in RATIO_ORDER:
        cells = []
        for _label, me, base in columns:
            med = report["vs_k0s"] if base == "k0s-style" else report["ratios"].get(me, {})
            pr = paired[f"{me} vs {base}"].get(key)
            cell = _ratio_cell(med.get(key))
            if pr is not None and pr["min"] != pr["max"]:
                cell += f" ({pr['min']:.2f}–{pr['max']:.2f})"
            cells.append(cell)
        lines.append(f"| {RATIO_LABELS[key]} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    spread, mem, meta = report["spread"], report["memory"], report["meta"]
    pin = meta["pinning"]
    reps = meta["reps"]
    load_avg = f"{meta['loadavg_start']} → {meta['loadavg_end']}"
    if meta.get("loadavg_by_rep"):
        load_avg += " (at the start of each repetition: " + ", ".join(
            f"{la[0]}" for la in meta["loadavg_by_rep"]) + ")"
    lines = [
        "# Proxy benchmark (loopback)",
        "",
        f"{meta['date']} · {meta['mode']} mode · {reps} × {meta['seconds']} s per test, "
        f"subjects interleaved (order rotated every repetition) · {meta['cpus']} CPUs, "
        f"{pin['note']} · load average (1 min) {load_avg} · benchmark processes at nice "
        f"{meta['nice']} · {meta['haproxy']} · {meta['go']} · Python {meta['python']} "
        f"· kernel {meta['kernel']} · ipvslb = engine auto on {meta['ipvslb_loop']}",
        "",
        *([f"Note: {meta['note']}", ""] if meta.get("note") else []),
        *([_comparison_summary(report["comparison"]), ""] if "comparison" in report else []),
        "Each figure: median over the repetitions, (min–max) beside it. Threads of each proxy "
        "(all counted in its CPU): "
        + ", ".join(f"{n} {t}" for n, t in meta["threads"].items()) + ".",
        "",
        "## Headline: CPU per unit of work",
        "",
        "The proxy process's own CPU time (all threads, from /proc schedstat) per new "
        "connection, per 64-byte request/response and per GB moved; lower is better. Other "
        "work on a shared machine moves these much less than the rates below (a rate falls "
        "when something else takes the core; the CPU spent per unit of work stays), which "
        "is why they lead; a comparison of two runs (--compare) checks it.",
        "",
        "| subject | " + " | ".join(label for label, *_ in HEADLINE) + " |",
        "|---" * (len(HEADLINE) + 1) + "|",
    ]
    for name, tests in spread.items():
        if name == "direct":
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(tests[test].get(figure), spec)
                                                 for _, test, figure, spec in HEADLINE) + " |")
    ipvslb_ratios = report["ratios"].get("ipvslb", {})
    if ipvslb_ratios:
        lines += ["", "ipvslb's CPU per unit of work relative to HAProxy: "
                  + ", ".join(f"{RATIO_LABELS[k].removeprefix('CPU ')} "
                              f"{_ratio_cell(ipvslb_ratios.get(k))}×"
                              for k in RATIO_ORDER[:5])
                  + (" · relative to k0s-style: "
                     + ", ".join(f"{RATIO_LABELS[k].removeprefix('CPU ')} "
                                 f"{_ratio_cell(report['vs_k0s'].get(k))}×"
                                 for k in RATIO_ORDER[:5])
                     if report.get("vs_k0s") else "") + "."]
    lines += [
        "",
        "## Rates and latency",
        "",
        "Three backends on 127.0.0.1 (one Python epoll process each) and Python load "
        "generators (bench/proxy/load.py) "
        + ("on the load CPUs, the proxy under test alone on its CPU. Every rr request "
           "then crosses CPUs four times (client → proxy → backend → proxy → client), each "
           "a wake-up of another (often idle) CPU; on a VM that wake-up dominates rr 1 "
           "latency for every proxy alike (direct, all on one CPU, has none). "
           if pin["subject_cpus"] else "on the same cores as the proxy. ")
        + "Bulk = download (backend → client); rr = 64-byte request/response with one "
        "request in flight per connection; new conn = connect, 64-byte echo, close, 8 clients "
        "in parallel. The rates are bounded by the Python load side too (direct = no proxy).",
        "",
        "| subject | bulk 1 Gbit/s | bulk 8 Gbit/s | rr 1 req/s | rr 1 p50 / p99 µs "
        "| rr 16 req/s | rr 16 p50 / p99 µs | new conn/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in spread.items():
        lines.append(
            f"| {name} | {_cell(t['bulk1']['gbit_s'], '.1f')} "
            f"| {_cell(t['bulk8']['gbit_s'], '.1f')} "
            f"| {_cell(t['rr1']['req_s'], '.1f', 1000, 'k')} "
            f"| {t['rr1']['p50_us']['median']:.0f} / {_cell(t['rr1']['p99_us'], '.0f')} "
            f"| {_cell(t['rr16']['req_s'], '.1f', 1000, 'k')} "
            f"| {t['rr16']['p50_us']['median']:.0f} / {_cell(t['rr16']['p99_us'], '.0f')} "
            f"| {_cell(t['newconn']['conn_s'], '.2f', 1000, 'k')} |"
        )
    lines += [
        "",
        "## Memory",
        "",
        f"RSS of the proxy before and while the load side holds up to {meta['idle_conns']:,} "
        "idle connections through it (one measurement; kernel memory such as socket buffers "
        "and k0s-style's splice pipes is not in RSS). A proxy holds fewer when it runs out "
        "of file descriptors (limit: "
        + ", ".join(f"{n} {v:,}" for n, v in meta.get("nofile", {}).items())
        + "; HAProxy with splice keeps pipes, k0s-style 2 splice pipes per connection, "
        "6 fds in all).",
        "",
        "| subject | RSS MB before → held | conns held | KB/idle conn |",
        "|---|---|---|---|",
    ]
    for name, m in mem.items():
        lines.append(f"| {name} | {m['rss_base_mb']:.1f} → {m['rss_mb']:.1f} | {m['held']} "
                     f"| {m['kb_per_conn']:.2f} |")
    lines += ["", "## Ratios to HAProxy (defaults)", "",
              "Each cell: the ratio of the medians, then (min–max) of the ratio taken within "
              "each repetition. Rates: higher is better; p99 latency, CPU and memory: lower is "
              "better. The last column is ipvslb relative to k0s-style.", "",
              *_ratio_table(report)]
    lines += ["", "## Targets (ipvslb's proxy, default settings)", ""]
    for target, ok in report["targets"].items():
        lines.append(f"- {'met' if ok else 'MISSED'}: {target}")
    if "comparison" in report:
        lines += ["", *_comparison_markdown(report["comparison"], meta)]
    return "\n".join(lines) + "\n"


def _comparison_summary(c: dict[str, Any]) -> str:
    counts = c["counts"]
    n = sum(counts.values())
    runs_agree = "the two runs agree within their spread" if counts["differ"] == 0 else (
        f"the two runs do not agree: {counts['differ']} figures have disjoint ranges")
    return (f"**Two runs** (this one and {c['previous_date']}): of {n} figures "
            f"{counts['agree']} agree, {counts['overlap']} overlap, {counts['differ']} differ "
            f"— {runs_agree}; {len(c['flips'])} decided verdicts flipped. Verdicts decided "
            "the same way in both runs: " + ("; ".join(c.get("stable", [])) or "none")
            + ". Details at the end.")


def _comparison_markdown(c: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    n = sum(c["counts"].values())
    lines = [
        f"## Agreement with the previous run ({c['previous_date']})",
        "",
        f"Previous run: {c['previous_pinning']}; this run: {meta['pinning']['note']}. "
        "A figure *agrees* when each run's median lies within the other run's min–max, "
        "*overlaps* when only the ranges overlap, *differs* when they are disjoint. "
        f"Of {n} figures: {c['counts']['agree']} agree, {c['counts']['overlap']} overlap, "
        f"{c['counts']['differ']} differ.",
        "",
        "A verdict (ahead/behind) is decided in a run when the per-repetition ratio is on "
        "the same side of 1 in every repetition, else undecided. "
        "Flipped (decided both times, opposite ways): "
        + (", ".join(c["flips"]) if c["flips"] else "none") + ". Undecided in at least one "
        "run: " + (", ".join(c["undecided"]) if c["undecided"] else "none") + ".",
        "",
    ]
    subjects = list(dict.fromkeys(f["subject"] for f in c["figures"]))
    lines += ["| figure | " + " | ".join(subjects) + " |", "|---" * (len(subjects) + 1) + "|"]
    by_key = {(f["figure"], f["subject"]): f for f in c["figures"]}
    for label in dict.fromkeys(f["figure"] for f in c["figures"]):
        cells = []
        for name in subjects:
            f = by_key.get((label, name))
            if f is None:
                cells.append("–")
                continue
            spec = ".2f" if "Gbit" in label else ".1f" if "µs/req" in label else ".0f"
            cells.append(f"{format(f['previous']['median'], spec)} → "
                         f"{format(f['current']['median'], spec)} {f['agreement']}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | " + " | ".join(
        dict.fromkeys(v["pair"] for v in c["verdicts"])) + " |"]
    pairs = list(dict.fromkeys(v["pair"] for v in c["verdicts"]))
    lines.append("|---" * (len(pairs) + 1) + "|")
    by_ratio = {(v["ratio"], v["pair"]): v for v in c["verdicts"]}
    for key in RATIO_ORDER:
        cells = []
        for pair in pairs:
            v = by_ratio.get((key, pair))
            if v is None:
                cells.append("–")
                continue
            change = v["previous_verdict"] if v["same"] else (
                f"{v['previous_verdict']} → {v['current_verdict']}")
            flip = {v["previous_verdict"], v["current_verdict"]} == {"ahead", "behind"}
            cells.append(f"{v['previous']:.2f} → {v['current']:.2f} "
                         + (f"**{change}**" if flip else change))
        if any(cell != "–" for cell in cells):
            lines.append(f"| {RATIO_LABELS[key]} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description="re-render a proxy benchmark result file")
    ap.add_argument("results", help="RESULTS.json written by bench/proxy/run.py")
    ap.add_argument("--compare", metavar="JSON", help="an earlier run to compare with")
    ap.add_argument("--note", help="a remark on the run's conditions, kept in meta")
    args = ap.parse_args()
    path = Path(args.results)
    results = json.loads(path.read_text())
    if "spread" not in results:  # written before the spread fields
        results["spread"] = spreads(results["runs"])
    previous = json.loads(Path(args.compare).read_text()) if args.compare else None
    if args.note is not None:
        results["meta"]["note"] = args.note
    finish(results, previous, args.compare)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
