"""The endpoint reconciler against a REAL kube-apiserver 1.20.2 (built by tests/apiserver/build).

Each test starts its own etcd and apiservers in a network namespace it created (see
tests/support/apiserver_cluster.py). Kubernetes 1.20 serves EndpointSlices only as v1beta1, so the
"slices" cases follow discovery.k8s.io/v1beta1 and the "endpoints" cases the Endpoints object.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.support.apiserver_cluster import SECURE_PORT, Cluster, wait_until
from tests.support.apiserver_fixtures import Follow, Updates, backends

pytestmark = pytest.mark.apiserver

Start = Callable[..., Cluster]
FAILED = 'Failed to watch API server endpoints, last observed version is "'
SLICES = "EndpointSlice (discovery.k8s.io/v1beta1)"
ENDPOINTS = "Endpoints (v1)"
# Generous bounds: an apiserver needs 4-8 s to start on a busy 2-core machine.
JOIN = 60.0
LEAVE = 40.0


def no_empty_list(updates: Updates) -> None:
    assert all(updates.lists), f"an empty list was delivered: {updates.lists}"


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(FAILED)]


@pytest.fixture(autouse=True)
def _capture_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ipvslb")


@pytest.mark.parametrize("use_slices", [True, False], ids=["slices", "endpoints"])
def test_list_grows_and_shrinks_with_the_apiservers(
    control_plane: Start, reconciler: Follow, use_slices: bool
) -> None:
    cluster = control_plane(apiservers=1)
    source, updates = reconciler(cluster, use_endpoint_slices=use_slices)
    updates.wait_for(backends(cluster, 0), JOIN)
    assert str(source.resource) == (SLICES if use_slices else ENDPOINTS)

    cluster.start_apiserver(1)
    updates.wait_for(backends(cluster, 0, 1), JOIN)
    cluster.start_apiserver(2)
    updates.wait_for(backends(cluster, 0, 1, 2), JOIN)
    cluster.stop_apiserver(2)
    updates.wait_for(backends(cluster, 0, 1), LEAVE)

    # Each change delivered exactly once, in order, with the port from the object.
    assert updates.lists == [
        backends(cluster, 0), backends(cluster, 0, 1),
        backends(cluster, 0, 1, 2), backends(cluster, 0, 1),
    ]
    assert {b.port for b in updates.lists[-1]} == {SECURE_PORT}
    # Followed by watching alone: one list, several watches resumed from the last version.
    assert source.stats.lists == 1
    assert source.stats.watches >= 2
    assert source.stats.failures == 0


def test_restarted_apiserver_resumes_the_watch_and_catches_up(
    control_plane: Start, reconciler: Follow, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = control_plane(apiservers=2)
    source, updates = reconciler(cluster)  # talks to apiserver 0
    updates.wait_for(backends(cluster, 0, 1), JOIN)
    watches = source.stats.watches

    cluster.stop_apiserver(0)
    wait_until(lambda: source.stats.failures >= 1, 30, "the reconciler to notice the outage")
    assert source.backends, "the last list must stay while the API is unreachable"
    # A change made while our apiserver is away must show up once it is back.
    cluster.start_apiserver(2)
    wait_until(lambda: cluster.address(2) in cluster.published(1), JOIN, "apiserver 2 published")
    cluster.start_apiserver(0)

    updates.wait_for(backends(cluster, 0, 1, 2), JOIN)
    no_empty_list(updates)
    assert source.stats.watches > watches
    messages = failures_logged(caplog)
    assert messages and messages[0].endswith("starting over in 0.5s")


def test_410_gone_relists(control_plane: Start, reconciler: Follow,
                          caplog: pytest.LogCaptureFixture) -> None:
    # Without the watch cache, watches read etcd's history, which compaction removes.
    cluster = control_plane(apiservers=1, watch_cache=False)
    source, updates = reconciler(cluster, watch_timeout=2)
    updates.wait_for(backends(cluster, 0), JOIN)
    assert source.stats.lists == 1
    listed_version = source.resource_version

    cluster.bump_revision(writes=3)  # writes the reconciler does not watch
    cluster.compact_etcd()  # the next watch from listed_version gets 410 Gone
    wait_until(lambda: source.stats.expired >= 1 and source.stats.lists >= 2, 30,
               "a 410 and a re-list")

    assert source.resource_version != listed_version
    assert source.stats.failures == 0, "a 410 is not a failure: re-list at once"
    assert not failures_logged(caplog)
    assert any(r.getMessage() == "watch expired, re-listing" for r in caplog.records)
    assert updates.lists == [backends(cluster, 0)]
    cluster.start_apiserver(1)
    updates.wait_for(backends(cluster, 0, 1), JOIN)


def test_stopped_etcd_keeps_the_list(control_plane: Start, reconciler: Follow) -> None:
    cluster = control_plane(apiservers=2)
    source, updates = reconciler(cluster)
    updates.wait_for(backends(cluster, 0, 1), JOIN)
    # The history may start with apiserver 0 alone (it registers first); what matters is
    # that nothing at all is delivered while etcd is down.
    seen = list(updates.lists)

    cluster.stop_etcd()
    watches = source.stats.watches
    # Outlast a watch timeout (5 s) and several retry intervals (0.5 s) without etcd.
    wait_until(lambda: source.stats.watches + source.stats.failures >= watches + 2, 30,
               "the reconciler to go on watching or retrying")
    time.sleep(2)
    assert updates.lists == seen and seen[-1] == backends(cluster, 0, 1)

    cluster.start_etcd()
    cluster.stop_apiserver(1)
    updates.wait_for(backends(cluster, 0), LEAVE)
    no_empty_list(updates)


def test_all_apiservers_stopped_keeps_the_list(
    control_plane: Start, reconciler: Follow, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = control_plane(apiservers=2)
    source, updates = reconciler(cluster)
    updates.wait_for(backends(cluster, 0, 1), JOIN)

    for index in (0, 1):  # both at once: the API may say "nobody" before it goes away
        cluster.apiservers[index].popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for index in (0, 1):
        cluster.stop_apiserver(index)  # waits for the pid to exit
    wait_until(lambda: len(failures_logged(caplog)) >= 2, 30, "failed retries to be logged")
    no_empty_list(updates)
    assert source.backends, "the last list must stay"

    cluster.start_apiserver(0)
    # Apiserver 1's lease expires within its TTL (15 s) if its shutdown could not remove it.
    updates.wait_for(backends(cluster, 0), LEAVE + 30)
    no_empty_list(updates)


ENDPOINTS_PATH = "/api/v1/namespaces/default/endpoints/kubernetes"
SLICE_PATH = "/apis/discovery.k8s.io/v1beta1/namespaces/default/endpointslices/kubernetes"


def _edit(cluster: Cluster, use_slices: bool, ready: list[str], not_ready: list[str]) -> int:
    """Overwrite the published object as an admin could; return its new resourceVersion.

    The apiserver repairs the object every 10 s; a PUT that races with that repair gets
    409 Conflict and is retried on the fresh object.
    """
    path = SLICE_PATH if use_slices else ENDPOINTS_PATH
    for _ in range(5):
        status, current = cluster.request(0, "GET", path)
        assert status == 200, current
        port = [{"name": "https", "port": SECURE_PORT, "protocol": "TCP"}]
        if use_slices:
            current["endpoints"] = [
                {"addresses": [ip], "conditions": {"ready": ip in ready}}
                for ip in ready + not_ready
            ]
        else:
            subset: dict[str, object] = {"ports": port}
            if ready:
                subset["addresses"] = [{"ip": ip} for ip in ready]
            if not_ready:
                subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
            current["subsets"] = [subset]
        status, body = cluster.request(0, "PUT", path, current)
        if status != 409:
            assert status == 200, body
            return int(body["metadata"]["resourceVersion"])
    raise AssertionError(f"PUT {path}: still 409 Conflict after 5 attempts")


@pytest.mark.parametrize("use_slices", [True, False], ids=["slices", "endpoints"])
def test_only_ready_addresses_and_never_an_empty_list(
    control_plane: Start, reconciler: Follow, use_slices: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = control_plane(apiservers=1)
    a, stranger = cluster.address(0), "10.99.0.99"
    source, updates = reconciler(cluster, use_endpoint_slices=use_slices)
    updates.wait_for(backends(cluster, 0), JOIN)

    version = _edit(cluster, use_slices, ready=[a], not_ready=[stranger])
    # etcd resourceVersions grow: comparing them is fine in a test against etcd3.
    wait_until(lambda: int(source.resource_version or 0) >= version, 20, "the edit watched")
    assert updates.lists == [backends(cluster, 0)], "a not-ready address was delivered"

    def warnings() -> int:
        return sum("no ready apiserver endpoints; keeping the last list" in r.getMessage()
                   for r in caplog.records)

    before = warnings()  # a fresh apiserver may publish an empty object first
    if use_slices:  # the slice disappears
        status, body = cluster.request(0, "DELETE", SLICE_PATH)
        assert status == 200, body
    else:  # the only address turns not-ready
        _edit(cluster, use_slices, ready=[], not_ready=[a])
    wait_until(lambda: warnings() > before, 20, "the warning")
    assert updates.lists == [backends(cluster, 0)], "an empty list was delivered"
    assert source.backends == backends(cluster, 0)


def test_rejected_credentials_are_logged_and_retried(
    control_plane: Start, reconciler: Follow, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = control_plane(apiservers=1)
    kubeconfig = cluster.kubeconfig(0, token="not-a-valid-token", name="bad-token")
    source, updates = reconciler(cluster, kubeconfig=kubeconfig)
    wait_until(lambda: source.stats.failures >= 2, 20, "two failed attempts")
    assert updates.lists == []
    record = next(r for r in caplog.records if r.getMessage().startswith(FAILED))
    assert "401" in record.error  # type: ignore[attr-defined]
    assert record.hint == "the API server rejected the kubeconfig's credentials"  # type: ignore[attr-defined]
    assert str(kubeconfig) in record.kubeconfig  # type: ignore[attr-defined]


def test_wrong_certificate_authority_is_logged(
    control_plane: Start, reconciler: Follow, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = control_plane(apiservers=1)
    other_ca = cluster.workdir / "other-ca"
    other_ca.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=someone-else"],
                   cwd=other_ca, check=True, capture_output=True)
    kubeconfig = cluster.kubeconfig(0, ca_file=other_ca / "ca.crt", name="bad-ca")
    source, updates = reconciler(cluster, kubeconfig=kubeconfig)
    wait_until(lambda: source.stats.failures >= 2, 20, "two failed attempts")
    assert updates.lists == []
    record = next(r for r in caplog.records if r.getMessage().startswith(FAILED))
    assert "certificate verify failed" in record.error  # type: ignore[attr-defined]
    assert "certificate-authority" in record.hint  # type: ignore[attr-defined]


def test_stop_ends_an_idle_watch_at_once(control_plane: Start, reconciler: Follow) -> None:
    cluster = control_plane(apiservers=1)
    source, updates = reconciler(cluster, watch_timeout=300)
    updates.wait_for(backends(cluster, 0), JOIN)
    wait_until(lambda: source.stats.watches >= 1, 10, "the watch to start")
    time.sleep(0.5)  # the watch is now idle in a blocking read

    source.stop()

    thread = source._thread
    assert thread is not None and not thread.is_alive(), "stop() must end the worker"
    cluster.start_apiserver(1)
    time.sleep(5)  # apiserver 1 is published by now; a stopped source must not deliver it
    assert updates.lists == [backends(cluster, 0)]
