"""The agent's desired state (a pure function) and its change-feed cache: no root."""
from __future__ import annotations

import pytest

from controlplane.agent.cache import ServiceCache
from controlplane.agent.desired import NodeConfig, desired_state
from controlplane.api import EndpointSlice, Service
from controlplane.controllers.service_view import build_service_view
from controlplane.dataplane.model import Backend, Frontend, ModelError
from controlplane.store.interface import ADDED, DELETED, MODIFIED, WatchEvent

NODE = NodeConfig("node1")


def service(name="web", ip="10.96.0.50", ports=None, annotations=None, created=None, **spec) -> Service:
    doc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations or {},
                        "creationTimestamp": created},
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
    assert [p.reason for p in want.problems if "fastest" in p] == ["InvalidAnnotation"]   # the event's reason


def test_sctp_ports_are_reported_not_served():
    svc = service(ports=[{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "s", "port": 9, "protocol": "SCTP"}])
    want = states(svc, endpoint_slice(ports=[("a", 80, "TCP"), ("s", 9, "SCTP")],
                                      endpoints=[("10.244.1.2", READY)]))
    assert [s.frontend.protocol for s in want.states] == ["TCP"]
    assert [p.reason for p in want.problems if "SCTP" in p] == ["NotServed"]


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


# ---- traffic from outside: NodePort, LoadBalancer IPs, externalIPs, traffic policies ----
NODE_PORTS = NodeConfig("node1", nodeport_addresses=("192.168.1.31",))


def _slice_on_nodes(*eps):
    es = endpoint_slice(endpoints=[(ip, READY) for ip, _ in eps])
    for ep, (_, node) in zip(es.endpoints, eps):
        ep.node_name = node
    return es


def _by_frontend(d):
    return {(s.frontend.vip, s.frontend.port, s.frontend.scope): s for s in d.states}


def nodeport_service(**spec):
    svc = service(type="NodePort", **spec)
    svc.spec.ports[0].node_port = 30080
    return svc


def test_nodeport_externalips_and_lb_ips_are_external_frontends():
    svc = nodeport_service(externalIPs=["203.0.113.250"])
    svc.spec.type = "LoadBalancer"
    svc.spec.load_balancer_source_ranges = ["192.168.1.0/24"]
    svc.status = Service.from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                    "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}}).status
    d = states(svc, _slice_on_nodes(("10.244.1.2", "node1"), ("10.244.2.2", "node2")), node=NODE_PORTS)
    got = _by_frontend(d)
    outside = {("203.0.113.250", 80), ("192.168.1.240", 80), ("192.168.1.31", 30080)}
    # each way in from outside, and its cluster-scope twin: the entry pods and the node
    # find for the same address (kube-proxy serves them there too)
    assert set(got) == {("10.96.0.50", 80, "cluster")} | {(ip, p, scope) for ip, p in outside
                                                         for scope in ("external", "cluster")}
    assert all(len(s.backends) == 2 and not s.local_drop for s in d.states)
    # source ranges guard the LoadBalancer IP only, from outside and from inside
    for scope in ("external", "cluster"):
        assert got[("192.168.1.240", 80, scope)].source_ranges == ("192.168.1.0/24",)
        assert got[("203.0.113.250", 80, scope)].source_ranges == ()
        assert got[("192.168.1.31", 30080, scope)].source_ranges == ()
    # without node addresses (none selected by --nodeport-addresses) no NodePort frontend
    assert ("192.168.1.31", 30080, "external") not in _by_frontend(states(svc, node=NODE))


def test_external_traffic_policy_local_uses_this_nodes_endpoints_and_drops_without():
    svc = nodeport_service(externalTrafficPolicy="Local")
    here = _by_frontend(states(svc, _slice_on_nodes(("10.244.1.2", "node1"), ("10.244.2.2", "node2")),
                               node=NODE_PORTS))
    np = here[("192.168.1.31", 30080, "external")]
    assert [b.ip for b in np.backends] == ["10.244.1.2"] and not np.local_drop
    assert len(here[("10.96.0.50", 80, "cluster")].backends) == 2   # ClusterIP: iTP Cluster
    elsewhere = _by_frontend(states(svc, _slice_on_nodes(("10.244.2.2", "node2")), node=NODE_PORTS))
    np = elsewhere[("192.168.1.31", 30080, "external")]
    assert np.backends == () and np.local_drop
    # no endpoints anywhere: rejected like any service, not dropped
    nowhere = _by_frontend(states(svc, node=NODE_PORTS))
    assert not nowhere[("192.168.1.31", 30080, "external")].local_drop


@pytest.mark.parametrize("etp,itp", [("Cluster", "Cluster"), ("Local", "Cluster"), ("Cluster", "Local"),
                                     ("Local", "Local")])
def test_pods_and_the_node_reach_an_external_address_with_every_endpoint(etp, itp):
    """The twin of a NodePort (and of LB IPs, externalIPs): kube-proxy short-circuits
    traffic from pods and from the node to every endpoint, subject to neither traffic
    policy (its cluster-endpoints chain exists for any externally reachable port)."""
    svc = nodeport_service(externalTrafficPolicy=etp, internalTrafficPolicy=itp)
    got = _by_frontend(states(svc, _slice_on_nodes(("10.244.1.2", "node1"), ("10.244.2.2", "node2")),
                              node=NODE_PORTS))
    assert [b.ip for b in got[("192.168.1.31", 30080, "cluster")].backends] == ["10.244.1.2", "10.244.2.2"]
    elsewhere = _by_frontend(states(svc, _slice_on_nodes(("10.244.2.2", "node2")), node=NODE_PORTS))
    twin = elsewhere[("192.168.1.31", 30080, "cluster")]
    assert [b.ip for b in twin.backends] == ["10.244.2.2"] and not twin.local_drop


def test_a_clusterip_comes_before_another_services_twin_and_each_conflict_is_said_once():
    """An externalIP equal to another service's ClusterIP:port: that ClusterIP keeps the
    cluster scope (the twin is claimed last, and said so); two services on one externalIP:
    one conflict reported, not one more for the twin of the one not served."""
    a = service(name="a", externalIPs=["10.96.0.51"])
    b = service(name="b", ip="10.96.0.51")
    d = desired_state([build_service_view(a, []), build_service_view(b, [])], NODE)
    assert d.owners[Frontend("10.96.0.51", 80, "TCP", "cluster")] == "default/b:http"
    assert d.owners[Frontend("10.96.0.51", 80, "TCP", "external")] == "default/a:http"
    assert len(d.problems) == 1 and "(the way in for pods and nodes)" in d.problems[0]
    c = service(name="c", ip="10.96.0.52", externalIPs=["203.0.113.250"])
    e = service(name="e", ip="10.96.0.53", externalIPs=["203.0.113.250"])
    d = desired_state([build_service_view(c, []), build_service_view(e, [])], NODE)
    assert len(d.problems) == 1 and "(the way in" not in d.problems[0]


@pytest.mark.parametrize("older_first", [True, False], ids=["older-read-first", "older-read-last"])
def test_two_services_on_one_external_ip_it_goes_to_the_older_in_any_order(older_first):
    """claim_rank, not the order the views come in: the same winner whatever the order
    (the agent's syncs, its consistency check and a restart must agree), the other told
    once (its twin's loss is not said again)."""
    old = service(name="zzz", ip="10.96.0.52", externalIPs=["203.0.113.250"], created="2026-01-01T00:00:00Z")
    new = service(name="aaa", ip="10.96.0.53", externalIPs=["203.0.113.250"], created="2026-06-01T10:00:00Z")
    views = [build_service_view(old, []), build_service_view(new, [])]
    d = desired_state(views if older_first else views[::-1], NODE)
    ext = [s.frontend for s in d.states if s.frontend.vip == "203.0.113.250"]
    assert len(ext) == 2 and {d.owners[fe] for fe in ext} == {"default/zzz:http"}
    assert Frontend("203.0.113.250", 80, "TCP", "cluster") in d.twins
    assert [p.reason for p in d.problems] == ["FrontendConflict"]
    assert d.problems[0].startswith("service default/aaa:http: 203.0.113.250:80/TCP is already served for "
                                    "default/zzz:http")


def test_internal_traffic_policy_local_restricts_the_cluster_ip():
    svc = service(internalTrafficPolicy="Local")
    d = _by_frontend(states(svc, _slice_on_nodes(("10.244.2.2", "node2"))))
    s = d[("10.96.0.50", 80, "cluster")]
    assert s.backends == () and s.local_drop
    d = _by_frontend(states(svc, _slice_on_nodes(("10.244.1.2", "node1"), ("10.244.2.2", "node2"))))
    assert [b.ip for b in d[("10.96.0.50", 80, "cluster")].backends] == ["10.244.1.2"]


def test_an_external_frontend_claimed_twice_is_served_once_and_reported():
    a = service(name="a", externalIPs=["203.0.113.250"])
    b = service(name="b", ip="10.96.0.51", externalIPs=["203.0.113.250"])
    d = desired_state([build_service_view(a, []), build_service_view(b, [])], NODE)
    ext = [s for s in d.states if s.frontend.vip == "203.0.113.250"]
    assert {s.frontend.scope for s in ext} == {"external", "cluster"}   # each once
    assert len(ext) == 2 and all(d.owners[s.frontend] == "default/a:http" for s in ext)
    assert any("already served for default/a:http" in p for p in d.problems)


def _lb_status(*ingress: dict):
    return Service.from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                              "status": {"loadBalancer": {"ingress": list(ingress)}}}).status


def test_a_dual_stack_service_is_served_at_its_ipv4_addresses_only():
    """The dataplane is IPv4. A dual-stack service whose first family is IPv6 is served at
    its IPv4 ClusterIP; IPv6 externalIPs, ingress IPs and source ranges are left out (as
    kube-proxy's IPv4 proxier leaves them to the IPv6 one). Each of them failed the
    model's address check, and with it every service's sync on the node."""
    svc = nodeport_service(ip="fd00:10:96::20", clusterIPs=["fd00:10:96::20", "10.96.0.20"],
                           ipFamilies=["IPv6", "IPv4"], externalIPs=["2001:db8::1", "203.0.113.250"],
                           loadBalancerSourceRanges=["2001:db8::/64", "192.168.1.0/24"])
    svc.spec.type = "LoadBalancer"
    svc.status = _lb_status({"ip": "2001:db8::2"}, {"ip": "192.168.1.240"})
    d = states(svc, _slice_on_nodes(("10.244.1.2", "node1")), node=NODE_PORTS)
    got = _by_frontend(d)
    assert {(ip, scope) for ip, _, scope in got} == \
        {("10.96.0.20", "cluster")} | {(ip, scope) for ip in ("203.0.113.250", "192.168.1.240", "192.168.1.31")
                                       for scope in ("external", "cluster")}
    assert got[("192.168.1.240", 80, "external")].source_ranges == ("192.168.1.0/24",)
    assert not d.problems


def test_ipv6_only_source_ranges_keep_the_ipv4_address_closed():
    svc = nodeport_service(loadBalancerSourceRanges=["2001:db8::/64"])
    svc.spec.type = "LoadBalancer"
    svc.status = _lb_status({"ip": "192.168.1.240"})
    got = _by_frontend(states(svc, _slice_on_nodes(("10.244.1.2", "node1")), node=NODE_PORTS))
    assert got[("192.168.1.240", 80, "external")].source_ranges == ("0.0.0.0/32",)


def test_an_ipv6_single_stack_service_is_reported_not_served():
    d = states(service(ip="fd00:10:96::30", clusterIPs=["fd00:10:96::30"], ipFamilies=["IPv6"]),
               endpoint_slice(endpoints=[("10.244.1.2", READY)]))
    assert d.states == ()
    assert [p.reason for p in d.problems] == ["NotServed"] and "no IPv4 ClusterIP" in d.problems[0]


def test_a_proxy_mode_ingress_ip_is_not_served():
    """ipMode Proxy: the load balancer proxies to the nodes; kube-proxy programs VIP-mode
    addresses only (a pod's packet to that address was DNATed, bypassing the proxy)."""
    svc = nodeport_service()
    svc.spec.type = "LoadBalancer"
    svc.status = _lb_status({"ip": "192.168.1.240", "ipMode": "Proxy"}, {"ip": "192.168.1.241", "ipMode": "VIP"})
    got = _by_frontend(states(svc, _slice_on_nodes(("10.244.1.2", "node1")), node=NODE_PORTS))
    assert {ip for ip, _, _ in got} == {"10.96.0.50", "192.168.1.31", "192.168.1.241"}


def test_a_service_the_model_refuses_goes_unserved_alone():
    """An address the API took but the dataplane cannot hold (here a ClusterIP with
    leading zeros) leaves that service unserved, reported by name; every other service
    made in the same pass is served (desired_each: the agent's per-service states)."""
    from controlplane.agent.desired import desired_each
    good, bad = service("good", ip="10.96.0.60"), service("bad", ip="010.096.000.061")
    views = [build_service_view(s, [endpoint_slice(s.name, endpoints=[("10.244.1.2", READY)])]) for s in (good, bad)]
    served, refused = desired_each(views, NODE)
    assert [s.frontend.vip for s in served.states] == ["10.96.0.60"] and not served.problems
    assert refused.states == () and [p.reason for p in refused.problems] == ["NotServed"]
    assert "service default/bad:" in refused.problems[0]
    with pytest.raises(Exception):            # one pass over all of them still says what is wrong
        desired_state(views, NODE)
    # every service refused: more likely a fault than every service bad — the sync fails
    # (the maps keep what they hold) rather than emptying the dataplane
    worse = build_service_view(service("worse", ip="010.096.000.062"), [])
    with pytest.raises(ModelError):
        desired_each([views[1], worse], NODE)
