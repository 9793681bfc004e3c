"""Run the real ``keepalived -t`` (configuration test) on a config text.

keepalived's config test checks that every interface it names exists, rejects ``lo``, and rejects
VRRP on a dummy link unless unicast peers are given. So the test runs inside a throwaway network
namespace (``unshare --net``; it disappears when its last process exits) holding veth links with
the requested names, each up and with an address. Nothing is sent anywhere: keepalived only
reads the file and exits.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

KEEPALIVED = os.environ.get("IPVSLB_TEST_KEEPALIVED", "/usr/sbin/keepalived")
#: Exit status of the namespace setup script when building the links failed (not keepalived's).
SETUP_FAILED = 201
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def unavailable_reason() -> str | None:
    """Why the check cannot run here (for pytest.skip), or None when it can."""
    if os.geteuid() != 0:
        return "keepalived -t in a network namespace needs root (unshare --net, ip link add)"
    for tool in ("unshare", "ip", "timeout"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux / iproute2 / coreutils)"
    if not os.access(KEEPALIVED, os.X_OK):
        return f"{KEEPALIVED} is not installed (apt-get install keepalived)"
    return None


def _default_addresses(interfaces: Sequence[str]) -> dict[str, list[str]]:
    # 198.18.0.0/15 is reserved for benchmarking; it only ever exists inside the namespace.
    return {name: [f"198.18.{index}.1/24"] for index, name in enumerate(interfaces)}


def _setup_script(interfaces: Sequence[str], addresses: Mapping[str, Sequence[str]]) -> str:
    lines = [f"ip link set lo up || exit {SETUP_FAILED}"]
    for index, name in enumerate(interfaces):
        peer = f"kcpeer{index}x"
        q = shlex.quote(name)
        lines.append(f"ip link add {q} type veth peer name {peer} || exit {SETUP_FAILED}")
        lines.append(f"ip link set {peer} up && ip link set {q} up || exit {SETUP_FAILED}")
        for address in addresses.get(name, ()):
            extra = " nodad" if ":" in address else ""
            lines.append(
                f"ip addr add {shlex.quote(address)} dev {q}{extra} || exit {SETUP_FAILED}"
            )
    return "\n".join(lines)


def keepalived_config_test(
    text: str,
    interfaces: list[str],
    *,
    addresses: Mapping[str, Sequence[str]] | None = None,
    files: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, str]:
    """Run ``keepalived -t -f FILE`` on ``text``; return (exit status, combined output).

    ``interfaces``: veth links to create in the namespace (default address ``198.18.<i>.1/24``;
    ``addresses`` maps a name to its own list of CIDRs instead). ``files``: more files written
    beside the config, by plain file name, so ``include <name>`` in ``text`` finds them.
    Exit status 0 means keepalived accepted the config. Raises RuntimeError when the namespace
    could not be built, and TimeoutError (after killing everything it started) past ``timeout``.
    """
    for name in interfaces:
        if not _IFNAME.fullmatch(name) or name.startswith("kcpeer") or name in (".", ".."):
            raise ValueError(f"interface name {name!r} cannot be created for the test")
    if len(set(interfaces)) != len(interfaces):
        raise ValueError(f"duplicate interface names in {interfaces}")
    addresses = _default_addresses(interfaces) if addresses is None else addresses
    with tempfile.TemporaryDirectory(prefix="ipvslb-kat-") as tmp:
        work = Path(tmp)
        conf = work / "keepalived.conf"
        conf.write_text(text)
        conf.chmod(0o600)
        for name, content in (files or {}).items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"extra file name {name!r} must be a plain file name")
            (work / name).write_text(content)
            (work / name).chmod(0o600)
        keepalived = [
            KEEPALIVED, "-t", "-f", str(conf),
            "-p", str(work / "keepalived.pid"),
            "-r", str(work / "vrrp.pid"),
            "-c", str(work / "checkers.pid"),
            "--no-syslog", "--log-console",
        ]
        inner = f"{max(1, int(timeout) - 2)}"
        script = (
            _setup_script(interfaces, addresses)
            + "\nexec timeout -k 2 " + inner + " " + shlex.join(keepalived) + "\n"
        )
        proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", script],
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"keepalived -t did not finish within {timeout} s") from None
    if proc.returncode == SETUP_FAILED:
        raise RuntimeError(f"could not build the test namespace: {output.strip()}")
    return proc.returncode, output
