"""Notice when someone else changes ipvslb's dummy link (virtual-servers mode).

A NetworkManager or netplan re-apply, `ip addr flush`, `ip link del dummyvip0` or a careless
`ip addr del` takes the VIPs off dummyvip0, and a node without them drops the DR traffic its
IPVS master sends it. keepalived does not own that link and never notices. This module listens
to the kernel's link and address events (pyroute2 ``IPRoute`` bound to the rtnetlink groups,
in a thread) and calls ``on_change`` whenever an event concerns the link; the agent then runs
:func:`ipvslb.node.dummy.ensure` again, which is idempotent (no change, no new event). Events are
coalesced: one call per burst, at most one pending.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from typing import Any

from ipvslb import logfmt
from ipvslb.node.netns import iproute

log = logfmt.get("dummy")

POLL = 0.5  # seconds between checks of the stop flag while no event arrives


class DummyWatch:
    """Kernel events about link ``name``, in netns ``netns`` (None: the agent's own)."""

    def __init__(self, name: str, netns: str | None, on_change: Callable[[str], None]) -> None:
        self.name = name
        self.netns = netns
        self.on_change = on_change
        self.index: int | None = None  # the link's ifindex, followed through the events
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once the socket is bound (events after this are seen)."""
        self._thread = threading.Thread(target=self._run, name="dummy-watch", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)

    @property
    def watching(self) -> bool:
        """Whether events are being followed (the thread runs, no error)."""
        return self.error is None and self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

        try:
            ipr = iproute(self.netns)
        except Exception as err:  # reported once; the agent still repairs at start-up
            self.error = str(err) or type(err).__name__
            log.error("cannot watch the dummy link", extra={"link": self.name,
                                                             "error": self.error})
            self._ready.set()
            return
        try:
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            self.index = next((m["index"] for m in ipr.get_links()
                               if m.get_attr("IFLA_IFNAME") == self.name), None)
            self._ready.set()
            while not self._stop.is_set():
                readable, _, _ = select.select([ipr.fileno()], [], [], POLL)
                if not readable:
                    continue
                reasons = [r for r in map(self._concerns, ipr.get()) if r]
                if reasons:
                    self.on_change(reasons[0])
        except Exception as err:
            self.error = str(err) or type(err).__name__
            log.error("the dummy link watch stopped", extra={"link": self.name,
                                                              "error": self.error})
        finally:
            self._ready.set()
            ipr.close()

    def _concerns(self, msg: Any) -> str | None:
        """Why the event matters to the link (None: it does not)."""
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            if msg.get_attr("IFLA_IFNAME") != self.name:
                return None
            self.index = None if event == "RTM_DELLINK" else msg["index"]
            return "link deleted" if event == "RTM_DELLINK" else "link changed"
        if event in ("RTM_NEWADDR", "RTM_DELADDR") and msg["index"] == self.index:
            what = "removed" if event == "RTM_DELADDR" else "added"
            return f"address {msg.get_attr('IFA_ADDRESS')} {what}"
        return None
