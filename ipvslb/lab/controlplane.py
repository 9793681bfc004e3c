"""A real Kubernetes control plane for the lab: per controller an etcd member and a kube-apiserver.

Each controller namespace runs one member of a three-member etcd cluster (plain HTTP on the
node's lab address, ports 2379/2380) and a kube-apiserver that talks to its local member only
(as kubeadm's and k0s's stacked etcd do), listens on every address of its namespace (so IPVS
DR, which delivers packets addressed to the VIP, and the agent's 127.0.0.1 health check both
reach it) and advertises the node's own address. The apiservers' lease endpoint reconciler
fills ``default/kubernetes``: what `ipvslb up` follows with ``endpoints: kubernetes``.

One CA signs a serving certificate per apiserver (CN ``kube-apiserver-<node>``; SANs: the VIP,
the node address, 127.0.0.1, the first service address and the ``kubernetes`` names), so a
client that trusts the CA verifies every apiserver through the VIP, and a test tells them
apart by certificate. The binaries are the project's own builds from Debian's source:
``tests/apiserver/build`` (kube-apiserver 1.20.2) and Debian's ``kubernetes-client`` kubectl
(same version), found as described in :func:`apiserver_binary` and :func:`kubectl_binary`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

K8S_VERSION = "1.20.2"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ADMIN_TOKEN = "ipvslb-lab-admin-token"  # a lab secret: static token auth, the lab only
SERVICE_RANGE = "10.96.0.0/24"
FIRST_SERVICE_IP = "10.96.0.1"
BUILD_HINT = "build it with tests/apiserver/build (about 5-10 min once, cached)"


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ipvslb"


def apiserver_binary() -> Path | None:
    """$IPVSLB_KUBE_APISERVER, else the build cached by tests/apiserver/build; or None."""
    explicit = os.environ.get("IPVSLB_KUBE_APISERVER")
    path = Path(explicit) if explicit else _cache() / "apiserver" / K8S_VERSION / "kube-apiserver"
    return path if os.access(path, os.X_OK) else None


def kubectl_binary() -> Path | None:
    """$IPVSLB_KUBECTL, else Debian's kubernetes-client kubectl unpacked by tests/setup into
    the cache, else a `kubectl` on PATH; or None."""
    explicit = os.environ.get("IPVSLB_KUBECTL")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    cached = _cache() / "kubectl" / K8S_VERSION / "kubectl"
    if os.access(cached, os.X_OK):
        return cached
    found = shutil.which("kubectl")
    return Path(found) if found else None


def missing() -> str | None:
    """Why the real control plane cannot run here (one line with the fix), or None."""
    if apiserver_binary() is None:
        return f"kube-apiserver {K8S_VERSION} is not built: {BUILD_HINT}"
    if shutil.which("etcd") is None:
        return "etcd is not installed: apt-get install etcd-server"
    if kubectl_binary() is None:
        return "kubectl is not installed: apt-get install kubernetes-client"
    return None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, nodes: dict[str, str], vip: str) -> None:
    """CA, one serving certificate per node (``<node>.crt/.key``), service-account keys and
    the static token file, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "7", "-subj", "/CN=ipvslb-lab-ca", cwd=directory)
    for name, address in nodes.items():
        sans = ",".join(["DNS:kubernetes", "DNS:kubernetes.default",
                         "DNS:kubernetes.default.svc", "IP:127.0.0.1",
                         f"IP:{FIRST_SERVICE_IP}", f"IP:{vip}", f"IP:{address}"])
        (directory / f"{name}.ext").write_text(f"subjectAltName={sans}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN=kube-apiserver-{name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "7",
                 "-extfile", f"{name}.ext", cwd=directory)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    (directory / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,1,"system:masters"\n')
    for path in directory.iterdir():
        path.chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str = ADMIN_TOKEN) -> Path:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode()}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
        "current-context": "lab",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))  # JSON is YAML
    path.chmod(0o600)
    return path


def etcd_argv(name: str, address: str, members: dict[str, str], data_dir: Path) -> list[str]:
    """One member of the etcd cluster ``members`` (name -> address)."""
    client = f"http://{address}:{ETCD_CLIENT_PORT}"
    peer = f"http://{address}:{ETCD_PEER_PORT}"
    cluster = ",".join(f"{n}=http://{a}:{ETCD_PEER_PORT}" for n, a in members.items())
    return [
        shutil.which("etcd") or "etcd", f"--name={name}", f"--data-dir={data_dir}",
        f"--listen-client-urls={client},http://127.0.0.1:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={cluster}", "--initial-cluster-state=new",
        "--initial-cluster-token=ipvslb-lab", "--log-level=warn", "--logger=zap",
    ]


def apiserver_argv(name: str, address: str, port: int, pki: Path, cert_dir: Path) -> list[str]:
    binary = apiserver_binary()
    if binary is None:
        raise FileNotFoundError(f"kube-apiserver is not built: {BUILD_HINT}")
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--bind-address=0.0.0.0",
        f"--advertise-address={address}",
        f"--secure-port={port}",
        "--insecure-port=0",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki / f'{name}.crt'}",
        f"--tls-private-key-file={pki / f'{name}.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={pki / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        "--endpoint-reconciler-type=lease",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
    ]
