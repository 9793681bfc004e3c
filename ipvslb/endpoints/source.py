"""The endpoint-source interface the agent consumes.

A source delivers the full current list of apiserver backends to a callback whenever it
changes. The callback may be invoked from any thread; the consumer marshals it. A source never
delivers an empty list because of a transient error: it keeps the last known list instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, order=True)
class Backend:
    """One apiserver: address and port."""

    address: str
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


UpdateCallback = Callable[[Sequence[Backend]], None]


@dataclass(frozen=True)
class SourceStatus:
    """What `ipvslb status` and the metrics show of an endpoint source."""

    kind: str  # static | kubernetes
    connected: bool = True  # kubernetes: a list or watch succeeded since the last failure
    retrying: bool = False  # kubernetes: failing, retrying with backoff
    resource: str | None = None
    resource_version: str | None = None
    last_event: float | None = None  # unix times
    last_sync: float | None = None
    watches: int = 0
    lists: int = 0
    events: int = 0
    errors: int = 0
    last_error: str = ""


class EndpointSource(Protocol):
    def start(self, on_update: UpdateCallback) -> None:
        """Begin delivering backend lists to ``on_update`` (non-blocking)."""

    def stop(self) -> None:
        """Stop delivering; join any worker thread (bounded)."""

    def status(self) -> SourceStatus:
        """The source's state now (cheap; callable from any thread)."""


class StaticSource:
    """The configured static list, delivered once."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._backends = sorted(set(backends))

    def start(self, on_update: UpdateCallback) -> None:
        on_update(list(self._backends))

    def stop(self) -> None:
        return None

    def status(self) -> SourceStatus:
        return SourceStatus(kind="static")
