"""Userspace TCP reverse proxy for the kube-apiservers (``userspace`` mode).

Use ``Proxy`` from a running event loop; ``new_event_loop()`` picks uvloop when installed.
"""

from __future__ import annotations

from ipvslb.proxy.balancer import BackendStats
from ipvslb.proxy.server import Proxy, ProxyStats

__all__ = ["BackendStats", "Proxy", "ProxyStats"]
