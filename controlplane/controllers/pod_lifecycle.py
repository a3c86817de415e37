"""Pod termination rules shared by the registry (kubectl delete pod) and the controllers.

A pod that never reached a node is deleted at once. A pod on a node gets a
`deletionTimestamp` (now + grace period) and stays, terminating, until the runtime reports it
stopped (`runtime.finish_pod`) or the grace period runs out (`expire_terminated_pods`).
"""
from __future__ import annotations

import datetime as _dt

from controlplane.api.meta import format_timestamp, now, parse_timestamp
from controlplane.api.pod import Pod
from controlplane.store.interface import StoreWriter


def terminate_pod(tx: StoreWriter, pod: Pod, grace_period: int | None = None) -> bool:
    """Start deleting `pod`. Returns True if the object is gone now, False if terminating."""
    if not pod.node_name or grace_period == 0:
        tx.delete(Pod, pod.namespace, pod.name)
        return True
    if pod.metadata.deletion_timestamp is None:
        grace = grace_period if grace_period is not None else (pod.spec.termination_grace_period_seconds or 30)
        pod.metadata.deletion_grace_period_seconds = grace
        pod.metadata.deletion_timestamp = format_timestamp(now() + _dt.timedelta(seconds=grace))
        tx.update(pod)
    return False


def expire_terminated_pods(tx: StoreWriter, pods: list[Pod], at: _dt.datetime | None = None) -> int:
    """Delete terminating pods whose grace period has passed; returns how many."""
    at = at or now()
    removed = 0
    for pod in pods:
        ts = pod.metadata.deletion_timestamp
        if ts is not None and parse_timestamp(ts) <= at:
            tx.delete(Pod, pod.namespace, pod.name)
            removed += 1
    return removed
