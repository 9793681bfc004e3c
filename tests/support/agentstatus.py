"""`ipvslb status --json` and a metrics scrape of a lab controller's agent, as an operator on
that node would run them (inside its network namespace)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ipvslb.lab.nslab import METRICS_PORT, Lab

SCRAPE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
          f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read().decode())")


def status(lab: Lab, node: str) -> tuple[int, dict[str, Any]]:
    """`ipvslb status -c CONFIG --json` as an operator on the node runs it: (exit, JSON)."""
    member = lab.controller(node)
    proc = subprocess.run(
        ["ip", "netns", "exec", member.netns, sys.executable, "-m", "ipvslb", "status", "-c",
         member.config, "--json"], capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {})


def metrics(lab: Lab, node: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The node's metrics, scraped over HTTP inside its namespace and parsed with
    prometheus_client's own parser: (sample name, sorted labels) -> value."""
    out = subprocess.run(["ip", "netns", "exec", lab.controller(node).netns, sys.executable,
                          "-c", SCRAPE], capture_output=True, text=True, timeout=120, check=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(out.stdout) for s in family.samples}


def sample(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


MONITORING = Path(__file__).resolve().parents[2] / "examples" / "monitoring"
_SELECTOR = re.compile(r"\b(ipvslb_[a-z_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')


def example_selectors() -> list[tuple[str, dict[str, str]]]:
    """Every ipvslb series the shipped dashboard and alert rules query: (metric name, the
    label values they match exactly), target labels (job, instance) left out."""
    exprs = [t["expr"] for p in json.loads((MONITORING / "grafana-dashboard.json").read_text())
             ["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((MONITORING / "ipvslb-alerts.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    found = []
    for expr in exprs:
        for name, body in _SELECTOR.findall(expr):
            labels = {k: v for k, op, v in _MATCHER.findall(body or "")
                      if op == "=" and k not in ("job", "instance")}
            found.append((name, labels))
    return found


def unknown_to(m: dict[tuple[str, tuple[tuple[str, str], ...]], float],
               prefixes: tuple[str, ...] = ("ipvslb_",)) -> list[str]:
    """The example selectors (with a name starting with one of ``prefixes``) that match no
    sample of the scrape ``m``: a metric renamed, a label value the agent never exports."""
    missing = []
    for name, labels in example_selectors():
        if not name.startswith(prefixes):
            continue
        if not any(n == name and labels.items() <= dict(ls).items() for n, ls in m):
            missing.append(f"{name}{labels or ''}")
    return sorted(set(missing))
