"""A throw-away network namespace for tests on the host kernel (root and iproute2 needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def scratch_netns(prefix: str) -> Iterator[str]:
    """Create ``<prefix>-<pid>``, yield its name, delete it; skip the test without root."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
