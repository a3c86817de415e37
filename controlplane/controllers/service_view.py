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
controller's, mirrored, or user-written) except those kube-proxy's informers leave out
(labelled service-proxy-name or headless: api.endpoints.proxied_slice_owner); a service port
takes the slice ports of its name and protocol, as kube-proxy keys them (ServicePortName);
each backend carries its own port, because named targetPorts resolve per pod.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter
from sys import intern
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple

import msgspec

from controlplane.api.codec_typed import typed_decoder
from controlplane.api.endpoints import (LABEL_SERVICE_NAME, LAST_CHANGE_TRIGGER_TIME, EndpointHints, EndpointSlice,
                                        proxied_slice_owner)
from controlplane.api.meta import parse_timestamp
from controlplane.api.service import (IP_MODE_VIP, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, POLICY_LOCAL,
                                      Service)
from controlplane.gcpause import paused_gc
from controlplane.store.interface import StoreReader

SCOPE_CLUSTER_IP = "clusterIP"
SCOPE_EXTERNAL_IP = "externalIP"
SCOPE_LOAD_BALANCER = "loadBalancer"


class Hints(NamedTuple):
    """An endpoint's topology hints (EndpointHints): the zones and the nodes whose proxies
    should prefer it. Either may be empty; an endpoint with neither has none (None)."""
    zones: frozenset[str]
    nodes: frozenset[str]


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
    hints: Hints | None = None   # (made by _tuple_new, every reader passes it: the default is for tests)


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
        return self.service.spec.external_traffic_policy == POLICY_LOCAL   # unset: Cluster

    @property
    def internal_policy_local(self) -> bool:
        return self.service.spec.internal_traffic_policy == POLICY_LOCAL   # unset: Cluster

    @property
    def seniority(self) -> tuple[float, str, str]:
        """Which of two services that name one address:port serves it (the lower): the
        older (creationTimestamp; none or unreadable: the newest), then namespace/name.
        The agent's rule (agent/desired.py claim_rank) and `svcctl get`'s attribution."""
        svc = self.service
        try:
            created = parse_timestamp(svc.metadata.creation_timestamp or "").timestamp()
        except ValueError:
            created = float("inf")
        return (created, svc.namespace, svc.name)


# A slice port as kube-proxy keys its endpoints (ServicePortName: the port's name and
# protocol): (name, protocol), the name "" when unset and the protocol "TCP" (the API's
# defaults). A service port takes the backends of the key of its own name and protocol,
# so a slice's UDP port "dns" does not feed the service's TCP port "dns".
PortKey = tuple[str, str]
DEFAULT_PROTOCOL = "TCP"

# One slice's backends by port key, each list in slice order (endpoints in order, one
# address each), before de-duplication (merge_backends).
SliceBackends = dict[PortKey, list[Backend]]

_tuple_new = tuple.__new__   # Backend from a tuple of its fields, without the Python-level __new__


def slice_backends(es: EndpointSlice) -> SliceBackends:
    """The backends an EndpointSlice object contributes (IPv4 slices only)."""
    if es.address_type not in (None, "IPv4") or all(p.port is None for p in es.ports or ()):
        return {}   # (before reading the endpoints: one with null conditions has no .ready)
    eps = [(ep.addresses, ep.ready, ep.serving, ep.terminating, ep.node_name, ep.pod_name, _object_hints(ep.hints))
           for ep in es.endpoints or () if ep.addresses]
    return _cross((((p.name or "", p.protocol or DEFAULT_PROTOCOL), p.port) for p in es.ports), eps)


def slice_document_backends(doc: dict[str, Any]) -> SliceBackends:
    """The same as `slice_backends`, from the slice's stored JSON (store.iter_documents),
    without decoding it into objects. The conditions follow Endpoint (as kube-proxy reads
    them): ready and serving unless false, terminating only if true; the pod only for a
    Pod targetRef."""
    if doc.get("addressType") not in (None, "IPv4"):
        return {}
    ports = doc.get("ports")
    if not ports:
        return {}
    eps = []
    for e in doc.get("endpoints") or ():
        addresses = e.get("addresses")
        if not addresses:
            continue
        c = e.get("conditions") or {}
        ready = c.get("ready") is not False
        serving = c.get("serving") is not False   # unset: true, not ready's value (kube-proxy)
        ref = e.get("targetRef")
        pod = ref.get("name") if ref and ref.get("kind") == "Pod" else None
        node = e.get("nodeName")
        if node:   # one string per node (see _NODE_NAMES; a document may hold any JSON type here)
            node = intern(node)
        eps.append((addresses, ready, serving, bool(c.get("terminating")), node, pod, _document_hints(e.get("hints"))))
    return _cross((((p.get("name") or "", p.get("protocol") or DEFAULT_PROTOCOL), p.get("port")) for p in ports),
                  eps)


def _cross(ports: Iterable[tuple[PortKey, int | None]], eps: list[tuple]) -> SliceBackends:
    """A slice's backends by port key: each port with a number, crossed with each endpoint
    (addresses, ready, serving, terminating, node, pod, hints), in that order. An endpoint is its
    first address: the API allows up to 100 but defines no meaning for the ones after the
    first, and kube-proxy does not look at them (nor does the EndpointSlice controller
    write more than one). Every reader (object, stored document, stored text) ends here, or, for the usual slice, in
    _one_port_backends, which lists the same."""
    out: SliceBackends = {}
    if not eps:
        return out
    for key, port in ports:
        if port is None:
            continue
        backends = out.get(key)
        if backends is None:
            backends = out[key] = []
        append = backends.append
        for addresses, ready, serving, terminating, node, pod, hints in eps:
            append(_tuple_new(Backend, (addresses[0], port, ready, serving, terminating, node, pod, hints)))
    return out


class _Interned(dict):
    """One value per distinct key, made once by `make` and shared by every Backend that
    holds it; a lookup of a known key is one subscript. Bounded (cleared past MAX), as
    the keys come and go."""

    MAX = 65536

    def __init__(self, make: Callable[[Any], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> Any:
        if len(self) > self.MAX:
            self.clear()
        value = self[key] = self.make(key)
        return value


# One Hints object per distinct (zones, nodes): every endpoint of a zone names the same
# few zones. None when neither names anything (the usual slice).
_HINTS = _Interned(lambda key: Hints(frozenset(key[0]), frozenset(key[1])) if key[0] or key[1] else None)


def _hints_of(zones: Iterable[Any] | None, nodes: Iterable[Any] | None) -> Hints | None:
    """The Hints of these zone and node entries (objects with a `name`), as kube-proxy
    reads them: an entry without a name, or a null one, names "" (Go's zero value)."""
    return _HINTS[(tuple((z.name if z is not None else None) or "" for z in zones or ()),
                   tuple((n.name if n is not None else None) or "" for n in nodes or ()))]


def _object_hints(hints: EndpointHints | None) -> Hints | None:
    """An Endpoint object's hints."""
    return None if hints is None else _hints_of(hints.for_zones, hints.for_nodes)


def _document_hints(hints: Any) -> Hints | None:
    """A stored document's hints, read as _object_hints reads the object's. A document may
    hold any JSON type here (the codec refuses such a document on the other paths): what
    is not a list names nothing, an entry neither an object nor null is passed over, and
    a name that is not a string is ""."""
    if not isinstance(hints, dict):
        return None

    def names(key: str) -> tuple[str, ...]:
        entries = hints.get(key)
        if not isinstance(entries, list):
            return ()
        return tuple((name if isinstance(name := (e or {}).get("name"), str) else "")
                     for e in entries if e is None or isinstance(e, dict))
    return _HINTS[(names("forZones"), names("forNodes"))]


# A node's name, once: a few nodes are named by every endpoint, and the Backends hold one
# string per node (sys.intern's), not one per endpoint. None and "" stand for themselves.
_NODE_NAMES = _Interned(lambda name: intern(name) if name else name)


# The typed decoder for a stored EndpointSlice's text (SqliteStore.iter_json): only the
# fields slice_document_backends reads (and the labels, for the service name and the two
# labels kube-proxy's selector leaves out); msgspec skips the rest of the document without
# building it (uid, timestamps, annotations, zones), and the few it keeps become
# slot objects instead of dicts. At 10,000 slices x 10 endpoints it
# reads them in a third of json.loads' time. Defaults are those of an absent field in
# the document path; a document with a field of another type (one the codec would not have
# written) fails validation and takes the document path, so both read the same.
class _Ref(msgspec.Struct, gc=False):
    kind: str | None = None
    name: str | None = None


class _Conditions(msgspec.Struct, frozen=True, gc=False):   # frozen: hashable, a key of _FLAGS
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class _Named(msgspec.Struct, gc=False):
    name: str | None = None


class _Hints(msgspec.Struct, gc=False):
    forZones: list[_Named] | None = None   # noqa: N815
    forNodes: list[_Named] | None = None   # noqa: N815


class _Endpoint(msgspec.Struct, gc=False):
    addresses: list[str] | None = None
    conditions: _Conditions | None = None
    nodeName: str | None = None   # noqa: N815 (the JSON field's name)
    targetRef: _Ref | None = None   # noqa: N815
    hints: _Hints | None = None   # (absent in the usual slice: nothing is built for it)


def _decoded_hints(hints: _Hints) -> Hints | None:
    """_object_hints of the typed decoder's hints."""
    return _hints_of(hints.forZones, hints.forNodes)


class _Port(msgspec.Struct, gc=False):
    name: str | None = None
    # The API's three (a Literal: msgspec gives the one interned string, not a new one per
    # slice, so the port keys share it); any other value takes the document path.
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    port: int | None = None


class _Meta(msgspec.Struct, gc=False):
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None


class _Slice(msgspec.Struct, gc=False):
    metadata: _Meta | None = None
    addressType: str | None = None   # noqa: N815
    ports: list[_Port] | None = None
    endpoints: list[_Endpoint] | None = None


_decode_slice: Callable[[str], _Slice] = msgspec.json.Decoder(_Slice).decode


# A changed slice (slice_change_read) is read with its annotations too, for the trigger
# time the agent reports (kubeproxy_network_programming_duration_seconds); the bulk read
# of every slice skips them.
class _AnnotatedMeta(_Meta, gc=False):
    annotations: dict[str, str] | None = None


class _ChangedSlice(_Slice, gc=False):
    metadata: _AnnotatedMeta | None = None


_decode_changed_slice: Callable[[str], _ChangedSlice] = msgspec.json.Decoder(_ChangedSlice).decode


def _flags(c: _Conditions) -> tuple[bool, bool, bool]:
    """(ready, serving, terminating) as slice_document_backends reads the conditions (and
    kube-proxy: ready and serving unless false, terminating only if true)."""
    return c.ready is not False, c.serving is not False, c.terminating is True


# The flags of every conditions object the decoder can give (each field true, false or
# absent; absent conditions read as empty ones): one dict lookup per endpoint.
_MAYBE = (None, True, False)
_FLAGS: dict[_Conditions | None, tuple[bool, bool, bool]] = {
    c: _flags(c) for c in (_Conditions(r, s, t) for r in _MAYBE for s in _MAYBE for t in _MAYBE)}
_FLAGS[None] = _flags(_Conditions())


class SliceRead(NamedTuple):
    """What a bulk reader keeps of one EndpointSlice."""
    namespace: str
    name: str
    service: str | None          # the kubernetes.io/service-name label (None: no service, or a
                                 # slice kube-proxy does not list: proxied_slice_owner)
    backends: SliceBackends      # empty when `service` is None or ""


def slice_document_read(doc: dict[str, Any]) -> SliceRead:
    meta = doc.get("metadata") or {}
    owner = proxied_slice_owner(meta.get("labels"))
    return SliceRead(meta.get("namespace") or "", meta.get("name") or "", owner,
                     slice_document_backends(doc) if owner else {})


def slice_text_read(text: str) -> SliceRead:
    """A slice from its stored JSON text: what `slice_document_read` gives for the parsed
    document, read with the typed decoder above. (The SliceRead is made as a tuple is, in C,
    without the named tuple's Python-level __new__.)"""
    try:
        es = _decode_slice(text)
    except msgspec.DecodeError:   # a field of another type: the tolerant document path
        return slice_document_read(json.loads(text))
    return _decoded_slice_read(es)


def slice_change_read(text: str) -> tuple[SliceRead, str | None]:
    """A changed slice from its stored JSON text (a TextEvent's): what slice_text_read
    gives, and its last-change-trigger-time annotation (None if it has none)."""
    try:
        es = _decode_changed_slice(text)
    except msgspec.DecodeError:
        doc = json.loads(text)
        annotations = (doc.get("metadata") or {}).get("annotations")
        stamp = annotations.get(LAST_CHANGE_TRIGGER_TIME) if isinstance(annotations, dict) else None
        return slice_document_read(doc), stamp if isinstance(stamp, str) else None
    meta = es.metadata
    return _decoded_slice_read(es), meta.annotations.get(LAST_CHANGE_TRIGGER_TIME) \
        if meta is not None and meta.annotations else None


def _decoded_slice_read(es: _Slice) -> SliceRead:
    """slice_text_read of a slice the typed decoder read."""
    meta = es.metadata
    namespace, name, owner = "", "", None
    if meta is not None:
        namespace, name = meta.namespace or "", meta.name or ""
        labels = meta.labels
        if labels:   # proxied_slice_owner, inline: this runs once per slice of a full sync
            owner = labels.get(LABEL_SERVICE_NAME)
            if owner and (LABEL_SERVICE_PROXY_NAME in labels or LABEL_HEADLESS in labels):
                owner = None
    ports, endpoints = es.ports, es.endpoints
    if not owner or es.addressType not in (None, "IPv4") or not ports or not endpoints:
        return _tuple_new(SliceRead, (namespace, name, owner, {}))
    if len(ports) == 1 and ports[0].port is not None:   # the usual slice: its endpoints' one address each
        only = ports[0]
        try:
            return _tuple_new(SliceRead, (namespace, name, owner, {
                (only.name or "", only.protocol or DEFAULT_PROTOCOL): _one_port_backends(only.port, endpoints)}))
        except (TypeError, IndexError):   # an endpoint with no address
            pass
    eps = []
    for e in endpoints:
        addresses = e.addresses
        if not addresses:
            continue
        ref, hints = e.targetRef, e.hints
        eps.append((addresses, *_FLAGS[e.conditions], _NODE_NAMES[e.nodeName],
                    ref.name if ref is not None and ref.kind == "Pod" else None,
                    None if hints is None else _decoded_hints(hints)))
    keyed_ports = (((p.name or "", p.protocol or DEFAULT_PROTOCOL), p.port) for p in ports)
    return _tuple_new(SliceRead, (namespace, name, owner, _cross(keyed_ports, eps)))


def _one_port_backends(port: int, endpoints: list[_Endpoint]) -> list[Backend]:
    """The Backends of a slice with one port, in endpoint order, each endpoint's first
    address, if every endpoint has one (else TypeError or IndexError): what _cross lists
    for it, in one loop without the intermediate per-endpoint tuples."""
    out = []
    append = out.append
    flags, nodes, new = _FLAGS, _NODE_NAMES, _tuple_new
    for e in endpoints:
        ip = e.addresses[0]   # type: ignore[index] (None: TypeError; []: IndexError)
        ready, serving, terminating = flags[e.conditions]
        ref, hints = e.targetRef, e.hints
        append(new(Backend, (ip, port, ready, serving, terminating, nodes[e.nodeName],
                             None if ref is None else ref.name if ref.kind == "Pod" else None,
                             None if hints is None else _decoded_hints(hints))))
    return out


_ip = itemgetter(0)              # of a Backend
_by_address = itemgetter(0, 1)   # (ip, port) of a Backend


def merge_backends(per_slice: Iterable[SliceBackends]) -> dict[PortKey, list[Backend]]:
    """Backends by port key (name, protocol); the first slice to list (key, ip, port) wins,
    and within a slice the first listing. With one slice that repeats no (ip, port) under
    a key (the usual case), the slice's own dict: read it, do not change it."""
    if per_slice.__class__ is not list:
        per_slice = list(per_slice)
    if len(per_slice) == 1:
        only = per_slice[0]
        for backends in only.values():   # distinct ips, else distinct (ip, port): counted in C
            n = len(backends)
            if len(set(map(_ip, backends))) != n and len(set(map(_by_address, backends))) != n:
                break
        else:
            return only
    out: dict[PortKey, list[Backend]] = {}
    seen: set[tuple[PortKey, str, int]] = set()
    for backends_by_key in per_slice:
        for port_key, backends in backends_by_key.items():
            kept = out.get(port_key)
            if kept is None:
                kept = out[port_key] = []
            for b in backends:
                key = (port_key, b.ip, b.port)
                if key in seen:
                    continue
                seen.add(key)
                kept.append(b)
    return out


def backends_by_port_name(slices: list[EndpointSlice]) -> dict[PortKey, list[Backend]]:
    """The merged backends of these slices by port key (name, protocol); slices kube-proxy
    does not list (proxied_slice_owner) give none."""
    return merge_backends(slice_backends(es) for es in slices if proxied_slice_owner(es.labels))


def ipv4_family(text: str) -> bool:
    """An address or CIDR of the IPv4 family, the dataplane's (the API has validated its
    form; an IPv6 one always has a colon)."""
    return ":" not in text


def ipv4_cluster_ip(svc: Service) -> str | None:
    """The address an IPv4 dataplane serves a service's ClusterIP frontend at: its
    ClusterIP, or for a dual-stack service whose first family is IPv6 its IPv4 one
    (spec.clusterIPs); None for an IPv6 single-stack service, which kube-proxy's IPv4
    proxier skips whole."""
    spec = svc.spec
    if spec.cluster_ip and ipv4_family(spec.cluster_ip):
        return spec.cluster_ip
    return next((ip for ip in spec.cluster_ips or () if ip and ipv4_family(ip)), None)


def view_from_backends(svc: Service, backends: dict[PortKey, list[Backend]]) -> ServiceView:
    """The view of `svc` with `backends` from merge_backends, in which no port key lists
    an (ip, port) twice: so the backends sort as plain tuples, by (ip, port), without a
    key function (the tie-break on the other fields is never reached)."""
    spec = svc.spec
    vips: list[tuple[str, str]] = []
    if spec.cluster_ip and svc.proxied:
        cluster_ip = ipv4_cluster_ip(svc)
        if cluster_ip is None:   # IPv6 single-stack: nothing here (desired.py reports it)
            return ServiceView(svc, ())
        vips.append((cluster_ip, SCOPE_CLUSTER_IP))
    # The dataplane is IPv4: a dual-stack service's IPv6 addresses are not its business,
    # as kube-proxy's IPv4 proxier leaves them to the IPv6 one (serviceport.go).
    if spec.external_ips:
        vips.extend((ip, SCOPE_EXTERNAL_IP) for ip in spec.external_ips if ipv4_family(ip))
    lb = svc.status.load_balancer
    if lb is not None and lb.ingress:
        # (ipMode Proxy: the load balancer proxies to the nodes, it does not send its
        # address here; kube-proxy programs only VIP-mode addresses)
        vips.extend((i.ip, SCOPE_LOAD_BALANCER) for i in lb.ingress
                    if i.ip and ipv4_family(i.ip) and i.ip_mode in (None, "", IP_MODE_VIP))
    namespace, name = svc.namespace, svc.name
    ports = []
    one_vip = vips[0] if len(vips) == 1 else None   # the usual: the ClusterIP alone
    for sp in spec.ports or ():   # svc.ports
        port = sp.port or 0
        port_name = sp.name or ""
        protocol = sp.protocol or DEFAULT_PROTOCOL
        if one_vip is not None:   # without a comprehension's call
            frontends: tuple[tuple[str, int, str], ...] = ((one_vip[0], port, one_vip[1]),)
        else:
            frontends = tuple([(ip, port, scope) for ip, scope in vips])
        # (the dataclasses' own __init__: made by filling __dict__ at once, each view took
        # twice the memory and its fields longer to read, for no gain measurable at 10,000)
        ports.append(ServicePortView(namespace, name, port_name, protocol, port, sp.node_port,
                                     frontends, tuple(sorted(backends.get((port_name, protocol), ())))))
    return ServiceView(svc, tuple(ports))


def build_service_view(svc: Service, slices: list[EndpointSlice]) -> ServiceView:
    return view_from_backends(svc, backends_by_port_name(slices))


def read_slices(store: Any, namespace: str | None = None) -> Iterator[SliceRead]:
    """Every EndpointSlice as a SliceRead, sorted by (namespace, name): from a store that
    hands out the stored text (SqliteStore.iter_json), with the typed decoder that reads
    only the fields the backends need; from any other (EtcdStore, the Kubernetes feed), as
    parsed documents. `namespace` None: all (passed on only when set: a Source's
    iter_documents takes none)."""
    args = (EndpointSlice,) if namespace is None else (EndpointSlice, namespace)
    iter_json = getattr(store, "iter_json", None)
    if iter_json is not None:
        return map(slice_text_read, iter_json(*args))
    return map(slice_document_read, store.iter_documents(*args))


def read_services(store: Any, namespace: str | None = None) -> list[Service]:
    """Every Service, as the store's `list` gives them (from the stored text where the
    store hands it out: msgspec parses it faster than json.loads)."""
    return list(_iter_services(store, namespace))


def _iter_services(store: Any, namespace: str | None) -> Iterable[Service]:
    """read_services' Services one at a time (decoded as they are taken, from the stored
    text where there is one)."""
    args = (Service,) if namespace is None else (Service, namespace)
    iter_json = getattr(store, "iter_json", None)
    if iter_json is not None:
        return map(service_text_read, iter_json(*args))
    return store.list(*args)


def load_service_views(store: StoreReader, namespace: str | None = None) -> list[ServiceView]:
    """Every Service's view. The slices are read as stored JSON, not decoded into objects
    (the bulk of the data: 100,000 endpoints at 10,000 services x 10): see read_slices.
    Each Service's view is made as soon as it is decoded, while its objects are fresh in
    the CPU's caches (measured ~5% faster at 10,000 than decoding them all first)."""
    with paused_gc():
        per_service: dict[tuple[str, str], list[SliceBackends]] = {}
        for es in read_slices(store, namespace):
            if es.service:
                key = (es.namespace, es.service)
                slices = per_service.get(key)
                if slices is None:
                    per_service[key] = [es.backends]
                else:
                    slices.append(es.backends)
        none: list[SliceBackends] = []
        return [view_from_backends(svc, merge_backends(per_service.get((svc.namespace, svc.name), none)))
                for svc in _iter_services(store, namespace)]


_decode_json = msgspec.json.decode
_typed_service: Callable[[str], Service] = typed_decoder(Service)


def service_text_read(text: str) -> Service:
    """A Service from its stored text, as the store's `list` decodes it (Service.from_dict
    of the parsed text). The typed decoder takes the usual text straight to the objects
    (codec_typed); what it does not take as-is (an unknown field, a value the codec would
    convert or refuse) takes the dict: msgspec parses it, json.loads what msgspec refuses
    (a number out of its range), and the codec decodes it."""
    try:
        svc = _typed_service(text)
    except msgspec.DecodeError:
        try:
            doc = _decode_json(text)
        except msgspec.DecodeError:
            doc = json.loads(text)
        return Service.from_dict(doc)
    svc.api_version = svc.api_version or Service.api_version_string()   # as from_dict stamps them
    svc.kind = Service.KIND
    return svc
