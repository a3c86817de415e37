"""Pure functions from (Service, Pods) to the Endpoints subsets and EndpointSlice contents
the controllers should publish. No store access; unit-tested directly.

Rules (pkg/controller/endpoint, pkg/controller/endpointslice):
- a pod counts if it has an IP and is not Succeeded/Failed;
- a named targetPort resolves per pod to the container port of that name and protocol; a pod
  without it is left out of that port;
- Endpoints: ready pods go to `addresses`, others to `notReadyAddresses`; terminating pods
  are left out, unless `publishNotReadyAddresses`;
- EndpointSlice conditions: serving = ready pod, terminating = has deletionTimestamp,
  ready = serving and not terminating, or publishNotReadyAddresses (podToEndpoint);
- a headless Service without ports still gets address-only endpoints.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from controlplane.api.endpoints import (MAX_ENDPOINTS_PER_SLICE, Endpoint, EndpointAddress,
                                        EndpointConditions, EndpointPort, EndpointSubset,
                                        ObjectReference)
from controlplane.api.pod import FAILED, SUCCEEDED, Pod
from controlplane.api.service import Service, ServicePort

PortKey = tuple[tuple[str, int, str], ...]  # (name, port, protocol) per resolved port


def resolve_target_port(pod: Pod, sp: ServicePort) -> int | None:
    """The number a Service port's targetPort means for this pod (None: cannot resolve)."""
    target = sp.target_port if sp.target_port not in (None, "", 0) else sp.port
    if isinstance(target, int):
        return target
    for container in pod.containers:
        for cp in container.ports or []:
            if cp.name == target and (cp.protocol or "TCP") == (sp.protocol or "TCP"):
                return cp.container_port
    return None


def _ip_sort_key(ip: str) -> tuple[int, int]:
    try:
        addr = ipaddress.ip_address(ip)
        return (addr.version, int(addr))
    except ValueError:
        return (9, 0)


def eligible_pods(pods: list[Pod]) -> list[Pod]:
    live = [p for p in pods if p.ip and p.phase not in (SUCCEEDED, FAILED)]
    return sorted(live, key=lambda p: (_ip_sort_key(p.ip or ""), p.name))


def _resolved_ports(svc: Service, pod: Pod) -> PortKey | None:
    ports = []
    for sp in svc.ports:
        number = resolve_target_port(pod, sp)
        if number is not None:
            ports.append((sp.name or "", number, sp.protocol or "TCP"))
    if svc.ports and not ports:
        return None
    return tuple(ports)


def _pod_ref(pod: Pod) -> ObjectReference:
    return ObjectReference(kind="Pod", namespace=pod.namespace, name=pod.name, uid=pod.metadata.uid)


def _hostname(svc: Service, pod: Pod) -> str | None:
    if pod.spec.hostname and pod.spec.subdomain == svc.name:
        return pod.spec.hostname
    return None


def _endpoint_ports(key: PortKey, svc: Service) -> list[EndpointPort]:
    app = {sp.name or "": sp.app_protocol for sp in svc.ports}
    return [EndpointPort(name=name or None, port=port, protocol=proto, app_protocol=app.get(name))
            for name, port, proto in key]


def build_subsets(svc: Service, pods: list[Pod]) -> list[EndpointSubset]:
    tolerate = bool(svc.spec.publish_not_ready_addresses)
    groups: dict[PortKey, tuple[list[EndpointAddress], list[EndpointAddress]]] = {}
    for pod in eligible_pods(pods):
        if pod.terminating and not tolerate:
            continue
        key = _resolved_ports(svc, pod)
        if key is None:
            continue
        addr = EndpointAddress(ip=pod.ip, hostname=_hostname(svc, pod), node_name=pod.node_name, target_ref=_pod_ref(pod))
        ready, not_ready = groups.setdefault(key, ([], []))
        (ready if tolerate or pod.ready else not_ready).append(addr)
    return [
        EndpointSubset(addresses=ready or None, not_ready_addresses=not_ready or None,
                       ports=_endpoint_ports(key, svc) or None)
        for key, (ready, not_ready) in groups.items()
    ]


@dataclass
class SliceContent:
    ports: list[EndpointPort]
    endpoints: list[Endpoint]

    def port_key(self) -> PortKey:
        return tuple((p.name or "", p.port or 0, p.protocol or "TCP") for p in self.ports)


def build_slices(svc: Service, pods: list[Pod], max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> list[SliceContent]:
    """Slice contents grouped by resolved port set, at most `max_per_slice` endpoints each.
    No endpoints at all gives one empty placeholder slice."""
    tolerate = bool(svc.spec.publish_not_ready_addresses)
    groups: dict[PortKey, list[Endpoint]] = {}
    for pod in eligible_pods(pods):
        key = _resolved_ports(svc, pod)
        if key is None:
            continue
        serving = pod.ready
        terminating = pod.terminating
        ready = tolerate or (serving and not terminating)
        groups.setdefault(key, []).append(Endpoint(
            addresses=[pod.ip or ""],
            conditions=EndpointConditions(ready=ready, serving=serving, terminating=terminating),
            hostname=_hostname(svc, pod), target_ref=_pod_ref(pod), node_name=pod.node_name,
        ))
    if not groups:
        return [SliceContent([], [])]
    out = []
    for key, endpoints in groups.items():
        for i in range(0, len(endpoints), max_per_slice):
            out.append(SliceContent(_endpoint_ports(key, svc), endpoints[i:i + max_per_slice]))
    return out
