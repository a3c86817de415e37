"""Desired dataplane state of a node: a pure function of the services and their
endpoints. No I/O here, so it is unit-tested without root or BPF."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from controlplane.api.validation.lb_annotations import (BACKEND_WEIGHTS, LB_ALGORITHM,
                                                       MAGLEV_TABLE_SIZE, parse_backend_weights,
                                                       parse_table_size)
from controlplane.controllers.service_view import Backend as ViewBackend
from controlplane.controllers.service_view import (SCOPE_CLUSTER_IP, SCOPE_LOAD_BALANCER,
                                                   ServicePortView, ServiceView)
from controlplane.dataplane.layout import ALGORITHMS
from controlplane.dataplane.model import Backend, Frontend, ServiceState, make_backends
from controlplane.gcpause import paused_gc
from controlplane.maglev.primes import DEFAULT_TABLE_SIZE, size_warning

# Backend selection per service (validated at apply time by api.validation.lb_annotations):
#   svcxdp.io/lb-algorithm: maglev        (else the node's --lb-algorithm)
#   svcxdp.io/backend-weights: web-0=3,10.244.2.7=1   (pod name or IP; unlisted: 1)
#   svcxdp.io/maglev-table-size: 65537    (Maglev M, prime; default 16381)
LB_ALGORITHM_ANNOTATION = LB_ALGORITHM
BACKEND_WEIGHTS_ANNOTATION = BACKEND_WEIGHTS
MAGLEV_TABLE_SIZE_ANNOTATION = MAGLEV_TABLE_SIZE
INVALID_ANNOTATION = "InvalidAnnotation"   # the event reason for an annotation ignored


@dataclass(frozen=True)
class NodeConfig:
    name: str
    default_algorithm: str = "random"
    # the node addresses NodePorts answer on (--nodeport-addresses applied already)
    nodeport_addresses: tuple[str, ...] = ()


class Problem(str):
    """A thing the node cannot serve as asked: the log line, with the reason its event
    carries (InvalidAnnotation, NotServed, FrontendConflict, MaglevTableSize)."""
    reason: str

    def __new__(cls, text: str, reason: str) -> "Problem":
        obj = super().__new__(cls, text)
        obj.reason = reason
        return obj


@dataclass(frozen=True)
class Desired:
    states: tuple[ServiceState, ...]
    # frontend -> "namespace/service:port-name" for log lines and `get` commands
    owners: dict[Frontend, str] = field(default_factory=dict)
    # things the node cannot serve, said once per sync
    problems: tuple[Problem, ...] = ()


def backend_state(ready: bool, serving: bool, terminating: bool) -> str | None:
    """Ready endpoints take new flows; terminating-but-serving ones only drain theirs
    (and take new flows when nothing is ready); the rest are not backends."""
    if ready:
        return "active"
    if serving and terminating:
        return "terminating"
    return None


# Where Backend's fields sit in the view's endpoint tuples (by name: the tuple is the
# read model's to lay out).
_IP, _PORT, _READY, _NODE, _POD = (ViewBackend._fields.index(f)
                                   for f in ("ip", "port", "ready", "node_name", "pod_name"))
_ACTIVE, _TERMINATING = "active", "terminating"


def _backends(port: ServicePortView, weights: dict[str, int] | None = None,
              node: str | None = None) -> tuple[Backend, ...]:
    """Weights are looked up by pod name, then by IP; unlisted endpoints weigh 1. With
    `node`, only the endpoints on that node (a Local traffic policy). A full sync makes
    100,000 of these: the endpoints are taken apart into columns (zip, in C) and the
    backends made and checked a column at a time (model.make_backends)."""
    rows = port.backends
    if node is not None:
        rows = [b for b in rows if b[_NODE] == node]
    if not rows:
        return ()
    cols = tuple(zip(*rows))
    ips, ports, ready = cols[_IP], cols[_PORT], cols[_READY]
    states: tuple[str, ...] | str = _ACTIVE   # the usual case: every endpoint ready
    if not all(ready):   # backend_state(), a column at a time
        rows = [b for b in rows if backend_state(b.ready, b.serving, b.terminating)]
        if not rows:
            return ()
        cols = tuple(zip(*rows))
        ips, ports = cols[_IP], cols[_PORT]
        states = tuple([_ACTIVE if r else _TERMINATING for r in cols[_READY]])
    if weights:
        ws = tuple([weights.get(pod or "", weights.get(ip, 1)) for ip, pod in zip(ips, cols[_POD])])
        return make_backends(ips, ports, states, ws)
    return make_backends(ips, ports, states, 1)


def desired_state(views: Iterable[ServiceView], node: NodeConfig) -> Desired:
    with paused_gc():
        return _desired_state(views, node)


def _desired_state(views: Iterable[ServiceView], node: NodeConfig) -> Desired:
    states: list[ServiceState] = []
    owners: dict[Frontend, str] = {}
    problems: list[Problem] = []
    for view in views:
        if not view.proxied:
            continue
        svc = view.service
        annotations = svc.annotations
        name = f"{svc.namespace}/{svc.name}"
        algorithm = annotations.get(LB_ALGORITHM_ANNOTATION, node.default_algorithm)
        if algorithm not in ALGORITHMS:
            problems.append(Problem(f"service {name}: annotation {LB_ALGORITHM_ANNOTATION}={algorithm!r} "
                                    f"is not a known algorithm; using {node.default_algorithm}", INVALID_ANNOTATION))
            algorithm = node.default_algorithm
        weights: dict[str, int] = {}
        if BACKEND_WEIGHTS_ANNOTATION in annotations:
            try:
                weights = parse_backend_weights(annotations[BACKEND_WEIGHTS_ANNOTATION])
            except ValueError as exc:
                problems.append(Problem(f"service {name}: annotation {BACKEND_WEIGHTS_ANNOTATION}: {exc}; "
                                        f"using weight 1 for every endpoint", INVALID_ANNOTATION))
        table_size = None
        if algorithm == "maglev" and MAGLEV_TABLE_SIZE_ANNOTATION in annotations:
            try:
                table_size = parse_table_size(annotations[MAGLEV_TABLE_SIZE_ANNOTATION])
            except ValueError as exc:
                problems.append(Problem(f"service {name}: annotation {MAGLEV_TABLE_SIZE_ANNOTATION}: {exc}; "
                                        f"using the default size", INVALID_ANNOTATION))
        affinity = view.affinity_timeout_seconds or 0
        # per service, not per port
        internal_local, external_local = view.internal_policy_local, view.external_policy_local
        for port in view.ports:
            if port.protocol not in ("TCP", "UDP"):
                problems.append(Problem(f"service {name} port {port.port}/{port.protocol}: "
                                        f"not served by the XDP dataplane (TCP and UDP only)", "NotServed"))
                continue
            backends = _backends(port, weights)
            if algorithm == "maglev":
                warn = size_warning(table_size or DEFAULT_TABLE_SIZE, len(backends))
                if warn:
                    problems.append(Problem(f"service {name} port {port.port}: {warn}", "MaglevTableSize"))
            owner = f"{name}:{port.name or port.port}"
            # Local policies: this node's endpoints only; with endpoints elsewhere only,
            # the traffic is dropped (no endpoints at all: rejected, as kube-proxy does).
            internal, internal_drop = _policy_backends(internal_local, backends,
                                                       port, weights, node.name)
            external, external_drop = _policy_backends(external_local, backends,
                                                       port, weights, node.name)
            for fe, scope in _frontends(port, node):
                n = len(owners)
                owners.setdefault(fe, owner)     # one hash of fe, not two
                if len(owners) == n:             # claimed already
                    problems.append(Problem(f"service {name} port {port.port}: {fe} is already served for "
                                            f"{owners[fe]}; not programmed twice", "FrontendConflict"))
                    continue
                if scope == SCOPE_CLUSTER_IP:
                    state = ServiceState(fe, internal, algorithm, affinity, table_size,
                                         local_drop=internal_drop)
                else:
                    ranges = tuple(svc.source_ranges) if scope == SCOPE_LOAD_BALANCER else ()
                    state = ServiceState(fe, external, algorithm, affinity, table_size,
                                         source_ranges=ranges, local_drop=external_drop)
                states.append(state)
    return Desired(tuple(states), owners, tuple(problems))


SCOPE_NODE_PORT = "nodePort"


def _frontends(port: ServicePortView, node: NodeConfig) -> list[tuple[Frontend, str]]:
    """The ClusterIP frontend (cluster scope), then the ways in from outside (external
    scope): externalIPs and LoadBalancer IPs on the service port, and the nodePort on
    each of this node's NodePort addresses."""
    out = []
    for ip, vport, scope in port.frontends:
        out.append((Frontend(ip, vport, port.protocol,
                             "cluster" if scope == SCOPE_CLUSTER_IP else "external"), scope))
    if port.node_port:
        out.extend((Frontend(ip, port.node_port, port.protocol, "external"), SCOPE_NODE_PORT)
                   for ip in node.nodeport_addresses)
    return out


def _policy_backends(local: bool, backends: tuple[Backend, ...], port: ServicePortView,
                     weights: dict[str, int], node_name: str) -> tuple[tuple[Backend, ...], bool]:
    """(backends, drop-when-none) under a Cluster or Local traffic policy."""
    if not local:
        return backends, False
    mine = _backends(port, weights, node=node_name)
    return mine, not mine and bool(backends)
