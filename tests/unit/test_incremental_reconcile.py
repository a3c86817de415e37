"""Incremental reconcile: only what changed since the checkpoint is looked at again, and the
result is what a full pass would leave (a full pass afterwards has nothing to do)."""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest

from controlplane.api import Endpoints, EndpointSlice, ObjectMeta, Service
from controlplane.api.endpoints import LABEL_MANAGED_BY, MANAGED_BY_CONTROLLER, MANAGED_BY_MIRRORING
from controlplane.api.pod import Container, ContainerPort, Pod, PodCondition, PodSpec
from controlplane.controllers import manager
from controlplane.controllers.dirty import WATCHED_KINDS, collect
from controlplane.controllers.manager import CHECKPOINT, reconcile, reconcile_all
from controlplane.controllers.registry import Manifest, Registry
from controlplane.controllers.runtime import set_pod_status
from controlplane.store import SqliteStore


class ListSpy:
    """Records every `list` of a store: (kind, namespace, selector text)."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []
        real = store.list_with_version

        def spy(cls, namespace=None, selector=None):
            self.calls.append((cls.KIND, namespace, None if selector is None else str(selector)))
            return real(cls, namespace, selector)
        monkeypatch.setattr(store, "list_with_version", spy)

    def full_lists(self) -> list[tuple[str, str | None, str | None]]:
        """Lists of a whole kind (no namespace, no selector): what a full pass does."""
        return [c for c in self.calls if c[1] is None and c[2] is None]


def service(name: str, selector: dict | None = None, **spec) -> dict:
    body = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": body}


def user_endpoints(name: str, *ips: str) -> dict:
    subsets = [{"addresses": [{"ip": ip} for ip in ips], "ports": [{"port": 5432}]}] if ips else []
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "default"},
            "subsets": subsets}


def put_pod(store: SqliteStore, name: str, labels: dict[str, str], ip: str | None, ready: bool = True) -> None:
    pod = store.try_get(Pod, "default", name) or Pod(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=PodSpec(node_name="node1", containers=[Container(name="c", image="i", ports=[
            ContainerPort(name="http", container_port=8080, protocol="TCP")])]))
    pod.metadata.labels = labels or None
    pod.status.phase = "Running"
    pod.status.pod_ip = ip
    pod.status.conditions = [PodCondition(type="Ready", status="True" if ready else "False")]
    if pod.metadata.uid:
        store.update(pod)
    else:
        store.create(pod)


def ips(store: SqliteStore, name: str) -> list[str]:
    ep = store.try_get(Endpoints, "default", name)
    if ep is None:
        return []
    return sorted(a.ip for s in ep.subsets or [] for a in s.addresses or [])


def slice_ips(store: SqliteStore, name: str) -> list[str]:
    from controlplane.api.selectors import Selector
    slices = store.list(EndpointSlice, "default", Selector.parse(f"kubernetes.io/service-name={name}"))
    return sorted(a for es in slices for e in es.endpoints or [] for a in e.addresses)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(SqliteStore(tmp_path / "s.db"))
    reconcile(registry.store)          # the first reconcile is a full pass and sets the checkpoint
    return registry


def apply(registry: Registry, *docs: dict) -> None:
    registry.apply([Manifest(d, "t.yaml") for d in docs])


def test_a_pod_label_change_moves_it_between_services(registry: Registry, monkeypatch) -> None:
    store = registry.store
    apply(registry, service("a", {"app": "a"}), service("b", {"app": "b"}))
    put_pod(store, "p", {"app": "a"}, "10.244.1.2")
    reconcile(store)
    assert (ips(store, "a"), ips(store, "b")) == (["10.244.1.2"], [])
    spy = ListSpy(store, monkeypatch)
    put_pod(store, "p", {"app": "b"}, "10.244.1.2")
    assert reconcile(store) > 0
    assert spy.full_lists() == []                      # no full listing of any kind
    assert (ips(store, "a"), ips(store, "b")) == ([], ["10.244.1.2"])
    assert (slice_ips(store, "a"), slice_ips(store, "b")) == ([], ["10.244.1.2"])
    assert reconcile_all(store) == 0                   # a full pass agrees


def test_a_service_selector_change(registry: Registry) -> None:
    store = registry.store
    apply(registry, service("web", {"app": "a"}))
    put_pod(store, "pa", {"app": "a"}, "10.244.1.2")
    put_pod(store, "pb", {"app": "b"}, "10.244.1.3")
    reconcile(store)
    assert ips(store, "web") == ["10.244.1.2"]
    apply(registry, service("web", {"app": "b"}))
    reconcile(store)
    assert ips(store, "web") == ["10.244.1.3"] and slice_ips(store, "web") == ["10.244.1.3"]
    apply(registry, service("web"))                    # selector removed: the managed objects go
    reconcile(store)
    assert store.try_get(Endpoints, "default", "web") is None and slice_ips(store, "web") == []
    assert reconcile_all(store) == 0


def test_deleting_a_service_removes_what_was_made_for_it(registry: Registry) -> None:
    store = registry.store
    apply(registry, service("web", {"app": "a"}), service("db"), user_endpoints("db", "192.0.2.1"))
    put_pod(store, "p", {"app": "a"}, "10.244.1.2")
    reconcile(store)
    assert slice_ips(store, "web") == ["10.244.1.2"] and slice_ips(store, "db") == ["192.0.2.1"]
    registry.delete(Service, "default", "web")
    registry.delete(Service, "default", "db")
    reconcile(store)
    assert store.try_get(Endpoints, "default", "web") is None
    assert store.get(Endpoints, "default", "db").subsets      # user-written Endpoints stay
    assert store.list(EndpointSlice) == []                    # managed and mirrored slices go
    assert reconcile_all(store) == 0


def test_an_endpoints_change_of_a_selectorless_service_touches_only_it(registry: Registry, monkeypatch) -> None:
    store = registry.store
    apply(registry, *[service(f"filler-{i}") for i in range(50)], service("db"), user_endpoints("db"))
    reconcile(store)
    spy = ListSpy(store, monkeypatch)
    apply(registry, user_endpoints("db", "192.0.2.1", "192.0.2.2"))
    reconcile(store)
    assert spy.full_lists() == []
    (es,) = store.list(EndpointSlice)
    assert es.labels[LABEL_MANAGED_BY] == MANAGED_BY_MIRRORING and slice_ips(store, "db") == ["192.0.2.1", "192.0.2.2"]
    apply(registry, user_endpoints("db"))
    reconcile(store)
    assert store.list(EndpointSlice) == []
    assert reconcile_all(store) == 0


def test_a_deleted_managed_slice_comes_back(registry: Registry) -> None:
    store = registry.store
    apply(registry, service("web", {"app": "a"}))
    put_pod(store, "p", {"app": "a"}, "10.244.1.2")
    reconcile(store)
    (es,) = store.list(EndpointSlice)
    assert es.labels[LABEL_MANAGED_BY] == MANAGED_BY_CONTROLLER
    store.delete(EndpointSlice, "default", es.name)
    reconcile(store)
    assert slice_ips(store, "web") == ["10.244.1.2"]


def test_a_compacted_history_gets_a_full_pass(tmp_path: Path, monkeypatch) -> None:
    store = SqliteStore(tmp_path / "s.db", history=5)
    registry = Registry(store)
    apply(registry, service("web", {"app": "a"}))
    reconcile(store)
    for i in range(12):                                 # more changes than the history keeps
        put_pod(store, f"p{i}", {"app": "a"}, f"10.244.1.{i + 2}")
    spy = ListSpy(store, monkeypatch)
    reconcile(store)
    assert ("Service", None, None) in spy.full_lists()  # Gone -> one full pass
    assert len(ips(store, "web")) == 12
    assert store.get_setting(CHECKPOINT) == str(store.current_resource_version())
    assert reconcile_all(store) == 0


def test_changes_without_previous_labels_get_a_full_pass(registry: Registry, monkeypatch) -> None:
    store = registry.store
    apply(registry, service("a", {"app": "a"}), service("b", {"app": "b"}))
    put_pod(store, "p", {"app": "a"}, "10.244.1.2")
    reconcile(store)
    put_pod(store, "p", {"app": "b"}, "10.244.1.2")
    store._conn.execute("UPDATE changes SET prev_labels = NULL")   # as an older store recorded them
    spy = ListSpy(store, monkeypatch)
    reconcile(store)
    assert ("Service", None, None) in spy.full_lists()
    assert (ips(store, "a"), ips(store, "b")) == ([], ["10.244.1.2"])


def test_no_checkpoint_means_a_full_pass_then_incremental(tmp_path: Path, monkeypatch) -> None:
    store = SqliteStore(tmp_path / "s.db")
    apply(Registry(store), service("web", {"app": "a"}))
    assert store.get_setting(CHECKPOINT) is None
    spy = ListSpy(store, monkeypatch)
    reconcile(store)
    assert ("Service", None, None) in spy.full_lists()
    spy.calls.clear()
    put_pod(store, "p", {"app": "a"}, "10.244.1.2")
    reconcile(store)
    assert spy.full_lists() == [] and ips(store, "web") == ["10.244.1.2"]


def test_many_changes_get_a_full_pass(registry: Registry, monkeypatch) -> None:
    monkeypatch.setattr(manager, "FULL_PASS_AFTER", 3)
    store = registry.store
    apply(registry, service("web", {"app": "a"}))
    for i in range(5):
        put_pod(store, f"p{i}", {"app": "a"}, f"10.244.1.{i + 2}")
    spy = ListSpy(store, monkeypatch)
    reconcile(store)
    assert ("Service", None, None) in spy.full_lists() and len(ips(store, "web")) == 5


def test_pod_changes_dirty_only_the_services_that_select_the_pod(registry: Registry) -> None:
    store = registry.store
    apply(registry, service("a", {"app": "a"}), service("ab", {"app": "a", "tier": "b"}), service("c", {"app": "c"}),
          service("none"))
    reconcile(store)
    rv = store.current_resource_version()
    put_pod(store, "p", {"app": "a", "tier": "x"}, "10.244.1.2")
    dirty = collect(store, store.changes_since(rv, WATCHED_KINDS), own_after=store.current_resource_version())
    assert dirty.services == {("default", "a")}
    rv = store.current_resource_version()
    put_pod(store, "p", {"app": "a", "tier": "b"}, "10.244.1.2")
    dirty = collect(store, store.changes_since(rv, WATCHED_KINDS), own_after=store.current_resource_version())
    assert dirty.services == {("default", "a"), ("default", "ab")}


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
              "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
                       "template": {"metadata": {"labels": {"app": "a"}},
                                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}


def test_deployment_scale_and_delete_incrementally(registry: Registry) -> None:
    store = registry.store
    apply(registry, DEPLOYMENT)
    reconcile(store)
    assert len(store.list(Pod)) == 2
    apply(registry, {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicas": 4}})
    reconcile(store)
    assert len(store.list(Pod)) == 4
    registry.delete(type(store.list(Pod)[0]), "default", store.list(Pod)[0].name)  # unscheduled: gone at once
    reconcile(store)
    assert len(store.list(Pod)) == 4                                               # replaced
    from controlplane.api import Deployment
    registry.delete(Deployment, "default", "web")
    reconcile(store)
    assert store.list(Pod) == []                        # unscheduled pods of a deleted owner go at once
    assert reconcile_all(store) == 0


def test_pods_the_controllers_change_move_the_endpoints_in_the_same_reconcile(registry: Registry) -> None:
    store = registry.store
    apply(registry, service("web", {"app": "a"}), DEPLOYMENT)
    reconcile(store)
    for i, pod in enumerate(store.list(Pod)):
        set_pod_status(store, "default", pod.name, node_name="node1", pod_ip=f"10.244.1.{i + 2}", phase="Running",
                       ready=True)
    assert ips(store, "web") == ["10.244.1.2", "10.244.1.3"]
    apply(registry, {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicas": 1}})
    reconcile(store)                                   # the controller terminates a pod: its endpoint follows
    assert len(ips(store, "web")) == 1
    assert reconcile_all(store) == 0


def test_a_pod_whose_owner_is_missing_is_collected(registry: Registry) -> None:
    from controlplane.api.meta import OwnerReference
    store = registry.store
    ref = OwnerReference(api_version="apps/v1", kind="Deployment", name="gone", uid="uid-gone", controller=True)
    store.create(Pod(metadata=ObjectMeta(name="orphan", namespace="default", owner_references=[ref])))
    reconcile(store)
    assert store.try_get(Pod, "default", "orphan") is None   # never scheduled: deleted at once


# -- property: after any sequence of changes, an incremental reconcile leaves what a full pass would

SELECTORS = [None, {"app": "a"}, {"app": "b"}, {"app": "a", "tier": "x"}]
LABELS = [{}, {"app": "a"}, {"app": "b"}, {"app": "a", "tier": "x"}]


def random_op(rng: random.Random) -> tuple:
    """One change; pods and services most often: their interplay is what the dirty set must get right."""
    kind = rng.choice(["svc", "svc", "pod", "pod", "pod", "del-svc", "del-pod", "ep", "del-ep", "dep", "del-dep",
                       "start"])
    if kind == "svc":
        return kind, rng.choice(["s0", "s1"]), rng.randrange(len(SELECTORS)), rng.random() < 0.2
    if kind == "pod":
        return kind, rng.choice(["p0", "p1", "p2"]), rng.randrange(len(LABELS)), rng.random() < 0.8, rng.random() < 0.7
    if kind in ("del-svc", "del-ep"):
        return kind, rng.choice(["s0", "s1"])
    if kind == "del-pod":
        return kind, rng.choice(["p0", "p1", "p2"])
    if kind == "ep":
        return kind, rng.choice(["s0", "s1"]), rng.randrange(3)
    if kind == "dep":
        return kind, rng.choice(["d0", "d1"]), rng.randrange(4), rng.choice([1, 2])
    if kind == "del-dep":
        return kind, rng.choice(["d0", "d1"])
    return kind, rng.randrange(6), rng.random() < 0.7


def _run(registry: Registry, op: tuple) -> None:
    store = registry.store
    kind, name = op[0], op[1]
    try:
        if kind == "svc":
            extra = {"type": "ExternalName", "externalName": "x.example.com"} if op[3] else {}
            apply(registry, service(name, SELECTORS[op[2]], **extra))
        elif kind == "del-svc":
            registry.delete(Service, "default", name)
        elif kind == "pod":
            put_pod(store, name, LABELS[op[2]], f"10.244.1.{int(name[1:]) + 2}" if op[3] else None, ready=op[4])
        elif kind == "del-pod":
            store.delete(Pod, "default", name)
        elif kind == "ep":
            apply(registry, user_endpoints(name, *[f"192.0.2.{i + 1}" for i in range(op[2])]))
        elif kind == "del-ep":
            store.delete(Endpoints, "default", name)
        elif kind == "dep":
            labels = LABELS[op[3]]
            apply(registry, {**DEPLOYMENT, "metadata": {"name": name}, "spec": {
                **DEPLOYMENT["spec"], "replicas": op[2], "selector": {"matchLabels": labels},
                "template": {**DEPLOYMENT["spec"]["template"], "metadata": {"labels": labels}}}})
        elif kind == "del-dep":
            from controlplane.api import Deployment
            registry.delete(Deployment, "default", name)
        elif kind == "start":   # the runtime starts the n-th pending pod (or stops a terminating one)
            pods = store.list(Pod)
            if pods:
                pod = pods[name % len(pods)]
                if pod.terminating:
                    store.delete(Pod, "default", pod.name)
                elif not pod.status.pod_ip:
                    set_pod_status(store, "default", pod.name, node_name="node1", pod_ip=f"10.244.2.{name + 2}",
                                   phase="Running", ready=op[2], reconcile_after=False)
    except Exception as exc:   # NotFound on deleting what is not there, a refused type change
        if type(exc).__name__ not in ("NotFound", "BatchError"):
            raise


@pytest.mark.parametrize("seed", range(6))
def test_incremental_reconcile_matches_a_full_pass(seed: int) -> None:
    """Random sequences of changes (a fixed seed each), reconciled in batches."""
    rng = random.Random(seed)
    for _ in range(25):
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "s.db")
            registry = Registry(store)
            reconcile(store)
            for _ in range(rng.randrange(2, 10)):
                batch = [random_op(rng) for _ in range(rng.randrange(1, 4))]
                for op in batch:
                    _run(registry, op)
                reconcile(store)
                assert reconcile_all(store) == 0, f"a full pass still had work after {batch}"
            store.close()
