"""Moving bytes between a client socket and a backend socket.

Each proxied connection is two ``Half`` objects, one per direction, working on the raw file
descriptors (no transports, no streams). All relayed sockets sit in one epoll set of our own
(``Poller``), which the event loop watches as a single reader: registering a socket costs one
``epoll_ctl``, readiness changes one ``epoll_ctl MOD``, and closing the socket drops it from
the set. (Per-socket ``add_reader``/``remove_reader`` cost uvloop 3-4 syscalls each.)

A direction moves bytes one of two ways:
- copy: ``recv_into`` one shared buffer, ``send`` from it. Cheapest for small messages
  (API requests, watch events).
- splice: socket -> pipe -> socket with ``os.splice``; the bytes never enter Python. Cheapest
  for bulk transfers (large lists, logs, exec streams). Pipes come from a small shared pool
  and are held only while a direction has bytes in flight: an idle connection holds none.

The ``auto`` engine starts each direction copying, switches it to splice when a read fills the
copy buffer (a bulk transfer), and back when splice reads turn small. ``copy`` and ``splice``
force one way (for measurements).

The client socket stays in blocking mode while copying: every copy read and write passes
``MSG_DONTWAIT`` instead, which saves an ``ioctl(FIONBIO)`` per accepted connection. splice has
no such flag for the socket side, so the client socket is made non-blocking when a direction
first splices (once per bulk transfer, not per connection); backend sockets are created
non-blocking.

Both ways read a direction only while its destination has taken everything (back-pressure),
pass an end-of-stream on as ``shutdown(SHUT_WR)`` (half-close), and close the connection when
both directions have ended, or at once on an error (with a reset to the other side).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from ipvslb import logfmt

PIPE_SIZE = 1 << 18  # bytes one splice may move (the kernel may grant less); see bench/proxy
POOL_KEEP = 64  # idle pipes kept for reuse
COPY_CHUNK = 1 << 16  # a copy read this full means bulk: switch to splice (auto)
SPLICE_SMALL = 1 << 14  # a splice read below this means small messages again: copy (auto)
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RESET = struct.pack("ii", 1, 0)
_BATCH = 4  # reads per readiness event before yielding to the loop
_BUFFER = bytearray(COPY_CHUNK)  # shared: never holds bytes across callbacks
_VIEW = memoryview(_BUFFER)

log = logfmt.get("proxy")

AUTO, SPLICE, COPY = "auto", "splice", "copy"
ENGINES = (AUTO, SPLICE, COPY)
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_HANGUP = select.EPOLLERR | select.EPOLLHUP
_DONTWAIT = socket.MSG_DONTWAIT


class Poller:
    """One epoll set for every relayed socket, watched by the event loop as one reader.

    Level-triggered. A socket leaves the set when it is closed (ipvslb never duplicates these
    descriptors), so ``forget`` only drops the handler; the handler stays while the socket is
    out of the set for lack of interest.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self._ep.fileno(), self._dispatch)

    def register(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        self._ep.register(fd, mask)
        self._handlers[fd] = handler

    def register_pair(self, fd_a: int, handler_a: Callable[[int], None], fd_b: int,
                      handler_b: Callable[[int], None]) -> None:
        """Both sockets of a new connection, reading (one call per connection, not two)."""
        ep, handlers = self._ep, self._handlers
        ep.register(fd_a, _IN)
        handlers[fd_a] = handler_a
        ep.register(fd_b, _IN)
        handlers[fd_b] = handler_b

    def change(self, fd: int, old: int, new: int) -> None:
        """Change interest from ``old`` to ``new``; 0 takes the socket out of the set (else a
        hung-up socket that is not being read would report EPOLLHUP over and over)."""
        if not new:
            self._ep.unregister(fd)
        elif not old:
            self._ep.register(fd, new)
        else:
            self._ep.modify(fd, new)

    def forget(self, fd: int) -> None:
        self._handlers.pop(fd, None)

    def forget_pair(self, fd_a: int, fd_b: int) -> None:
        handlers = self._handlers
        handlers.pop(fd_a, None)
        handlers.pop(fd_b, None)

    def _dispatch(self) -> None:
        handlers = self._handlers
        for fd, events in self._ep.poll(0):
            handler = handlers.get(fd)
            if handler is not None:  # None: closed earlier in this batch
                handler(events)

    def close(self) -> None:
        self._loop.remove_reader(self._ep.fileno())
        self._ep.close()
        self._handlers.clear()


class PipePool:
    """Reusable non-blocking pipes for splice; a pipe is returned only when empty."""

    def __init__(self, size: int = PIPE_SIZE, keep: int = POOL_KEEP) -> None:
        self.size = size
        self.keep = keep
        self._free: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            self.size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        if len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for r, w in self._free:
            os.close(r)
            os.close(w)
        self._free.clear()


class Half:
    """One direction of a connection: read ``src``, write ``dst``."""

    __slots__ = ("conn", "peer", "src", "dst", "sfd", "dfd", "pipe", "pending", "data",
                 "blocked", "done", "engine", "splicing", "moved")

    def __init__(self, conn: Connection, src: socket.SocketType, dst: socket.SocketType,
                 engine: str) -> None:
        self.conn = conn
        self.peer: Half = self  # the other direction, which writes to src (set by Connection)
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.engine = engine
        self.splicing = engine == SPLICE
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # splice: bytes in self.pipe
        self.data = b""  # copy: bytes dst has not taken yet
        self.blocked = False
        self.done = False
        self.moved = 0  # bytes read from src (and passed on to dst unless aborted)

    def on_events(self, events: int) -> None:
        """Events of ``src``: this half reads it, ``peer`` writes to it. The poller calls this
        directly (no per-event hop through the connection)."""
        try:
            peer = self.peer
            if events & _OUT and peer.blocked:
                peer.on_writable()
                if self.conn.closed:
                    return
            if not (self.blocked or self.done):
                if events & (_IN | _HANGUP):  # the data, the end of stream or the error
                    if self.splicing:
                        self._splice_in()
                    else:
                        self._copy_in()
            elif events & _HANGUP:  # reset while only waiting to write to it: nothing to save
                self.conn.abort()
        except Exception:  # a bug here must cost one connection, not a busy loop
            log.exception("relay failed; closing the connection")
            self.conn.abort()

    def on_writable(self) -> None:
        if self.pipe is not None:
            if self._splice_out():
                self.release()
                self._unblock()
            return
        try:
            sent = self.dst.send(self.data, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.conn.abort()
            return
        self.data = self.data[sent:]
        if not self.data:
            self._unblock()

    # -- copy ------------------------------------------------------------------------------
    def _copy_in(self) -> None:
        for _ in range(_BATCH):
            try:
                n = self.src.recv_into(_BUFFER, 0, _DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.conn.abort()
                return
            if n == 0:
                self._eof()
                return
            self.moved += n
            try:
                sent = self.dst.send(_VIEW[:n], _DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.conn.abort()
                return
            if sent < n:
                self.data = bytes(_VIEW[sent:n])
                self._block()
                return
            if n < COPY_CHUNK:
                return
            if self.engine == AUTO:  # a full buffer: bulk follows, move it without copying
                self.splicing = True
                client = self.conn.client
                if client.gettimeout() != 0.0:  # splice honours only O_NONBLOCK
                    client.setblocking(False)
                self._splice_in()
                return

    # -- splice ----------------------------------------------------------------------------
    def _splice_in(self) -> None:
        pool = self.conn.pool
        for _ in range(_BATCH):
            pipe = self.pipe
            if pipe is None:
                try:
                    pipe = self.pipe = pool.get()
                except OSError:  # out of descriptors: copy instead
                    self.splicing = False
                    self._copy_in()
                    return
            try:
                n = os.splice(self.sfd, pipe[1], pool.size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError:
                self.conn.abort()
                return
            if n == 0:
                self.release()
                self._eof()
                return
            self.pending = n
            self.moved += n
            if not self._splice_out():
                return  # blocked on dst (keeps the pipe) or aborted
            if n < SPLICE_SMALL and self.engine == AUTO:
                self.splicing = False
            if n < pool.size:
                break
        self.release()

    def _splice_out(self) -> bool:
        """Write the pipe out; False when dst is full (the half is then blocked) or on error."""
        pipe = self.pipe
        assert pipe is not None
        try:
            while self.pending:
                self.pending -= os.splice(pipe[0], self.dfd, self.pending, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            if not self.blocked:
                self._block()
            return False
        except OSError:
            self.conn.abort()
            return False
        return True

    def release(self) -> None:
        """Give back the pipe (closing it if it still holds bytes)."""
        pipe = self.pipe
        if pipe is not None:
            self.pipe = None
            if self.pending:
                os.close(pipe[0])
                os.close(pipe[1])
            else:
                self.conn.pool.put(pipe)

    # -- state -----------------------------------------------------------------------------
    def _block(self) -> None:
        """dst is full: stop reading src, wait until dst can take more."""
        self.blocked = True
        self.conn.sync()

    def _unblock(self) -> None:
        self.blocked = False
        self.conn.sync()

    def _eof(self) -> None:
        conn = self.conn
        self.done = True
        if conn.up.done and conn.down.done:
            conn.close()  # the close sends the last FIN: no shutdown needed
            return
        conn.sync()
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Connection:
    """A client socket relayed to a backend socket until both directions end."""

    __slots__ = ("poller", "pool", "client", "backend", "up", "down", "owner", "on_close",
                 "closed", "cmask", "bmask", "moved")

    def __init__(
        self,
        poller: Poller,
        pool: PipePool,
        engine: str,
        client: socket.SocketType,
        backend: socket.SocketType,
        owner: Any,
        on_close: Callable[[Connection], None],
    ) -> None:
        self.poller = poller
        self.pool = pool
        self.client = client
        self.backend = backend
        self.owner = owner  # the BackendState this connection counts against
        self.on_close = on_close
        self.closed = False
        up = self.up = Half(self, client, backend, engine)
        down = self.down = Half(self, backend, client, engine)
        up.peer = down
        down.peer = up
        self.cmask = self.bmask = _IN
        self.moved = (0, 0)  # (client -> backend, backend -> client) bytes, set on close

    def start(self) -> None:
        """Relay from now on; the client has usually sent its first bytes already: read them."""
        if self.up.splicing:  # the splice engine: no copy phase (see the module docstring)
            self.client.setblocking(False)
        up = self.up
        self.poller.register_pair(up.sfd, up.on_events, up.dfd, self.down.on_events)
        if up.splicing:
            up._splice_in()
        else:
            up._copy_in()

    def sync(self) -> None:
        """Make each socket's epoll interest match what its two halves wait for."""
        up, down = self.up, self.down
        cmask = (0 if up.blocked or up.done else _IN) | (_OUT if down.blocked else 0)
        if cmask != self.cmask:
            self.poller.change(up.sfd, self.cmask, cmask)
            self.cmask = cmask
        bmask = (0 if down.blocked or down.done else _IN) | (_OUT if up.blocked else 0)
        if bmask != self.bmask:
            self.poller.change(down.sfd, self.bmask, bmask)
            self.bmask = bmask

    def abort(self) -> None:
        """Close both sides at once, resetting them so that neither peer mistakes it for EOF."""
        for sock in (self.client, self.backend):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        up, down = self.up, self.down
        self.poller.forget_pair(up.sfd, down.sfd)
        if up.pipe is not None:
            up.release()
        if down.pipe is not None:
            down.release()
        self.moved = (up.moved, down.moved)
        up.peer = up  # no reference cycle left: freed without the cyclic GC
        down.peer = down
        del self.up, self.down
        self.client.close()  # closing also removes the sockets from the epoll set
        self.backend.close()
        self.on_close(self)
