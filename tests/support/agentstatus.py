"""`ipvslb status --json` and a metrics scrape of a lab controller's agent, as an operator on
that node would run them (inside its network namespace)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

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
