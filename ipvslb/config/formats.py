"""Read a configuration file: ipvslb's own YAML, a k0s ClusterConfig or a k0sctl Cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipvslb.config import model as c
from ipvslb.config import yamlread
from ipvslb.config.scalars import shown
from ipvslb.config.validate import Problems, Section, build_config
from ipvslb.errors import ConfigError

NATIVE_FIELDS = ("apiVersion", "kind", "node", "endpoints", "controlPlaneLoadBalancing")


def detect_format(doc: dict[str, Any]) -> c.SourceFormat:
    kind = doc.get("kind")
    api_version = str(doc.get("apiVersion", ""))
    if kind == "ClusterConfig" and api_version.startswith("k0s."):
        return c.SourceFormat.K0S_CLUSTER_CONFIG
    if kind == "Cluster" and api_version.startswith("k0sctl."):
        return c.SourceFormat.K0SCTL_CLUSTER
    return c.SourceFormat.NATIVE


def _dig(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def config_from_document(doc: Any, role_override: str | None = None) -> c.Config:
    """Validate a parsed document (whether keepalived's files render for the result is
    ``ipvslb.keepalived.desired.require_renders``, which every command applies)."""
    if not isinstance(doc, dict):
        raise ConfigError([f"the file must hold a YAML mapping, got {type(doc).__name__}; see "
                           "examples/ for the format"])
    fmt = detect_format(doc)
    if fmt is c.SourceFormat.NATIVE:
        problems = Problems()
        Section(doc, problems, NATIVE_FIELDS)
        if problems.items:
            raise ConfigError(problems.items)
        return build_config(
            fmt, doc.get("controlPlaneLoadBalancing"), "controlPlaneLoadBalancing",
            node=doc.get("node"), endpoints=doc.get("endpoints"), role_override=role_override,
        )
    prefix: tuple[str, ...] = ("spec",)
    if fmt is c.SourceFormat.K0SCTL_CLUSTER:
        prefix = ("spec", "k0s", "config", "spec")
    spec = _dig(doc, *prefix)
    api_port = _dig(spec, "api", "port")
    if api_port is not None and (isinstance(api_port, bool) or not isinstance(api_port, int)
                                 or not 1 <= api_port <= 65535):
        raise ConfigError([f"{'.'.join(prefix)}.api.port: must be a port from 1 to 65535, got "
                           f"{shown(api_port)}"])
    external = _dig(spec, "api", "externalAddress")
    return build_config(
        fmt, _dig(spec, "network", "controlPlaneLoadBalancing"),
        ".".join(prefix + ("network", "controlPlaneLoadBalancing")),
        api_port=api_port, external_address=str(external) if external else None,
        role_override=role_override,
    )


def load(path: str | Path, role_override: str | None = None) -> c.Config:
    """Read and validate ``path``; raise UserError/ConfigError with one line per problem."""
    return config_from_document(yamlread.read(path), role_override)
