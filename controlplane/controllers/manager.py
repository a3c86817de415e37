"""The controller manager: run every controller until nothing changes.

`reconcile(store)` is what svcctl calls after each write command, and what a runtime calls
after it changes pod status, so the store is consistent without a separate daemon.
"""
from __future__ import annotations

from typing import Callable

from controlplane.store.interface import Store

from .deployments import reconcile_deployments
from .endpoints import mirror_endpoints, reconcile_endpoints
from .gc import collect_garbage

CONTROLLERS: tuple[Callable[[Store], int], ...] = (
    reconcile_deployments,
    collect_garbage,
    reconcile_endpoints,
    mirror_endpoints,
)


class NoFixedPoint(RuntimeError):
    pass


def reconcile(store: Store, max_rounds: int = 10) -> int:
    """Run the controllers to a fixed point; returns the number of writes made."""
    total = 0
    for _ in range(max_rounds):
        writes = sum(controller(store) for controller in CONTROLLERS)
        total += writes
        if writes == 0:
            return total
    raise NoFixedPoint(f"controllers still writing after {max_rounds} rounds")
