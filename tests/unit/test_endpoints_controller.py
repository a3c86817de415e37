"""Endpoints / EndpointSlice controller, mirroring, and the agent's service view."""
from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.api import Endpoints, EndpointSlice, ObjectMeta, Service
from controlplane.api.endpoints import LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MANAGED_BY_MIRRORING
from controlplane.api.defaults import apply_defaults
from controlplane.api.pod import Container, ContainerPort, Pod, PodCondition, PodSpec
from controlplane.controllers.endpoint_builder import build_slices, build_subsets
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import Manifest, Registry
from controlplane.controllers.runtime import set_pod_status
from controlplane.controllers.service_view import load_service_views
from controlplane.store import SqliteStore


def pod(name: str, ip: str | None, *, ready: bool = True, port: int = 80, labels: dict | None = None,
        terminating: bool = False, phase: str = "Running", node: str = "node1") -> Pod:
    p = Pod(metadata=ObjectMeta(name=name, namespace="default", uid=f"uid-{name}", labels=labels or {"app": "web"}),
            spec=PodSpec(node_name=node, containers=[Container(name="c", image="i", ports=[
                ContainerPort(name="http", container_port=port, protocol="TCP")])]))
    p.status.phase = phase
    p.status.pod_ip = ip
    if ready:
        p.status.conditions = [PodCondition(type="Ready", status="True")]
    if terminating:
        p.metadata.deletion_timestamp = "2030-01-01T00:00:00Z"
    return p


def web_service(**spec) -> Service:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}], **spec}}
    svc = Service.from_dict(doc)
    apply_defaults(svc)
    return svc


def test_named_target_port_resolves_per_pod() -> None:
    subsets = build_subsets(web_service(), [pod("a", "10.244.1.2", port=100), pod("b", "10.244.2.2", port=101)])
    assert sorted((s.addresses[0].ip, s.ports[0].port) for s in subsets) == [("10.244.1.2", 100), ("10.244.2.2", 101)]
    slices = build_slices(web_service(), [pod("a", "10.244.1.2", port=100), pod("b", "10.244.2.2", port=101)])
    assert sorted((s.endpoints[0].addresses[0], s.ports[0].port) for s in slices) == [
        ("10.244.1.2", 100), ("10.244.2.2", 101)]


def test_pod_without_the_named_port_or_ip_is_left_out() -> None:
    svc = web_service()
    other = pod("c", "10.244.1.9")
    other.spec.containers[0].ports[0].name = "metrics"
    assert build_subsets(svc, [other, pod("d", None)]) == []
    assert [s.endpoints for s in build_slices(svc, [other])] == [[]]  # placeholder slice


def test_readiness_and_termination_conditions() -> None:
    svc = web_service()
    pods = [pod("ready", "10.244.1.2"), pod("unready", "10.244.1.3", ready=False),
            pod("leaving", "10.244.1.4", terminating=True), pod("done", "10.244.1.5", phase="Succeeded")]
    (subset,) = build_subsets(svc, pods)
    assert [a.ip for a in subset.addresses] == ["10.244.1.2"]
    assert [a.ip for a in subset.not_ready_addresses] == ["10.244.1.3"]   # terminating pod left out
    (es,) = build_slices(svc, pods)
    conds = {e.addresses[0]: (e.conditions.ready, e.conditions.serving, e.conditions.terminating) for e in es.endpoints}
    assert conds == {"10.244.1.2": (True, True, False), "10.244.1.3": (False, False, False),
                     "10.244.1.4": (False, True, True)}


def test_publish_not_ready_addresses() -> None:
    svc = web_service(publishNotReadyAddresses=True)
    (subset,) = build_subsets(svc, [pod("u", "10.244.1.3", ready=False), pod("t", "10.244.1.4", terminating=True)])
    assert [a.ip for a in subset.addresses] == ["10.244.1.3", "10.244.1.4"]
    (es,) = build_slices(svc, [pod("t", "10.244.1.4", terminating=True)])
    assert es.endpoints[0].conditions.ready is True
    # ready regardless; serving is still the pod's readiness (podToEndpoint)
    (es,) = build_slices(svc, [pod("u", "10.244.1.3", ready=False)])
    c = es.endpoints[0].conditions
    assert (c.ready, c.serving, c.terminating) == (True, False, False)


def test_headless_without_ports_gets_address_only_endpoints() -> None:
    svc = web_service(clusterIP="None", ports=None)
    (subset,) = build_subsets(svc, [pod("a", "10.244.1.2")])
    assert subset.ports is None and subset.addresses[0].ip == "10.244.1.2"


def test_slices_hold_at_most_the_limit() -> None:
    pods = [pod(f"p{i}", f"10.244.1.{i + 2}") for i in range(7)]
    assert [len(s.endpoints) for s in build_slices(web_service(), pods, max_per_slice=3)] == [3, 3, 1]


@pytest.fixture
def registry(any_store) -> Registry:
    return Registry(any_store)   # SQLite and etcd (tests/unit/conftest.py)


def apply(registry: Registry, *docs: dict) -> None:
    registry.apply([Manifest(d, "t.yaml") for d in docs])
    reconcile(registry.store)


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def add_pod(registry: Registry, name: str, ip: str, ready: bool = True, port: int = 8080) -> None:
    p = pod(name, None, port=port)
    p.metadata.uid = None
    p.spec.node_name = None
    registry.create(p)
    set_pod_status(registry.store, "default", name, node_name="node1", pod_ip=ip, phase="Running", ready=ready)


def test_controller_reacts_to_pod_changes_and_reaches_a_fixed_point(registry: Registry) -> None:
    store = registry.store
    apply(registry, SERVICE)
    assert store.get(Endpoints, "default", "web").subsets is None
    add_pod(registry, "a", "10.244.1.2")
    add_pod(registry, "b", "10.244.2.2", ready=False)
    ep = store.get(Endpoints, "default", "web")
    assert [a.ip for a in ep.subsets[0].addresses] == ["10.244.1.2"]
    assert [a.ip for a in ep.subsets[0].not_ready_addresses] == ["10.244.2.2"]
    assert ep.subsets[0].ports[0].port == 8080
    (es,) = store.list(EndpointSlice, "default")
    assert es.labels[LABEL_SERVICE_NAME] == "web" and len(es.endpoints) == 2
    rv = store.current_resource_version()
    assert reconcile(store) == 0 and store.current_resource_version() == rv   # nothing left to do
    set_pod_status(store, "default", "b", ready=True)
    assert [a.ip for a in store.get(Endpoints, "default", "web").subsets[0].addresses] == ["10.244.1.2", "10.244.2.2"]
    assert store.list(EndpointSlice, "default")[0].name == es.name            # updated in place


def test_deleting_the_service_removes_its_endpoints(registry: Registry) -> None:
    apply(registry, SERVICE)
    add_pod(registry, "a", "10.244.1.2")
    registry.delete(Service, "default", "web")
    reconcile(registry.store)
    assert registry.store.try_get(Endpoints, "default", "web") is None
    assert registry.store.list(EndpointSlice) == []


def test_external_name_gets_no_endpoints(registry: Registry) -> None:
    apply(registry, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                     "spec": {"type": "ExternalName", "externalName": "db.example.com", "selector": {"app": "web"}}})
    add_pod(registry, "a", "10.244.1.2")
    assert registry.store.try_get(Endpoints, "default", "ext") is None


def test_selectorless_service_keeps_user_endpoints_and_mirrors_them(registry: Registry) -> None:
    apply(registry,
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}]}},
          {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db"},
           "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]})
    ep = registry.store.get(Endpoints, "default", "db")
    assert ep.subsets[0].addresses[0].ip == "192.0.2.10"
    (es,) = registry.store.list(EndpointSlice)
    assert es.labels[LABEL_MANAGED_BY] == MANAGED_BY_MIRRORING
    assert es.endpoints[0].addresses == ["192.0.2.10"] and es.ports[0].port == 5432
    assert reconcile(registry.store) == 0


def test_service_view_gives_backends_with_kube_proxy_fallback(registry: Registry) -> None:
    apply(registry, {**SERVICE, "spec": {**SERVICE["spec"], "type": "NodePort", "sessionAffinity": "ClientIP"}})
    add_pod(registry, "a", "10.244.1.2")
    add_pod(registry, "b", "10.244.2.2")
    registry.delete(Pod, "default", "a")            # on a node: terminating, still serving
    reconcile(registry.store)
    (view,) = [v for v in load_service_views(registry.store) if v.service.name == "web"]
    (port,) = view.ports
    assert view.proxied and view.affinity_timeout_seconds == 10800 and port.node_port
    assert port.frontends == ((view.service.spec.cluster_ip, 80, "clusterIP"),)
    assert [(b.ip, b.port) for b in port.usable()] == [("10.244.2.2", 8080)]
    registry.delete(Pod, "default", "b")
    reconcile(registry.store)
    (view,) = [v for v in load_service_views(registry.store) if v.service.name == "web"]
    assert {b.ip for b in view.ports[0].usable()} == {"10.244.1.2", "10.244.2.2"}   # serving + terminating
    assert view.ports[0].usable(node_name="node2") == ()


def test_a_slice_write_carries_its_trigger_time_for_the_programming_latency(registry: Registry) -> None:
    """The controller stamps endpoints.kubernetes.io/last-change-trigger-time on every slice
    it writes; the agent turns each changed slice's stamp into one observation of
    kubeproxy_network_programming_duration_seconds (ServiceCache.apply lists the stamps,
    agent.trigger_times reads them), whether the agent reads the slices decoded or as text."""
    from controlplane.agent.agent import trigger_times
    from controlplane.agent.cache import TEXT_KINDS, ServiceCache
    from controlplane.api.endpoints import LAST_CHANGE_TRIGGER_TIME
    from controlplane.api.meta import parse_timestamp
    import time
    store = registry.store
    apply(registry, SERVICE)
    (es,) = store.list(EndpointSlice, "default")
    first = parse_timestamp(es.annotations[LAST_CHANGE_TRIGGER_TIME]).timestamp()
    assert abs(time.time() - first) < 60
    rv = store.current_resource_version()
    add_pod(registry, "a", "10.244.1.2")
    (es,) = store.list(EndpointSlice, "default")
    later = parse_timestamp(es.annotations[LAST_CHANGE_TRIGGER_TIME]).timestamp()
    assert later > first

    def stamps(since: int, as_text: tuple = ()) -> list[float]:
        triggers: list[tuple[str, str, str]] = []
        ServiceCache().apply(store.changes_since(since, [EndpointSlice], as_text=as_text), triggers)
        return trigger_times(triggers)

    assert stamps(rv) and max(stamps(rv)) == later
    assert stamps(rv, TEXT_KINDS) == stamps(rv)
    # unchanged content is not rewritten: the stamp stays (no second observation)
    rv = store.current_resource_version()
    assert reconcile(store) == 0 and stamps(rv) == [] and stamps(rv, TEXT_KINDS) == []
