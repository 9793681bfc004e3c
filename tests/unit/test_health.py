"""Active health checks against real TLS servers on loopback (certificates made with openssl)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ipvslb.endpoints.health import HealthChecker
from ipvslb.endpoints.source import Backend
from ipvslb.proxy import Proxy

FAST: dict[str, Any] = {"interval": 0.05, "timeout": 0.5}


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}")
    return key, crt


def make_cert(d: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, crt, ext = (d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
            "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "cluster-ca")
    rogue = make_ca(d, "rogue-ca")
    good = make_cert(d, "apiserver", ca, "IP:127.0.0.1,DNS:kubernetes")
    bad = make_cert(d, "impostor", rogue, "IP:127.0.0.1,DNS:kubernetes")
    return {"ca": ca[1], "good_crt": good[0], "good_key": good[1],
            "bad_crt": bad[0], "bad_key": bad[1]}


class Api:
    """A TLS (or plain) HTTP/1.1 keep-alive server answering health paths."""

    def __init__(self, cert: tuple[Path, Path] | None, name: str = "api") -> None:
        self.cert = cert
        self.name = name
        self.status: dict[str, int] = {"/readyz": 200, "/healthz": 200}
        self.connections = 0
        self.requests: list[str] = []
        self.hang = False
        self.close_each = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await r.readline():
                path = line.split()[1].decode()
                while (await r.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                self.requests.append(path)
                if self.hang:
                    await asyncio.sleep(3600)
                code = 200 if path == "/name" else self.status.get(path, 404)
                body = b"ok" if code == 200 else b"[-]etcd failed: reason withheld"
                if path == "/name":
                    body = self.name.encode()
                extra = "Connection: close\r\n" if self.close_each else ""
                w.write(f"HTTP/1.1 {code} X\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
                        .encode() + body)
                await w.drain()
                if self.close_each:
                    break
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def __aenter__(self) -> Api:
        ctx = None
        if self.cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.cert[0]), str(self.cert[1]))
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        if hasattr(self.server, "close_clients"):
            self.server.close_clients()

    @property
    def backend(self) -> Backend:
        return Backend("127.0.0.1", self.port)


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def good(pki: dict[str, Path]) -> Api:
    return Api((pki["good_crt"], pki["good_key"]))


def test_publishes_once_and_reuses_one_connection(pki: dict[str, Path]) -> None:
    async def main() -> None:
        changes: list[list[Backend]] = []
        async with good(pki) as a, good(pki) as b:
            hc = HealthChecker([a.backend, b.backend], changes.append, ca_file=str(pki["ca"]),
                               **FAST)
            await hc.start()
            await wait_for(lambda: len(a.requests) >= 8 and len(b.requests) >= 8)
            await hc.stop()
            assert changes == [sorted([a.backend, b.backend])]
            assert a.connections == 1 and b.connections == 1  # HTTP/1.1 keep-alive
            assert set(a.requests) == {"/readyz"}

    run(main())


def test_fall_and_rise_thresholds(pki: dict[str, Path]) -> None:
    async def main() -> None:
        events: list[tuple[Any, ...]] = []
        async with good(pki) as a, good(pki) as b:
            hc = HealthChecker(
                [a.backend, b.backend], lambda u: events.append(("change", u)),
                ca_file=str(pki["ca"]), rise=3, fall=2,
                on_result=lambda be, ok: events.append(("result", be, ok)), **FAST,
            )
            await hc.start()
            await wait_for(lambda: any(e[0] == "change" for e in events))
            b.status["/readyz"] = 500
            await wait_for(lambda: hc.usable == [a.backend])
            b.status["/readyz"] = 200
            await wait_for(lambda: hc.usable == sorted([a.backend, b.backend]))
            await hc.stop()
        b_results = []
        for e in events:
            if e[0] == "result" and e[1] == b.backend:
                b_results.append(e[2])
            if e[0] == "change" and len(b_results) > 1:
                trailing = b_results[-3:]
                if b.backend in e[1]:
                    assert trailing == [True, True, True]  # rise=3
                else:
                    assert trailing[-2:] == [False, False] and trailing[0] is True  # fall=2
        assert [e[1] for e in events if e[0] == "change"] == [
            sorted([a.backend, b.backend]), [a.backend], sorted([a.backend, b.backend])]

    run(main())


def test_certificate_from_another_ca_is_unhealthy(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        changes: list[list[Backend]] = []
        async with good(pki) as a, Api((pki["bad_crt"], pki["bad_key"])) as impostor:
            hc = HealthChecker([a.backend, impostor.backend], changes.append,
                               ca_file=str(pki["ca"]), **FAST)
            await hc.start()
            await wait_for(lambda: bool(changes))
            await asyncio.sleep(0.3)
            await hc.stop()
            assert changes == [[a.backend]]
            assert impostor.requests == []  # never got as far as HTTP

    run(main())
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.getMessage() == "backend down"]
    assert any(r.startswith("TLS verification failed") for r in reasons), reasons


def test_certificate_must_name_the_server(pki: dict[str, Path]) -> None:
    async def main() -> None:
        async with good(pki) as a:
            results = {}
            for name in ("kubernetes", "etcd.example"):
                hc = HealthChecker([a.backend], lambda u: None, ca_file=str(pki["ca"]),
                                   server_name=name, **FAST)
                await hc.start()
                await asyncio.sleep(0.3)
                results[name] = hc.healthy
                await hc.stop()
            assert results == {"kubernetes": [a.backend], "etcd.example": []}

    run(main())


def test_without_ca_file_the_certificate_is_not_checked(pki: dict[str, Path]) -> None:
    async def main() -> None:
        async with Api((pki["bad_crt"], pki["bad_key"])) as impostor:
            hc = HealthChecker([impostor.backend], lambda u: None, **FAST)
            await hc.start()
            await wait_for(lambda: hc.healthy == [impostor.backend])
            await hc.stop()

    run(main())


@pytest.mark.parametrize("fail_open", [True, False])
def test_all_unhealthy_fails_open_unless_disabled(
    pki: dict[str, Path], fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        changes: list[list[Backend]] = []
        async with good(pki) as a, good(pki) as b:
            hc = HealthChecker([a.backend, b.backend], changes.append, ca_file=str(pki["ca"]),
                               fail_open=fail_open, **FAST)
            await hc.start()
            await wait_for(lambda: bool(changes))
            a.status["/readyz"] = b.status["/readyz"] = 503
            await wait_for(lambda: hc.healthy == [])
            await asyncio.sleep(0.2)
            a.status["/readyz"] = 200
            await wait_for(lambda: hc.healthy == [a.backend])
            await hc.stop()
        both = sorted([a.backend, b.backend])
        if fail_open:
            # one down: [other]; both down: all again (fail open); a back: [a]
            assert changes[0] == both and changes[-1] == [a.backend]
            assert both in changes[1:-1]
        else:
            assert changes[0] == both and [] in changes and changes[-1] == [a.backend]

    run(main())
    assert ("failing open" in caplog.text) == fail_open


def test_readyz_404_falls_back_to_healthz(pki: dict[str, Path]) -> None:
    async def main() -> None:
        async with good(pki) as old:
            old.status = {"/healthz": 200}
            hc = HealthChecker([old.backend], lambda u: None, ca_file=str(pki["ca"]), **FAST)
            await hc.start()
            await wait_for(lambda: len(old.requests) >= 4)
            assert hc.healthy == [old.backend]
            await hc.stop()
            assert old.requests[:2] == ["/readyz", "/healthz"]
            assert set(old.requests[2:]) == {"/healthz"}

    run(main())


def test_health_path_needing_credentials_counts_as_alive(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with good(pki) as a:
            a.status = {"/readyz": 401}
            hc = HealthChecker([a.backend], lambda u: None, ca_file=str(pki["ca"]), **FAST)
            await hc.start()
            await wait_for(lambda: len(a.requests) >= 3)
            assert hc.healthy == [a.backend]
            await hc.stop()

    run(main())
    assert caplog.text.count("checking liveness only") == 1


def test_server_closing_each_connection_is_not_a_failure(pki: dict[str, Path]) -> None:
    async def main() -> None:
        results: list[bool] = []
        async with good(pki) as a:
            a.close_each = True
            hc = HealthChecker([a.backend], lambda u: None, ca_file=str(pki["ca"]),
                               on_result=lambda be, ok: results.append(ok), **FAST)
            await hc.start()
            await wait_for(lambda: len(results) >= 5)
            await hc.stop()
            assert all(results) and a.connections >= 5

    run(main())


def test_unanswered_probe_times_out_as_failure(pki: dict[str, Path]) -> None:
    async def main() -> None:
        async with good(pki) as a:
            a.hang = True
            hc = HealthChecker([a.backend], lambda u: None, ca_file=str(pki["ca"]),
                               interval=0.05, timeout=0.2, fail_open=False)
            await hc.start()
            await asyncio.sleep(0.5)
            assert hc.healthy == [] and hc.usable == []
            await hc.stop()

    run(main())


def test_tcp_mode() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = Backend("127.0.0.1", s.getsockname()[1])
        async with Api(None) as plain:
            hc = HealthChecker([plain.backend, closed], lambda u: None, mode="tcp", **FAST)
            await hc.start()
            await wait_for(lambda: plain.connections >= 3)
            assert hc.healthy == [plain.backend]
            await hc.stop()

    run(main())


def test_report_failure_probes_at_once(pki: dict[str, Path]) -> None:
    async def main() -> None:
        async with good(pki) as a:
            hc = HealthChecker([a.backend], lambda u: None, ca_file=str(pki["ca"]),
                               interval=30, timeout=1, fall=3)
            await hc.start()
            await wait_for(lambda: len(a.requests) == 1)
            hc.report_failure(a.backend)
            # At once means long before the 30 s interval; 10 s leaves room for a loaded CI.
            await wait_for(lambda: len(a.requests) == 2, timeout=10)
            assert hc.healthy == [a.backend]  # one reported failure < fall
            await hc.stop()

    run(main())


def test_update_adds_and_removes_backends(pki: dict[str, Path]) -> None:
    async def main() -> None:
        changes: list[list[Backend]] = []
        async with good(pki) as a, good(pki) as b:
            hc = HealthChecker([a.backend], changes.append, ca_file=str(pki["ca"]), **FAST)
            await hc.start()
            await wait_for(lambda: changes == [[a.backend]])
            hc.update([b.backend])
            await wait_for(lambda: changes[-1] == [b.backend])
            hc.update([])  # ignored
            await asyncio.sleep(0.2)
            seen_a = len(a.requests)
            await asyncio.sleep(0.2)
            assert len(a.requests) == seen_a  # no longer probed
            await hc.stop()
            assert changes == [[a.backend], [b.backend]]

    run(main())


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        HealthChecker([], lambda u: None, mode="icmp")


def test_checker_feeding_the_proxy_skips_a_dead_backend(pki: dict[str, Path]) -> None:
    """HTTPS clients through the proxy while one of three apiservers stops: none fails."""

    async def ask(port: int, ctx: ssl.SSLContext) -> str:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 5)
        w.write(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        name = (await r.readexactly(length)).decode()
        w.close()
        return name

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        cert = (pki["good_crt"], pki["good_key"])
        async with Api(cert, "a") as a, Api(cert, "b") as b, Api(cert, "c") as c:
            backends = [a.backend, b.backend, c.backend]
            proxy = Proxy("127.0.0.1", 0, backends)

            def readmit_passing(backend: Backend, ok: bool) -> None:
                if ok:
                    proxy.readmit([backend])

            hc = HealthChecker(backends, proxy.update, ca_file=str(pki["ca"]), fall=2,
                               on_result=readmit_passing, **FAST)
            proxy.on_eject = hc.report_failure
            await proxy.start()
            await hc.start()
            port = proxy.address[1]
            assert sorted([await ask(port, ctx) for _ in range(6)]) == sorted("abc" * 2)
            b.status["/readyz"] = 500  # b stops being ready (as in a graceful shutdown)...
            await wait_for(lambda: b.backend not in proxy.backends)
            assert b.server is not None
            b.server.close()  # ...then stops listening
            names = [await ask(port, ctx) for _ in range(20)]
            assert set(names) == {"a", "c"}
            stats = proxy.stats()
            assert stats.failed == 0
            await hc.stop()
            await proxy.stop(1)

    run(main())
