"""Run a short piece of code inside a named network namespace (``ip netns`` names).

``entered(name)`` switches the *calling thread* into the namespace with setns(2) and switches
it back on exit. Sockets and /proc/sys, /proc/net files opened inside keep that namespace after
the switch back, which is all ipvslb needs: it opens its netlink sockets and proc files inside
and uses them outside. Nothing here forks, so it is cheap enough for every CLI call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ipvslb.errors import SystemStateError, UserError

if TYPE_CHECKING:
    from pyroute2 import AsyncIPRoute, IPRoute

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


def path_of(name: str) -> str:
    """The file that names the namespace: ``/run/netns/NAME``, or NAME itself if it is a path."""
    if "/" in name:
        return name
    if not name or name in (".", ".."):
        raise UserError(f"netns: {name!r} is not a namespace name; use a name from `ip netns list`")
    return os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Inside the block the calling thread is in network namespace ``name`` (None: no switch)."""
    if name is None:
        yield
        return
    path = path_of(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"netns: no network namespace {name!r} ({path} does not exist)") from None
    except OSError as err:
        raise SystemStateError(f"netns: cannot open {path}: {err.strerror}") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(target)
        raise
    try:
        try:
            _setns(target)
        except OSError as err:
            raise SystemStateError(f"netns: cannot enter {name!r}: {err.strerror} "
                                   "(entering a namespace needs root)") from None
        try:
            yield
        finally:
            _setns(home)  # failing here would leave the thread in the wrong namespace: let it raise
    finally:
        os.close(target)
        os.close(home)


def _pyroute2_netns(name: str | None) -> dict[str, object]:
    """pyroute2's keyword arguments for namespace ``name`` (None: the current one).

    pyroute2 creates a missing namespace by default (``flags=os.O_CREAT``): ``flags=0`` makes it
    an error instead, checked first here so the user reads the same line as from ``entered``.
    """
    if name is None:
        return {}
    path = path_of(name)
    if not os.path.exists(path):
        raise UserError(f"netns: no network namespace {name!r} ({path} does not exist)")
    return {"netns": path, "flags": 0}


def iproute(name: str | None, **kwargs: Any) -> IPRoute:
    """A pyroute2 ``IPRoute`` in namespace ``name`` (None: the current one); never creates one.

    ``kwargs`` go to ``IPRoute`` (e.g. ``rcvbuf``)."""
    from pyroute2 import IPRoute

    return IPRoute(**_pyroute2_netns(name), **kwargs)


def async_iproute(name: str | None, **kwargs: Any) -> AsyncIPRoute:
    """A pyroute2 ``AsyncIPRoute`` in namespace ``name`` (None: the current one), as ``iproute``."""
    from pyroute2 import AsyncIPRoute

    return AsyncIPRoute(**_pyroute2_netns(name), **kwargs)
