"""Deployment controller, garbage collection and the runtime API."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.api import Deployment, Pod
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import Manifest, Registry
from controlplane.controllers.runtime import finish_pod, pods_to_start, pods_to_stop, set_pod_status
from controlplane.store import SqliteStore

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
              "spec": {"replicas": 3, "selector": {"matchLabels": {"run": "nginx"}},
                       "template": {"metadata": {"labels": {"run": "nginx"}},
                                    "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}}


@pytest.fixture
def registry(any_store) -> Registry:
    return Registry(any_store)   # SQLite and etcd (tests/unit/conftest.py)


def apply(registry: Registry, doc: dict) -> None:
    registry.apply([Manifest(doc, "t.yaml")])
    reconcile(registry.store)


def test_pods_are_created_pending_with_kubernetes_names(registry: Registry) -> None:
    apply(registry, DEPLOYMENT)
    pods = registry.store.list(Pod)
    assert len(pods) == 3
    for p in pods:
        assert re.fullmatch(r"nginx-[bcdfghjklmnpqrstvwxz2456789]+-[bcdfghjklmnpqrstvwxz2456789]{5}", p.name)
        assert p.labels["run"] == "nginx" and p.labels["pod-template-hash"] in p.name
        assert p.phase == "Pending" and p.ip is None and p.node_name is None
        assert p.metadata.controller_ref().kind == "Deployment"
    assert {p.name for p in pods_to_start(registry.store)} == {p.name for p in pods}


def test_status_counts_ready_pods(registry: Registry) -> None:
    apply(registry, DEPLOYMENT)
    for i, p in enumerate(registry.store.list(Pod)):
        set_pod_status(registry.store, "default", p.name, node_name="node1", pod_ip=f"10.244.1.{i + 2}",
                       phase="Running", ready=i < 2)
    st = registry.store.get(Deployment, "default", "nginx").status
    assert (st.replicas, st.updated_replicas, st.ready_replicas, st.available_replicas) == (3, 3, 2, 2)


def test_scale_down_removes_unstarted_pods_first(registry: Registry) -> None:
    apply(registry, DEPLOYMENT)
    started = registry.store.list(Pod)[0].name
    set_pod_status(registry.store, "default", started, node_name="node1", pod_ip="10.244.1.2", phase="Running", ready=True)
    apply(registry, {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "replicas": 1}})
    assert [p.name for p in registry.store.list(Pod)] == [started]
    assert registry.store.get(Deployment, "default", "nginx").metadata.generation == 2


def test_template_change_replaces_pods_and_running_ones_terminate(registry: Registry) -> None:
    apply(registry, DEPLOYMENT)
    old = registry.store.list(Pod)
    set_pod_status(registry.store, "default", old[0].name, node_name="node1", pod_ip="10.244.1.2", phase="Running")
    changed = {**DEPLOYMENT}
    changed["spec"] = {**DEPLOYMENT["spec"], "template": {"metadata": {"labels": {"run": "nginx"}},
                       "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}
    apply(registry, changed)
    pods = registry.store.list(Pod)
    active = [p for p in pods if not p.terminating]
    assert len(active) == 3 and all(p.spec.containers[0].image == "nginx:1.25" for p in active)
    assert [p.name for p in pods_to_stop(registry.store)] == [old[0].name]
    assert finish_pod(registry.store, "default", old[0].name)
    assert len(registry.store.list(Pod)) == 3


def test_deleting_the_deployment_cascades_to_pods(registry: Registry) -> None:
    apply(registry, DEPLOYMENT)
    registry.delete(Deployment, "default", "nginx")
    reconcile(registry.store)
    assert registry.store.list(Pod) == []


def test_expired_terminating_pods_are_removed(registry: Registry) -> None:
    apply(registry, DEPLOYMENT)
    name = registry.store.list(Pod)[0].name
    set_pod_status(registry.store, "default", name, node_name="node1", pod_ip="10.244.1.2", phase="Running")
    registry.delete(Pod, "default", name, grace_period=1)
    pod = registry.store.get(Pod, "default", name)
    pod.metadata.deletion_timestamp = "2000-01-01T00:00:00Z"   # pretend the grace period passed
    registry.store.update(pod)
    reconcile(registry.store)
    assert registry.store.try_get(Pod, "default", name) is None
    assert len([p for p in registry.store.list(Pod) if not p.terminating]) == 3   # replaced
