"""Backend selection for the proxy: round robin, passive ejection, removal with draining.

The balancer holds one ``BackendState`` per backend it has ever been given and not yet
forgotten. A backend leaves the rotation when an update drops it (``removed``), but its state
lives on while it still carries connections, so that they can be drained and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ipvslb import logfmt
from ipvslb.endpoints.source import Backend

log = logfmt.get("proxy")


class BackendState:
    """Counters and health of one backend, plus the connections it carries."""

    __slots__ = (
        "backend",
        "active",
        "total",
        "failures",
        "consecutive_failures",
        "ejected_until",
        "removed",
        "connections",
        "drain_timer",
        "instant",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.active = 0
        self.total = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.removed = False
        self.connections: set[Any] = set()
        self.drain_timer: Any = None
        self.instant = True  # connects complete inside connect() (a local backend)

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now


@dataclass(frozen=True)
class BackendStats:
    backend: Backend
    active: int
    total: int
    failures: int
    ejected: bool
    removed: bool


class Balancer:
    """Round robin over the current backends, skipping passively ejected ones.

    ``eject_after`` consecutive connect failures eject a backend for ``eject_cooloff`` seconds;
    after that it is tried again, and one success re-admits it. When every current backend is
    ejected, they are all tried anyway (failing open beats refusing every client).
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        eject_after: int = 1,
        eject_cooloff: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.eject_after = max(1, eject_after)
        self.eject_cooloff = eject_cooloff
        self._clock = clock
        self._states: dict[Backend, BackendState] = {}
        self._current: list[BackendState] = []
        self._next = 0
        self._ejections = False  # True while some backend may be cooling off
        self.update(backends)

    @property
    def current(self) -> list[Backend]:
        return [s.backend for s in self._current]

    def update(self, backends: Iterable[Backend]) -> tuple[list[BackendState], list[BackendState]]:
        """Replace the rotation. Returns (added, removed) states.

        The caller handles an empty list (kept as "no change"); here it empties the rotation.
        """
        wanted = list(dict.fromkeys(backends))
        if set(wanted) == {s.backend for s in self._current}:
            return [], []  # same set (perhaps reordered): keep the rotation as it is
        added: list[BackendState] = []
        for backend in wanted:
            state = self._states.get(backend)
            if state is None:
                state = self._states[backend] = BackendState(backend)
                added.append(state)
            elif state.removed:
                state.removed = False
                state.ejected_until = 0.0
                state.consecutive_failures = 0
                added.append(state)
        keep = set(wanted)
        removed = [s for s in self._current if s.backend not in keep]
        for state in removed:
            state.removed = True
        self._current = [self._states[b] for b in wanted]
        self._next %= max(1, len(self._current))
        for state in removed:
            self.forget_if_idle(state)
        return added, removed

    def forget_if_idle(self, state: BackendState) -> None:
        """Drop a removed backend's state once its last connection has ended."""
        if state.removed and not state.connections and self._states.get(state.backend) is state:
            del self._states[state.backend]
            if state.drain_timer is not None:
                state.drain_timer.cancel()
                state.drain_timer = None

    def candidates(self, attempts: int) -> list[BackendState]:
        """Up to ``attempts`` distinct backends to try, in order, for one new connection."""
        current = self._current
        count = len(current)
        if count == 0:
            return []
        start = self._next
        self._next = (start + 1) % count
        ordered = current[start:] + current[:start]
        if self._ejections:
            now = self._clock()
            ejected = sorted((s for s in ordered if s.ejected(now)), key=lambda s: s.ejected_until)
            if ejected:
                ordered = [s for s in ordered if not s.ejected(now)] + ejected
            else:
                self._ejections = False  # every cool-off is over
        return ordered[: max(1, attempts)]

    def record_failure(self, state: BackendState, error: str) -> bool:
        """Count a failed connect; returns True when this failure ejected the backend."""
        state.failures += 1
        state.consecutive_failures += 1
        now = self._clock()
        if state.consecutive_failures >= self.eject_after and not state.ejected(now):
            state.ejected_until = now + self.eject_cooloff
            self._ejections = True
            log.warning(
                "backend ejected after connect failure",
                extra={"backend": str(state.backend), "error": error,
                       "cooloff_s": self.eject_cooloff},
            )
            return True
        return False

    def record_success(self, state: BackendState) -> None:
        if state.consecutive_failures >= self.eject_after:
            log.info("backend re-admitted", extra={"backend": str(state.backend)})
        state.consecutive_failures = 0
        state.ejected_until = 0.0

    def readmit(self, backends: Iterable[Backend]) -> None:
        """End the ejection of ``backends`` now (an active health check saw them pass)."""
        for backend in backends:
            state = self._states.get(backend)
            if state is not None and state.ejected_until:
                state.ejected_until = 0.0
                state.consecutive_failures = 0
                log.info("backend re-admitted by health check", extra={"backend": str(backend)})

    def states(self) -> list[BackendState]:
        return list(self._states.values())

    def connections(self) -> Iterator[Any]:
        """Every connection of every backend (the relay's Connection objects)."""
        for state in list(self._states.values()):
            yield from list(state.connections)

    def stats(self) -> list[BackendStats]:
        now = self._clock()
        return [
            BackendStats(s.backend, s.active, s.total, s.failures, s.ejected(now), s.removed)
            for s in self._states.values()
        ]
