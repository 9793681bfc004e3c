"""Moving bytes between a client socket and a backend socket.

Each proxied connection is two ``Half`` objects, one per direction, driven by the event loop's
``add_reader``/``add_writer`` on the raw file descriptors (no transports, no streams).

Two engines:
- ``splice``: socket -> pipe -> socket with ``os.splice``; the bytes never enter Python.
  Pipes come from a small shared pool and are held only while a direction has bytes in
  flight, so an idle connection holds no pipe.
- ``copy``: ``recv_into`` one shared buffer, ``send`` from it; only bytes the destination did
  not take yet are copied into the connection.

Both read a direction only while its destination has taken everything (back-pressure), pass
an end-of-stream on as ``shutdown(SHUT_WR)`` (half-close), and close the connection when both
directions have ended, or at once on an error (with a reset to the other side).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

PIPE_SIZE = 1 << 20  # bytes one splice may move; the kernel may grant less
POOL_KEEP = 64  # idle pipes kept for reuse
COPY_CHUNK = 1 << 18
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RESET = struct.pack("ii", 1, 0)
_BATCH = 4  # reads per readiness event before yielding to the loop


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

    __slots__ = ("conn", "src", "dst", "sfd", "dfd", "pipe", "pending", "data", "blocked", "done")

    def __init__(self, conn: Connection, src: socket.socket, dst: socket.socket) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.pipe: tuple[int, int] | None = None
        self.pending = 0  # splice: bytes in self.pipe
        self.data: bytes = b""  # copy: bytes dst has not taken yet
        self.blocked = False
        self.done = False

    # -- shared --------------------------------------------------------------------------
    def _block(self) -> None:
        loop = self.conn.loop
        loop.remove_reader(self.sfd)
        loop.add_writer(self.dfd, self.on_writable)
        self.blocked = True

    def _unblock(self) -> None:
        loop = self.conn.loop
        loop.remove_writer(self.dfd)
        self.blocked = False
        loop.add_reader(self.sfd, self.on_readable)

    def _eof(self) -> None:
        conn = self.conn
        conn.loop.remove_reader(self.sfd)
        self.done = True
        if conn.up.done and conn.down.done:
            conn.close()  # the close sends the last FIN: no shutdown needed
            return
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def on_readable(self) -> None:
        raise NotImplementedError

    def on_writable(self) -> None:
        raise NotImplementedError

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


class SpliceHalf(Half):
    __slots__ = ()

    def on_readable(self) -> None:
        pool = self.conn.pool
        for _ in range(_BATCH):
            pipe = self.pipe
            if pipe is None:
                pipe = self.pipe = pool.get()
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
            if not self._flush():
                return  # blocked on dst (keeps the pipe) or aborted
            if n < pool.size:
                break
        self.release()

    def _flush(self) -> bool:
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

    def on_writable(self) -> None:
        if self._flush():
            self.release()
            self._unblock()


_COPY_BUFFER = bytearray(COPY_CHUNK)
_COPY_VIEW = memoryview(_COPY_BUFFER)


class CopyHalf(Half):
    __slots__ = ()

    def on_readable(self) -> None:
        for _ in range(_BATCH):
            try:
                n = self.src.recv_into(_COPY_BUFFER)
            except BlockingIOError:
                return
            except OSError:
                self.conn.abort()
                return
            if n == 0:
                self._eof()
                return
            try:
                sent = self.dst.send(_COPY_VIEW[:n])
            except BlockingIOError:
                sent = 0
            except OSError:
                self.conn.abort()
                return
            if sent < n:
                self.data = _COPY_BUFFER[sent:n]
                self._block()
                return
            if n < COPY_CHUNK:
                return

    def on_writable(self) -> None:
        try:
            sent = self.dst.send(self.data)
        except BlockingIOError:
            return
        except OSError:
            self.conn.abort()
            return
        self.data = self.data[sent:]
        if not self.data:
            self._unblock()


ENGINES: dict[str, type[Half]] = {"splice": SpliceHalf, "copy": CopyHalf}


class Connection:
    """A client socket relayed to a backend socket until both directions end."""

    __slots__ = ("loop", "pool", "client", "backend", "up", "down", "owner", "on_close", "closed")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: PipePool,
        engine: type[Half],
        client: socket.socket,
        backend: socket.socket,
        owner: Any,
        on_close: Callable[[Connection], None],
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.client = client
        self.backend = backend
        self.owner = owner  # the BackendState this connection counts against
        self.on_close = on_close
        self.closed = False
        self.up = engine(self, client, backend)
        self.down = engine(self, backend, client)

    def start(self) -> None:
        """Relay from now on; the client has usually sent its first bytes already: read them."""
        self.loop.add_reader(self.up.sfd, self.up.on_readable)
        self.loop.add_reader(self.down.sfd, self.down.on_readable)
        self.up.on_readable()

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
        loop = self.loop
        for half in (self.up, self.down):
            if half.blocked:
                loop.remove_writer(half.dfd)
            elif not half.done:
                loop.remove_reader(half.sfd)
            half.release()
        self.client.close()
        self.backend.close()
        self.on_close(self)
