"""Who holds an address, followed from the kernel's own address events, in several namespaces.

One rtnetlink socket per namespace, subscribed to IPv4/IPv6 address events, is read by one
thread that stamps each event on arrival. Unlike polling `ip addr`, no change can fall between
two samples: a moment with two holders of the VIP, however short, is seen and timed.

    with VipWatch({"ctrl-1": "ns1", "ctrl-2": "ns2"}, "10.77.0.10", "eth0") as watch:
        ...
        watch.max_holders, watch.two_holder_seconds(), watch.timeline
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping

from ipvslb import netns as netns_mod

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWADDR = 20
RTM_DELADDR = 21
IFA_ADDRESS = 1
IFA_LOCAL = 2
NLMSG_HDR = struct.Struct("=IHHII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_addr_events(data: bytes) -> list[tuple[bool, int, str]]:
    """(added, ifindex, address) for each RTM_NEWADDR/RTM_DELADDR message in ``data``."""
    events = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            body = offset + NLMSG_HDR.size
            family, _plen, _fl, _scope, index = IFADDRMSG.unpack_from(data, body)
            attrs: dict[int, bytes] = {}
            pos = body + IFADDRMSG.size
            end = offset + length
            while pos + RTATTR.size <= end:
                alen, atype = RTATTR.unpack_from(data, pos)
                if alen < RTATTR.size:
                    break
                attrs[atype] = data[pos + RTATTR.size:pos + alen]
                pos += _align(alen)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
                events.append((kind == RTM_NEWADDR, index, socket.inet_ntop(family, raw)))
        offset += _align(length)
    return events


def _ifindex(netns: str, ifname: str) -> int:
    out = subprocess.run(["ip", "-j", "-n", netns, "link", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return int(json.loads(out)[0]["ifindex"])


def _has_address(netns: str, ifname: str, address: str) -> bool:
    out = subprocess.run(["ip", "-j", "-n", netns, "addr", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return any(a.get("local") == address for link in json.loads(out)
               for a in link.get("addr_info", []))


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
        self._sockets: dict[int, tuple[socket.socket, str, int]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VipWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        for label, name in self.members.items():
            with netns_mod.entered(name):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, groups))
            self._sockets[sock.fileno()] = (sock, label, _ifindex(name, self.ifname))
        # Subscribed first, then the snapshot: an event racing the snapshot is applied after it,
        # and applying "added"/"removed" twice is harmless.
        now = time.monotonic()
        with self._cond:
            for label, name in self.members.items():
                if _has_address(name, self.ifname, self.address):
                    self.holders.add(label)
            self._changed(now)
        self._thread = threading.Thread(target=self._loop, name="vipwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for sock, _label, _index in self._sockets.values():
            sock.close()
        self._sockets.clear()
        with self._cond:
            if self._double_since is not None:  # close the count at the moment of stopping
                self._double_total += time.monotonic() - self._double_since
                self._double_since = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self._sockets), [], [], 0.1)
            for fd in ready:
                sock, label, index = self._sockets[fd]
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    continue  # ENOBUFS: events lost; the next change corrects the state
                stamp = time.monotonic()
                for added, ifindex, addr in parse_addr_events(data):
                    if ifindex != index or addr != self.address:
                        continue
                    with self._cond:
                        if added:
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
