"""Active health checks of apiserver backends (asyncio).

Each backend is probed every ``interval`` seconds, either with HTTPS ``GET /readyz`` (falling
back to ``/healthz`` when ``/readyz`` answers 404) over a kept-alive HTTP/1.1 connection, or
with a plain TCP connect. ``rise`` consecutive passes bring a backend up, ``fall`` consecutive
failures take it down; a backend's very first result decides its state at once.

The set of usable backends goes to ``on_change`` only when it changes. When every backend is
down the checker fails open (all are reported usable, with a warning) unless told not to.
Independent of the proxy: the agent can feed the proxy, filter endpoints, or both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ipvslb import logfmt
from ipvslb.endpoints.source import Backend

log = logfmt.get("health")

MAX_BODY = 64 * 1024
MAX_HEADER_LINES = 100


class ProbeError(Exception):
    """A probe failed; the message says why (logged on state changes)."""


@dataclass
class _Target:
    backend: Backend
    up: bool | None = None  # None until the first result
    passes: int = 0
    failures: int = 0
    path: str = "/readyz"
    reason: str = ""
    auth_warned: bool = False
    last_check: float | None = None  # unix time of the last result
    last_latency: float | None = None  # seconds the last probe took
    checks: int = 0
    failed_checks: int = 0
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class TargetStatus:
    """What `ipvslb status` and the metrics show of one checked backend."""

    backend: Backend
    up: bool | None  # None until the first result
    passes: int  # consecutive
    failures: int  # consecutive
    checks: int  # since the backend was added
    failed_checks: int
    last_check: float | None  # unix time
    last_latency: float | None  # seconds
    reason: str  # why the last failed check failed


class HealthChecker:
    """Probe ``backends`` and publish the usable ones through ``on_change``.

    ``mode`` is ``"https"`` or ``"tcp"``. With ``ca_file`` the server certificate is verified
    against it and must name ``server_name`` (default: the backend's IP); without it, the
    certificate is not checked. ``on_result(backend, ok)`` sees every probe result (e.g. to
    re-admit a backend the proxy ejected). Use from one event loop.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        on_change: Callable[[list[Backend]], None],
        *,
        mode: str = "https",
        path: str = "/readyz",
        fallback_path: str | None = "/healthz",
        ca_file: str | None = None,
        server_name: str | None = None,
        interval: float = 1.0,
        timeout: float = 1.0,
        rise: int = 2,
        fall: int = 2,
        fail_open: bool = True,
        on_result: Callable[[Backend, bool], None] | None = None,
    ) -> None:
        if mode not in ("https", "tcp"):
            raise ValueError(f"mode must be 'https' or 'tcp', not {mode!r}")
        self.mode = mode
        self.path = path
        self.fallback_path = fallback_path
        self.server_name = server_name
        self.interval = interval
        self.timeout = timeout
        self.rise = max(1, rise)
        self.fall = max(1, fall)
        self.fail_open = fail_open
        self.on_change = on_change
        self.on_result = on_result
        # every active probe with its duration in seconds (metrics); not the passive reports
        self.on_probe: Callable[[Backend, bool, float], None] | None = None
        self._ssl = _client_context(ca_file) if mode == "https" else None
        self._targets: dict[Backend, _Target] = {}
        self._published: list[Backend] | None = None
        self._failing_open = False
        self._running = False
        self._initial = list(dict.fromkeys(backends))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start probing (returns at once; the first results arrive within ``timeout``)."""
        self._running = True
        for backend in self._initial:
            self._add(backend)

    async def stop(self) -> None:
        self._running = False
        targets = list(self._targets.values())
        self._targets.clear()
        for target in targets:
            await self._retire(target)

    def update(self, backends: Sequence[Backend]) -> None:
        """Check this set from now on; an empty list keeps the previous set (logged)."""
        if not backends:
            log.warning("empty backend update ignored; keeping previous backends")
            return
        wanted = list(dict.fromkeys(backends))
        if not self._running:
            self._initial = wanted
            return
        for backend in wanted:
            if backend not in self._targets:
                self._add(backend)
        for backend in [b for b in self._targets if b not in wanted]:
            target = self._targets.pop(backend)
            asyncio.get_running_loop().create_task(self._retire(target))
        self._publish()

    def report_failure(self, backend: Backend) -> None:
        """Passive evidence (e.g. the proxy's connect failed): count a failure, probe now."""
        target = self._targets.get(backend)
        if target is not None:
            self._record(target, False, "reported by the proxy")
            target.wake.set()

    # -- state -----------------------------------------------------------------------------
    def targets(self) -> list[TargetStatus]:
        """The checked backends, sorted."""
        return [TargetStatus(b, t.up, t.passes, t.failures, t.checks, t.failed_checks,
                             t.last_check, t.last_latency, t.reason)
                for b, t in sorted(self._targets.items())]

    @property
    def healthy(self) -> list[Backend]:
        """Backends whose checks pass now (no fail-open applied)."""
        return sorted(b for b, t in self._targets.items() if t.up)

    @property
    def usable(self) -> list[Backend]:
        """What ``on_change`` was last given (fail-open applied)."""
        return list(self._published or [])

    def _usable(self) -> list[Backend] | None:
        targets = self._targets.values()
        unknown = any(t.up is None for t in targets)
        if unknown and (self._published is None or not any(t.up for t in targets)):
            # first results pending (bounded by timeout): wait rather than publish a guess
            return None
        healthy = sorted(t.backend for t in targets if t.up)
        if healthy or not targets:
            if self._failing_open:
                log.info("a backend is healthy again; no longer failing open")
            self._failing_open = False
            return healthy
        if self.fail_open:
            if not self._failing_open:
                log.warning("every backend is unhealthy; failing open (using all of them)",
                            extra={"backends": ",".join(str(t.backend) for t in targets)})
            self._failing_open = True
            return sorted(t.backend for t in targets)
        return []

    def _publish(self) -> None:
        usable = self._usable()
        if usable is None or usable == self._published:
            return
        self._published = usable
        try:
            self.on_change(list(usable))
        except Exception:  # a consumer's bug must not stop the checks
            log.exception("health on_change callback failed")

    def _record(self, target: _Target, ok: bool, reason: str) -> None:
        if self.on_result is not None:
            try:
                self.on_result(target.backend, ok)
            except Exception:
                log.exception("health on_result callback failed")
        if ok:
            target.passes += 1
            target.failures = 0
        else:
            target.failures += 1
            target.passes = 0
            target.reason = reason
        was = target.up
        if was is None:
            target.up = ok
        elif not was and target.passes >= self.rise:
            target.up = True
        elif was and target.failures >= self.fall:
            target.up = False
        if target.up != was:
            if target.up:
                log.info("backend up", extra={"backend": str(target.backend),
                                              "event": "backend_up"})
            else:
                log.warning("backend down", extra={"backend": str(target.backend),
                                                   "reason": target.reason,
                                                   "event": "backend_down"})
            self._publish()

    # -- probing ---------------------------------------------------------------------------
    def _add(self, backend: Backend) -> None:
        target = _Target(backend, path=self.path)
        self._targets[backend] = target
        target.task = asyncio.get_running_loop().create_task(self._run(target))

    async def _retire(self, target: _Target) -> None:
        if target.task is not None:
            target.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await target.task
        _close(target)

    async def _run(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._probe(target)
                ok, reason = True, ""
            except TimeoutError:
                ok, reason = False, f"timeout after {self.timeout}s"
                _close(target)
            except Exception as err:  # any failure of the probe is a failed check
                ok, reason = False, _describe(err)
                _close(target)
            target.last_latency = loop.time() - started
            target.last_check = time.time()
            target.checks += 1
            target.failed_checks += not ok
            if self.on_probe is not None:
                try:
                    self.on_probe(target.backend, ok, target.last_latency)
                except Exception:
                    log.exception("health on_probe callback failed")
            self._record(target, ok, reason)
            target.wake.clear()
            delay = max(0.0, self.interval - (loop.time() - started))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await target.wake.wait()

    async def _probe(self, target: _Target) -> None:
        backend = target.backend
        if self.mode == "tcp":
            _, writer = await asyncio.open_connection(backend.address, backend.port)
            writer.close()
            return
        status = await self._get(target)
        if status == 404 and self.fallback_path and target.path != self.fallback_path:
            log.info("no /readyz; checking the fallback path",
                     extra={"backend": str(backend), "path": self.fallback_path})
            target.path = self.fallback_path
            status = await self._get(target)
        if status in (401, 403):
            # Anonymous access to the health paths is off (--anonymous-auth=false): the
            # apiserver answered over TLS, which is all that can be checked without credentials.
            if not target.auth_warned:
                log.warning("health path needs credentials; checking liveness only",
                            extra={"backend": str(backend), "status": status})
                target.auth_warned = True
            return
        if status != 200:
            raise ProbeError(f"GET {target.path}: HTTP {status}")

    async def _get(self, target: _Target) -> int:
        """One GET on the kept-alive connection (one fresh retry if the old one went stale)."""
        reused = target.conn is not None
        try:
            return await self._get_once(target)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            _close(target)
            if not reused:
                raise
        return await self._get_once(target)

    async def _get_once(self, target: _Target) -> int:
        backend = target.backend
        if target.conn is None:
            target.conn = await asyncio.open_connection(
                backend.address, backend.port, ssl=self._ssl,
                server_hostname=self.server_name or backend.address,
            )
        reader, writer = target.conn
        host = f"[{backend.address}]" if ":" in backend.address else backend.address
        writer.write(
            f"GET {target.path} HTTP/1.1\r\nHost: {host}:{backend.port}\r\n"
            "User-Agent: ipvslb-health\r\nAccept: */*\r\n\r\n".encode()
        )
        await writer.drain()
        status, keep_alive = await _read_response(reader)
        if not keep_alive:
            _close(target)
        return status


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; returns (status, connection reusable)."""
    line = await reader.readuntil(b"\n")
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProbeError(f"not an HTTP response: {line[:60]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        raw = await reader.readuntil(b"\n")
        if raw in (b"\r\n", b"\n"):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ProbeError("too many response headers")
    keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int((await reader.readuntil(b"\n")).split(b";")[0].strip() or b"0", 16)
            total += size
            if total > MAX_BODY:
                raise ProbeError("response body too large")
            await reader.readexactly(size + 2)  # chunk and its CRLF
            if size == 0:
                break
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise ProbeError("response body too large")
        await reader.readexactly(length)
    else:
        await reader.read(MAX_BODY)  # body ends with the connection
        keep_alive = False
    return status, keep_alive


def _client_context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _close(target: _Target) -> None:
    if target.conn is not None:
        target.conn[1].close()
        target.conn = None


def _describe(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {err.verify_message}"
    return str(err) or type(err).__name__
