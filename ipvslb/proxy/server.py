"""The userspace TCP reverse proxy in front of the kube-apiservers."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import resource
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipvslb import logfmt
from ipvslb.endpoints.source import Backend
from ipvslb.proxy.balancer import BackendState, BackendStats, Balancer
from ipvslb.proxy.relay import ENGINES, Connection, PipePool, Poller

log = logfmt.get("proxy")

_LINGER_RESET = struct.pack("ii", 1, 0)
_ACCEPT_BATCH = 64


@dataclass(frozen=True)
class ProxyStats:
    listen: str
    active: int  # client connections open now (connecting or relaying)
    total: int  # client connections accepted under the limit since start
    rejected: int  # client connections refused by the connection limit
    failed: int  # client connections closed because no backend could be reached
    backends: list[BackendStats]
    bytes_to_backends: int = 0  # relayed client -> backend (closed and open connections)
    bytes_to_clients: int = 0


class _Dial:
    """A client whose backend connect is in progress or failed; tries candidates in turn."""

    __slots__ = ("client", "candidates", "sock", "state", "timer", "errors")

    def __init__(self, client: socket.SocketType, candidates: list[BackendState]) -> None:
        self.client = client
        self.candidates = candidates
        self.sock: socket.SocketType | None = None
        self.state: BackendState | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.errors: list[str] = []


class Proxy:
    """Accept TCP connections and relay each to one backend, round robin.

    - ``update(backends)`` replaces the rotation; an empty list is ignored (logged).
    - A refused or timed-out connect is retried on the next backend (``connect_attempts``
      distinct backends at most) and ejects the failing backend for ``eject_cooloff`` seconds.
    - Connections of a removed backend continue; after ``drain_limit`` seconds (None: never)
      the ones still open are closed.
    - Beyond ``max_connections`` open client connections, new ones are reset at once.
    - ``keepalive`` is (idle, interval, count) seconds/probes for TCP keepalive on both sides;
      TCP_NODELAY is on for both sides too.
    - ``engine``: ``auto`` (copy small messages, splice bulk), or ``copy``/``splice`` only.
    - ``on_eject(backend)`` is called when a connect failure ejects a backend (e.g. to make an
      active health checker probe it now: ``HealthChecker.report_failure``).
    - ``listen_host`` None (or ``::``) listens dual-stack on every address; REDIRECT needs that.
    - Must be started and used from one event loop thread (asyncio or uvloop); from other
      threads use ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self,
        listen_host: str | None,
        listen_port: int,
        backends: Sequence[Backend],
        *,
        connect_timeout: float = 3.0,
        connect_attempts: int = 3,
        eject_after: int = 1,
        eject_cooloff: float = 10.0,
        drain_limit: float | None = 600.0,
        max_connections: int = 10_000,
        keepalive: tuple[int, int, int] = (30, 10, 3),
        engine: str = "auto",
        on_eject: Callable[[Backend], None] | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.connect_timeout = connect_timeout
        self.connect_attempts = max(1, connect_attempts)
        self.drain_limit = drain_limit
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.on_eject = on_eject
        self._engine = engine
        self._balancer = Balancer(backends, eject_after=eject_after, eject_cooloff=eject_cooloff)
        self._pool = PipePool()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None
        self._listener: socket.socket | None = None
        self._family = socket.AF_INET  # the listener's
        self._dials: set[_Dial] = set()
        self._active = 0
        self._total = 0
        self._rejected = 0
        self._failed = 0
        self._bytes_closed = [0, 0]  # bytes of connections that ended (up, down)
        self._rejected_logged_at = 0.0
        self._rejected_since_log = 0
        self._idle: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and start accepting. Raises OSError when the address cannot be bound."""
        self._loop = asyncio.get_running_loop()
        _raise_nofile_limit(self.max_connections)
        self._listener = self._listen()
        self._family = self._listener.family
        self._idle = asyncio.Event()
        self._poller = Poller(self._loop)
        self._loop.add_reader(self._listener.fileno(), self._on_accept)
        log.info(
            "proxy listening",
            extra={"address": self.address_text, "backends": _names(self._balancer.current)},
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); useful with port 0."""
        assert self._listener is not None, "start() first"
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let open connections end for up to ``grace`` seconds, close the rest."""
        if self._listener is None or self._loop is None or self._idle is None:
            return
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        self._listener = None
        open_at_stop = self._active
        if self._active:
            log.info("proxy stopping; waiting for connections", extra={
                "active": self._active, "grace_s": grace})
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
            except TimeoutError:
                pass
        left = self._active
        for dial in list(self._dials):
            self._give_up(dial, "proxy stopping", count_failure=False)
        for state in self._balancer.states():
            for conn in list(state.connections):
                conn.close()
            if state.drain_timer is not None:
                state.drain_timer.cancel()
                state.drain_timer = None
        self._pool.close()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        log.info("proxy stopped", extra={"open_at_stop": open_at_stop, "closed_at_grace": left})

    # -- backends ----------------------------------------------------------------------------
    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the backend rotation; an empty list keeps the previous one."""
        if not backends:
            log.warning("empty backend update ignored; keeping previous backends",
                        extra={"backends": _names(self._balancer.current)})
            return
        added, removed = self._balancer.update(backends)
        if not added and not removed:
            return
        for state in added:
            if state.drain_timer is not None:
                state.drain_timer.cancel()
                state.drain_timer = None
        for state in removed:
            if state.connections and self.drain_limit is not None and self._loop is not None:
                state.drain_timer = self._loop.call_later(self.drain_limit, self._drain, state)
        log.info("backends updated", extra={
            "backends": _names(self._balancer.current),
            "added": _names([s.backend for s in added]),
            "removed": _names([s.backend for s in removed]),
            "draining": sum(len(s.connections) for s in removed),
        })

    def readmit(self, backends: Sequence[Backend]) -> None:
        """End the passive ejection of ``backends`` (e.g. an active check saw them pass)."""
        self._balancer.readmit(backends)

    @property
    def backends(self) -> list[Backend]:
        return self._balancer.current

    def _drain(self, state: BackendState) -> None:
        state.drain_timer = None
        conns = list(state.connections)
        for conn in conns:
            conn.close()
        log.info("drain limit reached; closed connections of removed backend", extra={
            "backend": str(state.backend), "closed": len(conns), "drain_limit_s": self.drain_limit})

    # -- status ------------------------------------------------------------------------------
    def stats(self) -> ProxyStats:
        listen = self.address_text if self._listener is not None else ""
        up, down = self._bytes_closed
        for conn in self._balancer.connections():
            if not conn.closed:
                up += conn.up.moved
                down += conn.down.moved
        return ProxyStats(listen, self._active, self._total, self._rejected, self._failed,
                          self._balancer.stats(), up, down)

    def log_stats(self) -> None:
        """Log the counters as one line (for a periodic status log)."""
        st = self.stats()
        log.info("proxy stats", extra={
            "active": st.active, "total": st.total, "rejected": st.rejected, "failed": st.failed,
            "backends": " ".join(
                f"{b.backend}:active={b.active},total={b.total},failures={b.failures}"
                + (",ejected" if b.ejected else "") + (",removed" if b.removed else "")
                for b in st.backends),
        })

    # -- accepting ---------------------------------------------------------------------------
    def _listen(self) -> socket.socket:
        host = self.listen_host or ""
        if host in ("", "::"):
            try:
                return self._bind(socket.AF_INET6, "::", dual_stack=True)
            except OSError as err:
                if host == "::" or err.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                return self._bind(socket.AF_INET, "0.0.0.0", dual_stack=False)
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        return self._bind(family, host, dual_stack=False)

    def _bind(self, family: socket.AddressFamily, host: str, dual_stack: bool) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
            # accepted sockets inherit these (Linux), saving syscalls per connection
            self._tune(sock)
            sock.bind((host, self.listen_port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _tune(self, sock: socket.SocketType) -> None:
        idle, interval, count = self.keepalive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        # The C-level accept and socket type: socket.accept() adds a Python wrapper and two enum
        # conversions (family, type) per connection; the relay needs none of socket.socket's
        # extras. Creating a socket from the descriptor costs CPython a getsockname (it checks
        # the descriptor); there is no way around it short of giving up socket objects.
        # (_accept is the C method behind socket.accept since Python 3.3; typeshed omits it)
        accept: Callable[[], tuple[int, object]] = listener._accept  # type: ignore[attr-defined]
        family = self._family
        # The client stays blocking (the relay passes MSG_DONTWAIT), unless a process-wide
        # default timeout made it a timeout socket, which would wait inside recv and send.
        timeouts = socket.getdefaulttimeout() is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, _addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE, ENFILE, ENOBUFS...: keep serving open connections
                self._pause_accepting(err)
                return
            client = socket.SocketType(family, socket.SOCK_STREAM, 0, fd)
            if self._active >= self.max_connections:
                self._reject(client)
                continue
            if timeouts:
                client.setblocking(False)
            self._active += 1
            self._total += 1
            self._connect(client, self._balancer.candidates(self.connect_attempts), None)

    def _pause_accepting(self, err: OSError) -> None:
        """Out of descriptors or memory: stop accepting for a moment instead of spinning."""
        assert self._loop is not None and self._listener is not None
        log.warning("accept failed; pausing new connections for 1s",
                    extra={"error": str(err), "active": self._active})
        self._loop.remove_reader(self._listener.fileno())

        def resume() -> None:
            if self._listener is not None and self._loop is not None:
                self._loop.add_reader(self._listener.fileno(), self._on_accept)

        self._loop.call_later(1.0, resume)

    def _reject(self, client: socket.SocketType) -> None:
        self._rejected += 1
        self._rejected_since_log += 1
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        finally:
            client.close()
        now = time.monotonic()
        if now - self._rejected_logged_at >= 10.0:
            log.warning("connection limit reached; rejecting new connections", extra={
                "max_connections": self.max_connections, "rejected": self._rejected_since_log})
            self._rejected_logged_at = now
            self._rejected_since_log = 0

    # -- connecting to a backend -------------------------------------------------------------
    def _connect(self, client: socket.SocketType, candidates: list[BackendState],
                 dial: _Dial | None) -> None:
        """Connect ``client`` to the first candidate that accepts; ``dial`` exists once the
        client had to wait for a connect or saw a failure."""
        loop = self._loop
        assert loop is not None
        while candidates:
            state = candidates.pop(0)
            backend = state.backend
            family = socket.AF_INET6 if ":" in backend.address else socket.AF_INET
            try:
                sock = socket.SocketType(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as exc:
                self._give_up(dial or _Dial(client, candidates), f"socket: {exc}")
                return
            self._tune(sock)
            code = sock.connect_ex((backend.address, backend.port))
            if code == errno.EINPROGRESS and (state.instant or not state.total & 63):
                # A local backend is connected at once: skip the wait. A remote one never is:
                # ask again only every 64th connection, not spend a syscall and an exception
                # on each.
                try:
                    sock.getpeername()
                    code = 0
                    state.instant = True
                except OSError:
                    state.instant = False
            if code == 0:
                self._relay(client, sock, state)
                return
            if code == errno.EINPROGRESS:
                if dial is None:
                    dial = _Dial(client, candidates)
                dial.sock = sock
                dial.state = state
                self._dials.add(dial)
                loop.add_writer(sock.fileno(), self._on_connected, dial)
                dial.timer = loop.call_later(self.connect_timeout, self._on_connect_timeout, dial)
                return
            sock.close()
            dial = dial or _Dial(client, candidates)
            self._connect_failed(dial, state, os.strerror(code))
        dial = dial or _Dial(client, candidates)
        self._give_up(dial, "; ".join(dial.errors) or "no backends")

    def _on_connected(self, dial: _Dial) -> None:
        sock, state = dial.sock, dial.state
        assert sock is not None and state is not None and self._loop is not None
        self._end_wait(dial)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._relay(dial.client, sock, state)
            return
        sock.close()
        self._connect_failed(dial, state, os.strerror(err))
        self._connect(dial.client, dial.candidates, dial)

    def _on_connect_timeout(self, dial: _Dial) -> None:
        sock, state = dial.sock, dial.state
        assert sock is not None and state is not None
        dial.timer = None
        self._end_wait(dial)
        sock.close()
        self._connect_failed(dial, state, f"connect timeout after {self.connect_timeout}s")
        self._connect(dial.client, dial.candidates, dial)

    def _end_wait(self, dial: _Dial) -> None:
        assert dial.sock is not None and self._loop is not None
        self._loop.remove_writer(dial.sock.fileno())
        if dial.timer is not None:
            dial.timer.cancel()
            dial.timer = None
        dial.sock = dial.state = None
        self._dials.discard(dial)

    def _connect_failed(self, dial: _Dial, state: BackendState, error: str) -> None:
        dial.errors.append(f"{state.backend}: {error}")
        if self._balancer.record_failure(state, error) and self.on_eject is not None:
            try:
                self.on_eject(state.backend)
            except Exception:  # a hook must never break the proxy
                log.exception("on_eject hook failed")
        if dial.candidates:
            log.info("backend connect failed; trying the next one",
                     extra={"backend": str(state.backend), "error": error})

    def _give_up(self, dial: _Dial, reason: str, count_failure: bool = True) -> None:
        if dial.sock is not None:
            sock = dial.sock
            self._end_wait(dial)
            sock.close()
        try:
            dial.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        dial.client.close()
        if count_failure:
            self._failed += 1
            log.warning("no backend reachable; closing client connection",
                        extra={"errors": reason})
        self._connection_ended()

    def _relay(self, client: socket.SocketType, sock: socket.SocketType,
               state: BackendState) -> None:
        assert self._poller is not None and self._loop is not None
        self._balancer.record_success(state)
        state.active += 1
        state.total += 1
        conn = Connection(self._poller, self._pool, self._engine, client, sock, state,
                          self._on_close)
        state.connections.add(conn)
        if state.removed and state.drain_timer is None and self.drain_limit is not None:
            state.drain_timer = self._loop.call_later(self.drain_limit, self._drain, state)
        conn.start()

    # -- closing -----------------------------------------------------------------------------
    def _on_close(self, conn: Connection) -> None:
        state: BackendState = conn.owner
        state.active -= 1
        state.connections.discard(conn)
        self._bytes_closed[0] += conn.moved[0]
        self._bytes_closed[1] += conn.moved[1]
        if state.removed and not state.connections:
            self._balancer.forget_if_idle(state)
        self._connection_ended()

    def _connection_ended(self) -> None:
        self._active -= 1
        if self._active == 0 and self._idle is not None:
            self._idle.set()


def _names(backends: Sequence[Backend]) -> str:
    return ",".join(str(b) for b in backends)


def _raise_nofile_limit(max_connections: int) -> None:
    """Raise the soft open-files limit to the hard one (each connection needs 2 descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < 2 * max_connections + 256:
        log.warning("the open-files limit allows fewer connections than max_connections",
                    extra={"nofile": hard, "max_connections": max_connections,
                           "fix": "raise LimitNOFILE (systemd) or ulimit -n"})
