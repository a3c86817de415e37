"""kubectl's table columns per kind (k8s.io/kubernetes/pkg/printers/internalversion)."""
from __future__ import annotations

import datetime as _dt
from typing import Callable

from controlplane.api.deployment import Deployment
from controlplane.api.endpoints import Endpoints, EndpointSlice
from controlplane.api.event import Event
from controlplane.api.meta import ApiObject
from controlplane.api.namespace import Namespace
from controlplane.api.pod import Pod
from controlplane.api.selectors import Selector
from controlplane.api.service import EXTERNAL_NAME, LOAD_BALANCER, Service

from .age import age

NONE = "<none>"
UNSET = "<unset>"


def format_labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return NONE
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _limited(items: list[str], total: int, limit: int = 3) -> str:
    text = ",".join(items[:limit])
    return f"{text} + {total - limit} more..." if total > limit else text


def format_endpoints(ep: Endpoints | None, port_names: set[str] | None = None) -> str:
    """`10.244.1.63:80,10.244.2.60:80 + 1 more...`: ready addresses only, at most three."""
    if ep is None or not ep.subsets:
        return NONE
    items: list[str] = []
    for subset in ep.subsets:
        addrs = subset.addresses or []
        if not subset.ports:
            items.extend(a.ip or "" for a in addrs)
            continue
        for port in subset.ports:
            if port_names is None or (port.name or "") in port_names:
                items.extend(f"{a.ip}:{port.port}" for a in addrs)
    return _limited(items, len(items)) if items else NONE


LOAD_BALANCER_WIDTH = 16   # kubectl clips the LoadBalancer addresses to this outside -o wide


def load_balancer_addresses(svc: Service, wide: bool) -> str:
    """kubectl's loadBalancerStatusStringer: ingress IPs (else hostnames), sorted, no repeats."""
    lb = svc.status.load_balancer
    found = {i.ip or i.hostname for i in (lb.ingress if lb and lb.ingress else []) if i.ip or i.hostname}
    text = ",".join(sorted(found))  # type: ignore[arg-type]
    if not wide and len(text) > LOAD_BALANCER_WIDTH:
        text = text[:LOAD_BALANCER_WIDTH - 3] + "..."
    return text


def service_external_ip(svc: Service, wide: bool = False) -> str:
    """The EXTERNAL-IP column (getServiceExternalIP)."""
    if svc.type == EXTERNAL_NAME:
        return svc.spec.external_name or ""
    external = list(svc.spec.external_ips or [])
    if svc.type == LOAD_BALANCER:
        lb = load_balancer_addresses(svc, wide)
        ips = (lb.split(",") if lb else []) + external
        return ",".join(ips) if ips else "<pending>"
    return ",".join(external) if external else NONE


def service_ports(svc: Service) -> str:
    parts = []
    for p in svc.ports:
        if p.node_port:
            parts.append(f"{p.port}:{p.node_port}/{p.protocol}")
        else:
            parts.append(f"{p.port}/{p.protocol}")
    return ",".join(parts) if parts else NONE


def service_row(svc: Service, wide: bool, at: _dt.datetime) -> list[str]:
    cluster_ip = NONE if svc.type == EXTERNAL_NAME else (svc.spec.cluster_ip or NONE)
    row = [svc.name, svc.type, cluster_ip, service_external_ip(svc, wide), service_ports(svc),
           age(svc.metadata.creation_timestamp, at)]
    if wide:
        row.append(format_labels(svc.spec.selector))
    return row


def endpoints_row(ep: Endpoints, wide: bool, at: _dt.datetime) -> list[str]:
    return [ep.name, format_endpoints(ep), age(ep.metadata.creation_timestamp, at)]


def endpointslice_row(es: EndpointSlice, wide: bool, at: _dt.datetime) -> list[str]:
    ports = [str(p.port) if p.port is not None else UNSET for p in es.ports or []]
    addrs = [a for e in es.endpoints or [] for a in e.addresses or []]
    return [es.name, es.address_type or "", _limited(ports, len(ports)) if ports else UNSET,
            _limited(addrs, len(addrs)) if addrs else UNSET, age(es.metadata.creation_timestamp, at)]


def pod_status(pod: Pod) -> str:
    if pod.terminating:
        return "Terminating"
    if pod.phase == "Pending" and pod.node_name and not pod.ip:
        return "ContainerCreating"
    return pod.phase


def pod_row(pod: Pod, wide: bool, at: _dt.datetime) -> list[str]:
    total = len(pod.containers)
    ready = sum(1 for s in pod.status.container_statuses or [] if s.ready)
    restarts = sum(s.restart_count or 0 for s in pod.status.container_statuses or [])
    row = [pod.name, f"{ready}/{total}", pod_status(pod), str(restarts), age(pod.metadata.creation_timestamp, at)]
    if wide:
        row += [pod.ip or NONE, pod.node_name or NONE, NONE, NONE]
    return row


def deployment_row(dep: Deployment, wide: bool, at: _dt.datetime) -> list[str]:
    st = dep.status
    row = [dep.name, f"{st.ready_replicas or 0}/{dep.replicas}", str(st.updated_replicas or 0),
           str(st.available_replicas or 0), age(dep.metadata.creation_timestamp, at)]
    if wide:
        containers = dep.spec.template.spec.containers or []
        try:
            selector = str(Selector.from_spec(dep.spec.selector)) or NONE
        except ValueError:
            selector = NONE
        row += [",".join(c.name or "" for c in containers), ",".join(c.image or "" for c in containers), selector]
    return row


def namespace_row(ns: Namespace, wide: bool, at: _dt.datetime) -> list[str]:
    phase = (ns.status or {}).get("phase", "Active")
    return [ns.name, "Terminating" if ns.terminating else phase, age(ns.metadata.creation_timestamp, at)]


def event_row(ev: Event, wide: bool, at: _dt.datetime) -> list[str]:
    """kubectl get events: LAST SEEN, TYPE, REASON, OBJECT (kind/name, kind lower-cased), MESSAGE."""
    ref = ev.involved_object
    return [age(ev.last_seen, at), ev.type or "", ev.reason or "",
            f"{(ref.kind or '').lower()}/{ref.name or ''}", (ev.message or "").strip()]


Row = Callable[[ApiObject, bool, _dt.datetime], list[str]]

HEADERS: dict[type, tuple[list[str], list[str]]] = {
    Service: (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"]),
    Endpoints: (["NAME", "ENDPOINTS", "AGE"], []),
    EndpointSlice: (["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], []),
    Pod: (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]),
    Deployment: (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"]),
    Namespace: (["NAME", "STATUS", "AGE"], []),
    Event: (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], []),
}

ROWS: dict[type, Row] = {
    Service: service_row,  # type: ignore[dict-item]
    Endpoints: endpoints_row,  # type: ignore[dict-item]
    EndpointSlice: endpointslice_row,  # type: ignore[dict-item]
    Pod: pod_row,  # type: ignore[dict-item]
    Deployment: deployment_row,  # type: ignore[dict-item]
    Namespace: namespace_row,  # type: ignore[dict-item]
    Event: event_row,  # type: ignore[dict-item]
}
