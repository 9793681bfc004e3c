"""Watch faults a real kube-apiserver cannot be made to produce, against a FAKE HTTP apiserver.

FAKE SERVER: :class:`FakeApiserver` below is a scripted stand-in, listening on 127.0.0.1 only,
used for two faults only: garbage in the watch stream and a connection cut (in the middle of a
chunk, or cleanly before any event). Everything else is tested against the real kube-apiserver
(tests/apiserver). The backend addresses it lists (192.0.2.0/24, TEST-NET-1) are data
and are never contacted.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ipvslb.endpoints.kube import KubernetesSource, KubeSourceSettings
from ipvslb.endpoints.source import Backend
from tests.support.apiserver_cluster import wait_until, write_kubeconfig
from tests.support.apiserver_fixtures import Updates

ENDPOINTS = "/api/v1/namespaces/default/endpoints"


def endpoints(version: int, *last_octets: int) -> dict[str, Any]:
    return {
        "kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "resourceVersion": str(version)},
        "subsets": [{"addresses": [{"ip": f"192.0.2.{n}"} for n in last_octets],
                     "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}],
    }


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiserver

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.requests.append((url.path, params))
        if url.path != ENDPOINTS:
            self.send_json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        elif params.get("watch") != "true":
            self.send_json(200, {"kind": "EndpointsList", "metadata": {"resourceVersion": "10"},
                                 "items": [endpoints(10, 1)]})
        else:
            script = self.server.watch_scripts.pop(0) if self.server.watch_scripts else idle
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            script(self)

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def idle(handler: Handler) -> None:
    """Hold the watch open, silent, until the test is over (bounded)."""
    handler.server.done.wait(30)
    handler.end_stream()


class FakeApiserver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, watch_scripts: list[Callable[[Handler], None]]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.watch_scripts = watch_scripts
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.done = threading.Event()

    def watches(self) -> list[dict[str, str]]:
        return [params for path, params in self.requests if params.get("watch") == "true"]


@pytest.fixture
def follow(tmp_path: Path) -> Iterator[Callable[..., tuple[FakeApiserver, KubernetesSource,
                                                         Updates]]]:
    started: list[tuple[FakeApiserver, KubernetesSource]] = []

    def start(scripts: list[Callable[[Handler], None]]) -> tuple[FakeApiserver,
                                                                 KubernetesSource, Updates]:
        server = FakeApiserver(scripts)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig",
                                      f"http://127.0.0.1:{server.server_address[1]}", None, "t")
        source = KubernetesSource(KubeSourceSettings(
            kubeconfig=str(kubeconfig), retry_interval=0.2, watch_timeout=30,
        ))
        updates = Updates()
        started.append((server, source))
        source.start(updates)
        return server, source, updates

    yield start
    for server, source in started:
        source.stop()
        server.done.set()
        server.shutdown()
        server.server_close()


def b(*last_octets: int) -> list[Backend]:
    return [Backend(f"192.0.2.{n}", 6443) for n in last_octets]


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("Failed to watch")]


def then_more(handler: Handler) -> None:
    """The resumed watch: one more change, then silence."""
    handler.chunk(event("MODIFIED", endpoints(12, 1, 2, 3)))
    idle(handler)


@pytest.mark.parametrize("garbage", [
    b"this is not json\n",
    b'{"type": "MODIFIED", "object": "a string"}\n',
    b'{"type": "EXPLODED", "object": {"metadata": {"resourceVersion": "99"}}}\n',
    b'["a", "list"]\n',
], ids=["not-json", "object-not-a-mapping", "unknown-type", "not-an-event"])
def test_garbage_in_the_watch_resumes_from_the_last_good_version(
    follow: Callable[..., tuple[FakeApiserver, KubernetesSource, Updates]],
    caplog: pytest.LogCaptureFixture, garbage: bytes,
) -> None:
    def good_then_garbage(handler: Handler) -> None:
        handler.chunk(event("MODIFIED", endpoints(11, 1, 2)))
        handler.chunk(garbage)
        handler.server.done.wait(30)  # the client must give up on its own

    server, source, updates = follow([good_then_garbage, then_more])
    updates.wait_for(b(1, 2, 3), 10)

    assert updates.lists == [b(1), b(1, 2), b(1, 2, 3)]
    watches = server.watches()
    assert [w["resourceVersion"] for w in watches[:2]] == ["10", "11"]
    assert all(w["allowWatchBookmarks"] == "true" and w["timeoutSeconds"] == "30"
               for w in watches)
    assert source.stats.lists == 1, "garbage must not force a re-list"
    [record] = failures(caplog)
    assert record.getMessage() == (
        'Failed to watch API server endpoints, last observed version is "11", '
        "starting over in 0.2s"
    )


def test_connection_cut_mid_chunk_resumes_from_the_last_good_version(
    follow: Callable[..., tuple[FakeApiserver, KubernetesSource, Updates]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def good_then_cut(handler: Handler) -> None:
        handler.chunk(event("MODIFIED", endpoints(11, 1, 2)))
        half = event("MODIFIED", endpoints(12, 9))
        handler.wfile.write(b"%x\r\n%s" % (len(half), half[:20]))  # promise more than sent
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True

    server, source, updates = follow([good_then_cut, then_more])
    updates.wait_for(b(1, 2, 3), 10)

    assert updates.lists == [b(1), b(1, 2), b(1, 2, 3)]
    assert [w["resourceVersion"] for w in server.watches()[:2]] == ["10", "11"]
    [record] = failures(caplog)
    assert "watch stream broken" in record.error  # type: ignore[attr-defined]
    assert source.stats.lists == 1


def test_a_watch_that_ends_at_once_is_not_a_busy_loop(
    follow: Callable[..., tuple[FakeApiserver, KubernetesSource, Updates]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def end_at_once(handler: Handler) -> None:
        handler.end_stream()  # the stream is cut before its first event

    server, source, updates = follow([end_at_once] * 3)
    wait_until(lambda: len(server.watches()) >= 4, 10, "the fourth watch")
    # Three empty watches, each followed by the retry interval, not an instant re-watch.
    assert source.stats.failures == 3
    assert all("ended as soon as it started" in r.error  # type: ignore[attr-defined]
               for r in failures(caplog))
    assert updates.lists == [b(1)]
