"""Reading Endpoints/EndpointSlice objects, choosing the API, and the retry policy (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from ipvslb.endpoints import kube_api
from ipvslb.endpoints.kube import backends_of, pick_port, retry_delay
from ipvslb.endpoints.kube_api import ApiError, Gone, error_from_status, pick_resource
from ipvslb.endpoints.source import Backend

HTTPS = {"name": "https", "port": 6443, "protocol": "TCP"}


def slice_v1(endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    obj = {"metadata": {"name": "kubernetes"}, "addressType": "IPv4",
           "endpoints": endpoints, "ports": [HTTPS]}
    obj.update(extra)
    return obj


def test_slice_ready_and_unknown_readiness_count_not_ready_does_not() -> None:
    obj = slice_v1([
        {"addresses": ["10.0.0.2"], "conditions": {"ready": True}, "nodeName": "a"},
        {"addresses": ["10.0.0.1"], "conditions": {}},  # unknown: read as ready
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.4", "10.0.0.5"], "topology": {"zone": "z"}},  # v1beta1 shape
    ])
    assert sorted(backends_of("EndpointSlice", obj)) == [
        Backend("10.0.0.1", 6443), Backend("10.0.0.2", 6443), Backend("10.0.0.4", 6443),
    ]


def test_slice_ipv6_is_normalised_and_fqdn_ignored() -> None:
    v6 = slice_v1([{"addresses": ["fd00:0::0:1"]}], addressType="IPv6")
    assert backends_of("EndpointSlice", v6) == (Backend("fd00::1", 6443),)
    fqdn = slice_v1([{"addresses": ["apiserver.example"]}], addressType="FQDN")
    assert backends_of("EndpointSlice", fqdn) == ()


def test_endpoints_use_ready_addresses_and_the_subset_port() -> None:
    obj = {"subsets": [
        {"addresses": [{"ip": "10.0.0.1"}, {"ip": "not-an-ip"}],
         "notReadyAddresses": [{"ip": "10.0.0.9"}],
         "ports": [{"name": "https", "port": 16443, "protocol": "TCP"}]},
        {"addresses": [{"ip": "10.0.0.2"}], "ports": [{"port": 7443}]},
    ]}
    assert backends_of("Endpoints", obj) == (Backend("10.0.0.1", 16443), Backend("10.0.0.2", 7443))


@pytest.mark.parametrize("obj", [
    {}, {"subsets": None}, {"subsets": "garbage"}, {"subsets": [None, 3, {"addresses": "x"}]},
    {"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]},  # no port
])
def test_malformed_endpoints_give_nothing(obj: dict[str, Any]) -> None:
    assert backends_of("Endpoints", obj) == ()


@pytest.mark.parametrize(("ports", "expected"), [
    ([HTTPS, {"name": "other", "port": 1, "protocol": "TCP"}], 6443),
    ([{"port": 7443}], 7443),
    ([{"name": "a", "port": 1}, {"name": "b", "port": 2}], None),  # ambiguous
    ([{"name": "https", "port": 6443, "protocol": "UDP"}], None),
    ([{"port": 0}], None),
    ([{"port": "6443"}], None),
    (None, None),
])
def test_pick_port(ports: Any, expected: int | None) -> None:
    assert pick_port(ports) == expected


def group(*versions: str) -> dict[str, Any]:
    return {"kind": "APIGroup", "versions": [{"version": v} for v in versions]}


@pytest.mark.parametrize(("discovery", "api_version", "kind"), [
    (group("v1", "v1beta1"), "discovery.k8s.io/v1", "EndpointSlice"),
    (group("v1beta1"), "discovery.k8s.io/v1beta1", "EndpointSlice"),
    (group("v2alpha9"), "v1", "Endpoints"),
    (None, "v1", "Endpoints"),
])
def test_pick_resource(discovery: dict[str, Any] | None, api_version: str, kind: str) -> None:
    resource = pick_resource(discovery, "kubernetes")
    assert (resource.api_version, resource.kind) == (api_version, kind)


def test_resource_paths_and_selectors() -> None:
    slices = kube_api.endpoint_slices("v1", "kubernetes")
    assert slices.path("default") == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert slices.selector == ("labelSelector", "kubernetes.io/service-name=kubernetes")
    endpoints = kube_api.endpoints("kubernetes")
    assert endpoints.path("default") == "/api/v1/namespaces/default/endpoints"
    assert endpoints.selector == ("fieldSelector", "metadata.name=kubernetes")


def test_410_status_is_gone() -> None:
    error = error_from_status(0, {"kind": "Status", "code": 410, "reason": "Expired",
                                  "message": "too old resource version: 1 (2)"})
    assert isinstance(error, Gone) and error.status == 410


def test_retry_after_header_wins_and_is_retryable() -> None:
    error = error_from_status(429, {"code": 429, "message": "too many requests",
                                    "details": {"retryAfterSeconds": 1}}, "3")
    assert (error.retry_after, error.retryable) == (3.0, True)
    assert retry_delay(error, 10.0) == 3.0


def test_server_timeout_status_suggests_its_delay() -> None:
    error = error_from_status(500, {"code": 504, "reason": "Timeout",
                                    "details": {"retryAfterSeconds": 2}})
    assert (error.status, error.retryable) == (504, True)
    assert retry_delay(error, 10.0) == 2.0


@pytest.mark.parametrize("error", [
    ApiError(429, "slow down"),  # no suggested delay
    ApiError(401, "Unauthorized", retry_after=1.0),  # not an overload
    ApiError(0, "connection refused"),
    error_from_status(503, None, "Wed, 21 Oct 2015 07:28:00 GMT"),  # an HTTP date: ignored
    ValueError("anything else"),
    None,
])
def test_other_errors_wait_the_interval(error: BaseException | None) -> None:
    assert retry_delay(error, 10.0) == 10.0


def test_suggested_delay_is_bounded() -> None:
    assert retry_delay(ApiError(503, "busy", retry_after=86400), 10.0) == 60.0
    assert retry_delay(ApiError(503, "busy", retry_after=-5), 10.0) == 0.0
