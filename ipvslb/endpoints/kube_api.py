"""The few Kubernetes API calls the endpoint reconciler makes: discover, list, watch.

The kubeconfig is loaded by the official client (``kubernetes.config``), and requests go through
that client's own connection pool, TLS settings and credentials. Responses are read as plain
JSON: the client in our supported range has no model for ``discovery.k8s.io/v1beta1`` (still the
only EndpointSlice version of Kubernetes 1.20) and its raw-call internals changed between
releases, while the wire format did not.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3

# A watch line longer than this is not an event we can use (the kubernetes Endpoints of a huge
# control plane stay far below it).
MAX_EVENT_BYTES = 8 * 1024 * 1024


class ApiError(Exception):
    """A failed API call. ``status`` is the HTTP status, 0 for a transport or protocol error."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """The server asked us to come back later (overload or a server-side timeout)."""
        return self.retry_after is not None and (self.status == 429 or self.status >= 500)


class Gone(ApiError):
    """410: the resourceVersion we asked for is no longer available; list again."""


class ProtocolError(ApiError):
    """The server sent something that is not a Kubernetes watch event."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


def error_from_status(status: int, body: Any, retry_after_header: str | None = None) -> ApiError:
    """The error for an HTTP status and a (possibly missing) ``Status`` object."""
    message = ""
    retry_after: float | None = None
    if isinstance(body, dict):
        status = int(body.get("code") or status)
        message = str(body.get("message") or body.get("reason") or "")
        details = body.get("details")
        if isinstance(details, dict) and isinstance(details.get("retryAfterSeconds"), int | float):
            retry_after = float(details["retryAfterSeconds"])
    if retry_after_header:
        try:
            retry_after = float(retry_after_header)
        except ValueError:
            pass  # an HTTP date: the server's Status details (if any) still count
    message = " ".join(message.split())[:300] or "error"
    cls = Gone if status == 410 else ApiError
    return cls(status, message, retry_after)


@dataclass(frozen=True)
class Resource:
    """A namespaced collection and the selector that picks the ``kubernetes`` Service's objects."""

    api_version: str
    kind: str
    plural: str
    selector: tuple[str, str]

    def path(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.kind} ({self.api_version})"


def endpoint_slices(version: str, service: str) -> Resource:
    selector = ("labelSelector", f"kubernetes.io/service-name={service}")
    return Resource(f"discovery.k8s.io/{version}", "EndpointSlice", "endpointslices", selector)


def endpoints(service: str) -> Resource:
    return Resource("v1", "Endpoints", "endpoints", ("fieldSelector", f"metadata.name={service}"))


def pick_resource(discovery_group: dict[str, Any] | None, service: str) -> Resource:
    """EndpointSlices v1, else v1beta1, else Endpoints, by what ``/apis/discovery.k8s.io`` lists."""
    versions = set()
    if discovery_group:
        versions = {v.get("version") for v in discovery_group.get("versions") or ()}
    for version in ("v1", "v1beta1"):
        if version in versions:
            return endpoint_slices(version, service)
    return endpoints(service)


class KubeApi:
    """GET requests through a ``kubernetes.client.ApiClient``'s pool, with an abortable watch."""

    def __init__(self, api_client: Any, connect_timeout: float = 5.0) -> None:
        self._config = api_client.configuration
        self._pool: urllib3.PoolManager = api_client.rest_client.pool_manager
        self._host = str(self._config.host).rstrip("/")
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._open: urllib3.BaseHTTPResponse | None = None
        self._aborted = False

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "ipvslb"}
        # auth_settings() also refreshes expiring credentials (exec plugins, token files).
        for auth in self._config.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers

    def _request(self, path: str, params: dict[str, str], read_timeout: float) -> Any:
        url = f"{self._host}{path}"
        if params:
            url += "?" + urlencode(params)
        timeout = urllib3.Timeout(connect=self._connect_timeout, read=read_timeout)
        try:
            response = self._pool.request(
                "GET", url, headers=self._headers(), preload_content=False,
                timeout=timeout, retries=False, redirect=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, _describe(err)) from err
        if not 200 <= response.status <= 299:
            try:
                raw = response.read(64 * 1024)
            except (urllib3.exceptions.HTTPError, OSError):
                raw = b""
            finally:
                response.close()  # maybe not read to the end: never reuse this connection
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"message": raw.decode("utf-8", "replace") or response.reason}
            raise error_from_status(response.status, body, response.headers.get("Retry-After"))
        return response

    def get_json(self, path: str, params: dict[str, str] | None = None,
                 timeout: float = 15.0) -> dict[str, Any]:
        response = self._request(path, params or {}, timeout)
        try:
            raw = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, _describe(err)) from err
        finally:
            response.release_conn()
        try:
            body = json.loads(raw)
        except ValueError:
            raise ProtocolError(f"GET {path}: response is not JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError(f"GET {path}: response is not a JSON object")
        return body

    def watch(self, path: str, params: dict[str, str], read_timeout: float) -> Iterator[dict]:
        """Decoded watch events until the server ends the stream; :meth:`abort` cuts it short."""
        response = self._request(path, {**params, "watch": "true"}, read_timeout)
        with self._lock:
            if self._aborted:
                response.close()
                return
            self._open = response
        try:
            yield from _events(response)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, f"watch stream broken: {_describe(err)}") from err
        finally:
            with self._lock:
                self._open = None
            response.close()

    def abort(self) -> None:
        """Make a watch (now or later) end at once; thread-safe, for stopping."""
        with self._lock:
            self._aborted = True
            response = self._open
        if response is None:
            return
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            try:
                # The plain socket's shutdown wakes a reader blocked in recv (close does not).
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _events(response: Any) -> Iterator[dict]:
    buffer = b""
    for chunk in response.stream(64 * 1024):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield _decode_event(line)
        if len(buffer) > MAX_EVENT_BYTES:
            raise ProtocolError(f"watch event longer than {MAX_EVENT_BYTES} bytes")
    if buffer.strip():
        yield _decode_event(buffer)


def _decode_event(line: bytes) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        raise ProtocolError(f"watch sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ProtocolError(f"watch sent something that is not an event: {line[:80]!r}")
    return event


def _describe(err: BaseException) -> str:
    reason = getattr(err, "reason", None)  # MaxRetryError and friends wrap the real cause
    text = str(reason or err) or type(err).__name__
    return " ".join(text.split())[:300]
