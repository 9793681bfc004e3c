"""The shipped monitoring examples: the alert rules pass their promtool unit tests (and a
broken rule fails them), the Grafana dashboard is well formed. That every series they query
is exported by a real agent is checked on the namespace lab (tests/e2e/test_status_e2e.py)
and in the guest (tests/kernel/test_e2e_virtual_servers.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.agentstatus import MONITORING, example_selectors

PROMTOOL = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "ipvslb/promtool/2.42/promtool"


def promtool() -> str:
    found = str(PROMTOOL) if PROMTOOL.exists() else shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"promtool missing ({PROMTOOL}): tests/setup installs it")
        pytest.skip(f"promtool missing ({PROMTOOL}): run tests/setup")
    return found


def run_rule_tests(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "test", "rules", "ipvslb-alerts.test.yaml"],
                          cwd=directory, capture_output=True, text=True, timeout=60,
                          check=False)


def test_alert_rules_pass_their_promtool_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", "ipvslb-alerts.yaml"], cwd=MONITORING,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    result = run_rule_tests(MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_alert_rule_fails_the_promtool_tests(tmp_path: Path) -> None:
    for name in ("ipvslb-alerts.yaml", "ipvslb-alerts.test.yaml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    rules = tmp_path / "ipvslb-alerts.yaml"
    text = rules.read_text()
    broken = text.replace('state="MASTER"}) > 1', 'state="MASTER"}) > 2')
    assert broken != text
    rules.write_text(broken)
    result = run_rule_tests(tmp_path)
    assert result.returncode != 0 and "IpvslbSplitBrain" in result.stdout + result.stderr


def test_dashboard_is_well_formed() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "node"} <= names
    queried = {name for name, _ in example_selectors()}
    assert {"ipvslb_vrrp_state", "ipvslb_backend_up", "ipvslb_endpoint_watch_connected"} \
        <= queried
