"""The JSON read path (store.iter_documents -> slice_document_backends) gives the same
views as decoding the objects."""
from __future__ import annotations

import copy

from controlplane.agent.cache import ServiceCache
from controlplane.api.endpoints import EndpointSlice
from controlplane.api.service import Service
from controlplane.controllers.service_view import (build_service_view, load_service_views, slice_backends,
                                                   slice_document_backends)
from controlplane.store import SqliteStore

SLICES = [
    {"metadata": {"name": "web-a", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4",
     "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "x"}],
     "endpoints": [
         {"addresses": ["10.0.0.2"], "conditions": {"ready": True}, "nodeName": "n1",
          "targetRef": {"kind": "Pod", "name": "web-0"}},
         {"addresses": ["10.0.0.1", "10.0.0.9"], "conditions": {"ready": False, "serving": True, "terminating": True}},
         {"addresses": ["10.0.0.3"], "conditions": {"serving": False}, "targetRef": {"kind": "Node", "name": "n"}},
         {"addresses": ["10.0.0.4"], "conditions": {"ready": None, "terminating": False}, "targetRef": {}},
         {"addresses": ["10.0.0.5"]},
         {"addresses": []},
         {"conditions": {"ready": True}},
     ]},
    {"metadata": {"name": "web-b", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4", "ports": [{"port": 9090}, {"name": "http", "port": 8080}],
     "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                   {"addresses": ["10.0.0.7"], "nodeName": "n2"}]},
    {"metadata": {"name": "web-v6", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
     "endpoints": [{"addresses": ["fd00::1"]}]},
    {"metadata": {"name": "web-none", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
     "endpoints": [{"addresses": ["10.0.0.8"]}]},
    {"metadata": {"name": "other", "namespace": "ns"}, "addressType": "IPv4",
     "ports": [{"port": 1}], "endpoints": [{"addresses": ["10.9.9.9"]}]},
]


def test_document_backends_match_object_backends() -> None:
    for doc in SLICES:
        assert slice_document_backends(copy.deepcopy(doc)) == slice_backends(EndpointSlice.from_dict(doc))


def _store(store) -> SqliteStore:
    """Fill an empty store (SQLite or etcd: the `any_store` fixture) with the test objects."""
    store.create(Service.from_dict({"metadata": {"name": "web", "namespace": "ns"},
                                    "spec": {"clusterIP": "10.96.0.5", "externalIPs": ["1.1.1.1"],
                                             "ports": [{"name": "http", "port": 80},
                                                       {"name": "dns", "port": 53, "protocol": "UDP"},
                                                       {"port": 90}]}}))
    store.create(Service.from_dict({"metadata": {"name": "lonely", "namespace": "ns"},
                                    "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 1}]}}))
    for doc in SLICES:
        store.create(EndpointSlice.from_dict(copy.deepcopy(doc)))
    return store


def _by_objects(store: SqliteStore) -> list:
    slices = store.list(EndpointSlice)
    return [build_service_view(svc, [es for es in slices if es.namespace == svc.namespace
                                     and es.labels.get("kubernetes.io/service-name") == svc.name])
            for svc in store.list(Service)]


def test_load_service_views_matches_object_path(any_store) -> None:
    store = _store(any_store)
    want = _by_objects(store)
    assert load_service_views(store) == want
    assert load_service_views(store, "ns") == want
    assert load_service_views(store, "elsewhere") == []
    web = next(v for v in want if v.service.name == "web")
    assert [len(p.backends) for p in web.ports] == [7, 6, 2]


def test_cache_load_and_apply_match_object_path(any_store) -> None:
    store = _store(any_store)
    cache = ServiceCache.load(store)
    assert sorted(cache.views(), key=lambda v: v.service.name) == sorted(_by_objects(store),
                                                                         key=lambda v: v.service.name)
    es = store.get(EndpointSlice, "ns", "web-b")
    es.endpoints[0].conditions.ready = True
    es.metadata.labels["kubernetes.io/service-name"] = "lonely"
    store.update(es)
    touched = cache.apply(store.changes_since(cache.resource_version, [Service, EndpointSlice]))
    assert touched == {("ns", "web"), ("ns", "lonely")}
    assert sorted(cache.views(), key=lambda v: v.service.name) == sorted(_by_objects(store),
                                                                         key=lambda v: v.service.name)


def test_merge_keeps_the_first_of_a_repeated_address_within_one_slice_too() -> None:
    from controlplane.controllers.service_view import Backend, merge_backends
    a = Backend("10.0.0.1", 80, True, True, False, "n1", None)
    again = Backend("10.0.0.1", 80, False, False, False, "n2", None)
    b = Backend("10.0.0.2", 80, True, True, False, None, None)
    assert merge_backends([[("http", a), ("http", again), ("http", b)]]) == {"http": [a, b]}
    assert merge_backends([[("http", a), ("dns", again)]]) == {"http": [a], "dns": [again]}
    assert merge_backends([[("http", a)], [("http", again), ("http", b)]]) == {"http": [a, b]}
