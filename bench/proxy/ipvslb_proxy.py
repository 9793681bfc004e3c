"""Run ipvslb's proxy for the benchmark until SIGTERM.

Usage: ipvslb_proxy.py --port P --engine auto|splice|copy --loop asyncio|uvloop BACKEND...
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from ipvslb.endpoints.source import Backend
from ipvslb.proxy import Proxy


async def serve(port: int, engine: str, backends: list[Backend]) -> None:
    proxy = Proxy("127.0.0.1", port, backends, engine=engine, max_connections=9_800)
    await proxy.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await proxy.stop(grace=1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--loop", default="uvloop", choices=["asyncio", "uvloop"])
    ap.add_argument("backends", nargs="+")
    args = ap.parse_args()
    backends = [Backend(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backends]
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    run(serve(args.port, args.engine, backends))


if __name__ == "__main__":
    main()
