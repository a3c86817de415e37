"""The JSON read path (store.iter_documents -> slice_document_backends) gives the same
views as decoding the objects."""
from __future__ import annotations

import copy

from controlplane.agent.cache import ServiceCache
from controlplane.api.endpoints import EndpointSlice
from controlplane.api.service import Service
from controlplane.controllers.service_view import (Hints, build_service_view, load_service_views, slice_backends,
                                                   slice_document_backends)
from controlplane.store import SqliteStore
from tests.unit.store_kit import DocumentsOnly

SLICES = [
    {"metadata": {"name": "web-a", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4",
     "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "x"}],
     "endpoints": [
         {"addresses": ["10.0.0.2"], "conditions": {"ready": True}, "nodeName": "n1",
          "targetRef": {"kind": "Pod", "name": "web-0"},
          "hints": {"forZones": [{"name": "z1"}, {"name": "z2"}], "forNodes": [{"name": "n1"}]}},
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
                   {"addresses": ["10.0.0.7"], "nodeName": "n2", "hints": {"forZones": [{"name": "z2"}]}}]},
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
    assert [len(p.backends) for p in web.ports] == [6, 5, 2]   # (an endpoint is its first address)


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


def test_a_cache_fed_text_matches_one_fed_objects(any_store) -> None:
    """ServiceCache.apply of the feed's TextEvents (as the agent asks for Services and
    slices) leaves the same cache, touches the same services and lists the same trigger
    stamps as the decoded events: for each object added, changed, moved to another
    service, deleted."""
    from controlplane.agent.cache import TEXT_KINDS, WATCHED_KINDS
    from controlplane.api.endpoints import LAST_CHANGE_TRIGGER_TIME
    from controlplane.store.interface import TextEvent
    store = any_store
    rv0 = store.current_resource_version()
    _store(store)
    es = store.get(EndpointSlice, "ns", "web-b")
    es.endpoints[0].conditions.ready = True
    es.metadata.annotations = {LAST_CHANGE_TRIGGER_TIME: "2026-12-01T10:00:00Z"}
    store.update(es)
    es = store.get(EndpointSlice, "ns", "web-a")
    es.metadata.labels["kubernetes.io/service-name"] = "lonely"
    es.metadata.annotations = {LAST_CHANGE_TRIGGER_TIME: "2026-12-01T10:00:01Z"}
    store.update(es)
    store.delete(EndpointSlice, "ns", "web-none")
    store.delete(Service, "ns", "lonely")
    objects, texts = ServiceCache(), ServiceCache()
    decoded = store.changes_since(rv0, WATCHED_KINDS)
    as_text = store.changes_since(rv0, WATCHED_KINDS, as_text=TEXT_KINDS)
    assert all(isinstance(ev, TextEvent) for ev in as_text) and len(as_text) == len(decoded) == len(SLICES) + 6
    by_objects: list = []
    by_text: list = []
    assert objects.apply(decoded, by_objects) == texts.apply(as_text, by_text)
    assert texts.slices == objects.slices and texts.slice_owner == objects.slice_owner
    assert texts.services == objects.services
    assert texts.resource_version == objects.resource_version == store.current_resource_version()
    assert by_text == by_objects == [("ns", "web-b", "2026-12-01T10:00:00Z"), ("ns", "web-a", "2026-12-01T10:00:01Z")]
    assert set(texts.slices[("ns", "lonely")]) == {"web-a"} and "web-none" not in texts.slices[("ns", "web")]
    assert texts.views() == objects.views()


def test_merge_keeps_the_first_of_a_repeated_address_within_one_slice_too() -> None:
    from controlplane.controllers.service_view import Backend, merge_backends
    a = Backend("10.0.0.1", 80, True, True, False, "n1", None)
    again = Backend("10.0.0.1", 80, False, False, False, "n2", None)
    b = Backend("10.0.0.2", 80, True, True, False, None, None)
    assert merge_backends([{"http": [a, again, b]}]) == {"http": [a, b]}
    assert merge_backends([{"http": [a], "dns": [again]}]) == {"http": [a], "dns": [again]}
    assert merge_backends([{"http": [a]}, {"http": [again, b]}]) == {"http": [a, b]}
    # one name, two ports: the same ip twice is no repeat
    assert merge_backends([{"http": [a, a._replace(port=81)]}]) == {"http": [a, a._replace(port=81)]}


# ---- the typed text path (SqliteStore.iter_json -> slice_text_read) ------------------------
def _text_path(doc: dict) -> tuple:
    import json
    from controlplane.controllers.service_view import slice_text_read
    return tuple(slice_text_read(json.dumps(doc)))


def _document_path(doc: dict) -> tuple:
    from controlplane.api.endpoints import proxied_slice_owner
    meta = doc.get("metadata") or {}
    owner = proxied_slice_owner(meta.get("labels"))
    return (meta.get("namespace") or "", meta.get("name") or "", owner,
            slice_document_backends(copy.deepcopy(doc)) if owner else {})


def test_text_backends_match_document_backends() -> None:
    for doc in SLICES:
        assert _text_path(doc) == _document_path(doc)
    assert _text_path(SLICES[0])[3], "the test slices must list backends"


def test_text_backends_take_the_document_path_for_a_field_of_another_type() -> None:
    """A field the typed decoder cannot hold (a string condition, a number port name)
    reads as the tolerant document path reads it, not as an error or a dropped slice."""
    odd = copy.deepcopy(SLICES[0])
    odd["endpoints"][0]["conditions"]["ready"] = "yes"      # not False: ready
    odd["ports"][0]["name"] = 7                              # kept as the dict path keeps it
    odd["metadata"]["uid"] = {"not": "a string"}             # a field neither path reads
    assert _text_path(odd) == _document_path(odd)
    assert (7, "TCP") in _text_path(odd)[3]


def test_text_path_matches_document_path_on_random_slices() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    # Mostly well-formed slices (the fixed SLICES above cover the missing fields), so that
    # most examples list backends and every condition combination is compared.
    maybe_bool = st.sampled_from([None, True, False])
    conditions = st.fixed_dictionaries({}, optional={"ready": maybe_bool, "serving": maybe_bool,
                                                     "terminating": maybe_bool})
    endpoint = st.fixed_dictionaries({
        "addresses": st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), min_size=1, max_size=3),
        "conditions": conditions,
    }, optional={
        "nodeName": st.sampled_from([None, "", "n1", "n2"]),
        "targetRef": st.fixed_dictionaries({}, optional={
            "kind": st.sampled_from(["Pod", "Node", None]), "name": st.sampled_from(["p0", "p1", None])}),
        "zone": st.just("z"),
        "hints": st.one_of(st.fixed_dictionaries({}, optional={
            "forZones": st.lists(st.fixed_dictionaries({}, optional={"name": st.sampled_from(["z1", "z2", "", None])}),
                                 max_size=2),
            "forNodes": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["n1", "n2"])}), max_size=2)}),
            # what only a hand-edited document holds (the codec refuses it): the text path
            # falls back to the document path, which reads it the same way
            st.fixed_dictionaries({"forZones": st.one_of(st.just("z1"), st.lists(
                st.one_of(st.none(), st.integers(0, 3), st.fixed_dictionaries({"name": st.integers(0, 3)})),
                max_size=2))}),
            st.just(None), st.just([])),
    })
    port = st.fixed_dictionaries({"port": st.integers(1, 65535)},
                                 optional={"name": st.sampled_from([None, "", "http", "dns"]),
                                           "protocol": st.sampled_from(["TCP", "UDP", "SCTP", "tcp"])})
    labels = st.fixed_dictionaries({"kubernetes.io/service-name": st.sampled_from(["web", "db"])},
                                   optional={"app": st.just("x"),
                                             "service.kubernetes.io/headless": st.just(""),
                                             "service.kubernetes.io/service-proxy-name": st.just("other")})
    slices = st.fixed_dictionaries({
        "metadata": st.fixed_dictionaries({"name": st.sampled_from(["s", "t"]), "labels": labels},
                                          optional={"namespace": st.sampled_from(["ns", ""])}),
        "addressType": st.sampled_from([None, "IPv4", "IPv4", "IPv6"]),
        "ports": st.lists(port, max_size=3),
        "endpoints": st.lists(endpoint, max_size=4)})

    @settings(max_examples=300, deadline=None)
    @given(slices)
    def check(doc: dict) -> None:
        assert _text_path(doc) == _document_path(doc)

    check()


def test_generic_and_text_paths_give_the_same_views(tmp_path) -> None:
    store = _store(SqliteStore(tmp_path / "s.db"))
    assert hasattr(store, "iter_json")
    want = _by_objects(store)
    assert load_service_views(DocumentsOnly(store)) == want
    assert load_service_views(store) == want
    assert load_service_views(DocumentsOnly(store), "ns") == load_service_views(store, "ns") == want
    generic, text = ServiceCache.load(DocumentsOnly(store)), ServiceCache.load(store)
    assert text.slices == generic.slices and text.slice_owner == generic.slice_owner
    assert set(text.slice_owner) == {("ns", "web-a"), ("ns", "web-b"), ("ns", "web-v6"), ("ns", "web-none")}
    assert text.views() == generic.views() == want
    store.close()


def test_iter_json_is_the_stored_documents(tmp_path) -> None:
    import json
    store = _store(SqliteStore(tmp_path / "s.db"))
    for cls in (Service, EndpointSlice):
        assert [json.loads(t) for t in store.iter_json(cls)] == list(store.iter_documents(cls))
        assert [json.loads(t) for t in store.iter_json(cls, "ns")] == [o.to_dict() for o in store.list(cls, "ns")]
        assert store.iter_json(cls, "elsewhere") == []
    store.close()


def test_a_service_msgspec_cannot_parse_reads_as_the_store_lists_it(tmp_path) -> None:
    """Stored text json.loads reads and msgspec refuses (an unknown field holding Infinity,
    kept by the codec) takes json.loads: the view has the same Service as `list`."""
    store = _store(SqliteStore(tmp_path / "s.db"))
    store.create(Service.from_dict({"metadata": {"name": "odd", "namespace": "ns"},
                                    "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 1}],
                                             "futureField": float("inf")}}))
    assert "Infinity" in next(t for t in store.iter_json(Service) if '"odd"' in t)
    views = load_service_views(store)
    assert views == _by_objects(store)
    assert [v.service.name for v in views] == ["lonely", "odd", "web"]
    store.close()


# ---- the one-port text path (_one_port_backends) against the document and object paths ----
def _ep(ip, **extra) -> dict:
    return {"addresses": [ip], **extra}


ONE_PORT_SLICES = [
    {"metadata": {"name": "api-a", "namespace": "ns", "labels": {"kubernetes.io/service-name": "api"}},
     "addressType": "IPv4", "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}],
     "endpoints": [
         _ep("10.1.0.9", conditions={"ready": True}, nodeName="n1", targetRef={"kind": "Pod", "name": "api-0"}),
         _ep("10.1.0.2", conditions={"ready": False, "serving": True, "terminating": True}, nodeName="n-new"),
         _ep("10.1.0.3", conditions={"serving": False}, targetRef={"kind": "Node", "name": "n1"}),
         _ep("10.1.0.4", conditions={}, nodeName="", targetRef={"name": "no-kind"}),
         _ep("10.1.0.5"),                                                   # no conditions
         _ep("10.1.0.6", conditions={"ready": None, "serving": None, "terminating": False}),
         _ep("10.1.0.9", conditions={"ready": False}, nodeName="n2"),      # a repeat: the first wins
         _ep("10.1.0.10", conditions={"ready": True}, zone="z", hostname="h")]},
    {"metadata": {"name": "api-b", "namespace": "ns", "labels": {"kubernetes.io/service-name": "api"}},
     "addressType": "IPv4", "ports": [{"name": "grpc", "port": 9000}],
     "endpoints": [_ep("10.1.0.2", conditions={"ready": True}, hints={"forZones": [{"name": "z1"}]}),
                   _ep("10.1.0.11", nodeName="n1", hints={"forNodes": [{"name": "n1"}], "forZones": []})]},
    {"metadata": {"name": "api-c", "namespace": "ns", "labels": {"kubernetes.io/service-name": "api"}},
     "addressType": "IPv4", "ports": [{"name": "grpc", "port": 9001}],   # the name's other number
     "endpoints": [_ep("10.1.0.2"), _ep("10.1.0.12", conditions={"terminating": True})]},
    {"metadata": {"name": "plain-a", "namespace": "ns", "labels": {"kubernetes.io/service-name": "plain"}},
     "ports": [{"port": 80}],                                                # unnamed, addressType absent
     "endpoints": [_ep("10.2.0.1"), _ep("10.2.0.1"), _ep("10.2.0.3", conditions={"ready": False})]},
    {"metadata": {"name": "mixed-a", "namespace": "ns", "labels": {"kubernetes.io/service-name": "mixed"}},
     "addressType": "IPv4", "ports": [{"name": "", "port": 81}],
     "endpoints": [_ep("10.3.0.1"), {"addresses": []}, _ep("10.3.0.2")]},      # an endpoint without one
    {"metadata": {"name": "mixed-b", "namespace": "ns", "labels": {"kubernetes.io/service-name": "mixed"}},
     "addressType": "IPv4", "ports": [{"port": 81}],
     "endpoints": [_ep("10.3.0.3"), {"addresses": None, "conditions": {"ready": True}}]},
    {"metadata": {"name": "mixed-c", "namespace": "ns", "labels": {"kubernetes.io/service-name": "mixed"}},
     "addressType": "IPv4", "ports": [{"port": 81}],
     "endpoints": [_ep("10.3.0.4"), {"addresses": ["10.3.0.5", "10.3.0.1"]}]},  # two addresses
    {"metadata": {"name": "mixed-d", "namespace": "ns", "labels": {"kubernetes.io/service-name": "mixed"}},
     "addressType": "IPv4", "ports": [{"port": None}], "endpoints": [_ep("10.3.0.6")]},
    {"metadata": {"name": "mixed-v6", "namespace": "ns", "labels": {"kubernetes.io/service-name": "mixed"}},
     "addressType": "IPv6", "ports": [{"port": 81}], "endpoints": [_ep("fd00::6")]},
    {"metadata": {"name": "mixed-fqdn", "namespace": "ns", "labels": {"kubernetes.io/service-name": "mixed"}},
     "addressType": "FQDN", "ports": [{"port": 81}], "endpoints": [_ep("a.example")]},
    {"metadata": {"name": "no-owner", "namespace": "ns", "labels": {"kubernetes.io/service-name": ""}},
     "ports": [{"port": 81}], "endpoints": [_ep("10.4.0.1")]},
]


def test_one_port_text_backends_match_document_and_object_backends(monkeypatch) -> None:
    from controlplane.controllers import service_view
    calls = []
    real = service_view._one_port_backends

    def counted(port, endpoints):
        calls.append(port)
        return real(port, endpoints)
    monkeypatch.setattr(service_view, "_one_port_backends", counted)
    for doc in ONE_PORT_SLICES:
        assert _text_path(doc) == _document_path(doc), doc["metadata"]["name"]
        if _document_path(doc)[2]:
            assert _text_path(doc)[3] == slice_backends(EndpointSlice.from_dict(copy.deepcopy(doc)))
    assert len(calls) >= 4, "the fixtures must take the one-port path"


def test_one_port_views_match_object_and_document_paths(tmp_path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    for name, ports in [("api", [{"name": "grpc", "port": 90}]), ("plain", [{"port": 80}]),
                        ("mixed", [{"port": 81}, {"name": "none", "port": 82}]), ("no-owner", [{"port": 1}])]:
        store.create(Service.from_dict({"metadata": {"name": name, "namespace": "ns"},
                                        "spec": {"clusterIP": "10.96.1.1", "ports": ports}}))
    for doc in ONE_PORT_SLICES:
        store.create(EndpointSlice.from_dict(copy.deepcopy(doc)))
    want = _by_objects(store)
    assert load_service_views(store) == load_service_views(DocumentsOnly(store)) == want
    by_name = {v.service.name: v for v in want}
    api = by_name["api"].ports[0].backends
    assert [(b.ip, b.port, b.ready, b.node_name) for b in api if b.ip == "10.1.0.9"] == [("10.1.0.9", 9000, True, "n1")]
    assert {(b.ip, b.port) for b in api} >= {("10.1.0.2", 9000), ("10.1.0.2", 9001), ("10.1.0.12", 9001)}
    assert [b.ip for b in by_name["plain"].ports[0].backends] == ["10.2.0.1", "10.2.0.3"]
    assert sorted(b.ip for b in by_name["mixed"].ports[0].backends) == [f"10.3.0.{i}" for i in range(1, 6)]
    assert by_name["no-owner"].ports[0].backends == ()
    store.close()


def test_views_are_the_constructors_objects() -> None:
    """view_from_backends' views are what the constructors make of the same fields (equal,
    same hash, repr, fields, frozen), the frontends of each address in order."""
    import dataclasses

    import pytest

    from controlplane.controllers.service_view import (ServicePortView, ServiceView, merge_backends,
                                                       view_from_backends)
    svc = Service.from_dict({"metadata": {"name": "web", "namespace": "ns"},
                             "spec": {"clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"],
                                      "ports": [{"name": "http", "port": 8080, "nodePort": 30080},
                                                {"name": "dns", "port": 53, "protocol": "UDP"}]}})
    backends = merge_backends([slice_document_backends(SLICES[0])])
    view = view_from_backends(svc, backends)
    made = ServiceView(svc, tuple(ServicePortView(p.namespace, p.service, p.name, p.protocol, p.port,
                                                  p.node_port, p.frontends, p.backends) for p in view.ports))
    assert view == made and hash(view.ports) == hash(made.ports) and repr(view) == repr(made)
    assert view.ports[0].frontends == (("10.96.0.1", 8080, "clusterIP"), ("192.0.2.1", 8080, "externalIP"))
    assert [p.name for p in view.ports] == ["http", "dns"] and view.ports[0].node_port == 30080
    # one address (made without the comprehension), and none (headless)
    alone = Service.from_dict({"metadata": {"name": "web", "namespace": "ns"},
                               "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}, {"port": 53}]}})
    assert [p.frontends for p in view_from_backends(alone, {}).ports] == [
        (("10.96.0.1", 80, "clusterIP"),), (("10.96.0.1", 53, "clusterIP"),)]
    alone.spec.cluster_ip = "None"
    assert [p.frontends for p in view_from_backends(alone, {}).ports] == [(), ()]
    for got, want in zip((view, *view.ports), (made, *made.ports)):
        assert type(got) is type(want) and vars(got) == vars(want)
        assert list(vars(got)) == [f.name for f in dataclasses.fields(want)]   # field order too
        assert dataclasses.astuple(got) == dataclasses.astuple(want)
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.ports = ()  # type: ignore[misc]


class _FeedBehind:
    """An etcd store whose first current_resource_version is a revision compacted already:
    what a follower's feed, behind after the agent was paused, answers without a round trip."""

    def __init__(self, store, stale: int) -> None:
        self._store, self._stale = store, stale

    def current_resource_version(self) -> int:
        stale, self._stale = self._stale, None
        return stale if stale is not None else self._store.current_resource_version()

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_snapshot_whose_replay_is_compacted_is_taken_again(etcd_server) -> None:
    """ServiceCache.load asked the store for history since a compacted revision: Gone
    failed the consistency check (a traceback, a retry) instead of a fresh snapshot."""
    etcd_server.wipe()
    store = _store(etcd_server.store())
    stale = store.current_resource_version()
    es = store.get(EndpointSlice, "ns", "web-b")
    es.endpoints[0].conditions.ready = True
    store.update(es)
    client = etcd_server.client()
    client.compact(int(client.range("/registry/")["header"]["revision"]))
    cache = ServiceCache.load(_FeedBehind(store, stale))
    assert sorted(cache.views(), key=lambda v: v.service.name) == sorted(_by_objects(store),
                                                                         key=lambda v: v.service.name)
    store.close()


def test_an_endpoint_is_its_first_address_on_every_read_path() -> None:
    """The API allows up to 100 addresses per endpoint and says consumers may use the
    first; kube-proxy does, and so does every reader here (object, document, text; the
    one-port loop and the general one)."""
    for ports in ([{"name": "http", "port": 8080}], [{"name": "http", "port": 8080}, {"name": "m", "port": 9090}]):
        doc = {"metadata": {"name": "two", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": ports,
               "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "nodeName": "n1"},
                             {"addresses": ["10.0.0.4"]}]}
        by_object = slice_backends(EndpointSlice.from_dict(copy.deepcopy(doc)))
        assert {name: [b.ip for b in backends] for name, backends in by_object.items()} == \
            {(p["name"], "TCP"): ["10.0.0.1", "10.0.0.4"] for p in ports}
        assert slice_document_backends(copy.deepcopy(doc)) == by_object
        assert _text_path(doc)[3] == by_object


def test_hints_read_alike_on_every_path() -> None:
    """An endpoint's hints, as each reader gives them (and kube-proxy reads them): zones and
    nodes as sets, an entry without a name naming "", no hint at all (or only empty
    lists) as None."""
    doc = {"metadata": {"name": "h", "namespace": "ns", "labels": {"kubernetes.io/service-name": "h"}},
           "addressType": "IPv4", "ports": [{"port": 80}],
           "endpoints": [_ep("10.5.0.1", hints={"forZones": [{"name": "z1"}, {"name": "z1"}, {}],
                                                "forNodes": [{"name": "n1"}]}),
                         _ep("10.5.0.2", hints={"forZones": []}),
                         _ep("10.5.0.3")]}
    want = [Hints(frozenset({"z1", ""}), frozenset({"n1"})), None, None]
    for backends in (_text_path(doc)[3], slice_document_backends(copy.deepcopy(doc)),
                     slice_backends(EndpointSlice.from_dict(copy.deepcopy(doc)))):
        assert [b.hints for b in backends[("", "TCP")]] == want
