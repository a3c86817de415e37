"""The agent's desired state (a pure function) and its change-feed cache: no root."""
from __future__ import annotations

from controlplane.agent.cache import ServiceCache
from controlplane.agent.desired import NodeConfig, desired_state
from controlplane.api import EndpointSlice, Service
from controlplane.controllers.service_view import build_service_view
from controlplane.dataplane.model import Backend, Frontend
from controlplane.store.interface import ADDED, DELETED, MODIFIED, WatchEvent

NODE = NodeConfig("node1")


def service(name="web", ip="10.96.0.50", ports=None, annotations=None, **spec) -> Service:
    doc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
           "spec": {"clusterIP": ip, "selector": {"app": name},
                    "ports": ports or [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
                    **spec}}
    return Service.from_dict(doc)


def endpoint_slice(service_name="web", name=None, endpoints=(), ports=(("http", 8080, "TCP"),)) -> EndpointSlice:
    return EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        "endpoints": [{"addresses": [ip], "conditions": cond} for ip, cond in endpoints],
    })


READY = {"ready": True, "serving": True, "terminating": False}
DRAINING = {"ready": False, "serving": True, "terminating": True}
NOT_READY = {"ready": False, "serving": False, "terminating": False}


def states(svc, *slices, node=NODE):
    return desired_state([build_service_view(svc, list(slices))], node)


def test_cluster_ip_port_with_ready_and_draining_backends():
    want = states(service(), endpoint_slice(endpoints=[("10.244.1.2", READY), ("10.244.1.3", DRAINING),
                                                       ("10.244.1.4", NOT_READY)]))
    (s,) = want.states
    assert s.frontend == Frontend("10.96.0.50", 80, "TCP")
    assert s.backends == (Backend("10.244.1.2", 8080, "active"), Backend("10.244.1.3", 8080, "terminating"))
    assert s.algorithm == "random" and s.affinity_timeout == 0
    assert want.owners[s.frontend] == "default/web:http"


def test_headless_and_external_name_are_not_served():
    assert states(service(ip="None"), endpoint_slice(endpoints=[("10.244.1.2", READY)])).states == ()
    ext = Service.from_dict({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "x", "namespace": "default"},
                             "spec": {"type": "ExternalName", "externalName": "example.org"}})
    assert desired_state([build_service_view(ext, [])], NODE).states == ()


def test_algorithm_annotation_affinity_and_node_default():
    svc = service(annotations={"svcxdp.io/lb-algorithm": "rr"}, sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}})
    (s,) = states(svc, endpoint_slice(endpoints=[("10.244.1.2", READY)])).states
    assert (s.algorithm, s.affinity_timeout) == ("rr", 30)
    (s,) = states(service(), endpoint_slice(), node=NodeConfig("node1", "rr")).states
    assert s.algorithm == "rr"


def test_unknown_algorithm_falls_back_and_says_so():
    want = states(service(annotations={"svcxdp.io/lb-algorithm": "fastest"}), endpoint_slice())
    assert want.states[0].algorithm == "random"
    assert any("fastest" in p for p in want.problems)


def test_sctp_ports_are_reported_not_served():
    svc = service(ports=[{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "s", "port": 9, "protocol": "SCTP"}])
    want = states(svc, endpoint_slice(ports=[("a", 80, "TCP"), ("s", 9, "SCTP")],
                                      endpoints=[("10.244.1.2", READY)]))
    assert [s.frontend.protocol for s in want.states] == ["TCP"]
    assert any("SCTP" in p for p in want.problems)


def test_each_port_gets_its_own_backend_ports():
    svc = service(ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                         {"name": "dns", "port": 53, "protocol": "UDP"}])
    want = states(svc, endpoint_slice(ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
                                      endpoints=[("10.244.1.2", READY)]))
    got = {(s.frontend.port, s.frontend.protocol): s.backends[0].port for s in want.states}
    assert got == {(80, "TCP"): 8080, (53, "UDP"): 5353}


def test_no_endpoints_is_a_frontend_without_backends():
    (s,) = states(service()).states
    assert s.backends == ()


def ev(kind, obj, rv):
    return WatchEvent(kind, obj, rv)


def test_cache_folds_events_and_reports_touched_services():
    cache = ServiceCache()
    assert cache.apply([ev(ADDED, service(), 1)]) == {("default", "web")}
    assert cache.view(("default", "web")).ports[0].backends == ()
    touched = cache.apply([ev(ADDED, endpoint_slice(endpoints=[("10.244.1.2", READY)]), 2)])
    assert touched == {("default", "web")}
    assert [b.ip for b in cache.view(("default", "web")).ports[0].backends] == ["10.244.1.2"]
    # A slice relabelled to another service leaves the first one.
    cache.apply([ev(ADDED, service("api", "10.96.0.51"), 3)])
    moved = endpoint_slice(service_name="api", name="web-abc", endpoints=[("10.244.1.2", READY)])
    assert cache.apply([ev(MODIFIED, moved, 4)]) == {("default", "web"), ("default", "api")}
    assert cache.view(("default", "web")).ports[0].backends == ()
    assert cache.apply([ev(DELETED, service(), 5)]) == {("default", "web")}
    assert cache.view(("default", "web")) is None
    assert cache.resource_version == 5
