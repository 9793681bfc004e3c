"""Benchmark-only: the classic asyncio Protocol relay, to compare ipvslb's raw-fd relay with.

Round robin, no retries, no health: just the data path of a Protocol relay (data_received ->
peer transport.write) with flow control and half-close, on asyncio or uvloop. Usage:
  protocol_relay.py --port P --loop asyncio|uvloop BACKEND...
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import signal
import socket
from typing import Any, cast


class Side(asyncio.Protocol):
    """One socket of a relayed pair; writes what it reads into the peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.early: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)  # before the backend is connected
            return
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            if self.peer.transport.can_write_eof():
                self.peer.transport.write_eof()
        return True  # keep the other direction open

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class ClientSide(Side):
    def __init__(self, backends: Any) -> None:
        super().__init__()
        self.backends = backends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.dialing = asyncio.get_running_loop().create_task(self.dial())

    async def dial(self) -> None:
        host, port = next(self.backends)
        loop = asyncio.get_running_loop()
        try:
            transport, backend = await loop.create_connection(Side, host, port)
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        backend.transport = transport  # uvloop may run connection_made later
        backend.peer, self.peer = self, backend
        for data in self.early:
            transport.write(data)
        self.early.clear()
        if self.closed:
            transport.close()


async def serve(port: int, backends: list[tuple[str, int]]) -> None:
    rotation = itertools.cycle(backends)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientSide(rotation), "127.0.0.1", port,
                                      backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--loop", default="uvloop", choices=["asyncio", "uvloop"])
    ap.add_argument("backends", nargs="+")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backends = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backends]
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port, backends))
    else:
        asyncio.run(serve(args.port, backends))


if __name__ == "__main__":
    main()
