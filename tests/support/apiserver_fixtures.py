"""pytest fixtures: a real control plane (etcd + 1..3 kube-apiservers) and reconcilers on it.

Import the fixtures into a conftest.py. Tests using them skip, with the reason, when the
kube-apiserver is not built (tests/apiserver/build) or the host lacks etcd, openssl or root;
with IPVSLB_REQUIRE_APISERVER=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ipvslb.endpoints.kube import KubernetesSource, KubeSourceSettings
from ipvslb.endpoints.source import Backend
from tests.support.apiserver_cluster import SECURE_PORT, Cluster, missing_prerequisite


class Updates:
    """Every list an endpoint source delivered, with when, for assertions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.history: list[tuple[float, list[Backend]]] = []

    def __call__(self, backends: Sequence[Backend]) -> None:
        with self._changed:
            self.history.append((time.monotonic(), list(backends)))
            self._changed.notify_all()

    @property
    def lists(self) -> list[list[Backend]]:
        with self._lock:
            return [backends for _, backends in self.history]

    @property
    def last(self) -> list[Backend] | None:
        with self._lock:
            return self.history[-1][1] if self.history else None

    def wait_for(self, expected: Sequence[Backend], timeout: float) -> float:
        """Wait until the last delivered list is ``expected``; return when it arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.history or self.history[-1][1] != list(expected):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = self.history[-1][1] if self.history else None
                    raise AssertionError(
                        f"timed out after {timeout:g}s waiting for {list(map(str, expected))}; "
                        f"last delivered: {None if got is None else list(map(str, got))}"
                    )
                self._changed.wait(remaining)
            return self.history[-1][0]


def backends(cluster: Cluster, *indexes: int) -> list[Backend]:
    """The backends apiservers ``indexes`` of ``cluster`` stand for."""
    return sorted(Backend(cluster.address(i), SECURE_PORT) for i in indexes)


Follow = Callable[..., tuple[KubernetesSource, Updates]]


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start a real control plane: ``control_plane(apiservers=1, watch_cache=True, ...)``."""
    reason = missing_prerequisite()
    if reason:
        if os.environ.get("IPVSLB_REQUIRE_APISERVER") == "1":
            pytest.fail(f"real kube-apiserver tier required but {reason}")
        pytest.skip(f"real kube-apiserver tier: {reason}")
    started: list[Cluster] = []

    def start(apiservers: int = 1, **options: object) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(started)}", **options)  # type: ignore[arg-type]
        started.append(cluster)
        cluster.start(apiservers)
        return cluster

    yield start
    for cluster in started:
        cluster.close()


@pytest.fixture
def reconciler(control_plane: Callable[..., Cluster]) -> Iterator[Follow]:
    """Start a KubernetesSource inside ``cluster``'s namespace; stopped at teardown.

    Tests get short intervals (retry 0.5 s, watch timeout 5 s) unless they pass their own.
    """
    sources: list[KubernetesSource] = []

    def start(cluster: Cluster, kubeconfig: Path | None = None,
              **settings: object) -> tuple[KubernetesSource, Updates]:
        options: dict[str, object] = {"retry_interval": 0.5, "watch_timeout": 5}
        options.update(settings)
        config = KubeSourceSettings(
            kubeconfig=str(kubeconfig or cluster.kubeconfig(0)), **options  # type: ignore[arg-type]
        )
        source = KubernetesSource(config)
        updates = Updates()
        sources.append(source)
        with cluster.netns.entered():  # the worker thread is born in the namespace
            source.start(updates)
        return source, updates

    yield start
    for source in sources:
        source.stop()
