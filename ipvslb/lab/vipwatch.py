"""Who holds an address, followed from the kernel's own address events, in several namespaces.

One rtnetlink socket per namespace (pyroute2 ``AsyncIPRoute``), subscribed to IPv4/IPv6 address
events, is read by one thread (one event loop, a reader per namespace) that stamps each event
on arrival. Unlike polling `ip addr`, no change can fall between
two samples: a moment with two holders of the VIP, however short, is seen and timed.

    with VipWatch({"ctrl-1": "ns1", "ctrl-2": "ns2"}, "10.77.0.10", "eth0") as watch:
        ...
        watch.max_holders, watch.two_holder_seconds(), watch.timeline
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

from ipvslb.node import netns as netns_mod

RCVBUF = 1 << 20  # bursts of events (a restart of every member) fit without ENOBUFS
POLL = 0.1  # seconds between checks of the stop flag


def addr_event(msg: Any) -> tuple[bool, int, str] | None:
    """(added, ifindex, address) of an RTM_NEWADDR/RTM_DELADDR message; None for others."""
    event = msg.get("event")
    if event not in ("RTM_NEWADDR", "RTM_DELADDR"):
        return None
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if address is None:
        return None
    return event == "RTM_NEWADDR", msg["index"], str(ipaddress.ip_address(address))


class VipWatch:
    """Follow which of ``members`` (label -> network namespace) hold ``address`` on ``ifname``."""

    def __init__(self, members: Mapping[str, str], address: str, ifname: str = "eth0") -> None:
        self.members = dict(members)
        self.address = str(ipaddress.ip_address(address))
        self.ifname = ifname
        self.holders: set[str] = set()
        self.max_holders = 0
        # (monotonic time, sorted holders) at every change, starting with the first snapshot
        self.timeline: list[tuple[float, tuple[str, ...]]] = []
        self._double_since: float | None = None
        self._double_total = 0.0
        self._sockets: list[tuple[Any, str, int]] = []  # (AsyncIPRoute, label, ifindex)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VipWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            present = loop.run_until_complete(self._subscribe())
        except BaseException:
            self._close()
            raise
        # Subscribed first, then the snapshot: an event racing the snapshot is applied after it,
        # and applying "added"/"removed" twice is harmless.
        now = time.monotonic()
        with self._cond:
            self.holders.update(present)
            self._changed(now)
        self._thread = threading.Thread(target=self._run, name="vipwatch", daemon=True)
        self._thread.start()

    async def _subscribe(self) -> set[str]:
        """Open and bind one socket per member; return the members holding the address now."""
        present = set()
        for label, name in self.members.items():
            ipr = netns_mod.async_iproute(name, rcvbuf=RCVBUF)
            self._sockets.append((ipr, label, 0))
            await ipr.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            found = await ipr.link_lookup(ifname=self.ifname)
            if not found:
                raise RuntimeError(f"vipwatch: no interface {self.ifname} in netns {name}")
            self._sockets[-1] = (ipr, label, found[0])
            async for msg in await ipr.get_addr(index=found[0]):
                event = addr_event(msg)
                if event is not None and event[2] == self.address:
                    present.add(label)
        return present

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close()
        with self._cond:
            if self._double_since is not None:  # close the count at the moment of stopping
                self._double_total += time.monotonic() - self._double_since
                self._double_since = None

    def _close(self) -> None:
        for ipr, _label, _index in self._sockets:
            ipr.close()
        self._sockets.clear()
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()
            self._loop = None

    def _run(self) -> None:
        assert self._loop is not None
        self._loop.run_until_complete(self._follow())

    async def _follow(self) -> None:
        """One reader per member until stop(); each event is stamped as it arrives."""
        readers = [asyncio.ensure_future(self._read(*member)) for member in self._sockets]
        try:
            while not self._stop.is_set() and not all(r.done() for r in readers):
                await asyncio.sleep(POLL)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, ipr: Any, label: str, index: int) -> None:
        while True:
            try:
                messages = [msg async for msg in ipr.get()]
            except NetlinkError as err:
                if err.code == errno.ENOBUFS:
                    continue  # events lost; the next change corrects the state
                raise
            stamp = time.monotonic()
            for msg in messages:
                event = addr_event(msg)
                if event is None or event[1] != index or event[2] != self.address:
                    continue
                with self._cond:
                    if event[0]:
                        self.holders.add(label)
                    else:
                        self.holders.discard(label)
                    self._changed(stamp)

    def _changed(self, stamp: float) -> None:
        current = tuple(sorted(self.holders))
        if self.timeline and self.timeline[-1][1] == current:
            return
        self.timeline.append((stamp, current))
        self.max_holders = max(self.max_holders, len(current))
        if len(current) >= 2 and self._double_since is None:
            self._double_since = stamp
        elif len(current) < 2 and self._double_since is not None:
            self._double_total += stamp - self._double_since
            self._double_since = None
        self._cond.notify_all()

    def current(self) -> tuple[str, ...]:
        with self._cond:
            return tuple(sorted(self.holders))

    def two_holder_seconds(self) -> float:
        """Total time two or more members held the address at once (so far)."""
        with self._cond:
            ongoing = 0.0
            if self._double_since is not None:
                ongoing = time.monotonic() - self._double_since
            return self._double_total + ongoing

    def reset(self) -> None:
        """Start counting afresh (the two-holder time and the maximum) from the present state."""
        with self._cond:
            now = time.monotonic()
            self._double_total = 0.0
            self._double_since = now if len(self.holders) >= 2 else None
            self.max_holders = len(self.holders)
            self.timeline = [(now, tuple(sorted(self.holders)))]

    def wait_for(self, predicate: Callable[[tuple[str, ...]], bool], timeout: float
                 ) -> tuple[float, tuple[str, ...]] | None:
        """Wait until ``predicate(holders)`` holds; return (the moment it became true, holders),
        or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.timeline and predicate(self.timeline[-1][1]):
                    first = self.timeline[-1][0]
                    for stamp, holders in reversed(self.timeline):
                        if not predicate(holders):
                            break
                        first = stamp
                    return first, self.timeline[-1][1]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))
