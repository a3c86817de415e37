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

from controlplane.api.endpoints import LABEL_SERVICE_NAME, EndpointSlice
from controlplane.api.service import POLICY_CLUSTER, Service
from controlplane.store.interface import StoreReader

SCOPE_CLUSTER_IP = "clusterIP"
SCOPE_EXTERNAL_IP = "externalIP"
SCOPE_LOAD_BALANCER = "loadBalancer"


@dataclass(frozen=True)
class Backend:
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


def backends_by_port_name(slices: list[EndpointSlice]) -> dict[str, list[Backend]]:
    out: dict[str, list[Backend]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for es in slices:
        if es.address_type not in (None, "IPv4"):
            continue
        for ep_port in es.ports or []:
            name = ep_port.name or ""
            if ep_port.port is None:
                continue
            for ep in es.endpoints or []:
                for ip in ep.addresses or []:
                    key = (name, ip, ep_port.port)
                    if key in seen:
                        continue
                    seen.add(key)
                    out[name].append(Backend(ip=ip, port=ep_port.port, ready=ep.ready, serving=ep.serving,
                                             terminating=ep.terminating, node_name=ep.node_name,
                                             pod_name=ep.pod_name))
    return out


def build_service_view(svc: Service, slices: list[EndpointSlice]) -> ServiceView:
    backends = backends_by_port_name(slices)
    vips: list[tuple[str, str]] = []
    if svc.spec.cluster_ip and svc.proxied:
        vips.append((svc.spec.cluster_ip, SCOPE_CLUSTER_IP))
    vips.extend((ip, SCOPE_EXTERNAL_IP) for ip in svc.spec.external_ips or [])
    vips.extend((ip, SCOPE_LOAD_BALANCER) for ip in svc.load_balancer_ips)
    ports = tuple(
        ServicePortView(
            namespace=svc.namespace, service=svc.name, name=sp.name or "", protocol=sp.protocol or "TCP",
            port=sp.port or 0, node_port=sp.node_port,
            frontends=tuple((ip, sp.port or 0, scope) for ip, scope in vips),
            backends=tuple(sorted(backends.get(sp.name or "", []), key=lambda b: (b.ip, b.port))),
        )
        for sp in svc.ports
    )
    return ServiceView(svc, ports)


def load_service_views(store: StoreReader, namespace: str | None = None) -> list[ServiceView]:
    slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    for es in store.list(EndpointSlice, namespace):
        name = es.labels.get(LABEL_SERVICE_NAME)
        if name:
            slices[(es.namespace, name)].append(es)
    return [build_service_view(svc, slices[(svc.namespace, svc.name)]) for svc in store.list(Service, namespace)]
