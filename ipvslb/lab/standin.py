"""An apiserver stand-in for labs and tests: HTTPS on :6443 with its own certificate.

``GET /readyz`` and ``/healthz`` answer ``ok``; ``GET /watch`` streams the name every 0.5 s for
30 s (a watch-like long response); any other path answers the stand-in's name, so
a client can tell which backend it reached (as can the certificate's fingerprint, exactly as
with real apiservers). Prints ``ready`` once listening. Dual-stack on ``::`` by default.

    python -m ipvslb.lab.standin --name ctrl-1 --port 6443 --cert-dir DIR
"""

from __future__ import annotations

import argparse
import socket
import ssl
import subprocess
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_certificate(cert_dir: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (EC P-256, 2 days), created once."""
    cert, key = cert_dir / f"{name}.crt", cert_dir / f"{name}.key"
    if not cert.exists() or not key.exists():
        cert_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )
    return cert, key


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(name: str, port: int, cert_dir: Path, address: str = "::") -> None:
    cert, key = make_certificate(cert_dir, name)
    body_name = (name + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # an idle keep-alive connection is closed after this; a client that stalls (e.g. cut off
        # by a failover) frees its thread. Long enough for a failover in the emulated guest.
        timeout = 120

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/watch"):
                self._watch()
                return
            body = b"ok" if self.path in ("/readyz", "/healthz", "/livez") else body_name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _watch(self) -> None:
            """A watch-like stream: the name every 0.5 s for 30 s, then the end (close)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(60):
                    self.wfile.write(body_name)
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:  # the client went away (or its path was cut): the watch ends
                pass

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    server_cls = _DualStackServer if ":" in address else ThreadingHTTPServer
    server = server_cls((address, port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # The TLS handshake runs in each connection's own thread (on its first read), not in
    # accept(): one client that connects and then goes silent must not stall every other one.
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    print("ready", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--address", default="::")
    args = parser.parse_args()
    serve(args.name, args.port, args.cert_dir, args.address)


if __name__ == "__main__":
    main()
