"""Desired dataplane state of a node: a pure function of the services and their
endpoints. No I/O here, so it is unit-tested without root or BPF."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import eq
from typing import Callable, Iterable, Sequence

from controlplane.api.validation.lb_annotations import (BACKEND_WEIGHTS, LB_ALGORITHM,
                                                       MAGLEV_TABLE_SIZE, parse_backend_weights,
                                                       parse_table_size)
from controlplane.controllers.service_view import Backend as ViewBackend
from controlplane.controllers.service_view import (SCOPE_CLUSTER_IP, SCOPE_LOAD_BALANCER,
                                                   ServicePortView, ServiceView)
from controlplane.dataplane.layout import ALGORITHMS
from controlplane.dataplane.model import Backend, Frontend, ServiceState, UncheckedModel, make_backends
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


class _Checked:
    """Backends, frontends and states made through the checked constructors as they
    come: the first bad value raises its ModelError. (UncheckedModel's interface.)"""
    backends = staticmethod(make_backends)
    frontend = Frontend
    state = ServiceState

    @staticmethod
    def states(made: list[ServiceState]) -> tuple[ServiceState, ...]:
        return tuple(made)


_Maker = _Checked | UncheckedModel


def _backends(rows: Sequence[ViewBackend], weights: dict[str, int],
              make: _Maker) -> tuple[Sequence[Backend] | Sequence[int], Sequence[str | None]]:
    """A port's backends (from UncheckedModel: their indices), with the node of each.
    Weights are looked up by pod name, then by IP; unlisted endpoints weigh 1. A full
    sync makes 100,000 backends: the endpoints are taken apart into columns (zip, in C)
    and the backends made a column at a time."""
    if not rows:
        return (), ()
    cols = tuple(zip(*rows))
    ips, ports, ready = cols[_IP], cols[_PORT], cols[_READY]
    states: tuple[str, ...] | str = _ACTIVE   # the usual case: every endpoint ready
    if not all(ready):   # backend_state(), a column at a time
        rows = [b for b in rows if backend_state(b.ready, b.serving, b.terminating)]
        if not rows:
            return (), ()
        cols = tuple(zip(*rows))
        ips, ports = cols[_IP], cols[_PORT]
        states = tuple([_ACTIVE if r else _TERMINATING for r in cols[_READY]])
    if weights:
        ws = tuple([weights.get(pod or "", weights.get(ip, 1)) for ip, pod in zip(ips, cols[_POD])])
        return make.backends(ips, ports, states, ws), cols[_NODE]
    return make.backends(ips, ports, states, 1), cols[_NODE]


def desired_state(views: Iterable[ServiceView], node: NodeConfig) -> Desired:
    """Everything is made first without checking each backend, frontend and state as it
    is made, then checked in bulk (UncheckedModel: a full sync's 10,000 services x 10
    endpoints ~1.4x as quick); when that finds a bad value, or anything goes wrong on the way, it is all
    made again through the checked constructors, which raise the same ModelError as
    ever (the first bad value in service order) or, given values only they accept or
    backends to sort, make the same states. Both passes run _desired_state, differing
    only in `make`."""
    if not isinstance(views, (list, tuple)):
        views = list(views)     # read twice, maybe
    return _desired_groups([views], node)[0]


def desired_each(views: Sequence[ServiceView | None], node: NodeConfig) -> list[Desired]:
    """desired_state([view]) of each view (an empty Desired for None), in one pass: the
    agent keeps each service's desired state apart (its frontends, its problems), and
    made one service at a time the bulk checks would run 10,000 times over 10 backends
    at a full sync instead of over batches of thousands. A frontend two of these views
    claim is not a conflict here, as with one call per view."""
    return _desired_groups([[view] if view is not None else [] for view in views], node)


def _desired_groups(groups: Sequence[Sequence[ServiceView]], node: NodeConfig) -> list[Desired]:
    with paused_gc():
        try:
            desired: list[Desired] | None = _desired_state(groups, node, UncheckedModel())
        except Exception:           # noqa: BLE001 - the checked pass says what it was
            desired = None
        if desired is None:
            desired = _desired_state(groups, node, _Checked())
        assert desired is not None   # the checked pass raises instead
        return desired


def _annotated(name: str, annotations: dict[str, str], node: NodeConfig,
               problems: list[Problem]) -> tuple[str, dict[str, int], int | None]:
    """(algorithm, weights, Maglev table size) from a service's annotations and the
    node's default algorithm, with a Problem for each annotation ignored."""
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
    return algorithm, weights, table_size


_SERVED = ("TCP", "UDP")


def _desired_state(groups: Sequence[Sequence[ServiceView]], node: NodeConfig,
                   make: _Maker) -> list[Desired] | None:
    """The desired state of each group of views, made by `make` (one for all groups);
    None when UncheckedModel finds a bad value."""
    pending: list = []    # ServiceStates, or what UncheckedModel makes them of
    # per group: where its states end in `pending`, its owners and problems
    parts: list[tuple[int, dict[Frontend, str], list[Problem]]] = []
    # a service without annotations (most) takes the node's settings, if they are valid
    plain = (node.default_algorithm, {}, None) if node.default_algorithm in ALGORITHMS else None
    for views in groups:
        owners: dict[Frontend, str] = {}
        problems: list[Problem] = []
        _views_into(views, node, make, plain, pending, owners, problems)
        parts.append((len(pending), owners, problems))
    states = make.states(pending)
    if states is None:
        return None
    out = []
    start = 0
    for end, owners, problems in parts:
        out.append(Desired(states[start:end], owners, tuple(problems)))
        start = end
    return out


def _views_into(views: Sequence[ServiceView], node: NodeConfig, make: _Maker,
                plain: tuple[str, dict[str, int], None] | None, pending: list,
                owners: dict[Frontend, str], problems: list[Problem]) -> None:
    """Append the states of `views` (as `make` makes them) to `pending`, claiming their
    frontends in `owners` (a frontend claimed already is a FrontendConflict)."""
    node_name = node.name
    frontend, state = make.frontend, make.state
    twins: list[tuple] = []   # cluster-scope twins of the external frontends, claimed last
    for view in views:
        svc = view.service
        if not svc.proxied:   # view.proxied, without the view's property in between
            continue
        annotations = svc.annotations
        name = f"{svc.namespace}/{svc.name}"
        if annotations or plain is None:
            algorithm, weights, table_size = _annotated(name, annotations, node, problems)
        else:
            algorithm, weights, table_size = plain
        affinity = view.affinity_timeout_seconds or 0
        # per service, not per port
        internal_local, external_local = view.internal_policy_local, view.external_policy_local
        for port in view.ports:
            protocol = port.protocol
            if protocol not in _SERVED:
                problems.append(Problem(f"service {name} port {port.port}/{protocol}: "
                                        f"not served by the XDP dataplane (TCP and UDP only)", "NotServed"))
                continue
            backends, nodes = _backends(port.backends, weights, make)
            if algorithm == "maglev":
                warn = size_warning(table_size or DEFAULT_TABLE_SIZE, len(backends))
                if warn:
                    problems.append(Problem(f"service {name} port {port.port}: {warn}", "MaglevTableSize"))
            owner = f"{name}:{port.name or port.port}"
            # Local policies: this node's endpoints only; with endpoints elsewhere only,
            # the traffic is dropped (no endpoints at all: rejected, as kube-proxy does).
            internal = external = backends
            internal_drop = external_drop = False
            if internal_local or external_local:
                mine = tuple(compress(backends, map(eq, nodes, repeat(node_name))))
                if internal_local:
                    internal, internal_drop = mine, not mine and bool(backends)
                if external_local:
                    external, external_drop = mine, not mine and bool(backends)
            for fe, scope in _frontends(port, node, frontend):
                if scope == SCOPE_CLUSTER_IP:
                    if _claimed(fe, owner, owners, problems, name, port.port):
                        pending.append(state(fe, internal, algorithm, affinity, table_size, (), internal_drop))
                    continue
                ranges = tuple(svc.source_ranges) if scope == SCOPE_LOAD_BALANCER else ()
                if _claimed(fe, owner, owners, problems, name, port.port):
                    pending.append(state(fe, external, algorithm, affinity, table_size, ranges, external_drop))
                    # Pods and the node reach the same address too (kube-proxy matches it
                    # for them as well): its cluster-scope twin, the entry their lookups
                    # find, with every endpoint — kube-proxy short-circuits traffic from
                    # inside to all of them, subject to neither traffic policy. Claimed
                    # after the group's own frontends: a ClusterIP comes first.
                    twins.append((frontend(fe.vip, fe.port, protocol, "cluster"), owner, name, port.port,
                                  backends, algorithm, affinity, table_size, ranges))
    for twin, owner, name, port_number, backends, algorithm, affinity, table_size, ranges in twins:
        if _claimed(twin, owner, owners, problems, name, port_number, " (the way in for pods and nodes)"):
            pending.append(state(twin, backends, algorithm, affinity, table_size, ranges, False))


def _claimed(fe: Frontend, owner: str, owners: dict[Frontend, str], problems: list[Problem],
             name: str, port: int | None, what: str = "") -> bool:
    """Claim `fe` for `owner`; a frontend claimed already is a FrontendConflict."""
    n = len(owners)
    owners.setdefault(fe, owner)     # one hash of fe, not two
    if len(owners) > n:
        return True
    problems.append(Problem(f"service {name} port {port}: {fe}{what} is already served for "
                            f"{owners[fe]}; not programmed twice", "FrontendConflict"))
    return False


SCOPE_NODE_PORT = "nodePort"


def _frontends(port: ServicePortView, node: NodeConfig,
               frontend: Callable[[str, int, str, str], Frontend]) -> list[tuple[Frontend, str]]:
    """The ClusterIP frontend (cluster scope), then the ways in from outside (external
    scope): externalIPs and LoadBalancer IPs on the service port, and the nodePort on
    each of this node's NodePort addresses."""
    protocol = port.protocol
    out = [(frontend(ip, vport, protocol, "cluster" if scope == SCOPE_CLUSTER_IP else "external"), scope)
           for ip, vport, scope in port.frontends]
    if port.node_port:
        out.extend((frontend(ip, port.node_port, protocol, "external"), SCOPE_NODE_PORT)
                   for ip in node.nodeport_addresses)
    return out
