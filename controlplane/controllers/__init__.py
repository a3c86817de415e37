"""Controllers: the registry (write path with allocation), the allocators, and the
deployment / endpoints / mirroring / garbage-collection controllers run by manager.reconcile.

Public entry points:
    Registry(store).apply(manifests, namespace)   # all-or-nothing apply/create
    reconcile(store)                              # run controllers to a fixed point
    runtime.set_pod_status / pods_to_start / ...  # for the pod runtime (lab)
    service_view.load_service_views(store)        # for the agent
"""
from .config import ClusterConfig
from .manager import reconcile
from .registry import BatchError, Manifest, Outcome, Registry, bootstrap

__all__ = ["ClusterConfig", "Registry", "Manifest", "Outcome", "BatchError", "bootstrap", "reconcile"]
