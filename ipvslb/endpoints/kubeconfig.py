"""Finding and loading the kubeconfig the endpoint reconciler uses.

Lookup order: an explicit path (``--kubeconfig`` / ``node.kubeconfig``), then ``$KUBECONFIG``,
then the k0s admin kubeconfig, then kubeadm's admin kubeconfig. A missing or unusable
kubeconfig is a :class:`~ipvslb.errors.UserError` naming the file and the problem in one line.
The Kubernetes client is imported only when a kubeconfig is loaded.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipvslb.config import yamlread
from ipvslb.errors import UserError

K0S_ADMIN_KUBECONFIG = "/var/lib/k0s/pki/admin.conf"
KUBEADM_ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
WELL_KNOWN = (
    (K0S_ADMIN_KUBECONFIG, "the k0s admin kubeconfig"),
    (KUBEADM_ADMIN_KUBECONFIG, "the kubeadm admin kubeconfig"),
)


@dataclass(frozen=True)
class Kubeconfig:
    """A kubeconfig chosen by :func:`find`: the file(s) and where the choice came from."""

    paths: tuple[str, ...]
    origin: str

    def __str__(self) -> str:
        return f"kubeconfig {os.pathsep.join(self.paths)} ({self.origin})"


def find(
    explicit: str | None = None,
    *,
    explicit_origin: str = "--kubeconfig",
    environ: Mapping[str, str] = os.environ,
    well_known: tuple[tuple[str, str], ...] = WELL_KNOWN,
) -> Kubeconfig:
    """The kubeconfig to use, by the documented lookup order."""
    if explicit:
        _require_file(explicit, explicit_origin)
        return Kubeconfig((explicit,), explicit_origin)
    env_value = environ.get("KUBECONFIG", "")
    if env_value:
        listed = [p for p in env_value.split(os.pathsep) if p]
        present = tuple(p for p in listed if os.path.exists(p))
        if not present:
            raise UserError(
                f"kubeconfig {env_value} (from KUBECONFIG): no such file; "
                "fix or unset KUBECONFIG, or pass --kubeconfig"
            )
        for path in present:
            _require_file(path, "from KUBECONFIG")
        return Kubeconfig(present, "from KUBECONFIG")
    for path, origin in well_known:
        if os.path.exists(path):
            _require_file(path, origin)
            return Kubeconfig((path,), origin)
    tried = ", ".join(path for path, _ in well_known)
    raise UserError(
        f"no kubeconfig found (KUBECONFIG is unset; tried {tried}); "
        "pass --kubeconfig or set node.kubeconfig"
    )


def _require_file(path: str, origin: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"kubeconfig {path} ({origin}): no such file")
    if os.path.isdir(path):
        raise UserError(f"kubeconfig {path} ({origin}): is a directory, expected a file")


def check(kubeconfig: Kubeconfig) -> None:
    """Read and parse every file of ``kubeconfig``; raise UserError on the first problem."""
    for path in kubeconfig.paths:
        _check_file(path, kubeconfig.origin)


def _check_file(path: str, origin: str) -> None:
    where = f"kubeconfig {path} ({origin})"
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read(yamlread.MAX_BYTES + 1)
    except PermissionError:
        raise UserError(f"{where}: permission denied; run as root or fix its mode") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a text file") from None
    except OSError as err:
        raise UserError(f"{where}: cannot read: {err.strerror}") from None
    document: Any = yamlread.parse(text, where)
    if not isinstance(document, dict):
        raise UserError(f"{where}: expected a kubeconfig mapping (apiVersion: v1, kind: Config)")
    for key in ("clusters", "contexts", "users"):
        if not isinstance(document.get(key), list) or not document[key]:
            raise UserError(f"{where}: no {key} defined")


def load(kubeconfig: Kubeconfig, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` configured from ``kubeconfig`` (never writes it back)."""
    check(kubeconfig)
    from kubernetes import config as kube_config  # lazy: slow import

    try:
        client = kube_config.new_client_from_config(
            config_file=os.pathsep.join(kubeconfig.paths),
            context=context,
            persist_config=False,
        )
    except (kube_config.ConfigException, ValueError, TypeError, KeyError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        message = message.removeprefix("Invalid kube-config file. ")
        raise UserError(f"{kubeconfig}: {message}") from None
    config = client.configuration
    host = getattr(config, "host", "") or ""
    if not host.startswith(("https://", "http://")):
        raise UserError(f"{kubeconfig}: the current context's cluster has no server URL")
    _check_tls_material(kubeconfig, config)
    return client


def _check_tls_material(kubeconfig: Kubeconfig, config: Any) -> None:
    """Fail now, not at the first request, on a CA or client certificate that cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.ssl_ca_cert:
        try:
            context.load_verify_locations(cafile=config.ssl_ca_cert)
        except (ssl.SSLError, OSError):
            raise UserError(
                f"{kubeconfig}: the cluster's certificate-authority is not a PEM certificate"
            ) from None
    if config.cert_file or config.key_file:
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except (ssl.SSLError, OSError, TypeError):
            raise UserError(
                f"{kubeconfig}: the user's client-certificate and client-key do not form a "
                "usable PEM pair"
            ) from None
