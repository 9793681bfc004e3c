"""Userspace TCP reverse proxy for the kube-apiservers (``userspace`` mode).

Use ``Proxy`` from a running event loop (asyncio, or uvloop: both are tested).
"""

from __future__ import annotations

from ipvslb.proxy.balancer import BackendStats
from ipvslb.proxy.server import Proxy, ProxyStats

__all__ = ["BackendStats", "Proxy", "ProxyStats"]
