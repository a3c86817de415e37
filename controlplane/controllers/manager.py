"""The controller manager: run the controllers until nothing changes.

`reconcile(store)` is what svcctl calls after each write command, and what a runtime calls
after it changes pod status, so the store is consistent without a separate daemon.

It is incremental: the store's settings keep the resourceVersion up to which everything is
reconciled (the checkpoint), and a reconcile reads the change feed from there, turns the
changes into a dirty set (controllers.dirty) and runs the controllers for those keys only,
round after round (their own writes dirty more keys), until a round writes nothing. A store
without a checkpoint, a history compacted past it (Gone), or more unreconciled changes than
FULL_PASS_AFTER get one full pass of every controller over every object
(`reconcile_all`). Either way the whole reconcile is one store transaction, so the
checkpoint always matches what was reconciled, and two processes cannot interleave.
"""
from __future__ import annotations

from typing import Callable

from controlplane.api.errors import Gone
from controlplane.store.interface import Store, StoreWriter

from .deployments import reconcile_deployments, sync_deployment_key
from .events import committed
from .dirty import WATCHED_KINDS, DirtySet, HistoryUnknown, collect
from .endpoints import mirror_endpoints, mirror_service_endpoints, reconcile_endpoints, sync_service_endpoints
from .gc import collect_garbage, collect_owned_by, collect_pod, expire_due_pods
from .lb_ipam import reconcile_lb_ipam, sync_services as sync_lb_ipam

CONTROLLERS: tuple[Callable[[Store], int], ...] = (
    reconcile_deployments,
    collect_garbage,
    reconcile_endpoints,
    mirror_endpoints,
    reconcile_lb_ipam,
)

CHECKPOINT = "controllers.reconciledResourceVersion"
# More unreconciled changes than this: one full pass is cheaper than reading them all.
FULL_PASS_AFTER = 2000


class NoFixedPoint(RuntimeError):
    pass


def reconcile_all(store: Store, max_rounds: int = 10) -> int:
    """Full passes of every controller to a fixed point; returns the number of writes."""
    total = 0
    for _ in range(max_rounds):
        writes = sum(controller(store) for controller in CONTROLLERS)
        total += writes
        if writes == 0:
            return total
    raise NoFixedPoint(f"controllers still writing after {max_rounds} rounds")


def run_dirty(tx: StoreWriter, dirty: DirtySet) -> int:
    """One round of every controller over the keys of `dirty`, in the full pass's order."""
    writes = 0
    for namespace, name in sorted(dirty.deployments):
        writes += sync_deployment_key(tx, namespace, name)
    for namespace, uid in sorted(dirty.owners_gone):
        writes += collect_owned_by(tx, namespace, uid)
    for namespace, name in sorted(dirty.pods):
        writes += collect_pod(tx, namespace, name)
    writes += expire_due_pods(tx)
    for namespace, name in sorted(dirty.services):
        writes += sync_service_endpoints(tx, namespace, name)
    for namespace, name in sorted(dirty.services):
        writes += mirror_service_endpoints(tx, namespace, name)
    writes += sync_lb_ipam(tx, dirty.services)
    return writes


def reconcile_changes(store: Store, since: int, max_rounds: int = 10) -> int:
    """Run the controllers over what changed after resourceVersion `since` (inside a store
    transaction), to a fixed point; a full pass when the history cannot tell."""
    start = store.current_resource_version()
    seen, total = since, 0
    for _ in range(max_rounds):
        current = store.current_resource_version()
        try:
            events = store.changes_since(seen, WATCHED_KINDS) if current > seen else []
            dirty = collect(store, events, own_after=start)
        except (Gone, HistoryUnknown):
            return total + reconcile_all(store, max_rounds)
        seen = current
        writes = run_dirty(store, dirty)
        total += writes
        if writes == 0:
            return total
    raise NoFixedPoint(f"controllers still writing after {max_rounds} rounds")


def reconcile(store: Store, max_rounds: int = 10) -> int:
    """Run the controllers to a fixed point; returns the number of writes made. A pass that
    loses a commit race (etcd: someone wrote what it read) runs again."""
    return committed(store, lambda: _reconcile(store, max_rounds))


def _reconcile(store: Store, max_rounds: int) -> int:
    with store.transaction():
        start = store.current_resource_version()
        checkpoint = store.get_setting(CHECKPOINT)
        mark = int(checkpoint) if checkpoint is not None and checkpoint.isdigit() else None
        if mark is None or not 0 <= start - mark <= FULL_PASS_AFTER:
            writes = reconcile_all(store, max_rounds)
        else:
            writes = reconcile_changes(store, mark, max_rounds)
        # The checkpoint: every change up to here has been looked at. A store whose versions
        # inside a transaction are provisional (etcd's commit revision is known only after the
        # commit) records the start when the pass wrote: the next pass looks at these writes
        # once more (nothing comes of it) rather than skipping someone else's later change.
        provisional = getattr(store, "provisional_versions", False)
        done = str(start if writes and provisional else store.current_resource_version())
        if done != checkpoint:
            store.put_setting(CHECKPOINT, done)
    return writes
