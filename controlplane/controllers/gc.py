"""Garbage collection: pods whose owning Deployment is gone start terminating (background
cascading deletion), and terminating pods past their grace period are removed."""
from __future__ import annotations

from controlplane.api.deployment import Deployment
from controlplane.api.pod import Pod
from controlplane.store.interface import Store

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
