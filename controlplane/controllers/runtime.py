"""The API a pod runtime (the lab) uses: find pods to start or stop, report their status.

    from controlplane.controllers.runtime import pods_to_start, set_pod_status, pods_to_stop, finish_pod
    for pod in pods_to_start(store):                 # Pending, no IP, not terminating
        ip = start_it(pod)                           # schedule + run it somewhere
        set_pod_status(store, pod.namespace, pod.name, node_name="node1", pod_ip=ip,
                       phase="Running", ready=True)  # endpoints follow (reconcile runs)
    for pod in pods_to_stop(store):                  # terminating (deletionTimestamp set)
        stop_it(pod); finish_pod(store, pod.namespace, pod.name)

Every write retries on Conflict and then runs the controllers to a fixed point (pass
reconcile_after=False to batch several updates and call manager.reconcile yourself).
"""
from __future__ import annotations

from controlplane.api.errors import Conflict, NotFound
from controlplane.api.meta import format_timestamp, now
from controlplane.api.pod import RUNNING, ContainerStatus, Pod, PodCondition, PodIP
from controlplane.store.interface import Store

from .manager import reconcile

_RETRIES = 20


def pods_to_start(store: Store, namespace: str | None = None) -> list[Pod]:
    return [p for p in store.list(Pod, namespace) if not p.ip and not p.terminating and p.phase == "Pending"]


def pods_to_stop(store: Store, namespace: str | None = None) -> list[Pod]:
    return [p for p in store.list(Pod, namespace) if p.terminating]


def _conditions(pod: Pod, ready: bool, scheduled: bool) -> list[PodCondition]:
    stamp = format_timestamp(now())
    previous = {c.type: c for c in pod.status.conditions or []}
    out = []
    for ctype, value in (("Initialized", True), ("Ready", ready), ("ContainersReady", ready), ("PodScheduled", scheduled)):
        status = "True" if value else "False"
        old = previous.get(ctype)
        changed_at = old.last_transition_time if old and old.status == status else stamp
        out.append(PodCondition(type=ctype, status=status, last_transition_time=changed_at))
    return out


def set_pod_status(store: Store, namespace: str, name: str, *, phase: str | None = None,
                   pod_ip: str | None = None, node_name: str | None = None, host_ip: str | None = None,
                   ready: bool | None = None, reconcile_after: bool = True) -> Pod:
    """Record what the runtime did to a pod (only the arguments given change)."""
    for _ in range(_RETRIES):
        pod = store.get(Pod, namespace, name)
        if node_name is not None:
            pod.spec.node_name = node_name
        if host_ip is not None:
            pod.status.host_ip = host_ip
        if pod_ip is not None:
            pod.status.pod_ip = pod_ip or None
            pod.status.pod_ips = [PodIP(ip=pod_ip)] if pod_ip else None
        if phase is not None:
            pod.status.phase = phase
            if phase == RUNNING and not pod.status.start_time:
                pod.status.start_time = format_timestamp(now())
        is_ready = pod.ready if ready is None else ready
        pod.status.conditions = _conditions(pod, is_ready, pod.node_name is not None)
        pod.status.container_statuses = [
            ContainerStatus(name=c.name, image=c.image, ready=is_ready, started=pod.phase == RUNNING,
                            restart_count=_restarts(pod, c.name))
            for c in pod.containers
        ]
        try:
            store.update(pod)
            break
        except Conflict:
            continue
    else:
        raise Conflict("pods", name)
    if reconcile_after:
        reconcile(store)
    return pod


def _restarts(pod: Pod, container: str | None) -> int:
    for status in pod.status.container_statuses or []:
        if status.name == container:
            return status.restart_count or 0
    return 0


def finish_pod(store: Store, namespace: str, name: str, reconcile_after: bool = True) -> bool:
    """The runtime stopped a pod: remove its object. False if it was already gone."""
    try:
        store.delete(Pod, namespace, name)
    except NotFound:
        return False
    if reconcile_after:
        reconcile(store)
    return True
