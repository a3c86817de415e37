"""Deployment controller: keep `spec.replicas` pods of the current template, report status.

There are no ReplicaSet objects: pods are owned by their Deployment directly (a controller
ownerReference) and carry the `pod-template-hash` label of the template they were made
from. A template change replaces all pods at once (old ones terminate as new ones are
created). Scaling down removes the least useful pods first (unscheduled, then pending, then
not ready, then the youngest), as the ReplicaSet controller does.

New pods are `Pending` with no node and no IP; the runtime (the lab) schedules and starts
them and reports status through controllers.runtime.

`reconcile_deployments` is the full pass; `sync_deployment_key` runs one Deployment from
index lookups (its pods by owner uid), for the incremental manager.
"""
from __future__ import annotations

import copy
from collections import defaultdict

from controlplane.api.deployment import Deployment, DeploymentStatus
from controlplane.api.meta import ObjectMeta, OwnerReference
from controlplane.api.pod import PENDING, Pod, PodStatus
from controlplane.store.interface import INDEX_OWNER, Store, StoreWriter

from .names import Names, StoreNames, random_suffix, template_hash
from .pod_lifecycle import terminate_pod

LABEL_TEMPLATE_HASH = "pod-template-hash"


def owned_by(pod: Pod, owner_uid: str | None) -> bool:
    ref = pod.metadata.controller_ref()
    return ref is not None and owner_uid is not None and ref.uid == owner_uid


def new_pod(dep: Deployment, hash_: str, taken: Names) -> Pod:
    template = dep.spec.template
    prefix = f"{dep.name}-{hash_}-"
    name = prefix + random_suffix()
    while name in taken:
        name = prefix + random_suffix()
    taken.add(name)
    labels = dict(template.metadata.labels or {})
    labels[LABEL_TEMPLATE_HASH] = hash_
    return Pod(
        metadata=ObjectMeta(
            name=name, generate_name=prefix, namespace=dep.namespace, labels=labels,
            annotations=dict(template.metadata.annotations) if template.metadata.annotations else None,
            owner_references=[OwnerReference(api_version="apps/v1", kind="Deployment", name=dep.name,
                                             uid=dep.metadata.uid, controller=True, block_owner_deletion=True)],
        ),
        spec=copy.deepcopy(template.spec),
        status=PodStatus(phase=PENDING),
    )


def _scale_down_rank(pod: Pod) -> tuple:
    """Lower sorts first = deleted first."""
    return (
        pod.node_name is not None,
        pod.phase != PENDING,
        pod.ready,
        # younger first: invert the timestamp's order by sorting on its negation below
        tuple(-ord(c) for c in (pod.metadata.creation_timestamp or "")),
    )


def _status(dep: Deployment, active: list[Pod], current: list[Pod]) -> DeploymentStatus:
    ready = sum(1 for p in active if p.ready)
    available = ready
    status = DeploymentStatus(
        observed_generation=dep.metadata.generation,
        replicas=len(active),
        updated_replicas=len(current),
        ready_replicas=ready,
        available_replicas=available,
        unavailable_replicas=max(dep.replicas - available, 0),
    )
    ok = available >= dep.replicas
    status.conditions = [{
        "type": "Available",
        "status": "True" if ok else "False",
        "reason": "MinimumReplicasAvailable" if ok else "MinimumReplicasUnavailable",
        "message": "Deployment has minimum availability." if ok else "Deployment does not have minimum availability.",
    }]
    return status


def sync_deployment(tx: StoreWriter, dep: Deployment, pods: list[Pod], taken: Names | None = None) -> int:
    """One deployment's pass; `pods` are the namespace's pods (at least the ones it owns),
    `taken` the pod names in use (default: the names of `pods`). Returns the number of writes."""
    writes = 0
    hash_ = template_hash(dep.spec.template)
    owned = [p for p in pods if owned_by(p, dep.metadata.uid)]
    active = [p for p in owned if not p.terminating]
    current = [p for p in active if p.labels.get(LABEL_TEMPLATE_HASH) == hash_]
    for pod in active:
        if pod.labels.get(LABEL_TEMPLATE_HASH) != hash_:
            terminate_pod(tx, pod)
            writes += 1
    missing = dep.replicas - len(current)
    if taken is None:
        taken = {p.name for p in pods}
    if missing > 0:
        for _ in range(missing):
            pod = new_pod(dep, hash_, taken)
            tx.create(pod)
            current.append(pod)
            writes += 1
    elif missing < 0:
        victims = sorted(current, key=_scale_down_rank)[:-missing]
        for pod in victims:
            terminate_pod(tx, pod)
            writes += 1
        victim_names = {p.name for p in victims}
        current = [p for p in current if p.name not in victim_names]
    status = _status(dep, current, current)
    if status != dep.status:
        dep.status = status
        before = dep.resource_version
        if tx.update(dep).resource_version != before:
            writes += 1
    return writes


def reconcile_deployments(store: Store) -> int:
    """Run every Deployment once; returns the number of writes (0 = nothing to do)."""
    writes = 0
    with store.transaction() as tx:
        deployments = tx.list(Deployment)
        if not deployments:
            return 0
        pods_by_ns: dict[str, list[Pod]] = defaultdict(list)
        for pod in tx.list(Pod):
            pods_by_ns[pod.namespace].append(pod)
        for dep in deployments:
            writes += sync_deployment(tx, dep, pods_by_ns[dep.namespace])
    return writes


def owned_pods(tx: StoreWriter, dep: Deployment) -> list[Pod]:
    """The pods whose ownerReferences name this Deployment's uid (an index lookup)."""
    if not dep.metadata.uid:
        return []
    names = [e.name for e in tx.index_entries(Pod, INDEX_OWNER, dep.namespace, "", dep.metadata.uid)]
    return [p for p in (tx.try_get(Pod, dep.namespace, n) for n in names) if p is not None]


def sync_deployment_key(tx: StoreWriter, namespace: str, name: str) -> int:
    """Run one Deployment (if it exists); returns the number of writes."""
    dep = tx.try_get(Deployment, namespace, name)
    if dep is None:
        return 0
    return sync_deployment(tx, dep, owned_pods(tx, dep), StoreNames(tx, Pod, namespace))
