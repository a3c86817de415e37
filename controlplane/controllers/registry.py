"""The write path: what the apiserver does between a request and the store.

`Registry(store)` bootstraps the store on first use (settings, built-in namespaces, the
`default/kubernetes` Service), then offers:

- `apply(manifests, namespace, mode)`: kubectl apply / create for many documents, all or
  nothing: every document is decoded, merged (apply), defaulted and validated before anything
  is written, and allocation failures roll the whole batch back. Raises BatchError listing
  every failing document.
- `create(obj)`, `update(obj)`: one object, defaulted, validated and allocated.
- `delete(cls, namespace, name, grace_period)`: Services release their allocations; Pods on
  a node terminate gracefully (deletionTimestamp) unless grace_period is 0.

The controllers (deployments, endpoints) write through the store directly: their objects are
produced valid.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from controlplane.api import validation
from controlplane.api.defaults import apply_defaults
from controlplane.api.deployment import Deployment
from controlplane.api.errors import AlreadyExists, ApiError, BadRequest, Conflict, Invalid, NotFound
from controlplane.api.kinds import KINDS, UnknownKind, object_from_dict
from controlplane.api.merge import LAST_APPLIED, merge_keys_of, three_way_merge
from controlplane.api.meta import ApiObject, ObjectMeta
from controlplane.api.namespace import BUILTIN_NAMESPACES, Namespace
from controlplane.api.pod import PENDING, Pod
from controlplane.api.service import Service, ServicePort, ServiceSpec, ServiceStatus
from controlplane.api.service_update import drop_type_dependent_fields, normalize_cluster_ips, patch_allocated_values
from controlplane.store.interface import Store, StoreWriter, retry_commit

from .batch import BatchError, Failure, Manifest, Refused  # noqa: F401 (re-exported)
from .events import committed
from .config import ClusterConfig, ConfigError, load_config, save_config
from .names import generated_name
from .pod_lifecycle import terminate_pod
from .service_allocation import ServiceAllocations

CREATED = "created"
CONFIGURED = "configured"
UNCHANGED = "unchanged"

MODE_APPLY = "apply"
MODE_CREATE = "create"


@dataclass
class Outcome:
    obj: ApiObject
    action: str  # created | configured | unchanged


@dataclass
class _Plan:
    manifest: Manifest | None
    new: ApiObject
    live: ApiObject | None
    key: tuple[str, str, str] = field(default=("", "", ""))


def _key(obj: ApiObject) -> tuple[str, str, str]:
    return (obj.KIND, obj.namespace, obj.name)


class Registry:
    def __init__(self, store: Store, config: ClusterConfig | None = None) -> None:
        self.store = store
        self.config = bootstrap(store, config)

    # ------------------------------------------------------------------ batch apply/create
    def apply(self, manifests: list[Manifest], namespace: str = "default", mode: str = MODE_APPLY) -> list[Outcome]:
        return committed(self.store, lambda: self._apply(manifests, namespace, mode))

    def _apply(self, manifests: list[Manifest], namespace: str, mode: str) -> list[Outcome]:
        with self.store.transaction() as tx:
            pending_namespaces: set[str] = set()
            plans: list[_Plan] = []
            failures: list[Failure] = []
            for m in manifests:
                try:
                    plans.append(self._plan_manifest(tx, m, namespace, mode, pending_namespaces))
                except (ApiError, UnknownKind, Refused) as exc:
                    # (a Conflict here is a stale precondition: the object exists, the
                    # apply would have patched it)
                    failures.append(self._failure(m, exc, namespace, patching=isinstance(exc, Conflict)))
            # The valid ones are applied even when some failed, only to find what else fails
            # (a nodePort out of range, an address taken: found as they are allocated), so
            # that every failing document is said at once, as kubectl says each; any
            # failure rolls the whole transaction back below.
            allocations = ServiceAllocations(tx, self.config)
            outcomes: list[Outcome] = []
            seen: set[tuple[str, str, str]] = set()
            for plan in plans:
                try:
                    if plan.key in seen and plan.manifest is not None:
                        plan = self._plan_manifest(tx, plan.manifest, namespace, mode, pending_namespaces)
                    seen.add(plan.key)
                    outcomes.append(self._execute(tx, allocations, plan))
                except ApiError as exc:
                    failures.append(self._failure(plan.manifest, exc, namespace, plan))
            if failures:
                order = {id(m): i for i, m in enumerate(manifests)}
                failures.sort(key=lambda f: order.get(id(f.manifest), len(order)))   # (stable)
                raise BatchError(failures)  # rolls the transaction back
        return outcomes

    @staticmethod
    def _failure(m: Manifest | None, exc: Exception, namespace: str, plan: _Plan | None = None,
                 patching: bool = False) -> Failure:
        data = m.data if m else {}
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        patching = patching or (plan is not None and plan.live is not None)
        return Failure(m, exc, "patching" if patching else "creating",
                       str(meta.get("name") or ""), str(meta.get("namespace") or ""))

    def _plan_manifest(self, tx: StoreWriter, m: Manifest, namespace: str, mode: str,
                       pending_namespaces: set[str]) -> _Plan:
        obj = object_from_dict(m.data)
        if obj.NAMESPACED:
            obj.metadata.namespace = obj.metadata.namespace or namespace
        if not obj.name:
            if not obj.metadata.generate_name:
                raise BadRequest("resource name may not be empty")
            if mode == MODE_APPLY:   # kubectl's own check: apply needs a name to find the object
                raise Refused(f"from {obj.metadata.generate_name}: cannot use generate name with apply")
            _generate_name(tx, obj)
        live = tx.try_get(type(obj), obj.namespace, obj.name)
        if mode == MODE_CREATE:
            if live is not None:
                raise AlreadyExists(obj.RESOURCE, obj.name)
            new = obj
        else:
            modified = copy.deepcopy(m.data)
            meta = modified.setdefault("metadata", {})
            if obj.NAMESPACED:
                meta["namespace"] = obj.namespace
            if live is not None:
                _check_preconditions(obj, live)
            annotations = dict(meta.get("annotations") or {})
            annotations.pop(LAST_APPLIED, None)
            meta["annotations"] = annotations or None
            last_applied = json.dumps(_last_applied_view(modified), separators=(",", ":"), sort_keys=True)
            meta["annotations"] = annotations
            annotations[LAST_APPLIED] = last_applied + "\n"
            if live is None:
                new = object_from_dict(modified)
            else:
                original = _parse_last_applied(live)
                merged = three_way_merge(original, modified, live.to_dict(), merge_keys_of(obj.KIND))
                new = object_from_dict(merged)
                new.metadata.resource_version = live.metadata.resource_version   # (checked above)
        if isinstance(new, Namespace):
            pending_namespaces.add(new.name)
        elif new.NAMESPACED and new.namespace not in pending_namespaces:
            self._require_namespace(tx, new.namespace)
            pending_namespaces.add(new.namespace)  # known to exist for the rest of the batch
        self._prepare(new, live)
        return _Plan(m, new, live, _key(new))

    # ------------------------------------------------------------------ single objects
    def create(self, obj: ApiObject) -> ApiObject:
        return committed(self.store, lambda: self._create(obj))

    def _create(self, obj: ApiObject) -> ApiObject:
        with self.store.transaction() as tx:
            if obj.NAMESPACED:
                obj.metadata.namespace = obj.metadata.namespace or "default"
                self._require_namespace(tx, obj.namespace)
            if not obj.name and obj.metadata.generate_name:
                _generate_name(tx, obj)
            if obj.name and tx.try_get(type(obj), obj.namespace, obj.name) is not None:
                raise AlreadyExists(obj.RESOURCE, obj.name)
            self._prepare(obj, None)
            return self._execute(tx, ServiceAllocations(tx, self.config), _Plan(None, obj, None, _key(obj))).obj

    def update(self, obj: ApiObject) -> ApiObject:
        """Replace an object (Conflict if its resourceVersion is stale)."""
        return committed(self.store, lambda: self._update(obj))

    def _update(self, obj: ApiObject) -> ApiObject:
        with self.store.transaction() as tx:
            live = tx.get(type(obj), obj.namespace, obj.name)
            _check_preconditions(obj, live)
            self._prepare(obj, live)
            return self._execute(tx, ServiceAllocations(tx, self.config), _Plan(None, obj, live, _key(obj))).obj

    def delete(self, cls: type[ApiObject], namespace: str, name: str, grace_period: int | None = None) -> ApiObject:
        """Delete an object. A Pod on a node with a grace period > 0 is only marked
        terminating (the runtime or the grace-period expiry removes it)."""
        return committed(self.store, lambda: self._delete(cls, namespace, name, grace_period))

    def _delete(self, cls: type[ApiObject], namespace: str, name: str, grace_period: int | None) -> ApiObject:
        with self.store.transaction() as tx:
            obj = tx.get(cls, namespace, name)
            if isinstance(obj, Namespace):
                return self._delete_namespace(tx, obj)
            if isinstance(obj, Pod):
                terminate_pod(tx, obj, grace_period)
                return obj
            deleted = tx.delete(cls, namespace, name)
            if isinstance(deleted, Service):
                ServiceAllocations(tx, self.config).release(deleted)
            return deleted

    def _delete_namespace(self, tx: StoreWriter, ns: Namespace) -> Namespace:
        if ns.name in BUILTIN_NAMESPACES:
            raise ApiError(f'namespaces "{ns.name}" is forbidden: this namespace may not be deleted')
        allocations = ServiceAllocations(tx, self.config)
        for cls in KINDS:
            if not cls.NAMESPACED:
                continue
            for obj in tx.list(cls, ns.name):
                tx.delete(cls, ns.name, obj.name)
                if isinstance(obj, Service):
                    allocations.release(obj)
        return tx.delete(Namespace, "", ns.name)  # type: ignore[return-value]

    # ------------------------------------------------------------------ shared steps
    @staticmethod
    def _require_namespace(tx: StoreWriter, namespace: str) -> None:
        if tx.try_get(Namespace, "", namespace) is None:
            raise NotFound("namespaces", namespace)

    @staticmethod
    def _prepare(new: ApiObject, live: ApiObject | None) -> None:
        """Default and validate (no writes); raises Invalid."""
        if live is not None:
            new.metadata.uid = live.metadata.uid
            new.metadata.creation_timestamp = live.metadata.creation_timestamp
            if isinstance(new, Service) and isinstance(live, Service):
                normalize_cluster_ips(new, live)
                patch_allocated_values(new, live)
                drop_type_dependent_fields(new, live)
                new.status = copy.deepcopy(live.status)   # status is the controllers' to write
        else:
            # The server's, never the client's (as kube-apiserver's BeforeCreate): the agent
            # gives an address two services name to the older, so a backdated Service
            # would take another's traffic (and `get -o yaml | apply` elsewhere copies both).
            new.metadata.uid = new.metadata.creation_timestamp = None
            if isinstance(new, Service):
                new.status = ServiceStatus()              # as the apiserver: a new Service has none
        apply_defaults(new)
        if isinstance(new, Deployment):
            if live is None:
                new.metadata.generation = 1
            else:
                changed = new.to_dict().get("spec") != live.to_dict().get("spec")
                new.metadata.generation = (live.metadata.generation or 1) + (1 if changed else 0)
        if isinstance(new, Pod) and live is None and not new.status.phase:
            new.status.phase = PENDING
        validation.check(new, live)

    @staticmethod
    def _execute(tx: StoreWriter, allocations: ServiceAllocations, plan: _Plan) -> Outcome:
        new, live = plan.new, plan.live
        if isinstance(new, Service):
            errs = allocations.allocate(new, live if isinstance(live, Service) else None)
            if errs:
                raise Invalid(new.KIND, new.name, errs)
        if live is None:
            return Outcome(tx.create(new), CREATED)
        before = live.resource_version
        stored = tx.update(new)
        return Outcome(stored, CONFIGURED if stored.resource_version != before else UNCHANGED)


def _parse_last_applied(live: ApiObject) -> dict[str, Any] | None:
    raw = live.annotations.get(LAST_APPLIED)
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


# The apiserver retries a generated name that is taken (RetryGenerateName); so do we,
# before anything is written, and give up as it does: AlreadyExists.
_GENERATE_NAME_ATTEMPTS = 8


def _generate_name(tx: StoreWriter, obj: ApiObject) -> None:
    """Name an object that has only `metadata.generateName` with a free generated name."""
    prefix = obj.metadata.generate_name or ""
    for _ in range(_GENERATE_NAME_ATTEMPTS):
        obj.metadata.name = generated_name(prefix)
        if tx.try_get(type(obj), obj.namespace, obj.name) is None:
            return
    raise AlreadyExists(obj.RESOURCE, obj.name)


def _check_preconditions(sent: ApiObject, live: ApiObject) -> None:
    """What the apiserver checks before it merges an apply into the live object: a
    resourceVersion the manifest carries (one saved from `get -o yaml`, say) must be the
    live one, or the apply would silently undo changes made since (the storage's
    optimistic lock: Conflict); a uid it carries must be the live object's (another
    object of that name, made after the one the manifest was taken from: a uid may not
    change)."""
    sent_rv = sent.metadata.resource_version
    if sent_rv and sent_rv != live.metadata.resource_version:
        raise Conflict(live.RESOURCE, live.name)
    sent_uid = sent.metadata.uid
    if sent_uid and sent_uid != live.metadata.uid:
        raise Conflict(live.RESOURCE, live.name,
                       f"Precondition failed: UID in precondition: {sent_uid}, UID in object meta: {live.metadata.uid}")


def _last_applied_view(modified: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the last-applied annotation records it: without nulls, and without
    the server's identity fields (resourceVersion, uid), which say nothing about the
    desired state and would only be stale by the next apply."""
    view = _drop_nulls(modified)
    meta = view.get("metadata")
    if isinstance(meta, dict):
        for key in _SERVER_IDENTITY_FIELDS:
            meta.pop(key, None)
    return view


_SERVER_IDENTITY_FIELDS = ("resourceVersion", "uid")


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


# ---------------------------------------------------------------------- bootstrap
SETTING_BOOTSTRAPPED = "bootstrapped"


def kubernetes_service(config: ClusterConfig) -> Service:
    return Service(
        metadata=ObjectMeta(name="kubernetes", namespace="default",
                            labels={"component": "apiserver", "provider": "kubernetes"}),
        spec=ServiceSpec(cluster_ip=config.kubernetes_ip, type="ClusterIP", session_affinity="None",
                         ports=[ServicePort(name="https", protocol="TCP", port=443, target_port=6443)]),
    )


def bootstrap(store: Store, config: ClusterConfig | None = None) -> ClusterConfig:
    """Make a fresh store a cluster: record the ranges, create the built-in namespaces and the
    `default/kubernetes` Service. Idempotent and safe to race from two processes."""
    return retry_commit(lambda: _bootstrap(store, config))


def _bootstrap(store: Store, config: ClusterConfig | None) -> ClusterConfig:
    if store.get_setting(SETTING_BOOTSTRAPPED):
        existing = load_config(store)
        assert existing is not None
        if config is not None and config != existing:
            raise ConfigError(f"the store was set up with {existing}; it cannot change to {config}")
        return existing
    with store.transaction() as tx:
        if tx.get_setting(SETTING_BOOTSTRAPPED):
            return load_config(tx) or ClusterConfig()
        config = config or ClusterConfig.from_env()
        save_config(tx, config)
        for name in BUILTIN_NAMESPACES:
            if tx.try_get(Namespace, "", name) is None:
                ns = Namespace(metadata=ObjectMeta(name=name, labels={"kubernetes.io/metadata.name": name}))
                apply_defaults(ns)
                tx.create(ns)
        svc = kubernetes_service(config)
        if tx.try_get(Service, "default", svc.name) is None:
            Registry._prepare(svc, None)
            errs = ServiceAllocations(tx, config).allocate(svc)
            if errs:
                raise Invalid(svc.KIND, svc.name, errs)
            tx.create(svc)
        tx.put_setting(SETTING_BOOTSTRAPPED, "1")
    return config
