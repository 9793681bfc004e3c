"""The endpoint reconciler: follow the apiservers through the Kubernetes API.

Every kube-apiserver publishes its own address in the ``kubernetes`` Service of ``default``
(``--endpoint-reconciler-type=lease``, the default) and removes it when it shuts down. This
source lists and then watches those endpoints: EndpointSlices (``discovery.k8s.io/v1``, else
``v1beta1``) when the server has them, else the ``Endpoints`` object. It delivers the sorted
ready ``address:port`` list whenever it changes.

Failures: a 410 Gone re-lists at once; a server that asks us to come back later (429/5xx with
Retry-After or ``retryAfterSeconds``) is retried after that delay; anything else is logged and
retried every ``retry_interval`` seconds, forever, resuming from the last resourceVersion. The
last delivered list stays in force meanwhile: this source never delivers an empty list (see
:meth:`KubernetesSource._publish`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import tenacity

from ipvslb import logfmt
from ipvslb.endpoints import kube_api, kubeconfig
from ipvslb.endpoints.kube_api import ApiError, Gone, KubeApi, Resource
from ipvslb.endpoints.source import Backend, SourceStatus, UpdateCallback

log = logfmt.get("reconciler")

# The server-side watch timeout is also how long a silent connection may stay unnoticed.
WATCH_GRACE_SECONDS = 15.0
# A watch that ends sooner than this without any event counts as a failure.
MIN_WATCH_SECONDS = 1.0
# Never trust a server-suggested delay beyond this.
MAX_RETRY_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class KubeSourceSettings:
    kubeconfig: str | None = None
    # Where the explicit kubeconfig came from, for error messages ("--kubeconfig" from a CLI).
    kubeconfig_origin: str = "node.kubeconfig"
    namespace: str = "default"
    service: str = "kubernetes"
    # False: always follow the Endpoints object, even where EndpointSlices exist.
    use_endpoint_slices: bool = True
    # Wait after a failure the server gave no delay for ("starting over in 10s").
    retry_interval: float = 10.0
    # timeoutSeconds of each watch request; the watch resumes at once when it ends.
    watch_timeout: int = 60
    # How long stop() waits for the worker thread.
    stop_timeout: float = 5.0


@dataclass
class ReconcilerStats:
    """Counters for tests, benchmarks and debugging (written by the worker thread only)."""

    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    expired: int = 0
    failures: int = 0
    updates: int = 0
    # for `ipvslb status` and metrics (unix times)
    connected: bool = False  # a list or watch succeeded since the last failure
    last_event: float | None = None  # the last watch event (bookmarks included)
    last_sync: float | None = None  # the last successful list or watch event
    last_error: str = ""


class KubernetesSource:
    """An :class:`~ipvslb.endpoints.source.EndpointSource` following the apiserver endpoints."""

    def __init__(self, settings: KubeSourceSettings | None = None, **overrides: Any) -> None:
        """``KubernetesSource(kubeconfig=path)``, or with a whole ``KubeSourceSettings``."""
        self.settings = dataclasses.replace(settings or KubeSourceSettings(), **overrides)
        self.stats = ReconcilerStats()
        self.resource: Resource | None = None
        self.resource_version: str | None = None
        self._objects: dict[str, tuple[Backend, ...]] = {}
        self._delivered: list[Backend] = []
        self._warned_empty = False
        self._kubeconfig: kubeconfig.Kubeconfig | None = None
        self._api: KubeApi | None = None
        self._on_update: UpdateCallback | None = None
        self._stopping = threading.Event()
        self._deliver_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- EndpointSource -------------------------------------------------------------------------

    def start(self, on_update: UpdateCallback) -> None:
        """Load the kubeconfig (UserError if unusable) and start following in a thread."""
        if self._thread is not None:
            raise RuntimeError("KubernetesSource.start() called twice")
        self._kubeconfig = kubeconfig.find(
            self.settings.kubeconfig, explicit_origin=self.settings.kubeconfig_origin
        )
        self._api = KubeApi(kubeconfig.load(self._kubeconfig))
        self._on_update = on_update
        log.info("following the apiserver endpoints", extra={"kubeconfig": str(self._kubeconfig)})
        self._thread = threading.Thread(target=self._run, name="ipvslb-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; return within ``stop_timeout``; no update is delivered afterwards."""
        self._stopping.set()
        if self._api is not None:
            self._api.abort()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.settings.stop_timeout)
            if thread.is_alive():
                log.warning("the reconciler thread is still finishing a request; not waiting")
        # An update being delivered right now completes before stop() returns.
        with self._deliver_lock:
            pass

    @property
    def backends(self) -> list[Backend]:
        """The last delivered list."""
        return list(self._delivered)

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Exception),
            wait=self._delay_after,
            sleep=self._sleep,
            before_sleep=self._log_failure,
            stop=tenacity.stop_never,
            reraise=True,
        )
        retrying(self._follow)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # stop() cuts the wait short

    def _follow(self) -> None:
        """List if needed, then watch until stopped; an exception means "retry later"."""
        try:
            while not self._stopping.is_set():
                if self.resource_version is None:
                    self._list()
                try:
                    self._watch()
                except Gone as err:
                    self.stats.expired += 1
                    log.info(
                        "watch expired, re-listing",
                        extra={"resource_version": self.resource_version, "error": str(err)},
                    )
                    self.resource_version = None
        except Exception:
            if self._stopping.is_set():
                return
            self.stats.failures += 1
            self.stats.connected = False
            raise

    def _choose_resource(self, api: KubeApi) -> Resource:
        service = self.settings.service
        if not self.settings.use_endpoint_slices:
            return kube_api.endpoints(service)
        try:
            group = api.get_json("/apis/discovery.k8s.io")
        except ApiError as err:
            if err.status != 404:
                raise
            group = None
        return kube_api.pick_resource(group, service)

    def _list(self) -> None:
        api = self._require_api()
        resource = self._choose_resource(api)
        if resource != self.resource:
            log.info(f"following {resource}", extra={"service": self._service_name()})
        key, value = resource.selector
        body = api.get_json(resource.path(self.settings.namespace), {key: value})
        objects: dict[str, tuple[Backend, ...]] = {}
        for item in _as_list(body.get("items")):
            name = _name(item)
            if name is not None:
                objects[name] = backends_of(resource.kind, item)
        version = _as_dict(body.get("metadata")).get("resourceVersion")
        if not isinstance(version, str) or not version:
            raise kube_api.ProtocolError(f"the {resource.kind} list has no resourceVersion")
        self.resource, self._objects, self.resource_version = resource, objects, version
        self.stats.lists += 1
        self._synced()
        self._publish()

    def _watch(self) -> None:
        api = self._require_api()
        resource = self.resource
        assert resource is not None and self.resource_version is not None
        key, value = resource.selector
        params = {
            key: value,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.settings.watch_timeout),
        }
        self.stats.watches += 1
        read_timeout = self.settings.watch_timeout + WATCH_GRACE_SECONDS
        started, events = time.monotonic(), 0
        for event in api.watch(resource.path(self.settings.namespace), params, read_timeout):
            self._apply(resource, event)
            events += 1
        if not events and time.monotonic() - started < MIN_WATCH_SECONDS:
            # A server that ends every watch at once would make us spin.
            raise ApiError(0, "the watch ended as soon as it started")

    def _apply(self, resource: Resource, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            raise kube_api.error_from_status(0, obj)
        version = _as_dict(obj.get("metadata")).get("resourceVersion")
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK") or not version:
            raise kube_api.ProtocolError(f"unexpected watch event type={kind!r}")
        self.stats.last_event = time.time()
        self._synced()
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            self.resource_version = str(version)
            return
        name = _name(obj)
        if name is None:
            raise kube_api.ProtocolError(f"watch event {kind} for an object without a name")
        self.stats.events += 1
        if kind == "DELETED":
            self._objects.pop(name, None)
        else:
            self._objects[name] = backends_of(resource.kind, obj)
        self.resource_version = str(version)
        self._publish()

    def _publish(self) -> None:
        """Deliver the current list if it changed; never deliver an empty list.

        Zero ready apiserver endpoints cannot be true while an apiserver answers us: the one
        we talk to publishes itself. Such a read is stale or wrong (a lagging etcd member, the
        endpoint reconciler turned off, an edited object), and emptying the load balancer would
        cut every client off the control plane. The last list stays; health checks drop the
        dead among it.
        """
        current = sorted(set().union(*self._objects.values()))
        if not current:
            if not self._warned_empty:
                log.warning(
                    "the API lists no ready apiserver endpoints; keeping the last list",
                    extra={"service": self._service_name(), "backends": _fmt(self._delivered)},
                )
                self._warned_empty = True
            return
        self._warned_empty = False
        if current == self._delivered:
            return
        with self._deliver_lock:
            if self._stopping.is_set():
                return
            self._delivered = current
            self.stats.updates += 1
            log.info("apiserver endpoints changed", extra={"backends": _fmt(current)})
            assert self._on_update is not None
            try:
                self._on_update(list(current))
            except Exception:
                log.exception("the consumer of the endpoint updates failed")

    def status(self) -> SourceStatus:
        st = self.stats
        return SourceStatus(
            kind="kubernetes", connected=st.connected, retrying=st.failures > 0 and
            not st.connected, resource=str(self.resource) if self.resource else None,
            resource_version=self.resource_version, last_event=st.last_event,
            last_sync=st.last_sync, watches=st.watches, lists=st.lists, events=st.events,
            errors=st.failures, last_error=st.last_error)

    def _synced(self) -> None:
        self.stats.last_sync = time.time()
        if not self.stats.connected:
            self.stats.connected = True
            if self.stats.failures:
                log.info("watch reconnected", extra={
                    "event": "watch_reconnect", "resource_version": self.resource_version,
                    "errors": self.stats.failures})

    # -- retry policy ---------------------------------------------------------------------------

    def _delay_after(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return retry_delay(error, self.settings.retry_interval)

    def _log_failure(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else self.settings.retry_interval
        fields: dict[str, Any] = {"error": str(error) or type(error).__name__}
        self.stats.last_error = fields["error"]
        if isinstance(error, ApiError) and error.retryable:
            log.warning(f"the API server asked to retry in {delay:g}s", extra=fields)
            return
        hint = _hint(error, self.resource)
        if hint:
            fields["hint"] = hint
        fields["kubeconfig"] = str(self._kubeconfig)
        log.error(
            "Failed to watch API server endpoints, last observed version is "
            f'"{self.resource_version or ""}", starting over in {delay:g}s',
            extra=fields,
        )

    # -- helpers --------------------------------------------------------------------------------

    def _require_api(self) -> KubeApi:
        assert self._api is not None, "start() first"
        return self._api

    def _service_name(self) -> str:
        return f"{self.settings.namespace}/{self.settings.service}"


def retry_delay(error: BaseException | None, interval: float) -> float:
    """The wait before the next attempt: the server's suggested delay, else ``interval``."""
    if isinstance(error, ApiError) and error.retryable and error.retry_after is not None:
        return min(max(error.retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
    return interval


def _hint(error: BaseException | None, resource: Resource | None) -> str:
    if not isinstance(error, ApiError):
        return ""
    what = f"{resource.plural}" if resource else "endpoints/endpointslices"
    if error.status == 401:
        return "the API server rejected the kubeconfig's credentials"
    if error.status == 403:
        return f"the kubeconfig's user may not list and watch {what} in this namespace"
    if "CERTIFICATE_VERIFY_FAILED" in str(error) or "certificate verify failed" in str(error):
        return "the API server's certificate does not match the kubeconfig's certificate-authority"
    return ""


# -- reading Endpoints and EndpointSlices ---------------------------------------------------------


def backends_of(kind: str, obj: dict[str, Any]) -> tuple[Backend, ...]:
    """The ready backends an Endpoints or EndpointSlice object lists."""
    if kind == "EndpointSlice":
        return tuple(_slice_backends(obj))
    return tuple(_endpoints_backends(obj))


def _endpoints_backends(obj: dict[str, Any]) -> Iterable[Backend]:
    for subset in _as_list(obj.get("subsets")):
        subset = _as_dict(subset)
        port = pick_port(subset.get("ports"))
        if port is None:
            continue
        # "addresses" are the ready ones; "notReadyAddresses" are left out on purpose.
        for address in _as_list(subset.get("addresses")):
            ip = _ip(_as_dict(address).get("ip"))
            if ip is not None:
                yield Backend(ip, port)


def _slice_backends(obj: dict[str, Any]) -> Iterable[Backend]:
    if obj.get("addressType") not in ("IPv4", "IPv6"):
        return
    port = pick_port(obj.get("ports"))
    if port is None:
        return
    for endpoint in _as_list(obj.get("endpoints")):
        endpoint = _as_dict(endpoint)
        # A missing "ready" means unknown, to be read as ready (API documentation).
        if _as_dict(endpoint.get("conditions")).get("ready") is False:
            continue
        addresses = _as_list(endpoint.get("addresses"))
        # The addresses of one endpoint are fungible; consumers use the first.
        ip = _ip(addresses[0]) if addresses else None
        if ip is not None:
            yield Backend(ip, port)


def pick_port(ports: Any) -> int | None:
    """The TCP port named ``https``, else the only TCP port, else None."""
    tcp = [
        p for p in _as_list(ports)
        if isinstance(p, dict)
        and p.get("protocol", "TCP") == "TCP"
        and isinstance(p.get("port"), int)
        and 0 < p["port"] < 65536
    ]
    for port in tcp:
        if port.get("name") == "https":
            return int(port["port"])
    return int(tcp[0]["port"]) if len(tcp) == 1 else None


def _ip(value: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return None


def _name(obj: Any) -> str | None:
    name = _as_dict(_as_dict(obj).get("metadata")).get("name")
    return name if isinstance(name, str) and name else None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _fmt(backends: Iterable[Backend]) -> str:
    return ",".join(str(b) for b in backends)
