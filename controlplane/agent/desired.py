"""Desired dataplane state of a node: a pure function of the services and their
endpoints. No I/O here, so it is unit-tested without root or BPF."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from controlplane.controllers.service_view import SCOPE_CLUSTER_IP, ServicePortView, ServiceView
from controlplane.dataplane.layout import ALGORITHMS
from controlplane.dataplane.model import Backend, Frontend, ServiceState

LB_ALGORITHM_ANNOTATION = "svcxdp.io/lb-algorithm"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    default_algorithm: str = "random"


@dataclass(frozen=True)
class Desired:
    states: tuple[ServiceState, ...]
    # frontend -> "namespace/service:port-name" for log lines and `get` commands
    owners: dict[Frontend, str] = field(default_factory=dict)
    # things the node cannot serve, said once per sync
    problems: tuple[str, ...] = ()


def backend_state(ready: bool, serving: bool, terminating: bool) -> str | None:
    """Ready endpoints take new flows; terminating-but-serving ones only drain theirs
    (and take new flows when nothing is ready); the rest are not backends."""
    if ready:
        return "active"
    if serving and terminating:
        return "terminating"
    return None


def _backends(port: ServicePortView) -> tuple[Backend, ...]:
    out = []
    for b in port.backends:
        state = backend_state(b.ready, b.serving, b.terminating)
        if state:
            out.append(Backend(b.ip, b.port, state))
    return tuple(out)


def desired_state(views: Iterable[ServiceView], node: NodeConfig) -> Desired:
    states: list[ServiceState] = []
    owners: dict[Frontend, str] = {}
    problems: list[str] = []
    for view in views:
        if not view.proxied:
            continue
        svc = view.service
        name = f"{svc.namespace}/{svc.name}"
        algorithm = svc.annotations.get(LB_ALGORITHM_ANNOTATION, node.default_algorithm)
        if algorithm not in ALGORITHMS:
            problems.append(f"service {name}: annotation {LB_ALGORITHM_ANNOTATION}={algorithm!r} "
                            f"is not a known algorithm; using {node.default_algorithm}")
            algorithm = node.default_algorithm
        affinity = view.affinity_timeout_seconds or 0
        for port in view.ports:
            if port.protocol not in ("TCP", "UDP"):
                problems.append(f"service {name} port {port.port}/{port.protocol}: "
                                f"not served by the XDP dataplane (TCP and UDP only)")
                continue
            backends = _backends(port)
            for ip, vport, scope in port.frontends:
                if scope != SCOPE_CLUSTER_IP:
                    continue  # externalIPs, LoadBalancer and NodePort come with the external scope
                fe = Frontend(ip, vport, port.protocol)
                states.append(ServiceState(fe, backends, algorithm, affinity))
                owners[fe] = f"{name}:{port.name or port.port}"
    return Desired(tuple(states), owners, tuple(problems))
