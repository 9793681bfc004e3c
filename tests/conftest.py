"""Test tiers and shared fixtures.

Tests under tests/kernel/ (all marked ``kernel``) need a kernel with IPVS and dummy links,
which the development/CI machines do not have: they run inside the QEMU guest
(``tests/vm/run``, which sets IPVSLB_IN_VM=1) and are skipped, saying so, everywhere else.
The kernel tier collects only tests/kernel/ (importing every test module costs tens of
seconds in the emulated guest), so a ``kernel`` mark anywhere else is a collection error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netlab import IN_VM, NetLab

KERNEL_DIR = Path(__file__).parent / "kernel"
KERNEL_TIER_COMMAND = "tests/vm/run .venv/bin/pytest -m kernel tests/kernel"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: tests/kernel/* get the marker first
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(
        reason=f"needs IPVS/dummy (the QEMU guest kernel): run `{KERNEL_TIER_COMMAND}`"
    )
    for item in items:
        in_kernel_dir = item.path.is_relative_to(KERNEL_DIR)
        if in_kernel_dir:
            item.add_marker(pytest.mark.kernel)
        elif item.get_closest_marker("kernel"):
            raise pytest.UsageError(
                f"{item.nodeid} is marked kernel but is not under tests/kernel/, "
                "which is all the kernel tier collects: move it there"
            )
        if in_kernel_dir and not IN_VM:
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
