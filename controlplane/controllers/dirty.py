"""From store changes to the keys the controllers must look at again (the dirty set).

    dirty = collect(store, store.changes_since(rv, WATCHED_KINDS), own_after=start_rv)

- a Service change dirties that service (its Endpoints, slices and mirrored slices);
- an Endpoints change dirties its service (mirroring; or a managed object someone edited);
- an EndpointSlice change dirties the service named by its old and new
  `kubernetes.io/service-name` label;
- a Pod change dirties the services in its namespace whose selector matches the pod's old
  or new labels (found through the store's selector index, then checked), the Deployment
  that owns it, and the pod itself (the garbage collector checks its owner still exists);
- a Deployment change dirties that Deployment; a deletion also marks its uid, so the
  garbage collector terminates the pods it owned.

Changes the controllers made themselves in this reconcile (resourceVersion after
`own_after`) to Endpoints, EndpointSlices and Deployments need no second look: the
controller wrote what it wanted. Their Pod writes do (services and owners follow pods).
A MODIFIED event without the labels before it (a change recorded by an older store) raises
HistoryUnknown: the caller runs a full pass instead.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from controlplane.api.deployment import Deployment
from controlplane.api.endpoints import LABEL_SERVICE_NAME, Endpoints, EndpointSlice
from controlplane.api.meta import ApiObject
from controlplane.api.pod import Pod
from controlplane.api.selectors import Selector
from controlplane.api.service import Service
from controlplane.store.interface import DELETED, INDEX_SELECTOR, MODIFIED, StoreReader, WatchEvent

Key = tuple[str, str]   # (namespace, name), or (namespace, uid) for owners_gone

WATCHED_KINDS: tuple[type[ApiObject], ...] = (Service, Endpoints, EndpointSlice, Pod, Deployment)


class HistoryUnknown(Exception):
    """A change does not say enough to know what it touched; run a full pass."""


@dataclass
class DirtySet:
    services: set[Key] = field(default_factory=set)
    deployments: set[Key] = field(default_factory=set)
    pods: set[Key] = field(default_factory=set)          # check: is the owner still there?
    owners_gone: set[Key] = field(default_factory=set)   # deleted Deployments: (namespace, uid)

    def __bool__(self) -> bool:
        return bool(self.services or self.deployments or self.pods or self.owners_gone)


def _label_sets(event: WatchEvent) -> list[dict[str, str]]:
    """The object's labels, and its labels before the change when they differ."""
    labels = event.object.labels
    if event.type != MODIFIED:
        return [labels]
    if event.previous_labels is None:
        raise HistoryUnknown(f"{event.object.KIND} {event.object.key}: change {event.resource_version} "
                             "has no previous labels")
    return [labels] if event.previous_labels == labels else [labels, event.previous_labels]


def services_selecting(store: StoreReader, namespace: str, label_sets: list[dict[str, str]]) -> set[str]:
    """Names of the services in `namespace` whose selector matches any of `label_sets`: the
    selector index gives the services sharing at least one key=value with a set, and only
    those are read and checked."""
    candidates: set[str] = set()
    for labels in label_sets:
        for key, value in labels.items():
            candidates.update(e.name for e in store.index_entries(Service, INDEX_SELECTOR, namespace, key, value))
    matched = set()
    for name in candidates:
        svc = store.try_get(Service, namespace, name)
        if svc is None:
            continue
        selector = Selector.from_labels(svc.spec.selector)
        if any(selector.matches(labels) for labels in label_sets):
            matched.add(name)
    return matched


def collect(store: StoreReader, events: list[WatchEvent], own_after: int) -> DirtySet:
    """The dirty set of `events` (oldest first); events after `own_after` are the
    controllers' own writes."""
    dirty = DirtySet()
    pod_labels: dict[str, dict[frozenset, dict[str, str]]] = defaultdict(dict)
    for event in events:
        obj = event.object
        namespace, name, own = obj.namespace or "", obj.name, event.resource_version > own_after
        kind = obj.KIND
        if kind == Service.KIND:
            dirty.services.add((namespace, name))
        elif kind == Endpoints.KIND:
            if not own:
                dirty.services.add((namespace, name))
        elif kind == EndpointSlice.KIND:
            if not own:
                for labels in _label_sets(event):
                    service = labels.get(LABEL_SERVICE_NAME)
                    if service:
                        dirty.services.add((namespace, service))
        elif kind == Pod.KIND:
            for labels in _label_sets(event):
                if labels:
                    pod_labels[namespace][frozenset(labels.items())] = labels
            ref = obj.metadata.controller_ref()
            if ref is not None and ref.kind == Deployment.KIND and ref.name:
                dirty.deployments.add((namespace, ref.name))
            if not own and event.type != DELETED:
                dirty.pods.add((namespace, name))
        elif kind == Deployment.KIND:
            if not own:
                dirty.deployments.add((namespace, name))
                if event.type == DELETED and obj.metadata.uid:
                    dirty.owners_gone.add((namespace, obj.metadata.uid))
    for namespace, label_sets in pod_labels.items():
        dirty.services.update((namespace, n) for n in services_selecting(store, namespace, list(label_sets.values())))
    return dirty
