"""core/v1 Endpoints and discovery.k8s.io/v1 EndpointSlice.

For the agent: an EndpointSlice belongs to the Service named by its
`kubernetes.io/service-name` label, unless it carries a label kube-proxy's informers leave
out (`proxied_slice_owner`); each `Endpoint` has `addresses` (one IP), `conditions`
(ready / serving / terminating; None means "true" for ready and serving, "false" for
terminating, as kube-proxy reads them), `node_name`,
`target_ref` (the pod), `hints` (the zones and nodes whose proxies should prefer it:
topology-aware routing) and the slice's `ports` give the port number for each service-port
name (named target ports resolve per pod, so different slices may carry different numbers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .codec import extra_field
from .meta import ApiObject
from .service import LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
# when the change that made the controller write a slice happened (RFC 3339 with fractions)
LAST_CHANGE_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
MANAGED_BY_CONTROLLER = "endpointslice-controller.k8s.io"
MANAGED_BY_MIRRORING = "endpointslicemirroring-controller.k8s.io"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
MAX_ENDPOINTS_PER_SLICE = 100

# kube-proxy lists and watches EndpointSlices with this label selector (cmd/kube-proxy/app/
# server.go, released versions up to 1.35): a slice labelled with either key is never
# seen, whatever service it names. The EndpointSlice controller sets `headless` on the
# slices of a headless Service and copies the Service's `service-proxy-name` label, so
# these are the slices of Services another proxy (or none) serves.
UNPROXIED_SLICE_LABELS = (LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS)
PROXIED_SLICE_SELECTOR = ",".join(f"!{key}" for key in UNPROXIED_SLICE_LABELS)


def proxied_slice_owner(labels: Mapping[str, str] | None) -> str | None:
    """The Service whose backends a slice with these labels lists, for the proxy: its
    `kubernetes.io/service-name` label, or None when it has none or carries one of
    UNPROXIED_SLICE_LABELS (kube-proxy's selector would not have listed it). Only the
    proxy's readers ask this: DNS still reads a headless Service's slices."""
    if not labels:
        return None
    owner = labels.get(LABEL_SERVICE_NAME)
    if owner and (LABEL_SERVICE_PROXY_NAME in labels or LABEL_HEADLESS in labels):
        return None
    return owner


@dataclass
class ObjectReference:
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    api_version: str | None = None
    resource_version: str | None = None
    extra: dict[str, Any] = extra_field()


# core/v1 Endpoints -----------------------------------------------------------------------
@dataclass
class EndpointAddress:
    ip: str | None = None
    hostname: str | None = None
    node_name: str | None = None
    target_ref: ObjectReference | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class EndpointPort:
    """A port of an Endpoints subset or of an EndpointSlice (same shape in both APIs)."""

    name: str | None = None
    port: int | None = None
    protocol: str | None = None
    app_protocol: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class EndpointSubset:
    addresses: list[EndpointAddress] | None = None
    not_ready_addresses: list[EndpointAddress] | None = None
    ports: list[EndpointPort] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class Endpoints(ApiObject):
    KIND: ClassVar[str] = "Endpoints"
    RESOURCE: ClassVar[str] = "endpoints"

    subsets: list[EndpointSubset] | None = None


# discovery.k8s.io/v1 EndpointSlice ------------------------------------------------------
@dataclass
class EndpointConditions:
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ForZone:
    name: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ForNode:
    name: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class EndpointHints:
    """Where an endpoint should be used from (written by the EndpointSlice controller for
    `trafficDistribution` PreferClose / PreferSameZone / PreferSameNode and the
    `service.kubernetes.io/topology-mode: Auto` annotation): proxies in these zones, on
    these nodes. The proxies' rule is agent/topology.py's."""
    for_zones: list[ForZone] | None = None
    for_nodes: list[ForNode] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class Endpoint:
    addresses: list[str] | None = None
    conditions: EndpointConditions = field(default_factory=EndpointConditions)
    hostname: str | None = None
    target_ref: ObjectReference | None = None
    node_name: str | None = None
    zone: str | None = None
    hints: EndpointHints | None = None
    extra: dict[str, Any] = extra_field()

    # The conditions as kube-proxy reads them (pkg/proxy/endpointslicecache.go): ready and
    # serving unless false, terminating only if true. (The API's field doc says a consumer
    # "should defer to the ready condition" for an unset serving; kube-proxy does not, and
    # with ready false, serving unset and terminating true it keeps the endpoint as a
    # serving, terminating fallback. svcxdp replaces kube-proxy, so it reads as kube-proxy.)
    @property
    def ready(self) -> bool:
        return self.conditions.ready is not False

    @property
    def serving(self) -> bool:
        return self.conditions.serving is not False

    @property
    def terminating(self) -> bool:
        return bool(self.conditions.terminating)

    @property
    def pod_name(self) -> str | None:
        ref = self.target_ref
        return ref.name if ref and ref.kind == "Pod" else None


@dataclass
class EndpointSlice(ApiObject):
    KIND: ClassVar[str] = "EndpointSlice"
    GROUP: ClassVar[str] = "discovery.k8s.io"
    RESOURCE: ClassVar[str] = "endpointslices"

    address_type: str | None = None
    endpoints: list[Endpoint] | None = None
    ports: list[EndpointPort] | None = None

    @property
    def service_name(self) -> str | None:
        return self.labels.get(LABEL_SERVICE_NAME)
