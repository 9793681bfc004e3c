"""What users see on a kernel without IPVS or dummy links, and option mistakes: one line,
no traceback. These run on the real host kernel of CI (no IPVS, no dummy driver); where the
kernel has them, the no-IPVS/no-dummy cases are skipped (the kernel tier covers the rest)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvslb.errors import SystemStateError
from ipvslb.ipvs import remove_services
from ipvslb.ipvs.netlink import IPVS
from ipvslb.node import dummy
from tests.support.scratchns import scratch_netns

IPVSLB = str(Path(sys.executable).with_name("ipvslb"))
HAS_IPVS = IPVS.available() if os.geteuid() == 0 else True


def ipvslb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IPVSLB, *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("ipvslb-host") as name:
        yield name


@pytest.mark.skipif(HAS_IPVS, reason="this kernel has IPVS (or not root): covered in the guest")
def test_show_without_ipvs_is_one_clear_line() -> None:
    done = ipvslb("show")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "error: this kernel has no IPVS (ip_vs module not found); use a " \
                          "kernel with CONFIG_IP_VS or install its modules package\n"
    assert remove_services([("10.0.0.1", 6443)]) == 0, "cleanup must not fail without IPVS"


@pytest.mark.parametrize("args, message", [
    (["-c", "--stats"], "-c, --timeout and --daemon cannot be combined with --stats"),
    (["--save", "--stats"], "--save takes no other option"),
    (["-t", "10.0.0.1:80", "-u", "10.0.0.1:53"], "give at most one service"),
    (["-t", "not-an-address:80"], "-t 'not-an-address:80': expected ADDRESS:PORT"),
    (["-f", "0"], "-f '0': the firewall mark must be 1..4294967295"),
    (["-6"], "-6 selects the IPv6 firewall-mark service"),
    (["--json", "--rate"], "--json always includes counters"),
])
def test_show_option_mistakes(args: list[str], message: str) -> None:
    done = ipvslb("show", *args)
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"error: {message}") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_show_in_a_missing_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    done = ipvslb("show", "--netns", "ipvslb-no-such-ns")
    assert (done.returncode, done.stderr) == (
        2, "error: netns: no network namespace 'ipvslb-no-such-ns' "
           "(/run/netns/ipvslb-no-such-ns does not exist)\n")


@pytest.mark.skipif(os.path.exists("/sys/module/dummy") or os.path.exists(
    f"/lib/modules/{os.uname().release}"), reason="this kernel may have dummy links")
def test_dummy_without_driver(netns: str) -> None:
    with pytest.raises(SystemStateError, match="this kernel has no dummy links"):
        dummy.ensure("dummyvip0", ["192.0.2.1"], netns=netns)


def test_foreign_link_is_never_touched(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "add", "dummyvip0", "type", "veth", "peer",
                    "name", "other0"], check=True)
    with pytest.raises(SystemStateError, match="dummyvip0 exists and is not a dummy link"):
        dummy.ensure("dummyvip0", ["192.0.2.1"], netns=netns)
    assert dummy.remove("dummyvip0", netns) is False
    shown = subprocess.run(["ip", "-n", netns, "-d", "link", "show", "dummyvip0"],
                           capture_output=True, text=True, check=True).stdout
    assert "veth" in shown


def test_bad_dummy_arguments() -> None:
    from ipvslb.errors import UserError

    with pytest.raises(UserError, match="not a valid link name"):
        dummy.ensure("a/b", ["192.0.2.1"])
    with pytest.raises(UserError, match="is not an IP address"):
        dummy.ensure("dummyvip0", ["vip.example"])
    with pytest.raises(UserError, match="address label 4294967295 is out of range"):
        dummy.ensure("dummyvip0", ["2001:db8::1"], label=0xFFFFFFFF)
