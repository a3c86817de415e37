"""Endpoints + EndpointSlice controller, and the EndpointSlice mirroring controller.

`reconcile_endpoints(store)` makes, for every Service with a selector (not ExternalName),
an Endpoints object named after the Service and EndpointSlices labelled
`kubernetes.io/service-name=<svc>` / managed-by `endpointslice-controller.k8s.io`, from the
pods the selector matches (see endpoint_builder for the rules). Objects it manages for
Services that are gone, have lost their selector, or became ExternalName are deleted.
Services without a selector keep user-written Endpoints; `mirror` copies those into slices
managed by `endpointslicemirroring-controller.k8s.io`. Writes happen only when content
changes, so a second pass is a no-op.

Each controller has a full pass (`reconcile_endpoints`, `mirror_endpoints`: list every
object once) and a pass over one service (`sync_service_endpoints`,
`mirror_service_endpoints`: index lookups only), which the incremental manager runs for the
services a change touched. Both end in the same per-service function.
"""
from __future__ import annotations

from collections import defaultdict

from controlplane.api.codec import encode
from controlplane.api.endpoints import (LAST_CHANGE_TRIGGER_TIME, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SKIP_MIRROR,
                                        MANAGED_BY_CONTROLLER, MANAGED_BY_MIRRORING, Endpoint,
                                        EndpointConditions, EndpointPort, Endpoints, EndpointSlice)
from controlplane.api.meta import ApiObject, ObjectMeta, OwnerReference, now
from controlplane.api.pod import Pod
from controlplane.api.selectors import EQUALS, Requirement, Selector
from controlplane.api.service import EXTERNAL_NAME, LABEL_HEADLESS, Service
from controlplane.store.interface import Store, StoreWriter

from .events import WARNING, emit
from .endpoint_builder import SliceContent, build_slices, build_subsets
from .names import Names, StoreNames, random_suffix


def _owner(obj: ApiObject) -> OwnerReference:
    return OwnerReference(api_version=obj.api_version_string(), kind=obj.KIND, name=obj.name,
                          uid=obj.metadata.uid, controller=True, block_owner_deletion=True)


def _managed_labels(svc: Service, managed_by: str | None) -> dict[str, str]:
    labels = dict(svc.labels)
    if svc.is_headless:
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_SERVICE_NAME] = svc.name
    if managed_by:
        labels[LABEL_MANAGED_BY] = managed_by
    return labels


def _sync_endpoints(tx: StoreWriter, svc: Service, pods: list[Pod], live: Endpoints | None) -> int:
    labels = dict(svc.labels)
    if svc.is_headless:
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_SKIP_MIRROR] = "true"
    subsets = build_subsets(svc, pods) or None
    had = _ready_addresses(live.subsets if live is not None else None)
    if had and not _ready_addresses(subsets):
        emit(svc, WARNING, "NoReadyEndpoints", f"Endpoints empty: none of the service's {had} ready endpoints "
             "is left; new connections are refused (TCP RST / ICMP port unreachable)", "endpoint-controller")
    if live is None:
        tx.create(Endpoints(metadata=ObjectMeta(name=svc.name, namespace=svc.namespace, labels=labels), subsets=subsets))
        return 1
    if live.labels == labels and [encode(s) for s in live.subsets or []] == [encode(s) for s in subsets or []]:
        return 0
    live.metadata.labels = labels
    live.subsets = subsets
    tx.update(live)
    return 1


def trigger_time() -> str:
    """Now, as endpoints.kubernetes.io/last-change-trigger-time (RFC 3339, microseconds).
    Kubernetes writes the time the triggering pod or service change was observed; the
    controllers here run right after the change that woke them, so the time of the write
    stands for it (kube-proxy's network programming latency starts from it)."""
    return now().isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ready_addresses(subsets: list | None) -> int:
    return sum(len(s.addresses or []) for s in subsets or [])


def _same_slice(live: EndpointSlice, want: SliceContent, labels: dict[str, str]) -> bool:
    return (live.labels == labels
            and [encode(p) for p in live.ports or []] == [encode(p) for p in want.ports]
            and [encode(e) for e in live.endpoints or []] == [encode(e) for e in want.endpoints])


def _sync_slices(tx: StoreWriter, owner: ApiObject, service_name: str, wanted: list[SliceContent],
                 labels: dict[str, str], live: list[EndpointSlice], taken: Names) -> int:
    """Make the slices of one owner match `wanted`, reusing slices with the same ports."""
    writes = 0
    unused = list(live)
    todo: list[SliceContent] = []
    for want in wanted:  # first pass: keep slices that already match exactly
        match = next((s for s in unused if _same_slice(s, want, labels)), None)
        if match is not None:
            unused.remove(match)
        else:
            todo.append(want)
    for want in todo:
        key = want.port_key()
        reuse = next((s for s in unused if SliceContent(s.ports or [], []).port_key() == key), None)
        if reuse is None and unused:
            reuse = unused[0]
        if reuse is not None:
            unused.remove(reuse)
            reuse.metadata.labels = labels
            reuse.metadata.annotations = {**reuse.annotations, LAST_CHANGE_TRIGGER_TIME: trigger_time()}
            reuse.ports = want.ports or None
            reuse.endpoints = want.endpoints or None
            tx.update(reuse)
        else:
            name = f"{service_name}-{random_suffix()}"
            while name in taken:
                name = f"{service_name}-{random_suffix()}"
            taken.add(name)
            tx.create(EndpointSlice(
                metadata=ObjectMeta(name=name, generate_name=f"{service_name}-", namespace=owner.namespace,
                                    labels=labels, owner_references=[_owner(owner)],
                                    annotations={LAST_CHANGE_TRIGGER_TIME: trigger_time()}),
                address_type="IPv4", ports=want.ports or None, endpoints=want.endpoints or None))
        writes += 1
    for stale in unused:
        tx.delete(EndpointSlice, stale.namespace, stale.name)
        writes += 1
    return writes


def _slices_of(service_name: str, managed_by: str) -> Selector:
    """A service's slices made by one controller (service-name first: `list` seeks the
    label index with the first key=value requirement)."""
    return Selector((Requirement(LABEL_SERVICE_NAME, EQUALS, (service_name,)),
                     Requirement(LABEL_MANAGED_BY, EQUALS, (managed_by,))))


def _wants_endpoints(svc: Service | None) -> bool:
    return svc is not None and svc.type != EXTERNAL_NAME and svc.has_selector


def _is_managed(ep: Endpoints | None) -> bool:
    return ep is not None and ep.labels.get(LABEL_SKIP_MIRROR) == "true"


def _sync_service(tx: StoreWriter, namespace: str, name: str, svc: Service | None, pods: list[Pod],
                  managed_ep: Endpoints | None, slices: list[EndpointSlice], taken: Names) -> int:
    """The Endpoints and EndpointSlice controllers for one service key; `pods` are the pods
    its selector matches, `managed_ep` / `slices` what the controller made for the key."""
    writes = 0
    if svc is None or not _wants_endpoints(svc):  # service gone, selector removed, or ExternalName
        if managed_ep is not None:
            tx.delete(Endpoints, namespace, name)
            writes += 1
        for es in slices:
            tx.delete(EndpointSlice, es.namespace, es.name)
            writes += 1
        return writes
    if managed_ep is None:  # a user-written Endpoints of that name is taken over, as Kubernetes does
        managed_ep = tx.try_get(Endpoints, namespace, name)
    writes += _sync_endpoints(tx, svc, pods, managed_ep)
    live_slices = []
    for es in slices:
        if _owned_by(es, svc):
            live_slices.append(es)
        else:  # left over from an earlier Service of the same name
            tx.delete(EndpointSlice, es.namespace, es.name)
            writes += 1
    writes += _sync_slices(tx, svc, svc.name, build_slices(svc, pods),
                           _managed_labels(svc, MANAGED_BY_CONTROLLER), live_slices, taken)
    return writes


def sync_service_endpoints(tx: StoreWriter, namespace: str, name: str) -> int:
    """The Endpoints and EndpointSlice controllers for one service; returns the writes."""
    svc = tx.try_get(Service, namespace, name)
    ep = tx.try_get(Endpoints, namespace, name)
    slices = tx.list(EndpointSlice, namespace, _slices_of(name, MANAGED_BY_CONTROLLER))
    pods: list[Pod] = []
    if svc is not None and _wants_endpoints(svc):
        pods = tx.list(Pod, namespace, Selector.from_labels(svc.spec.selector))
    return _sync_service(tx, namespace, name, svc, pods, ep if _is_managed(ep) else None, slices,
                         StoreNames(tx, EndpointSlice, namespace))


def reconcile_endpoints(store: Store) -> int:
    """One full pass of the Endpoints and EndpointSlice controllers; returns the number of writes."""
    writes = 0
    with store.transaction() as tx:
        services = {s.key: s for s in tx.list(Service)}
        pods_by_ns: dict[str, list[Pod]] = defaultdict(list)
        for pod in tx.list(Pod):
            pods_by_ns[pod.namespace].append(pod)
        managed_eps = {e.key: e for e in tx.list(Endpoints, selector=Selector.parse(f"{LABEL_SKIP_MIRROR}=true"))}
        slices_by_svc: dict[str, list[EndpointSlice]] = defaultdict(list)
        taken: set[str] = set()
        for es in tx.list(EndpointSlice, selector=Selector.parse(f"{LABEL_MANAGED_BY}={MANAGED_BY_CONTROLLER}")):
            slices_by_svc[f"{es.namespace}/{es.labels.get(LABEL_SERVICE_NAME, '')}"].append(es)
            taken.add(es.name)
        for key in sorted(set(services) | set(managed_eps) | set(slices_by_svc)):
            namespace, name = key.split("/", 1)
            svc = services.get(key)
            pods: list[Pod] = []
            if svc is not None and _wants_endpoints(svc):
                selector = Selector.from_labels(svc.spec.selector)
                pods = [p for p in pods_by_ns[namespace] if selector.matches(p.labels)]
            writes += _sync_service(tx, namespace, name, svc, pods, managed_eps.get(key),
                                    slices_by_svc.get(key, []), taken)
    return writes


def _owned_by(es: EndpointSlice, owner: ApiObject) -> bool:
    ref = es.metadata.controller_ref()
    return ref is not None and ref.uid == owner.metadata.uid


def _mirrored_content(ep: Endpoints) -> list[SliceContent]:
    out: list[SliceContent] = []
    for subset in ep.subsets or []:
        ports = [EndpointPort(name=p.name, port=p.port, protocol=p.protocol or "TCP", app_protocol=p.app_protocol)
                 for p in subset.ports or []]
        endpoints = []
        for ready, addrs in ((True, subset.addresses), (False, subset.not_ready_addresses)):
            for a in addrs or []:
                endpoints.append(Endpoint(addresses=[a.ip or ""], hostname=a.hostname, node_name=a.node_name,
                                          target_ref=a.target_ref,
                                          conditions=EndpointConditions(ready=ready, serving=ready, terminating=False)))
        out.append(SliceContent(ports, endpoints))
    return out


def _mirror_service(tx: StoreWriter, svc: Service | None, user_ep: Endpoints | None,
                    mirrored: list[EndpointSlice], taken: Names) -> int:
    """The mirroring controller for one key: `user_ep` is the user-written Endpoints of the
    key (if any), `mirrored` the slices mirroring made for it."""
    writes = 0
    if user_ep is None or svc is None or svc.has_selector or svc.type == EXTERNAL_NAME:
        for es in mirrored:
            tx.delete(EndpointSlice, es.namespace, es.name)
            writes += 1
        return writes
    labels = dict(user_ep.labels)
    labels[LABEL_SERVICE_NAME] = user_ep.name
    labels[LABEL_MANAGED_BY] = MANAGED_BY_MIRRORING
    live = []
    for es in mirrored:
        if _owned_by(es, user_ep):
            live.append(es)
        else:
            tx.delete(EndpointSlice, es.namespace, es.name)
            writes += 1
    wanted = [c for c in _mirrored_content(user_ep) if c.endpoints]
    return writes + _sync_slices(tx, user_ep, user_ep.name, wanted, labels, live, taken)


def mirror_service_endpoints(tx: StoreWriter, namespace: str, name: str) -> int:
    """EndpointSlice mirroring for one service key; returns the writes."""
    ep = tx.try_get(Endpoints, namespace, name)
    user_ep = None if ep is None or _is_managed(ep) else ep
    mirrored = tx.list(EndpointSlice, namespace, _slices_of(name, MANAGED_BY_MIRRORING))
    if user_ep is None and not mirrored:
        return 0
    svc = tx.try_get(Service, namespace, name)
    return _mirror_service(tx, svc, user_ep, mirrored, StoreNames(tx, EndpointSlice, namespace))


def mirror_endpoints(store: Store) -> int:
    """One full pass of EndpointSlice mirroring: user-written Endpoints of selector-less
    Services -> slices."""
    writes = 0
    with store.transaction() as tx:
        mirrored: dict[str, list[EndpointSlice]] = defaultdict(list)
        taken: set[str] = set()
        for es in tx.list(EndpointSlice, selector=Selector.parse(f"{LABEL_MANAGED_BY}={MANAGED_BY_MIRRORING}")):
            mirrored[f"{es.namespace}/{es.labels.get(LABEL_SERVICE_NAME, '')}"].append(es)
            taken.add(es.name)
        user_endpoints = {e.key: e for e in tx.list(Endpoints, selector=Selector.parse(f"{LABEL_SKIP_MIRROR}!=true"))}
        if not user_endpoints and not mirrored:
            return 0
        services = {s.key: s for s in tx.list(Service)}
        for key in sorted(set(user_endpoints) | set(mirrored)):
            writes += _mirror_service(tx, services.get(key), user_endpoints.get(key), mirrored.get(key, []), taken)
    return writes
