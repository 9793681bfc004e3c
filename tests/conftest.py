"""Test tiers and shared fixtures.

Tests marked ``kernel`` (and every test under tests/kernel/) need a kernel with IPVS and
dummy links, which the development/CI machines do not have: they run inside the QEMU guest
(``tests/vm/run``, which sets IPVSLB_IN_VM=1) and are skipped, saying so, everywhere else.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netlab import IN_VM, NetLab

KERNEL_DIR = Path(__file__).parent / "kernel"
KERNEL_TIER_COMMAND = "tests/vm/run .venv/bin/pytest -m kernel"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: tests/kernel/* get the marker first
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(
        reason=f"needs IPVS/dummy (the QEMU guest kernel): run `{KERNEL_TIER_COMMAND}`"
    )
    for item in items:
        if item.path.is_relative_to(KERNEL_DIR) and "kernel" not in item.keywords:
            item.add_marker(pytest.mark.kernel)
        if not IN_VM and "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    """Namespaces, LANs and processes for one test; all stopped and deleted afterwards.

    The logs of the processes it started are printed at teardown (pytest shows them when
    the test failed).
    """
    if os.geteuid() != 0:
        pytest.skip("netlab needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("netlab needs iproute2 (apt-get install iproute2)")
    lab = NetLab(tmp_path / "netlab")
    try:
        yield lab
    finally:
        started = list(lab.processes)
        try:
            lab.close()
        finally:
            for proc in started:
                print(f"--- {' '.join(proc.argv)[:200]}\n{proc.output()[-4000:]}")
