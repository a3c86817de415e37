"""EndpointSlices read as kube-proxy reads them (pkg/proxy/endpointslicecache.go,
cmd/kube-proxy/app/server.go), on every read path the agent has:

- a slice labelled `service.kubernetes.io/service-proxy-name` or
  `service.kubernetes.io/headless` is not used (kube-proxy's informers list slices with
  `!service-proxy-name,!headless`); the Kubernetes feed asks the API with that selector;
- a service port takes the backends of the slice ports with its name AND its protocol
  (ServicePortName); a slice port's protocol defaults to TCP;
- an unset `serving` condition is true (not ready's value): with ready false and
  terminating true the endpoint is a serving, terminating fallback.

The paths: objects (build_service_view, the cache fed decoded events), parsed documents
(a store without stored text: etcd, the Kubernetes feed), stored text (SQLite's
iter_json and the typed decoder; the cache loaded from it and fed TextEvents), and for
the text path both the one-port loop and the general one.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.agent.cache import TEXT_KINDS, WATCHED_KINDS, ServiceCache
from controlplane.agent.desired import NodeConfig, desired_state
from controlplane.api.endpoints import (PROXIED_SLICE_SELECTOR, Endpoint, EndpointConditions, EndpointSlice,
                                        proxied_slice_owner)
from controlplane.api.service import Service
from controlplane.controllers import service_view
from controlplane.controllers.service_view import (ServiceView, build_service_view, load_service_views,
                                                   slice_backends, slice_change_read, slice_document_backends,
                                                   slice_document_read, slice_text_read)
from controlplane.store import SqliteStore
from tests.unit.store_kit import DocumentsOnly

NS = "default"
PROXY_NAME = "service.kubernetes.io/service-proxy-name"
HEADLESS = "service.kubernetes.io/headless"


def service(name: str, ports: list[dict[str, Any]], ip: str = "10.96.0.10") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": ip, "ports": ports}}


def endpoint_slice(name: str, service_name: str, ports: list[dict[str, Any]], endpoints: list[dict[str, Any]],
                   **labels: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"kubernetes.io/service-name": service_name, **labels}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints}


def ep(ip: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions, "nodeName": "node1"}


def views_on_every_path(tmp_path: Path, services: list[dict], slices: list[dict]) -> dict[str, list[ServiceView]]:
    """Each read path's views of these objects, by path name, sorted by service name."""
    store = SqliteStore(tmp_path / "store.db")
    rv0 = store.current_resource_version()
    for doc in services:
        store.create(Service.from_dict(copy.deepcopy(doc)))
    for doc in slices:
        store.create(EndpointSlice.from_dict(copy.deepcopy(doc)))
    objects = store.list(EndpointSlice)

    def by_name(views: list[ServiceView]) -> list[ServiceView]:
        return sorted(views, key=lambda v: v.service.name)

    fed_objects, fed_text = ServiceCache(), ServiceCache()
    fed_objects.apply(store.changes_since(rv0, WATCHED_KINDS))
    fed_text.apply(store.changes_since(rv0, WATCHED_KINDS, as_text=TEXT_KINDS))
    out = {
        "objects": by_name([build_service_view(svc, [es for es in objects if es.service_name == svc.name])
                            for svc in store.list(Service)]),
        "documents": by_name(load_service_views(DocumentsOnly(store))),
        "text": by_name(load_service_views(store)),
        "cache loaded from documents": by_name(ServiceCache.load(DocumentsOnly(store)).views()),
        "cache loaded from text": by_name(ServiceCache.load(store).views()),
        "cache fed objects": by_name(fed_objects.views()),
        "cache fed text": by_name(fed_text.views()),
    }
    store.close()
    return out


def backends(view: ServiceView) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(port name, protocol) -> [(ip, port)] of a view."""
    return {(p.name, p.protocol): [(b.ip, b.port) for b in p.backends] for p in view.ports}


def text_reads(doc: dict) -> list[tuple]:
    """What the two stored-text readers (bulk and changed slice) make of a slice."""
    text = json.dumps(doc)
    return [tuple(slice_text_read(text)), tuple(slice_change_read(text)[0])]


# ---- 1. slices labelled service-proxy-name / headless are not used ---------------------------
@pytest.mark.parametrize("label", [PROXY_NAME, HEADLESS])
def test_a_slice_kube_proxys_selector_leaves_out_gives_no_backends_on_any_path(tmp_path, label) -> None:
    """Service `web` has a plain slice and one labelled for another proxy (or headless):
    only the plain one's backends are served, on every path. (A second service whose only
    slice is labelled has none; a slice with more than one port takes the general loop.)"""
    port = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    two_ports = port + [{"name": "metrics", "port": 9090, "protocol": "TCP"}]
    services = [service("web", [{"name": "http", "port": 80, "protocol": "TCP"}]),
                service("other", [{"name": "http", "port": 80, "protocol": "TCP"},
                                  {"name": "metrics", "port": 90, "protocol": "TCP"}], ip="10.96.0.11")]
    slices = [endpoint_slice("web-plain", "web", port, [ep("10.244.0.1", ready=True)]),
              endpoint_slice("web-labelled", "web", port, [ep("10.244.0.2", ready=True)], **{label: "x"}),
              endpoint_slice("other-labelled", "other", two_ports, [ep("10.244.0.3", ready=True)], **{label: ""})]
    for path, views in views_on_every_path(tmp_path, services, slices).items():
        other, web = views
        assert backends(web) == {("http", "TCP"): [("10.244.0.1", 8080)]}, path
        assert backends(other) == {("http", "TCP"): [], ("metrics", "TCP"): []}, path


@pytest.mark.parametrize("label", [PROXY_NAME, HEADLESS])
def test_every_slice_reader_gives_a_labelled_slice_no_owner(label) -> None:
    for ports in ([{"name": "http", "port": 8080}], [{"name": "http", "port": 8080}, {"name": "m", "port": 1}]):
        doc = endpoint_slice("web-1", "web", ports, [ep("10.244.0.1", ready=True)], **{label: ""})
        want = (NS, "web-1", None, {})
        assert tuple(slice_document_read(copy.deepcopy(doc))) == want
        assert text_reads(doc) == [want, want]
        assert proxied_slice_owner(EndpointSlice.from_dict(doc).labels) is None
        plain = copy.deepcopy(doc)
        del plain["metadata"]["labels"][label]
        assert slice_document_read(plain).service == "web" and slice_text_read(json.dumps(plain)).service == "web"


@pytest.mark.parametrize("as_text", [False, True])
def test_a_slice_that_gains_the_label_leaves_its_service_in_the_cache(tmp_path, as_text) -> None:
    """As kube-proxy's informer turns a slice that stops matching its selector into a
    delete: the change feed's update (decoded or text) takes the slice's backends away."""
    store = SqliteStore(tmp_path / "store.db")
    store.create(Service.from_dict(service("web", [{"name": "http", "port": 80}])))
    store.create(EndpointSlice.from_dict(endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                                        [ep("10.244.0.1", ready=True)])))
    cache = ServiceCache.load(store)
    assert backends(cache.view((NS, "web"))) == {("http", "TCP"): [("10.244.0.1", 8080)]}
    es = store.get(EndpointSlice, NS, "web-1")
    es.metadata.labels[PROXY_NAME] = "another-proxy"
    store.update(es)
    events = store.changes_since(cache.resource_version, WATCHED_KINDS, as_text=TEXT_KINDS if as_text else ())
    assert cache.apply(events) == {(NS, "web")}
    assert backends(cache.view((NS, "web"))) == {("http", "TCP"): []}
    es = store.get(EndpointSlice, NS, "web-1")
    del es.metadata.labels[PROXY_NAME]
    store.update(es)
    cache.apply(store.changes_since(cache.resource_version, WATCHED_KINDS, as_text=TEXT_KINDS if as_text else ()))
    assert backends(cache.view((NS, "web"))) == {("http", "TCP"): [("10.244.0.1", 8080)]}
    store.close()


def test_the_kubernetes_feed_lists_and_watches_slices_with_kube_proxys_selector(tmp_path) -> None:
    """Every endpointslices request (list and watch) carries the label selector; services
    are asked for as before. A labelled slice the API sends anyway (this test server
    ignores selectors) is still not used, when listed and when it gains the label."""
    import time

    from controlplane.kubeapi.connect import api_client
    from controlplane.kubeapi.feed import KubeFeed
    from tests.kube_api_server import ENDPOINTSLICES, SERVICES, KubeApiServer

    assert PROXIED_SLICE_SELECTOR == f"!{PROXY_NAME},!{HEADLESS}"
    api = KubeApiServer().start()
    path = tmp_path / "kubeconfig"
    path.write_text(api.kubeconfig())
    feed = KubeFeed(api_client(str(path)))
    try:
        api.put(SERVICES, service("web", [{"name": "http", "port": 80, "protocol": "TCP"}]))
        api.put(ENDPOINTSLICES, endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                               [ep("10.244.0.1", ready=True)]))
        api.put(ENDPOINTSLICES, endpoint_slice("web-2", "web", [{"name": "http", "port": 8080}],
                                               [ep("10.244.0.2", ready=True)], **{HEADLESS: ""}))
        feed.start()
        assert feed.wait_synced(10)
        deadline = time.monotonic() + 10
        while api.watchers() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        asked = [r for r in api.requests if r.resource == ENDPOINTSLICES]
        assert {r.watch for r in asked} == {False, True}
        assert all(r.query.get("labelSelector") == PROXIED_SLICE_SELECTOR for r in asked)
        assert not any("labelSelector" in r.query for r in api.requests if r.resource == SERVICES)

        cache = ServiceCache.load(feed)
        assert backends(cache.view((NS, "web"))) == {("http", "TCP"): [("10.244.0.1", 8080)]}
        rv = feed.current_resource_version()
        api.put(ENDPOINTSLICES, endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                               [ep("10.244.0.1", ready=True)], **{PROXY_NAME: "other"}))
        assert feed.wait_for_change(rv, timeout=10) > rv
        cache.apply(feed.changes_since(cache.resource_version, WATCHED_KINDS, as_text=TEXT_KINDS))
        assert backends(cache.view((NS, "web"))) == {("http", "TCP"): []}
    finally:
        feed.close()
        api.stop()


# ---- 2. slice ports match service ports by name and protocol ---------------------------------
def test_a_service_port_takes_only_the_slice_ports_of_its_protocol(tmp_path) -> None:
    """`dns` is a TCP and a UDP service port; `http` is TCP. A slice's UDP `http` port
    (the QA case: one slice, one port) feeds nothing; the TCP and UDP `dns` ports each get
    their own protocol's numbers; a slice port without a protocol is TCP."""
    services = [
        service("web", [{"name": "http", "port": 80, "protocol": "TCP"}]),
        service("dns", [{"name": "dns", "port": 53, "protocol": "TCP"}, {"name": "dns-udp", "port": 53,
                                                                          "protocol": "UDP"},
                        {"name": "both", "port": 54, "protocol": "UDP"}, {"name": "both-tcp", "port": 54}],
                ip="10.96.0.11"),
        # one port name `p` in two slices, once UDP and once TCP: the UDP service port
        # takes only the UDP slice port, the TCP one only the TCP slice port
        service("pair", [{"name": "p", "port": 5000, "protocol": "UDP"}], ip="10.96.0.12"),
        service("pair-tcp", [{"name": "p", "port": 5000}], ip="10.96.0.13"),
    ]
    slices = [
        endpoint_slice("web-udp", "web", [{"name": "http", "port": 8080, "protocol": "UDP"}],
                       [ep("10.244.0.1", ready=True)]),                                       # one port
        endpoint_slice("dns-1", "dns", [{"name": "dns", "port": 5353},                         # no protocol: TCP
                                        {"name": "dns-udp", "port": 5354, "protocol": "UDP"},
                                        {"name": "both", "port": 5355, "protocol": "TCP"},     # not UDP: nothing
                                        {"name": "both-tcp", "port": 5356, "protocol": "SCTP"}],
                       [ep("10.244.1.1", ready=True)]),
        endpoint_slice("pair-udp", "pair", [{"name": "p", "port": 6000, "protocol": "UDP"}],
                       [ep("10.244.2.1", ready=True)]),
        endpoint_slice("pair-tcp", "pair", [{"name": "p", "port": 6001, "protocol": "TCP"}],
                       [ep("10.244.2.2", ready=True)]),
        endpoint_slice("pair-tcp-1", "pair-tcp", [{"name": "p", "port": 6001}], [ep("10.244.2.2", ready=True)]),
        endpoint_slice("pair-tcp-2", "pair-tcp", [{"name": "p", "port": 6000, "protocol": "UDP"}],
                       [ep("10.244.2.1", ready=True)]),
    ]
    for path, views in views_on_every_path(tmp_path, services, slices).items():
        dns, pair, pair_tcp, web = views
        assert backends(web) == {("http", "TCP"): []}, path
        assert backends(dns) == {("dns", "TCP"): [("10.244.1.1", 5353)], ("dns-udp", "UDP"): [("10.244.1.1", 5354)],
                                 ("both", "UDP"): [], ("both-tcp", "TCP"): []}, path
        assert backends(pair) == {("p", "UDP"): [("10.244.2.1", 6000)]}, path
        assert backends(pair_tcp) == {("p", "TCP"): [("10.244.2.2", 6001)]}, path


def test_the_usual_slice_still_takes_the_one_port_loop(monkeypatch) -> None:
    """One slice, one TCP port (or one without a protocol): _one_port_backends, keyed
    (name, TCP); a one-port UDP slice too, keyed (name, UDP)."""
    calls = []
    real = service_view._one_port_backends
    monkeypatch.setattr(service_view, "_one_port_backends", lambda port, eps: calls.append(port) or real(port, eps))
    for protocol, key in ((None, ("http", "TCP")), ("TCP", ("http", "TCP")), ("UDP", ("http", "UDP"))):
        port = {"name": "http", "port": 8080, **({"protocol": protocol} if protocol else {})}
        doc = endpoint_slice("web-1", "web", [port], [ep("10.244.0.1", ready=True)])
        for read in text_reads(doc):
            assert list(read[3]) == [key]
        assert list(slice_document_backends(copy.deepcopy(doc))) == [key]
        assert list(slice_backends(EndpointSlice.from_dict(doc))) == [key]
    assert len(calls) == 6


# ---- 3. an unset serving condition is true -----------------------------------------------------
def test_unset_serving_reads_as_true_on_every_path(tmp_path) -> None:
    """ready false, serving unset, terminating true: kube-proxy keeps the endpoint as a
    serving, terminating fallback (nil serving is true), so a service whose pods are all
    terminating drains to them instead of answering RST. ready false, serving unset,
    terminating unset: serving but not terminating, so still no backend. The one-port
    slice takes the one-port loop; the two-port one the general loop (_FLAGS)."""
    one = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    two = one + [{"name": "metrics", "port": 9090, "protocol": "TCP"}]
    services = [service("web", [{"name": "http", "port": 80}]),
                service("api", [{"name": "http", "port": 80}, {"name": "metrics", "port": 90}], ip="10.96.0.11")]
    slices = [endpoint_slice("web-1", "web", one, [ep("10.244.0.1", ready=False, terminating=True),
                                                   ep("10.244.0.2", ready=False)]),
              endpoint_slice("api-1", "api", two, [ep("10.244.1.1", ready=False, terminating=True),
                                                   ep("10.244.1.2", ready=False)])]
    for path, views in views_on_every_path(tmp_path, services, slices).items():
        api, web = views
        for view, draining, not_ready in ((web, "10.244.0.1", "10.244.0.2"), (api, "10.244.1.1", "10.244.1.2")):
            flags = {b.ip: (b.ready, b.serving, b.terminating) for p in view.ports for b in p.backends}
            assert flags == {draining: (False, True, True), not_ready: (False, True, False)}, path
            assert {b.ip for p in view.ports for b in p.usable()} == {draining}, path
        (state,) = desired_state([web], NodeConfig("node1")).states
        assert [(b.ip, b.state) for b in state.backends] == [("10.244.0.1", "terminating")], path


def test_the_condition_readers_agree_with_kube_proxy_for_every_combination() -> None:
    """ready: nil or true -> true; serving: nil or true -> true (not ready's value);
    terminating: only true -> true. Endpoint's properties, the document reader, and the
    typed reader's table (_FLAGS, _flags) all give it."""
    for ready in (None, True, False):
        for serving in (None, True, False):
            for terminating in (None, True, False):
                want = (ready is not False, serving is not False, terminating is True)
                c = EndpointConditions(ready=ready, serving=serving, terminating=terminating)
                e = Endpoint(addresses=["10.0.0.1"], conditions=c)
                assert (e.ready, e.serving, e.terminating) == want
                typed = service_view._Conditions(ready, serving, terminating)
                assert service_view._FLAGS[typed] == service_view._flags(typed) == want
                conditions = {k: v for k, v in (("ready", ready), ("serving", serving),
                                                ("terminating", terminating)) if v is not None}
                doc = endpoint_slice("s", "web", [{"name": "", "port": 1}],
                                     [{"addresses": ["10.0.0.1"], "conditions": conditions}])
                (b,) = slice_document_backends(doc)[("", "TCP")]
                assert (b.ready, b.serving, b.terminating) == want
    assert service_view._FLAGS[None] == (True, True, False)   # no conditions at all


@pytest.mark.parametrize("as_text", [False, True])
def test_an_endpoint_two_slices_list_keeps_the_state_a_full_load_gives_after_changes(tmp_path, as_text) -> None:
    """While the EndpointSlice controller moves an endpoint between slices, two slices may
    list it, ready in one and terminating in the other. The first slice by name wins it,
    as a full load reads them; the cache merged its slices in the order they last changed,
    so an update of web-a turned the endpoint terminating until the next full sync (which
    the consistency check then took for drift), and the next update of web-a back."""
    store = SqliteStore(tmp_path / "store.db")
    port = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    store.create(Service.from_dict(service("web", [{"name": "http", "port": 80}])))
    store.create(EndpointSlice.from_dict(endpoint_slice("web-a", "web", port, [ep("10.244.0.1", ready=True)])))
    store.create(EndpointSlice.from_dict(endpoint_slice(
        "web-b", "web", port, [ep("10.244.0.1", ready=False, serving=True, terminating=True)])))
    cache = ServiceCache.load(store)

    def states(view: ServiceView) -> list[tuple]:
        return [(b.ip, b.ready, b.terminating) for p in view.ports for b in p.backends]
    assert states(cache.view((NS, "web"))) == [("10.244.0.1", True, False)]
    es = store.get(EndpointSlice, NS, "web-a")
    es.endpoints.append(Endpoint(addresses=["10.244.0.2"], conditions=EndpointConditions(ready=True)))
    store.update(es)
    cache.apply(store.changes_since(cache.resource_version, WATCHED_KINDS, as_text=TEXT_KINDS if as_text else ()))
    assert states(cache.view((NS, "web"))) == states(ServiceCache.load(store).view((NS, "web"))) == [
        ("10.244.0.1", True, False), ("10.244.0.2", True, False)]
    store.close()
