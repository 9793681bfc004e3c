"""The userspace proxy on loopback, with real sockets and real backend servers."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ipvslb.endpoints.source import Backend
from ipvslb.proxy import Proxy

ENGINES = ["auto", "splice", "copy"]
T = 5.0  # bound for every wait in these tests


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback test backend; ``handler`` runs per connection."""

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self.handler = handler
        self.port = port
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Server:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self.writers.add(w)
            try:
                await self.handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.writers.discard(w)
                w.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()

    @property
    def backend(self) -> Backend:
        return Backend("127.0.0.1", self.port)


def named(name: str) -> Handler:
    """Send ``name`` then echo until EOF."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(name.encode() + b"\n")
        await w.drain()
        while data := await r.read(65536):
            w.write(data)
            await w.drain()

    return handler


async def connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.address[1]), T)


async def hello(proxy: Proxy) -> str:
    r, w = await connect(proxy)
    try:
        line = await asyncio.wait_for(r.readline(), T)
        return line.decode().strip()
    finally:
        w.close()


async def closed_by_peer(r: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(r.read(1), T) == b""
    except ConnectionResetError:
        return True


async def wait_for(cond: Callable[[], bool], timeout: float = T) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("engine", ENGINES)
def test_round_robin_across_three_backends(engine: str) -> None:
    async def main() -> None:
        async with Server(named("a")) as a, Server(named("b")) as b, Server(named("c")) as c:
            proxy = Proxy("127.0.0.1", 0, [a.backend, b.backend, c.backend], engine=engine)
            await proxy.start()
            seen = [await hello(proxy) for _ in range(9)]
            await proxy.stop(1)
        assert seen == ["a", "b", "c"] * 3
        stats = {s.backend: s for s in proxy.stats().backends}
        assert [stats[x.backend].total for x in (a, b, c)] == [3, 3, 3]

    run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_relays_large_transfers_intact_under_back_pressure(engine: str) -> None:
    """5 MiB through an echo backend while the client reads late: both directions block."""

    async def main() -> None:
        async with Server(named("e")) as e:
            proxy = Proxy("127.0.0.1", 0, [e.backend], engine=engine)
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"e\n"
            payload = os.urandom(5 << 20)
            w.write(payload)
            await asyncio.sleep(0.3)  # nothing read yet: the proxy's halves fill and block
            got = await asyncio.wait_for(r.readexactly(len(payload)), T)
            assert got == payload
            if engine != "copy":  # the bulk moved through pipes, now back in the pool
                assert proxy._pool._free
            w.write(b"small again\n")  # auto: back to copying after small reads
            assert await asyncio.wait_for(r.readline(), T) == b"small again\n"
            w.write_eof()
            assert await closed_by_peer(r)
            w.close()
            await proxy.stop(1)

    run(main())


def test_refused_backend_is_retried_with_no_failed_clients() -> None:
    async def main() -> None:
        dead = Backend("127.0.0.1", free_port())  # nothing listens there: connect is refused
        async with Server(named("a")) as a, Server(named("b")) as b:
            proxy = Proxy("127.0.0.1", 0, [a.backend, dead, b.backend])
            await proxy.start()
            seen = [await hello(proxy) for _ in range(30)]
            stats = proxy.stats()
            await proxy.stop(1)
        assert set(seen) == {"a", "b"} and len(seen) == 30
        assert stats.failed == 0
        dead_stats = next(s for s in stats.backends if s.backend == dead)
        assert dead_stats.failures == 1  # ejected after the first refusal, then skipped
        assert dead_stats.ejected

    run(main())


def test_connect_timeout_is_retried_on_the_next_backend() -> None:
    """A listener whose accept queue is full drops SYNs: a real connect that never completes."""

    async def main() -> None:
        stuck = socket.socket()
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue (backlog 0 admits one)
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(stuck.getsockname())
                fillers.append(f)
            await asyncio.sleep(0.2)
            stuck_backend = Backend("127.0.0.1", stuck.getsockname()[1])
            async with Server(named("a")) as a:
                proxy = Proxy("127.0.0.1", 0, [stuck_backend, a.backend], connect_timeout=0.3)
                await proxy.start()
                start = asyncio.get_running_loop().time()
                assert await hello(proxy) == "a"
                waited = asyncio.get_running_loop().time() - start
                stats = proxy.stats()
                await proxy.stop(1)
        finally:
            for f in fillers:
                f.close()
            stuck.close()
        assert waited >= 0.3
        assert stats.failed == 0
        assert next(s for s in stats.backends if s.backend == stuck_backend).failures == 1

    run(main())


def test_no_reachable_backend_closes_the_client() -> None:
    async def main() -> None:
        dead = [Backend("127.0.0.1", free_port()) for _ in range(2)]
        proxy = Proxy("127.0.0.1", 0, dead)
        await proxy.start()
        r, w = await connect(proxy)
        assert await closed_by_peer(r)
        w.close()
        stats = proxy.stats()
        await proxy.stop(1)
        assert stats.failed == 1 and stats.active == 0
        assert all(s.failures == 1 for s in stats.backends)

    run(main())


def test_ejected_backend_is_readmitted_after_cooloff() -> None:
    async def main() -> None:
        port = free_port()
        flaky = Backend("127.0.0.1", port)
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [flaky, a.backend], eject_cooloff=0.5)
            await proxy.start()
            assert [await hello(proxy) for _ in range(4)] == ["a"] * 4
            assert next(s for s in proxy.stats().backends if s.backend == flaky).ejected
            async with Server(named("f"), port=port):
                seen = [await hello(proxy) for _ in range(4)]
                assert seen == ["a"] * 4  # still cooling off
                await asyncio.sleep(0.6)
                seen = [await hello(proxy) for _ in range(4)]
                assert "f" in seen  # tried again after the cool-off, and it answered
                stats = next(s for s in proxy.stats().backends if s.backend == flaky)
                assert not stats.ejected and stats.failures == 1
            await proxy.stop(1)

    run(main())


def test_readmit_ends_ejection_at_once() -> None:
    async def main() -> None:
        port = free_port()
        flaky = Backend("127.0.0.1", port)
        ejected: list[Backend] = []
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [flaky, a.backend], eject_cooloff=60,
                          on_eject=ejected.append)
            await proxy.start()
            await hello(proxy)
            assert ejected == [flaky]
            async with Server(named("f"), port=port):
                proxy.readmit([flaky])
                seen = [await hello(proxy) for _ in range(2)]
                assert sorted(seen) == ["a", "f"]
            await proxy.stop(1)

    run(main())


def test_empty_update_keeps_the_backends(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [a.backend])
            await proxy.start()
            proxy.update([])
            assert proxy.backends == [a.backend]
            assert await hello(proxy) == "a"
            await proxy.stop(1)

    run(main())
    assert "empty backend update ignored" in caplog.text


@pytest.mark.parametrize("engine", ENGINES)
def test_removed_backend_connection_runs_until_drain_limit(engine: str) -> None:
    async def main() -> None:
        async with Server(named("a")) as a, Server(named("b")) as b:
            proxy = Proxy("127.0.0.1", 0, [a.backend], drain_limit=1.0, engine=engine)
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"a\n"
            proxy.update([b.backend])
            assert await hello(proxy) == "b"  # new connections go to the new backend
            w.write(b"still here\n")
            assert await asyncio.wait_for(r.readline(), T) == b"still here\n"
            removed = next(s for s in proxy.stats().backends if s.backend == a.backend)
            assert removed.removed and removed.active == 1
            start = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(closed_by_peer(r), T)
            assert asyncio.get_running_loop().time() - start >= 0.5
            w.close()
            assert a.backend not in [s.backend for s in proxy.stats().backends]
            await proxy.stop(1)

    run(main())


def test_removed_backend_connection_is_kept_without_drain_limit() -> None:
    async def main() -> None:
        async with Server(named("a")) as a, Server(named("b")) as b:
            proxy = Proxy("127.0.0.1", 0, [a.backend], drain_limit=None)
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"a\n"
            proxy.update([b.backend])
            await asyncio.sleep(0.5)
            w.write(b"ping\n")
            assert await asyncio.wait_for(r.readline(), T) == b"ping\n"
            w.close()
            await proxy.stop(1)

    run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_client_half_close_still_receives_the_response(engine: str) -> None:
    async def count_then_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until the client's EOF
        w.write(f"got {len(data)}".encode())
        await w.drain()

    async def main() -> None:
        async with Server(count_then_answer) as s:
            proxy = Proxy("127.0.0.1", 0, [s.backend], engine=engine)
            await proxy.start()
            r, w = await connect(proxy)
            w.write(b"x" * 100_000)
            w.write_eof()
            assert await asyncio.wait_for(r.read(), T) == b"got 100000"
            w.close()
            await wait_for(lambda: proxy.stats().active == 0)
            await proxy.stop(1)

    run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_backend_half_close_still_receives_the_request(engine: str) -> None:
    received: list[bytes] = []

    async def speak_first(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"banner")
        w.write_eof()
        received.append(await r.read())

    async def main() -> None:
        async with Server(speak_first) as s:
            proxy = Proxy("127.0.0.1", 0, [s.backend], engine=engine)
            await proxy.start()
            r, w = await connect(proxy)
            assert await asyncio.wait_for(r.read(), T) == b"banner"  # EOF passed on
            w.write(b"after your eof")
            w.write_eof()
            await wait_for(lambda: bool(received))
            w.close()
            await wait_for(lambda: proxy.stats().active == 0)
            await proxy.stop(1)
        assert received == [b"after your eof"]

    run(main())


def _reset(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


@pytest.mark.parametrize("engine", ENGINES)
def test_backend_reset_reaches_the_client(engine: str) -> None:
    async def reset_after_name(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"bye\n")
        await w.drain()
        await asyncio.sleep(0.1)
        _reset(w)

    async def main() -> None:
        async with Server(reset_after_name) as s:
            proxy = Proxy("127.0.0.1", 0, [s.backend], engine=engine)
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"bye\n"
            assert await closed_by_peer(r)
            w.close()
            await wait_for(lambda: proxy.stats().active == 0)
            await proxy.stop(1)

    run(main())


@pytest.mark.parametrize("client_half_closed", [False, True])
def test_client_reset_closes_the_backend_side(client_half_closed: bool) -> None:
    """Also while the client's side is out of the epoll set (client already sent its EOF)."""
    ended: list[bytes] = []

    async def wait_for_end(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi\n")
        await w.drain()
        try:
            ended.append(await r.read())
            while True:  # keep the connection; the proxy must close it
                w.write(b".")
                await w.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            ended.append(b"reset")

    async def main() -> None:
        async with Server(wait_for_end) as s:
            proxy = Proxy("127.0.0.1", 0, [s.backend])
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"hi\n"
            if client_half_closed:
                w.write_eof()
                await wait_for(lambda: bool(ended))
            _reset(w)
            await wait_for(lambda: proxy.stats().active == 0)
            await wait_for(lambda: ended[-1:] == [b"reset"])  # the proxy reset the backend
            await proxy.stop(1)

    run(main())


def test_connection_limit_rejects_beyond_it() -> None:
    async def main() -> None:
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [a.backend], max_connections=2)
            await proxy.start()
            held = [await connect(proxy) for _ in range(2)]
            for r, _w in held:
                assert await r.readline() == b"a\n"
            try:  # the reset may arrive before or after the connect completes
                r3, w3 = await connect(proxy)
                assert await closed_by_peer(r3)
                w3.close()
            except ConnectionResetError:
                pass
            assert proxy.stats().rejected == 1 and proxy.stats().active == 2
            held[0][1].close()
            await wait_for(lambda: proxy.stats().active == 1)
            assert await hello(proxy) == "a"
            for _r, w in held:
                w.close()
            await proxy.stop(1)

    run(main())


def test_graceful_stop_lets_open_connections_finish() -> None:
    async def main() -> None:
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [a.backend])
            await proxy.start()
            port = proxy.address[1]
            r, w = await connect(proxy)
            assert await r.readline() == b"a\n"
            stopping = asyncio.create_task(proxy.stop(grace=10))
            await asyncio.sleep(0.1)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            w.write(b"during stop\n")
            assert await asyncio.wait_for(r.readline(), T) == b"during stop\n"
            assert not stopping.done()
            start = asyncio.get_running_loop().time()
            w.close()
            await asyncio.wait_for(stopping, T)
            assert asyncio.get_running_loop().time() - start < 2

    run(main())


def test_stop_closes_connections_left_after_grace() -> None:
    async def main() -> None:
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [a.backend])
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"a\n"
            start = asyncio.get_running_loop().time()
            await proxy.stop(grace=0.3)
            assert 0.3 <= asyncio.get_running_loop().time() - start < 2
            assert await closed_by_peer(r)
            w.close()
            assert proxy.stats().active == 0

    run(main())


def test_sockets_have_keepalive_and_nodelay_on_both_sides() -> None:
    async def main() -> None:
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [a.backend], keepalive=(31, 7, 4))
            await proxy.start()
            r, w = await connect(proxy)
            assert await r.readline() == b"a\n"
            conn = next(iter(proxy._balancer.states()[0].connections))
            for sock in (conn.client, conn.backend):
                opts = (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                )
                assert opts == (1, 31, 7, 4, 1)
            w.close()
            await proxy.stop(1)

    run(main())


def test_default_listener_is_dual_stack() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python build")

    async def main() -> None:
        async with Server(named("a")) as a:
            proxy = Proxy(None, 0, [a.backend])
            try:
                await proxy.start()
            except OSError as err:
                pytest.skip(f"IPv6 unavailable on this host: {err}")
            port = proxy.address[1]
            assert proxy.address[0] == "::"
            for host in ("127.0.0.1", "::1"):
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), T)
                assert await r.readline() == b"a\n"
                w.close()
            await proxy.stop(1)

    run(main())


def test_uvloop_runs_the_proxy() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is optional and not installed")

    async def main() -> None:
        async with Server(named("a")) as a, Server(named("b")) as b:
            proxy = Proxy("127.0.0.1", 0, [a.backend, b.backend])
            await proxy.start()
            assert [await hello(proxy) for _ in range(4)] == ["a", "b", "a", "b"]
            await proxy.stop(1)

    uvloop.run(main())


def test_log_stats_reports_counters(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        dead = Backend("127.0.0.1", free_port())
        async with Server(named("a")) as a:
            proxy = Proxy("127.0.0.1", 0, [dead, a.backend])
            await proxy.start()
            assert await hello(proxy) == "a"
            await wait_for(lambda: proxy.stats().active == 0)
            caplog.set_level("INFO", logger="ipvslb.proxy")
            proxy.log_stats()
            await proxy.stop(1)

    run(main())
    record = next(r for r in caplog.records if r.getMessage() == "proxy stats")
    assert (record.active, record.total, record.failed) == (0, 1, 0)  # type: ignore[attr-defined]
    assert "failures=1,ejected" in record.backends  # type: ignore[attr-defined]
    assert "active=0,total=1,failures=0" in record.backends  # type: ignore[attr-defined]


PROXY_WITH_FEW_FDS = """
import asyncio, resource, sys
from ipvslb import logfmt
from ipvslb.endpoints.source import Backend
from ipvslb.proxy import Proxy
logfmt.setup()
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
async def main():
    proxy = Proxy("127.0.0.1", 0, [Backend("127.0.0.1", int(sys.argv[1]))])
    await proxy.start()
    print(proxy.address[1], flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_out_of_descriptors_pauses_accepting_and_recovers() -> None:
    """A real EMFILE: the proxy runs with a 48-descriptor limit in its own process."""

    async def main() -> None:
        async with Server(named("a")) as a:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PROXY_WITH_FEW_FDS, str(a.port),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                assert proc.stdout is not None and proc.stderr is not None
                port = int(await asyncio.wait_for(proc.stdout.readline(), 10))
                held = []
                for _ in range(30):  # more than 48 descriptors' worth of relayed connections
                    held.append(await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), T))
                lines = await asyncio.gather(
                    *(asyncio.wait_for(r.readline(), 1.5) for r, _w in held),
                    return_exceptions=True)
                served = sum(line == b"a\n" for line in lines)
                assert 0 < served < 30
                cpu_before = cpu_ticks(proc.pid)
                await asyncio.sleep(1.0)  # paused: not spinning on the listener
                assert cpu_ticks(proc.pid) - cpu_before < 30
                for _r, w in held:
                    w.close()
                await asyncio.sleep(1.2)  # the pause ends; the backlog is served
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
                assert await asyncio.wait_for(r.readline(), T) == b"a\n"
                w.close()
            finally:
                proc.kill()
                await proc.wait()
                assert proc.stderr is not None
                log = (await proc.stderr.read()).decode()
            assert "accept failed; pausing new connections" in log

    run(main())


def test_port_in_use_fails_start_cleanly() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            proxy = Proxy("127.0.0.1", taken.getsockname()[1], [])
            with pytest.raises(OSError):
                await proxy.start()
            await proxy.stop(1)  # nothing to stop: no error

    run(main())


def test_unknown_engine_is_rejected() -> None:
    with pytest.raises(ValueError, match="engine"):
        Proxy("127.0.0.1", 0, [], engine="magic")
