"""Read and set sysctls (``net.ipv4.vs.conntrack``) in a network namespace.

The ``net.*`` sysctls belong to the namespace of whoever opens the file, so the files are
opened inside the namespace (``ipvslb.node.netns.entered``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ipvslb import logfmt
from ipvslb.errors import SystemStateError
from ipvslb.node import netns as netns_mod

log = logfmt.get("sysctl")


def path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str, netns: str | None = None) -> str | None:
    """The value of ``key`` (stripped), or None if the kernel has no such sysctl."""
    with netns_mod.entered(netns):
        try:
            with open(path(key), encoding="ascii") as fh:
                return fh.read().strip()
        except FileNotFoundError:
            return None


def ensure(settings: Mapping[str, str | int], netns: str | None = None) -> list[str]:
    """Set each sysctl that does not already have its value; return the keys changed.

    A missing sysctl or a refused write raises SystemStateError naming it.
    """
    changed = []
    with netns_mod.entered(netns):
        for key, value in settings.items():
            want = str(value)
            try:
                with open(path(key), encoding="ascii") as fh:
                    if fh.read().strip() == want:
                        continue
                with open(path(key), "w", encoding="ascii") as fh:
                    fh.write(want + "\n")
            except FileNotFoundError:
                raise SystemStateError(f"sysctl {key} does not exist in this kernel") from None
            except OSError as err:
                raise SystemStateError(f"cannot set sysctl {key}={want}: {err.strerror} "
                                       "(needs root)") from None
            changed.append(key)
    if changed:
        log.info("sysctls set", extra={"keys": ",".join(changed), "netns": netns or ""})
    return changed
