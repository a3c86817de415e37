"""Controllers: the registry (write path with allocation), the allocators, and the
deployment / endpoints / mirroring / garbage-collection controllers run by manager.reconcile.

Public entry points:
    Registry(store).apply(manifests, namespace)   # all-or-nothing apply/create
    reconcile(store)                              # run controllers to a fixed point
    runtime.set_pod_status / pods_to_start / ...  # for the pod runtime (lab)
    service_view.load_service_views(store)        # for the agent
"""
from __future__ import annotations

import importlib

# Imported on first use (PEP 562): a read-only command that needs one small module of
# this package (events, service_view) must not pay ~100 ms for the registry and manager.
_EXPORTS = {"ClusterConfig": ".config", "reconcile": ".manager", "BatchError": ".registry",
            "Manifest": ".registry", "Outcome": ".registry", "Registry": ".registry",
            "bootstrap": ".registry"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
