"""Requests through the lab's VIP and what a failover looked like.

``https_get`` asks one apiserver stand-in (through the VIP) who it is and records its
certificate's fingerprint; a :class:`Prober` keeps asking during a failover; a
:class:`Failover` holds the timings and the VIP holders' timeline.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ipvslb.lab.procs import time_scale
from ipvslb.node import netns as netns_mod


@dataclass(frozen=True)
class Fetch:
    """One HTTPS request through the VIP: who answered, and its certificate's fingerprint."""

    source: str
    name: str
    fingerprint: str


@dataclass(frozen=True)
class Failover:
    """What one failover looked like, in seconds from the kill (None: did not happen)."""

    how: str
    old: str
    new: str | None
    killed: tuple[int, ...]
    vip_moved: float | None  # the VIP appeared on another controller
    served: float | None  # first answer through the VIP to a request sent after that
    two_holders: float  # total time two controllers held the VIP at once (through the restart)
    max_holders: int
    probes: int  # requests through the VIP while it ran
    failed_after_served: int  # of those, failures after the first answer from the new holder
    longest_gap: float  # longest time without an answer through the VIP
    timeline: tuple[tuple[float, tuple[str, ...]], ...] = ()  # (seconds, VIP holders) changes
    restarted: float | None = None  # the node's `ipvslb up` ran again and rejoined as backup
    dual_masters: float = 0.0  # time two *other* controllers held the VIP at once
    stale_vip: float = 0.0  # time the old holder kept the VIP while another held it too


def time_where(timeline: tuple[tuple[float, tuple[str, ...]], ...], end: float,
               predicate: Callable[[tuple[str, ...]], bool]) -> float:
    """Total time (up to ``end``) the holders in ``timeline`` satisfied ``predicate``."""
    total = 0.0
    for (start, holders), (stop, _) in zip(timeline, [*timeline[1:], (end, ())], strict=True):
        if predicate(holders):
            total += max(0.0, min(stop, end) - start)
    return total


@dataclass
class _Attempt:
    start: float
    end: float
    ok: bool
    error: str = ""


class Prober:
    """HTTPS requests to ``host:port`` from ``netns``, one after the other, while it runs
    (rotating over the ``sources`` addresses); every attempt is recorded."""

    def __init__(self, netns: str, host: str, port: int, sources: list[str],
                 connect_timeout: float = 0.1, timeout: float = 2.0, path: str = "/") -> None:
        self.netns, self.host, self.port, self.sources = netns, host, port, sources
        self.path = path
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.attempts: list[_Attempt] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10 * time_scale())

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            source = self.sources[n % len(self.sources)]
            start = time.monotonic()
            error = ""
            try:
                https_get(self.netns, self.host, self.port, source, timeout=self.timeout,
                          connect_timeout=self.connect_timeout, path=self.path)
            except OSError as err:
                error = f"{source}: {err!r}"
            self.attempts.append(_Attempt(start, time.monotonic(), not error, error))
            n += 1
            # a short pause: fine enough resolution, and the lab's keepalived keep the CPU
            time.sleep(0.01 if not error else 0.002)

    def first_ok(self, after: float, timeout: float) -> float | None:
        """End of the first successful request started at or after ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            for attempt in list(self.attempts):
                if attempt.ok and attempt.start >= after:
                    return attempt.end
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def longest_gap(self, since: float) -> float:
        """Longest time without a successful answer, from ``since`` to the last attempt."""
        last, gap = since, 0.0
        for attempt in self.attempts:
            if attempt.ok and attempt.end >= since:
                gap = max(gap, attempt.end - last)
                last = attempt.end
        return gap


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def https_get(netns: str, host: str, port: int, source: str | None = None,
              timeout: float = 2.0, connect_timeout: float | None = None,
              path: str = "/") -> Fetch:
    """GET / over HTTPS from network namespace ``netns`` (from address ``source``); who
    answered (the body) and the certificate's fingerprint. Raises OSError when it fails.

    ``connect_timeout`` (default ``timeout``) bounds the TCP handshake alone: on the lab's
    bridge an answer takes microseconds, so a short one finds a dead path fast, while TLS and
    the answer get ``timeout`` (a busy machine can be slow there). The certificate is not
    verified: the stand-ins have their own, and the caller compares fingerprints.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with netns_mod.entered(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(connect_timeout or timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
        sock.settimeout(timeout)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
                        .encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    reply = b"".join(chunks).decode(errors="replace")
    head, _, body = reply.partition("\r\n\r\n")
    if not head.startswith("HTTP/1.1 200"):
        raise OSError(f"unexpected answer from {host}:{port}: {head[:80]!r}")
    return Fetch(source or "", body.strip(), fingerprint(der))


class KeepAlive:
    """One long-lived HTTPS connection through the VIP from ``source`` in ``netns``: each
    :meth:`get` sends a request on the same TCP connection (HTTP/1.1 keep-alive), as a
    watching or pooled client does. ``name``: the fingerprint of whoever answers; the
    connection cannot move to another backend, so it changes only if the connection dies."""

    def __init__(self, netns: str, host: str, port: int, source: str,
                 timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with netns_mod.entered(netns):
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.bind((source, 0))
            sock.connect((host, port))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.tls = context.wrap_socket(sock)
        except BaseException:
            sock.close()
            raise
        self.source = source
        self.local_port = self.tls.getsockname()[1]
        self.fingerprint = fingerprint(self.tls.getpeercert(binary_form=True) or b"")

    def get(self, path: str = "/") -> str:
        """One request on this connection; the answer's body. Raises OSError when the
        connection is gone (reset, closed or timed out)."""
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionResetError("the server closed the connection")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionResetError("the server closed the connection mid-answer")
            body += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer: {head[:80]!r}")
        return body.decode(errors="replace").strip()

    def close(self) -> None:
        self.tls.close()
