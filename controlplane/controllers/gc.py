"""Garbage collection: pods whose owning Deployment is gone start terminating (background
cascading deletion), and terminating pods past their grace period are removed.

`collect_garbage` is the full pass; the incremental manager checks only the pods a change
touched (`collect_pod`), the pods of a deleted Deployment (`collect_owned_by`), and the
terminating pods from the deletionTimestamp index (`expire_due_pods`).
"""
from __future__ import annotations

import datetime as _dt

from controlplane.api.deployment import Deployment
from controlplane.api.meta import now, parse_timestamp
from controlplane.api.pod import Pod
from controlplane.store.interface import INDEX_DELETION, INDEX_OWNER, Store, StoreWriter

from .pod_lifecycle import expire_terminated_pods, terminate_pod


def collect_garbage(store: Store) -> int:
    writes = 0
    with store.transaction() as tx:
        pods = tx.list(Pod)
        if not pods:
            return 0
        writes += expire_terminated_pods(tx, pods)
        owners = {d.metadata.uid for d in tx.list(Deployment)}
        for pod in tx.list(Pod):
            ref = pod.metadata.controller_ref()
            if ref is None or ref.kind != "Deployment" or ref.uid in owners or pod.terminating:
                continue
            terminate_pod(tx, pod)
            writes += 1
    return writes


def _orphaned(tx: StoreWriter, pod: Pod) -> bool:
    ref = pod.metadata.controller_ref()
    if ref is None or ref.kind != "Deployment" or pod.terminating:
        return False
    dep = tx.try_get(Deployment, pod.namespace, ref.name or "")
    return dep is None or dep.metadata.uid != ref.uid


def collect_pod(tx: StoreWriter, namespace: str, name: str) -> int:
    """Start terminating this pod if its owning Deployment is gone; returns the writes."""
    pod = tx.try_get(Pod, namespace, name)
    if pod is None or not _orphaned(tx, pod):
        return 0
    terminate_pod(tx, pod)
    return 1


def collect_owned_by(tx: StoreWriter, namespace: str, owner_uid: str) -> int:
    """Start terminating the pods of a (deleted) owner; returns the writes."""
    return sum(collect_pod(tx, e.namespace, e.name)
               for e in tx.index_entries(Pod, INDEX_OWNER, namespace, "", owner_uid))


def expire_due_pods(tx: StoreWriter, at: _dt.datetime | None = None) -> int:
    """Delete terminating pods past their grace period, found by the deletionTimestamp index."""
    at = at or now()
    removed = 0
    for entry in tx.index_entries(Pod, INDEX_DELETION):
        if parse_timestamp(entry.value) <= at:
            tx.delete(Pod, entry.namespace, entry.name)
            removed += 1
    return removed
