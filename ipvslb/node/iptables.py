"""iptables REDIRECT of VIP:apiPort to the local userspace proxy.

ipvslb keeps its rules in its own chains of table ``nat``::

    -A PREROUTING -m comment --comment ipvslb -j IPVSLB-PREROUTING   (clients elsewhere)
    -A OUTPUT     -m comment --comment ipvslb -j IPVSLB-OUTPUT       (clients on this node)
    -A IPVSLB-PREROUTING -d VIP/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444
    -A IPVSLB-OUTPUT     -d VIP/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444

``install`` writes them with one ``iptables-restore --noflush`` per address family: the chains
are declared (which empties them) and refilled, and the jumps are fixed to exactly one each,
all in one atomic transaction, so repeating it, or running it after a crash, never leaves
duplicates. ``remove`` deletes the jumps and the chains. IPv6 VIPs go to ip6tables.

The iptables backend (nft or legacy) is the one the node already uses, chosen as kube-proxy
does: whichever holds more rules, nft when tied. Every function takes an optional network
namespace name (``ip netns exec``).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ipvslb import logfmt
from ipvslb.errors import SystemStateError

log = logfmt.get("iptables")

CHAINS = {"PREROUTING": "IPVSLB-PREROUTING", "OUTPUT": "IPVSLB-OUTPUT"}
COMMENT = "ipvslb"
BACKENDS = ("nft", "legacy")
TIMEOUT = 30.0


@dataclass(frozen=True)
class Redirect:
    """Send TCP to ``vip``:``port`` to the local ``to_port``."""

    vip: str
    port: int
    to_port: int

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.vip).version


def _tool(family: int, backend: str, suffix: str) -> str:
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{backend}{suffix}"


def _run(argv: list[str], netns: str | None, stdin: str | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise SystemStateError(f"{argv[0]} not found: install the Debian package iptables")
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise SystemStateError(f"{' '.join(argv)} did not finish within {TIMEOUT:.0f}s") from err
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")
        raise SystemStateError(f"{' '.join(argv)} failed: {detail.splitlines()[0]}")
    return done.stdout


def _save(family: int, backend: str, netns: str | None, table: str | None = "nat") -> str:
    argv = [_tool(family, backend, "-save")]
    if table:
        argv += ["-t", table]
    return _run(argv, netns)


def _count_rules(family: int, backend: str, netns: str | None) -> int:
    try:
        text = _save(family, backend, netns, table=None)
    except SystemStateError:
        return 0
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


def detect_backend(netns: str | None = None) -> str:
    """``nft`` or ``legacy``: the one holding more rules now (both families); nft when tied."""
    available = [b for b in BACKENDS if shutil.which(_tool(4, b, "-save"))]
    if not available:
        raise SystemStateError("iptables-nft-save / iptables-legacy-save not found: "
                               "install the Debian package iptables")
    if len(available) == 1:
        return available[0]
    counts = {b: _count_rules(4, b, netns) + _count_rules(6, b, netns) for b in BACKENDS}
    return "legacy" if counts["legacy"] > counts["nft"] else "nft"


def _jump_spec(hook: str) -> str:
    return f"-m comment --comment {COMMENT} -j {CHAINS[hook]}"


def _state(text: str) -> tuple[set[str], dict[str, list[str]]]:
    """Our chains present, and per hook the rule specs (after ``-A HOOK``) jumping to ours."""
    chains = {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}
    jumps: dict[str, list[str]] = {hook: [] for hook in CHAINS}
    for line in text.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0] == "-A" and parts[1] in CHAINS:
            if line.split()[-1] == CHAINS[parts[1]] and " -j " in f" {parts[2]}":
                jumps[parts[1]].append(parts[2])
    return chains & set(CHAINS.values()), jumps


def _rule(r: Redirect, chain: str) -> str:
    prefix = 32 if r.family == 4 else 128
    return (f"-A {chain} -d {r.vip}/{prefix} -p tcp -m tcp --dport {r.port} "
            f"-j REDIRECT --to-ports {r.to_port}")


def _restore(family: int, backend: str, netns: str | None, lines: list[str]) -> None:
    text = "\n".join(["*nat", *lines, "COMMIT", ""])
    _run([_tool(family, backend, "-restore"), "-w", "5", "--noflush"], netns, stdin=text)


def install(
    redirects: Sequence[Redirect], *, netns: str | None = None, backend: str | None = None
) -> str:
    """Make ipvslb's nat rules exactly ``redirects`` (idempotent). Returns the backend used.

    A family without redirects has its ipvslb chains removed.
    """
    backend = backend or detect_backend(netns)
    for family in (4, 6):
        mine = [r for r in dict.fromkeys(redirects) if r.family == family]
        if not mine:
            if family == 6 and not _family_available(6, backend, netns):
                continue
            _remove_family(family, backend, netns)
            continue
        _, jumps = _state(_save(family, backend, netns))
        lines = [f":{chain} - [0:0]" for chain in CHAINS.values()]  # declared = emptied
        for hook in CHAINS:
            wanted = _jump_spec(hook)
            if jumps[hook] != [wanted]:
                lines += [f"-D {hook} {spec}" for spec in jumps[hook]]
                lines.append(f"-I {hook} 1 {wanted}")
        for chain in CHAINS.values():
            lines += [_rule(r, chain) for r in mine]
        _restore(family, backend, netns, lines)
    log.info("redirect rules installed", extra={
        "backend": backend, "netns": netns or "",
        "redirects": ",".join(f"{r.vip}:{r.port}->{r.to_port}" for r in redirects)})
    return backend


def _family_available(family: int, backend: str, netns: str | None) -> bool:
    try:
        _save(family, backend, netns)
    except SystemStateError:
        return False
    return True


def _remove_family(family: int, backend: str, netns: str | None) -> bool:
    chains, jumps = _state(_save(family, backend, netns))
    lines = [f"-D {hook} {spec}" for hook in CHAINS for spec in jumps[hook]]
    for chain in sorted(chains):
        lines += [f"-F {chain}", f"-X {chain}"]
    if lines:
        _restore(family, backend, netns, lines)
    return bool(lines)


def remove(*, netns: str | None = None) -> None:
    """Delete ipvslb's jumps and chains, IPv4 and IPv6, in whichever backend holds them."""
    removed = []
    for backend in BACKENDS:
        if not shutil.which(_tool(4, backend, "-save")):
            continue
        for family in (4, 6):
            if family == 6 and not _family_available(6, backend, netns):
                continue
            if _remove_family(family, backend, netns):
                removed.append(f"{backend}/ipv{family}")
    if removed:
        log.info("redirect rules removed", extra={"from": ",".join(removed),
                                                  "netns": netns or ""})


def current_rules(*, netns: str | None = None, backend: str | None = None) -> list[str]:
    """ipvslb's rules as ``iptables-save`` prints them (IPv4 then IPv6), for status and tests."""
    backend = backend or detect_backend(netns)
    out: list[str] = []
    for family in (4, 6):
        try:
            text = _save(family, backend, netns)
        except SystemStateError:
            if family == 6:  # no IPv6 tables on this node (ip6tables cannot read them)
                continue
            raise
        for line in text.splitlines():
            words = line.split()
            if any(chain in words for chain in CHAINS.values()) or any(
                f":{chain}" == (words[0] if words else "") for chain in CHAINS.values()
            ):
                out.append(line)
    return out
