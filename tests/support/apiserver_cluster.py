"""A real control plane for tests and benchmarks: etcd plus one to three kube-apiservers.

Everything runs inside one network namespace this module creates (``ipvslb-api-<pid>-<n>``):
etcd listens on its 127.0.0.1, and apiserver ``i`` binds and advertises ``10.99.0.1<i>`` (an
address on that namespace's loopback link; advertise addresses must not be 127/8). No traffic
leaves the namespace. Code that talks to the apiservers runs in it through :meth:`Netns.entered`
(for the calling thread and the threads it starts) or ``ip netns exec``.

Every process is started by :class:`Proc` and stopped by its pid; every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import itertools
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ipvslb.lab.controlplane import K8S_VERSION, apiserver_binary

__all__ = ["K8S_VERSION", "Cluster", "apiserver_binary", "missing_prerequisite"]

SECURE_PORT = 6443
ETCD_PORT = 2379
ADMIN_TOKEN = "ipvslb-test-admin-token"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def missing_prerequisite() -> str | None:
    """Why a real control plane cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if apiserver_binary() is None:
        explicit = os.environ.get("IPVSLB_KUBE_APISERVER")
        if explicit:
            return f"IPVSLB_KUBE_APISERVER={explicit} is not an executable file"
        return "kube-apiserver is not built: run tests/apiserver/build (about 5 min, cached)"
    for tool in ("etcd", "openssl", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


class Netns:
    """A named network namespace with loopback up and extra addresses on it."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name
        self.addresses = addresses

    def create(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")
        for address in self.addresses:
            self.ip("addr", "add", f"{address}/32", "dev", "lo")

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread (and threads it starts meanwhile) inside the namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test namespace")
            try:
                yield
            finally:
                if libc.setns(own, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to our own namespace")
        finally:
            os.close(own)
            os.close(target)


class Proc:
    """A child process with its output in a log file, stopped by its pid."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Signal the pid, wait up to ``timeout``, then SIGKILL it."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path, server_ips: list[str]) -> None:
    """A CA, an apiserver serving certificate, a service-account key pair and a token file."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", "/CN=ipvslb-test-ca", cwd=directory)
    sans = ",".join(["DNS:kubernetes", "DNS:kubernetes.default", "IP:127.0.0.1"]
                    + [f"IP:{ip}" for ip in server_ips])
    (directory / "san.ext").write_text(f"subjectAltName={sans}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
             "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=directory)
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "apiserver.crt", "-days", "2",
             "-extfile", "san.ext", cwd=directory)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    (directory / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,1,"system:masters"\n')


def write_kubeconfig(path: Path, server: str, ca_file: Path | None, token: str) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_file.read_bytes()).decode()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(document, indent=1))  # JSON is YAML
    path.chmod(0o600)
    return path


class Cluster:
    """etcd plus up to three apiservers in a namespace of their own."""

    MAX_APISERVERS = 3

    def __init__(self, workdir: Path, *, watch_cache: bool = True,
                 compaction_interval: str = "5m") -> None:
        self.workdir = workdir
        self.watch_cache = watch_cache
        self.compaction_interval = compaction_interval
        self.addresses = [self.address(i) for i in range(self.MAX_APISERVERS)]
        self.netns = Netns(f"ipvslb-api-{os.getpid()}-{next(_counter)}", self.addresses)
        self.pki = workdir / "pki"
        self.etcd: Proc | None = None
        self.apiservers: dict[int, Proc] = {}
        self._ssl: ssl.SSLContext | None = None

    @staticmethod
    def address(index: int) -> str:
        return f"10.99.0.{11 + index}"

    def url(self, index: int) -> str:
        return f"https://{self.address(index)}:{SECURE_PORT}"

    def kubeconfig(self, index: int = 0, token: str = ADMIN_TOKEN,
                   ca_file: Path | None = None, name: str = "kubeconfig") -> Path:
        """A kubeconfig for apiserver ``index`` (admin token, the test CA unless given)."""
        return write_kubeconfig(self.workdir / name, self.url(index),
                                ca_file or self.pki / "ca.crt", token)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, apiservers: int = 1) -> None:
        make_pki(self.pki, self.addresses)
        self.netns.create()
        self.start_etcd()
        for index in range(apiservers):
            self.start_apiserver(index, wait=False)
        for index in range(apiservers):
            self.wait_ready(index)

    def close(self) -> None:
        for proc in self.apiservers.values():
            proc.stop(timeout=15)
        if self.etcd is not None:
            self.etcd.stop(timeout=10)
        self.netns.delete()

    def start_etcd(self) -> None:
        data = self.workdir / "etcd-data"
        client = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        argv = [
            shutil.which("etcd") or "etcd", "--name=test", f"--data-dir={data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}", "--log-level=warn", "--logger=zap",
        ]
        self.etcd = Proc(self.netns.exec_argv(argv), self.workdir / "etcd.log")
        self.etcd.start()
        wait_until(self._etcd_healthy, 20, "etcd to be healthy")

    def stop_etcd(self) -> None:
        assert self.etcd is not None
        self.etcd.stop()

    def _etcd_healthy(self) -> bool:
        assert self.etcd is not None
        if not self.etcd.running():
            raise AssertionError(f"etcd exited:\n{self.etcd.tail()}")
        try:
            return bool(self.etcd_call("/health", None).get("health") == "true")
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def etcd_call(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        with self.netns.entered():
            conn = http.client.HTTPConnection("127.0.0.1", ETCD_PORT, timeout=5)
            try:
                if body is None:
                    conn.request("GET", path)
                else:
                    conn.request("POST", path, body=json.dumps(body))
                result: dict[str, Any] = json.loads(conn.getresponse().read())
                return result
            finally:
                conn.close()

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (forces 410 on older watches)."""
        header = self.etcd_call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        revision = int(header["header"]["revision"])
        self.etcd_call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def apiserver_argv(self, index: int) -> list[str]:
        binary = apiserver_binary()
        assert binary is not None
        address = self.address(index)
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={SECURE_PORT}",
            "--insecure-port=0",
            f"--cert-dir={self.workdir / f'certs-{index}'}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            f"--token-auth-file={self.pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--endpoint-reconciler-type=lease",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            f"--watch-cache={'true' if self.watch_cache else 'false'}",
            f"--etcd-compaction-interval={self.compaction_interval}",
        ]

    def start_apiserver(self, index: int, wait: bool = True) -> None:
        old = self.apiservers.get(index)
        if old is not None and old.running():
            raise AssertionError(f"apiserver {index} is already running")
        proc = Proc(self.netns.exec_argv(self.apiserver_argv(index)),
                    self.workdir / f"apiserver-{index}.log")
        proc.start()
        self.apiservers[index] = proc
        if wait:
            self.wait_ready(index)

    def stop_apiserver(self, index: int, sig: int = signal.SIGTERM) -> None:
        self.apiservers[index].stop(sig)

    def wait_ready(self, index: int, timeout: float = 90.0) -> None:
        proc = self.apiservers[index]

        def ready() -> bool:
            if not proc.running():
                raise AssertionError(f"apiserver {index} exited:\n{proc.tail()}")
            try:
                status, _ = self.request(index, "GET", "/readyz")
            except (OSError, http.client.HTTPException):
                return False
            return status == 200

        wait_until(ready, timeout, f"apiserver {index} to be ready", step=0.2)

    # -- API access for assertions and for changing things --------------------------------------

    def request(self, index: int, method: str, path: str,
                body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One API request to apiserver ``index`` as admin; (status, decoded JSON or None)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        with self.netns.entered():
            conn = http.client.HTTPSConnection(self.address(index), SECURE_PORT,
                                               context=self._ssl, timeout=10)
            try:
                conn.request(method, path, body=None if body is None else json.dumps(body),
                             headers=headers)
                response = conn.getresponse()
                raw = response.read()
            finally:
                conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, None

    def published(self, index: int = 0) -> list[str]:
        """The ready addresses the Endpoints object lists right now, as seen via ``index``."""
        status, body = self.request(index, "GET", "/api/v1/namespaces/default/endpoints/kubernetes")
        if status != 200:
            return []
        return sorted(a["ip"] for s in body.get("subsets") or [] for a in s.get("addresses") or [])

    def bump_revision(self, index: int = 0, writes: int = 1) -> None:
        """Advance etcd's revision with writes the reconciler does not watch."""
        for _ in range(writes):
            status, body = self.request(index, "POST", "/api/v1/namespaces/default/configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"generateName": "bump-"}, "data": {"k": "v"},
            })
            assert status == 201, body
