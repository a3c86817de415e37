"""Desired dataplane state of a node: a pure function of the services and their
endpoints. No I/O here, so it is unit-tested without root or BPF."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from operator import and_, attrgetter, eq
from typing import Callable, Iterable, Sequence

from controlplane.api.validation.lb_annotations import (BACKEND_WEIGHTS, LB_ALGORITHM,
                                                       MAGLEV_TABLE_SIZE, parse_backend_weights,
                                                       parse_table_size)
from controlplane.controllers.service_view import Backend as ViewBackend
from controlplane.controllers.service_view import (SCOPE_CLUSTER_IP, SCOPE_LOAD_BALANCER,
                                                   ServicePortView, ServiceView, ipv4_family)
from controlplane.dataplane.layout import ALGORITHMS
from controlplane.dataplane.model import Backend, Frontend, ModelError, ServiceState, UncheckedModel, make_backends
from controlplane.gcpause import paused_gc
from controlplane.maglev.primes import DEFAULT_TABLE_SIZE, size_warning

from . import topology

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
    # the node's zone (its topology.kubernetes.io/zone label; "" if none), for the
    # endpoints' topology hints (topology.py)
    zone: str = ""


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
    # the owned frontends that are cluster-scope twins of ways in from outside
    twins: frozenset[Frontend] = frozenset()

    def without(self, fe: Frontend, problem: Problem | None) -> "Desired":
        """This desired state less `fe` (lost to another service), told `problem`."""
        return replace(self, states=tuple(s for s in self.states if s.frontend != fe),
                       owners={f: o for f, o in self.owners.items() if f != fe},
                       problems=self.problems + ((problem,) if problem is not None else ()),
                       twins=self.twins - {fe})


# ---- two services, one frontend ---------------------------------------------------------
# Nothing in the API stops two services from naming one address:port (an externalIP, a
# LoadBalancer IP, another service's ClusterIP). One rule decides which serves it, in a
# full sync, in an incremental one (the agent: services computed apart) and in the
# consistency check alike, so the winner depends neither on the order the services
# were read or changed in nor on the node: a ClusterIP before a twin (an address the
# apiserver allocated before one a user wrote), then the older service, then
# namespace/name. The older: a service created later cannot take over another's
# address by naming it (CVE-2020-8554), and a restart changes nothing.

@dataclass(frozen=True)
class Claim:
    """One service's claim on a frontend that another also claims."""
    owner: str          # "namespace/service:port-name"
    twin: bool          # as a cluster-scope twin of a way in from outside
    rank: tuple         # claim_rank: the lowest wins


def claim_rank(view: ServiceView, twin: bool) -> tuple:
    return (twin, *view.seniority)


def settle(claims: Sequence[Claim]) -> Claim:
    """The claim that gets the frontend: the lowest rank, the first of equal ones."""
    return min(claims, key=_rank)


def conflict(fe: Frontend, loser: Claim, winner: Claim) -> Problem | None:
    """What the loser of `fe` is told. Not a twin lost to another twin: its service lost
    the way in from outside it is the twin of, to the same service, and was told so."""
    if loser.twin and winner.twin:
        return None
    return Problem(f"service {loser.owner}: {fe}{' (the way in for pods and nodes)' if loser.twin else ''} "
                   f"is already served for {winner.owner}; not programmed twice", "FrontendConflict")


_rank = attrgetter("rank")


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
_IP, _PORT, _READY, _NODE, _POD, _HINTS = (ViewBackend._fields.index(f)
                                           for f in ("ip", "port", "ready", "node_name", "pod_name", "hints"))
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


_Made = Sequence[Backend] | Sequence[int]


def _backends(rows: Sequence[ViewBackend], weights: dict[str, int], make: _Maker,
              node: NodeConfig) -> tuple[_Made, Sequence[str | None], _Made]:
    """A port's backends (from UncheckedModel: their indices), with the node of each, and
    the backends of this node's Cluster-policy frontends: the same, unless topology hints
    apply (topology.py), when the ready endpoints they leave out are made terminating
    ones. So those drain: their flows keep them, as kube-proxy's conntrack keeps its
    flows when the hints change (topology-mode Auto adds and removes hints as a
    deployment scales), while new flows go to the ready endpoints the hints leave in, of
    which there is one whenever hints apply. Weights are looked up by pod name, then by
    IP; unlisted endpoints weigh 1. A full sync makes 100,000 backends: the endpoints
    are taken apart into columns (zip, in C) and the backends made a column at a time."""
    if not rows:
        return (), (), ()
    cols = tuple(zip(*rows))
    ips, ports, ready = cols[_IP], cols[_PORT], cols[_READY]
    states: tuple[str, ...] | str = _ACTIVE   # the usual case: every endpoint ready
    if not all(ready):   # backend_state(), a column at a time
        rows = [b for b in rows if backend_state(b.ready, b.serving, b.terminating)]
        if not rows:
            return (), (), ()
        cols = tuple(zip(*rows))
        ips, ports = cols[_IP], cols[_PORT]
        states = tuple([_ACTIVE if r else _TERMINATING for r in cols[_READY]])
    ws: tuple[int, ...] | int = 1
    if weights:
        ws = tuple([weights.get(pod or "", weights.get(ip, 1)) for ip, pod in zip(ips, cols[_POD])])
    made = make.backends(ips, ports, states, ws)
    hints = cols[_HINTS]
    if not any(hints):   # the usual case: no endpoint of the port has hints
        return made, cols[_NODE], made
    usable = topology.available(cols[_READY], hints, node.name, node.zone)
    if usable is None:
        return made, cols[_NODE], made
    narrowed = tuple([_ACTIVE if ok else _TERMINATING for ok in map(and_, cols[_READY], usable)])
    return made, cols[_NODE], make.backends(ips, ports, narrowed, ws)


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
    return _desired_groups([views], node, alone=False)[0]


def desired_served(views: Sequence[ServiceView], node: NodeConfig) -> Desired:
    """desired_state of the views less those the model refuses (ModelError), which the
    syncs leave unserved (desired_each): what the maps should hold. (desired_state itself
    raises for one refused view: the consistency check then failed every time.)"""
    try:
        return desired_state(views, node)
    except ModelError:
        return desired_state([v for v in views if not _refused(v, node)], node)


def _refused(view: ServiceView, node: NodeConfig) -> bool:
    try:
        _desired_state([[view]], node, _Checked())
    except ModelError:
        return True
    return False


def desired_each(views: Sequence[ServiceView | None], node: NodeConfig) -> list[Desired]:
    """desired_state([view]) of each view (an empty Desired for None), in one pass: the
    agent keeps each service's desired state apart (its frontends, its problems), and
    made one service at a time the bulk checks would run 10,000 times over 10 backends
    at a full sync instead of over batches of thousands. A frontend two of these views
    claim is not a conflict here, as with one call per view. A view whose values the
    model refuses (ModelError) is a service not served, its Problem saying why, unless
    every view is refused (_desired_alone)."""
    return _desired_groups([[view] if view is not None else [] for view in views], node, alone=True)


def _desired_groups(groups: Sequence[Sequence[ServiceView]], node: NodeConfig, alone: bool) -> list[Desired]:
    with paused_gc():
        try:
            desired: list[Desired] | None = _desired_state(groups, node, UncheckedModel())
        except Exception:           # noqa: BLE001 - the checked pass says what it was
            desired = None
        if desired is None:
            try:
                desired = _desired_state(groups, node, _Checked())
            except ModelError:
                if not alone:
                    raise
                return _desired_alone(groups, node)
        assert desired is not None   # the checked pass raises instead
        return desired


def _desired_alone(groups: Sequence[Sequence[ServiceView]], node: NodeConfig) -> list[Desired]:
    """desired_each when some service's values are ones the model refuses (an address the
    API took but the dataplane cannot hold): each group made alone, so that only the
    service at fault goes unserved — with a Problem naming it, its log line and event —
    rather than failing every other service's sync with it. Only ModelError, the model's
    word on a value: anything else is a fault of the code, which fails the sync (the maps
    keep what they hold, /healthz says 503). And when two or more services are all
    refused, the sync fails too: one rule refusing everything is more likely a fault than
    every service being bad, and an empty dataplane is the worst answer to it."""
    out: list[Desired] = []
    refused: list[ModelError] = []
    for views in groups:
        try:
            (desired,) = _desired_state([views], node, _Checked())
        except ModelError as exc:
            refused.append(exc)
            names = ", ".join(f"{v.service.namespace}/{v.service.name}" for v in views)
            desired = Desired((), {}, (Problem(f"service {names}: {exc}; not served", "NotServed"),), frozenset())
        out.append(desired)
    if len(refused) >= 2 and len(refused) == sum(1 for views in groups if views):
        raise refused[0]
    return out


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
    parts: list[tuple[int, dict[Frontend, str], set[Frontend], list[Problem]]] = []
    # a service without annotations (most) takes the node's settings, if they are valid
    plain = (node.default_algorithm, {}, None) if node.default_algorithm in ALGORITHMS else None
    for views in groups:
        owners: dict[Frontend, str] = {}
        twins: set[Frontend] = set()
        problems: list[Problem] = []
        _views_into(views, node, make, plain, pending, owners, twins, problems)
        parts.append((len(pending), owners, twins, problems))
    states = make.states(pending)
    if states is None:
        return None
    out = []
    start = 0
    for end, owners, twins, problems in parts:
        out.append(Desired(states[start:end], owners, tuple(problems), frozenset(twins)))
        start = end
    return out


def _views_into(views: Sequence[ServiceView], node: NodeConfig, make: _Maker,
                plain: tuple[str, dict[str, int], None] | None, pending: list,
                owners: dict[Frontend, str], twins_held: set[Frontend], problems: list[Problem]) -> None:
    """Append the states of `views` (as `make` makes them) to `pending`, claiming their
    frontends in `owners` (a frontend two views claim goes to one: settle(), the other
    is a FrontendConflict), the twins among them in `twins_held`."""
    node_name = node.name
    frontend, state = make.frontend, make.state
    start = len(pending)      # where this group's states begin (earlier groups' come first)
    twins: list[tuple] = []   # cluster-scope twins of the external frontends, claimed last
    # frontends claimed already when another view claimed them: (frontend, view, twin,
    # owner, state) of each later claim, settled once all are made (_settle_contests)
    contests: list[tuple] = []
    for view in views:
        svc = view.service
        if not svc.proxied:   # view.proxied, without the view's property in between
            continue
        annotations = svc.annotations
        name = f"{svc.namespace}/{svc.name}"
        if not view.ports and svc.spec.ports:   # (service_view: no IPv4 ClusterIP)
            problems.append(Problem(f"service {name}: no IPv4 ClusterIP (clusterIPs "
                                    f"{svc.spec.cluster_ips or [svc.spec.cluster_ip]}): not served by the "
                                    f"IPv4 dataplane", "NotServed"))
            continue
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
            backends, nodes, cluster = _backends(port.backends, weights, make, node)
            if algorithm == "maglev":
                warn = size_warning(table_size or DEFAULT_TABLE_SIZE, len(backends))
                if warn:
                    problems.append(Problem(f"service {name} port {port.port}: {warn}", "MaglevTableSize"))
            owner = f"{name}:{port.name or port.port}"
            # Cluster policies: the endpoints the topology hints leave this node (all,
            # without hints). Local policies: this node's endpoints only, hints or not;
            # with endpoints elsewhere only, the traffic is dropped (no endpoints at all:
            # rejected, as kube-proxy does).
            internal = external = cluster
            internal_drop = external_drop = False
            if internal_local or external_local:
                mine = tuple(compress(backends, map(eq, nodes, repeat(node_name))))
                if internal_local:
                    internal, internal_drop = mine, not mine and bool(backends)
                if external_local:
                    external, external_drop = mine, not mine and bool(backends)
            for fe, scope in _frontends(port, node, frontend):
                if scope == SCOPE_CLUSTER_IP:
                    made = state(fe, internal, algorithm, affinity, table_size, (), internal_drop)
                    if _claimed(fe, owner, owners):
                        pending.append(made)
                    else:
                        contests.append((fe, view, False, owner, made))
                    continue
                ranges = ipv4_source_ranges(svc.source_ranges) if scope == SCOPE_LOAD_BALANCER else ()
                made = state(fe, external, algorithm, affinity, table_size, ranges, external_drop)
                if _claimed(fe, owner, owners):
                    pending.append(made)
                else:
                    contests.append((fe, view, False, owner, made))
                # Pods and the node reach the same address too (kube-proxy matches it for
                # them as well): its cluster-scope twin, the entry their lookups find, with
                # the Cluster-policy endpoints — kube-proxy short-circuits traffic from
                # inside to its cluster chain, subject to neither traffic policy (to the
                # topology hints, as that chain is). Claimed after the group's own
                # frontends (a ClusterIP comes first in any case: claim_rank).
                twins.append((frontend(fe.vip, fe.port, protocol, "cluster"), view, owner,
                              cluster, algorithm, affinity, table_size, ranges))
    for twin, view, owner, backends, algorithm, affinity, table_size, ranges in twins:
        made = state(twin, backends, algorithm, affinity, table_size, ranges, False)
        if _claimed(twin, owner, owners):
            pending.append(made)
            twins_held.add(twin)
        else:
            contests.append((twin, view, True, owner, made))
    if contests:
        _settle_contests(contests, views, pending, start, owners, twins_held, problems)


# What a LoadBalancer IP's source ranges become when they list IPv6 CIDRs only: no IPv4
# client (0.0.0.0 is no client's address). kube-proxy's IPv4 proxier drops the other
# family's CIDRs and, with none left, lets everyone in; a restriction the dataplane cannot
# express is kept closed instead.
NO_IPV4_CLIENT = "0.0.0.0/32"


def ipv4_source_ranges(cidrs: Sequence[str]) -> tuple[str, ...]:
    """The IPv4 CIDRs of loadBalancerSourceRanges (the dataplane is IPv4; a dual-stack
    service's IPv6 ranges are not its business); () when there are none at all."""
    ranges = tuple(filter(ipv4_family, cidrs))
    return ranges or ((NO_IPV4_CLIENT,) if cidrs else ())


def _claimed(fe: Frontend, owner: str, owners: dict[Frontend, str]) -> bool:
    """Claim `fe` for `owner` unless it is claimed already."""
    n = len(owners)
    owners.setdefault(fe, owner)     # one hash of fe, not two
    return len(owners) > n


def _settle_contests(contests: list[tuple], views: Sequence[ServiceView], pending: list, start: int,
                     owners: dict[Frontend, str], twins_held: set[Frontend], problems: list[Problem]) -> None:
    """Each contested frontend to the claim settle() picks, among the first (in
    `pending`, from `start` on) and the later ones: where a later one wins, its state
    takes the first's place. (Rare: the views and states are indexed here, once, not as
    they are made.)"""
    view_of = {f"{v.service.namespace}/{v.service.name}": v for v in views}
    later: dict[Frontend, list[tuple]] = {}
    for fe, view, twin, owner, made in contests:
        later.setdefault(fe, []).append((Claim(owner, twin, claim_rank(view, twin)), made))
    place: dict[Frontend, int] = {}   # where each contested frontend's first state is
    for i in range(start, len(pending)):
        if (claimed := _frontend_of(pending[i])) in later:
            place[claimed] = i
    for fe, challengers in later.items():
        at = place[fe]
        first_owner, first_twin = owners[fe], fe in twins_held
        first_view = view_of[first_owner.rsplit(":", 1)[0]]
        first = Claim(first_owner, first_twin, claim_rank(first_view, first_twin))
        claims = [first] + [claim for claim, _ in challengers]
        winner = settle(claims)
        problems.extend(p for c in claims if c is not winner and (p := conflict(fe, c, winner)) is not None)
        if winner is not first:
            pending[at] = next(made for claim, made in challengers if claim is winner)
            owners[fe] = winner.owner
            (twins_held.add if winner.twin else twins_held.discard)(fe)


def _frontend_of(made: tuple | ServiceState) -> Frontend:
    """The frontend of a state as UncheckedModel (a tuple) or _Checked makes it."""
    return made[0] if made.__class__ is tuple else made.frontend   # type: ignore[index,union-attr]


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
