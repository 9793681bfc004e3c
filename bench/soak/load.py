"""The soak's mixed client load against one proxy address, for ``--seconds``; prints one JSON
document: per kind of client, successes, and every failure with its time and error.

- watch: long responses (``GET /watch``, 30 s of lines), reopened when they end;
- churn: a fresh TLS connection per request (``GET /``);
- keepalive: one connection, a request every 0.1 s, reconnecting after a failure.

Usage: load.py --target HOST:PORT --seconds S [--watches N] [--churn N] [--keepalive N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from typing import Any

CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CONTEXT.check_hostname = False
CONTEXT.verify_mode = ssl.CERT_NONE
TIMEOUT = 10.0


class Tally:
    def __init__(self) -> None:
        self.began = time.monotonic()
        self.ok: dict[str, int] = {}
        self.failures: list[dict[str, Any]] = []

    def success(self, kind: str) -> None:
        self.ok[kind] = self.ok.get(kind, 0) + 1

    def failure(self, kind: str, err: BaseException) -> None:
        self.failures.append({"t": round(time.monotonic() - self.began, 3), "kind": kind,
                              "error": f"{type(err).__name__}: {err}"[:200]})


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return await reader.readexactly(length)


async def churn(host: str, port: int, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=CONTEXT), TIMEOUT)
            await asyncio.wait_for(request(reader, writer), TIMEOUT)
            tally.success("churn")
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as err:
            tally.failure("churn", err)
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()


async def keepalive(host: str, port: int, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=CONTEXT), TIMEOUT)
            while time.monotonic() < until:
                await asyncio.wait_for(request(reader, writer), TIMEOUT)
                tally.success("keepalive")
                await asyncio.sleep(0.1)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as err:
            tally.failure("keepalive", err)
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()


async def watch(host: str, port: int, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=CONTEXT), TIMEOUT)
            writer.write(b"GET /watch HTTP/1.1\r\nHost: soak\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            lines = 0
            while time.monotonic() < until:
                line = await asyncio.wait_for(reader.readline(), TIMEOUT)
                if not line:
                    break
                lines += 1
            if lines >= 60 or time.monotonic() >= until:
                tally.success("watch")
            else:  # the stream ended before the server's 30 s: the connection was cut
                raise ConnectionResetError(f"watch ended after {lines} lines")
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as err:
            tally.failure("watch", err)
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.target.rsplit(":", 1)
    tally = Tally()
    until = tally.began + args.seconds
    tasks = ([watch(host, int(port), until, tally) for _ in range(args.watches)]
             + [churn(host, int(port), until, tally) for _ in range(args.churn)]
             + [keepalive(host, int(port), until, tally) for _ in range(args.keepalive)])
    await asyncio.gather(*tasks)
    return {"ok": tally.ok, "failures": tally.failures}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--watches", type=int, default=20)
    ap.add_argument("--churn", type=int, default=4)
    ap.add_argument("--keepalive", type=int, default=4)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
