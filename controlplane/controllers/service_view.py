"""The read model for the agent: each Service port with its backends, from the store.

    from controlplane.controllers.service_view import load_service_views
    for view in load_service_views(store):
        if not view.proxied: continue               # ExternalName, headless, proxy-name label
        for port in view.ports:
            port.frontends                          # [(ip, port, scope)] for ClusterIP, externalIPs, LB IPs
            port.node_port                          # or None
            port.usable()                           # kube-proxy's choice: ready, else serving+terminating
            port.usable(node_name="node1")          # the Local-policy set on that node

Backends come from every EndpointSlice labelled `kubernetes.io/service-name=<svc>` (the
controller's, mirrored, or user-written); each backend carries its own port, because named
targetPorts resolve per pod.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from operator import itemgetter
from sys import intern
from typing import Any, Iterable, NamedTuple

from controlplane.api.endpoints import LABEL_SERVICE_NAME, EndpointSlice
from controlplane.api.service import POLICY_CLUSTER, Service
from controlplane.gcpause import paused_gc
from controlplane.store.interface import StoreReader

SCOPE_CLUSTER_IP = "clusterIP"
SCOPE_EXTERNAL_IP = "externalIP"
SCOPE_LOAD_BALANCER = "loadBalancer"


class Backend(NamedTuple):
    """One endpoint address and port. A named tuple: the agent's cache holds one per
    endpoint (100,000 at 10,000 services), and a tuple is a third of the size of an
    object with a __dict__, and made in C."""
    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    pod_name: str | None


@dataclass(frozen=True)
class ServicePortView:
    namespace: str
    service: str
    name: str                # the service port's name ("" if unnamed)
    protocol: str
    port: int
    node_port: int | None
    frontends: tuple[tuple[str, int, str], ...]   # (ip, port, scope)
    backends: tuple[Backend, ...]

    def usable(self, node_name: str | None = None) -> tuple[Backend, ...]:
        """Ready backends; when none, the serving-and-terminating ones (KEP-1669). With
        `node_name`, only that node's backends (the Local traffic-policy set)."""
        pool = [b for b in self.backends if node_name is None or b.node_name == node_name]
        ready = tuple(b for b in pool if b.ready)
        if ready:
            return ready
        return tuple(b for b in pool if b.serving and b.terminating)


@dataclass(frozen=True)
class ServiceView:
    service: Service
    ports: tuple[ServicePortView, ...]

    @property
    def proxied(self) -> bool:
        return self.service.proxied

    @property
    def affinity_timeout_seconds(self) -> int | None:
        return self.service.affinity_timeout_seconds

    @property
    def external_policy_local(self) -> bool:
        return (self.service.spec.external_traffic_policy or POLICY_CLUSTER) == "Local"

    @property
    def internal_policy_local(self) -> bool:
        return (self.service.spec.internal_traffic_policy or POLICY_CLUSTER) == "Local"


# One slice's backends in slice order: (service-port name, backend), before de-duplication.
SliceBackends = list[tuple[str, Backend]]

_tuple_new = tuple.__new__   # Backend from a tuple of its fields, without the Python-level __new__


def slice_backends(es: EndpointSlice) -> SliceBackends:
    """The backends an EndpointSlice object contributes (IPv4 slices only)."""
    out: SliceBackends = []
    if es.address_type not in (None, "IPv4"):
        return out
    for ep_port in es.ports or []:
        name = ep_port.name or ""
        if ep_port.port is None:
            continue
        for ep in es.endpoints or []:
            for ip in ep.addresses or []:
                out.append((name, Backend(ip, ep_port.port, ep.ready, ep.serving, ep.terminating,
                                          ep.node_name, ep.pod_name)))
    return out


def slice_document_backends(doc: dict[str, Any]) -> SliceBackends:
    """The same as `slice_backends`, from the slice's stored JSON (store.iter_documents),
    without decoding it into objects. The conditions follow Endpoint: ready unless false,
    serving defaults to ready, terminating only if true; the pod only for a Pod targetRef."""
    out: SliceBackends = []
    if doc.get("addressType") not in (None, "IPv4"):
        return out
    ports = doc.get("ports")
    if not ports:
        return out
    eps = []
    for e in doc.get("endpoints") or ():
        addresses = e.get("addresses")
        if not addresses:
            continue
        c = e.get("conditions") or {}
        ready = c.get("ready") is not False
        serving = c.get("serving")
        if serving is None:
            serving = ready
        ref = e.get("targetRef")
        pod = ref.get("name") if ref and ref.get("kind") == "Pod" else None
        node = e.get("nodeName")
        if node:   # a few nodes, named by every endpoint: one string each, not one per endpoint
            node = intern(node)
        eps.append((addresses, ready, serving, bool(c.get("terminating")), node, pod))
    append = out.append
    for p in ports:
        port = p.get("port")
        if port is None:
            continue
        name = p.get("name") or ""
        for addresses, ready, serving, terminating, node, pod in eps:
            for ip in addresses:
                append((name, _tuple_new(Backend, (ip, port, ready, serving, terminating, node, pod))))
    return out


def merge_backends(per_slice: Iterable[SliceBackends]) -> dict[str, list[Backend]]:
    """Backends by service-port name; the first slice to list (name, ip, port) wins."""
    per_slice = list(per_slice)
    if len(per_slice) == 1:   # the usual case: one slice, one port name, no repeats
        only = per_slice[0]
        names = {name for name, _ in only}
        if len(names) == 1 and len({b[:2] for _, b in only}) == len(only):
            return {names.pop(): [b for _, b in only]}
    out: dict[str, list[Backend]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for backends in per_slice:
        for name, b in backends:
            key = (name, b.ip, b.port)
            if key in seen:
                continue
            seen.add(key)
            out[name].append(b)
    return out


def backends_by_port_name(slices: list[EndpointSlice]) -> dict[str, list[Backend]]:
    return merge_backends(slice_backends(es) for es in slices)


_by_address = itemgetter(0, 1)   # (ip, port) of a Backend


def view_from_backends(svc: Service, backends: dict[str, list[Backend]]) -> ServiceView:
    vips: list[tuple[str, str]] = []
    if svc.spec.cluster_ip and svc.proxied:
        vips.append((svc.spec.cluster_ip, SCOPE_CLUSTER_IP))
    vips.extend((ip, SCOPE_EXTERNAL_IP) for ip in svc.spec.external_ips or [])
    vips.extend((ip, SCOPE_LOAD_BALANCER) for ip in svc.load_balancer_ips)
    namespace, name = svc.namespace, svc.name
    ports = []
    for sp in svc.ports:
        port = sp.port or 0
        ports.append(ServicePortView(
            namespace=namespace, service=name, name=sp.name or "", protocol=sp.protocol or "TCP",
            port=port, node_port=sp.node_port,
            frontends=tuple([(ip, port, scope) for ip, scope in vips]),
            backends=tuple(sorted(backends.get(sp.name or "", ()), key=_by_address)),
        ))
    return ServiceView(svc, tuple(ports))


def build_service_view(svc: Service, slices: list[EndpointSlice]) -> ServiceView:
    return view_from_backends(svc, backends_by_port_name(slices))


def load_service_views(store: StoreReader, namespace: str | None = None) -> list[ServiceView]:
    """Every Service's view. The slices are read as stored JSON, not decoded into objects
    (the bulk of the data: 100,000 endpoints at 10,000 services x 10)."""
    with paused_gc():
        per_service: dict[tuple[str, str], list[SliceBackends]] = defaultdict(list)
        for doc in store.iter_documents(EndpointSlice, namespace):
            meta = doc.get("metadata") or {}
            name = (meta.get("labels") or {}).get(LABEL_SERVICE_NAME)
            if name:
                per_service[(meta.get("namespace") or "", name)].append(slice_document_backends(doc))
        return [view_from_backends(svc, merge_backends(per_service.get((svc.namespace, svc.name), ())))
                for svc in store.list(Service, namespace)]
