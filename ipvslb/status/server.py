"""The agent's status socket (``<runDir>/status.sock``): one JSON request line, one JSON
answer, for `ipvslb status` and anything else on the node.

Only root and the agent's own user may ask (SO_PEERCRED; the socket is also mode 0600).
Requests: ``{"get": "status"}``. A malformed or oversized request gets ``{"error": ...}``; a
client that sends nothing is dropped after a timeout. Nothing a client does can stop the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ipvslb import logfmt

log = logfmt.get("status")

SOCKET = "status.sock"
MAX_REQUEST = 4096
READ_TIMEOUT = 5.0

Handler = Callable[[], Awaitable[dict[str, Any]]]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class StatusServer:
    def __init__(self, run_dir: Path, snapshot: Handler) -> None:
        self.path = run_dir / SOCKET
        self.snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None
        self.allowed = {0, os.geteuid()}

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an agent that crashed; the run dir lock is ours
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST + 1)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else -1
            # The request is read (bounded) before any answer, also from a peer that is then
            # refused: closing on a client still sending would reset it instead of answering.
            problem = await self._read_request(reader)
            if uid not in self.allowed:
                log.warning("refused a status request", extra={"uid": uid})
                await self._answer(writer, {"error": "permission denied: root only"})
            elif problem is not None:
                await self._answer(writer, {"error": problem})
            else:
                await self._answer(writer, await self.snapshot())
        except Exception:  # a client's mistake or hang-up must never reach the agent
            log.exception("status request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> str | None:
        """Why the request is not ``{"get": "status"}`` (None: it is)."""
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
        except TimeoutError:
            return f"no request line within {READ_TIMEOUT:g}s"
        except asyncio.LimitOverrunError:
            return f"request longer than {MAX_REQUEST} bytes"
        except asyncio.IncompleteReadError:
            return "the request must be one JSON line ending in a newline"
        try:
            request = json.loads(line)
        except ValueError:
            return "the request is not JSON; send {\"get\": \"status\"}"
        if not isinstance(request, dict) or request.get("get") != "status":
            return "unknown request; send {\"get\": \"status\"}"
        return None

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
        writer.write(json.dumps(data, sort_keys=True).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)


class NoAgent(Exception):
    """No agent answers on the status socket."""


def request(run_dir: Path, timeout: float = 10.0) -> dict[str, Any]:
    """Ask the agent of ``run_dir`` for its status (client side; blocking)."""
    path = run_dir / SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise NoAgent(f"no ipvslb agent answers on {path} ({err.strerror})") from None
        sock.sendall(b'{"get": "status"}\n')
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    data = json.loads(b"".join(chunks))
    if not isinstance(data, dict):
        raise ValueError("the agent's answer is not a JSON object")
    return data
