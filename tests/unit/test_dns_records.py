"""Cluster DNS records and lookups against the Kubernetes DNS specification
(kubernetes/dns docs/specification.md) and CoreDNS's answers: pure, no root, no sockets."""
from __future__ import annotations

import pytest

from controlplane.api import EndpointSlice, Namespace, Pod, Service
from controlplane.dns.feed import ClusterObjects
from controlplane.dns.records import A, CNAME, NS, PTR, SOA, SRV, TXT, zone_records
from controlplane.dns.zone import NOERROR, NXDOMAIN, Zones, reverse_zones
from controlplane.store.interface import ADDED, DELETED, MODIFIED, WatchEvent

ZONE = "cluster.local"


def service(name="web", ns="default", ip="10.96.0.50", ports=None, **spec) -> Service:
    return Service.from_dict({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ip, "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}] if ports is None else ports, **spec}})


def headless(name="hl", ns="default", ports=None, **spec) -> Service:
    return service(name, ns, "None", ports, **spec)


def external(name="ext", target="www.example.com", ns="default") -> Service:
    return Service.from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                              "spec": {"type": "ExternalName", "externalName": target}})


def eps(service_name, endpoints, ports=(("http", 8080, "TCP"),), ns="default", name=None) -> EndpointSlice:
    """endpoints: (ip, ready) or (ip, ready, hostname)."""
    return EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-x", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        "endpoints": [{"addresses": [e[0]], "conditions": {"ready": e[1]},
                       **({"hostname": e[2]} if len(e) > 2 else {})} for e in endpoints]})


def pod(name, ip, ns="default", phase="Running") -> Pod:
    return Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                          "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                          "status": {"phase": phase, "podIP": ip}})


def namespace(name) -> Namespace:
    return Namespace.from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def cluster(*objs, pods="verified", ttl=5) -> tuple[Zones, ClusterObjects]:
    zones = Zones(ZONE, ["10.96.0.0/12", "10.244.0.0/16"], ttl, pods)
    zones.replace(("static",), zone_records(ZONE))
    objects = ClusterObjects(zones)
    objects.apply([WatchEvent(ADDED, o, i + 1) for i, o in enumerate(objs)])
    return zones, objects


def values(zones, name, qtype):
    ans = zones.lookup(name, qtype)
    return sorted(r.value for r in ans.answer if r.rdtype == qtype)


# -- Services with a ClusterIP ---------------------------------------------------------------
def test_clusterip_a_srv_ptr():
    zones, _ = cluster(service(ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                                      {"name": "DNS", "port": 53, "protocol": "UDP"},
                                      {"port": 9000, "protocol": "TCP"}]))
    name = "web.default.svc.cluster.local."
    assert values(zones, name, A) == ["10.96.0.50"]
    # One SRV per named port, targeting the service name; port name and protocol lowercased.
    assert values(zones, "_http._tcp." + name, SRV) == [(0, 100, 80, name)]
    assert values(zones, "_dns._udp." + name, SRV) == [(0, 100, 53, name)]
    # The SRV answer carries the target's A record as additional data.
    srv = zones.lookup("_http._tcp." + name, SRV)
    assert [(r.name, r.value) for r in srv.additional] == [(name, "10.96.0.50")]
    # PTR for the ClusterIP.
    assert values(zones, "50.0.96.10.in-addr.arpa.", PTR) == [name]
    # Unnamed ports have no _port._proto SRV: the name does not exist.
    assert zones.lookup("_9000._tcp." + name, SRV).rcode == NXDOMAIN
    # The service's own name has an SRV per port, named or not, 100 spread over them
    # (CoreDNS: a query without _port._proto matches every port).
    assert values(zones, name, SRV) == [(0, 33, 53, name), (0, 33, 80, name), (0, 33, 9000, name)]


def test_clusterip_endpoints_have_names_and_ptrs():
    """CoreDNS answers a ClusterIP service's ready endpoints by name and by address as it
    does a headless one's (the spec asks it of headless services only); the service's own
    name stays its ClusterIP."""
    zones, objects = cluster(service(), eps("web", [("10.244.1.5", True), ("10.244.2.7", True, "web-0"),
                                                    ("10.244.1.9", False)]))
    name = "web.default.svc.cluster.local."
    assert values(zones, name, A) == ["10.96.0.50"]
    assert values(zones, "10-244-1-5." + name, A) == ["10.244.1.5"]
    assert values(zones, "web-0." + name, A) == ["10.244.2.7"]
    assert zones.lookup("10-244-1-9." + name, A).rcode == NXDOMAIN        # not ready
    assert values(zones, "5.1.244.10.in-addr.arpa.", PTR) == ["10-244-1-5." + name]
    assert values(zones, "7.2.244.10.in-addr.arpa.", PTR) == ["web-0." + name]
    assert zones.lookup("9.1.244.10.in-addr.arpa.", PTR).rcode == NXDOMAIN
    # the endpoint leaves: its names and its PTR go with it
    objects.apply([WatchEvent(MODIFIED, eps("web", [("10.244.2.7", True, "web-0")]), 10)])
    assert zones.lookup("10-244-1-5." + name, A).rcode == NXDOMAIN
    assert zones.lookup("5.1.244.10.in-addr.arpa.", PTR).rcode == NXDOMAIN
    assert values(zones, "web-0." + name, A) == ["10.244.2.7"]


def test_service_without_address_does_not_exist():
    zones, _ = cluster(service(ip=None))
    assert zones.lookup("web.default.svc.cluster.local.", A).rcode == NXDOMAIN


# -- Headless Services -----------------------------------------------------------------------
def test_headless_ready_endpoints_hostnames_srv_ptr():
    zones, _ = cluster(headless(), eps("hl", [("10.244.1.5", True, "web-0"), ("10.244.2.7", True),
                                                ("10.244.1.9", False)]))
    name = "hl.default.svc.cluster.local."
    # A: every ready endpoint, not the unready one.
    assert values(zones, name, A) == ["10.244.1.5", "10.244.2.7"]
    # Per endpoint: hostname when it has one, else the dashed address (CoreDNS).
    assert values(zones, "web-0." + name, A) == ["10.244.1.5"]
    assert values(zones, "10-244-2-7." + name, A) == ["10.244.2.7"]
    assert zones.lookup("10-244-1-9." + name, A).rcode == NXDOMAIN
    # SRV: one per ready endpoint, with the endpoint's port (the resolved targetPort).
    assert values(zones, "_http._tcp." + name, SRV) == [(0, 50, 8080, "10-244-2-7." + name),
                                                        (0, 50, 8080, "web-0." + name)]
    # PTR of an endpoint names the endpoint.
    assert values(zones, "5.1.244.10.in-addr.arpa.", PTR) == ["web-0." + name]
    # SRV at the service's name: every ready endpoint's every port.
    assert values(zones, name, SRV) == [(0, 50, 8080, "10-244-2-7." + name), (0, 50, 8080, "web-0." + name)]
    assert zones.lookup("9.1.244.10.in-addr.arpa.", PTR).rcode == NXDOMAIN


def test_headless_publish_not_ready_addresses():
    zones, _ = cluster(headless(publishNotReadyAddresses=True), eps("hl", [("10.244.1.9", False)]))
    assert values(zones, "hl.default.svc.cluster.local.", A) == ["10.244.1.9"]


def test_headless_without_ready_endpoints_is_nxdomain():
    """Spec 2.4.1: "If there are no ready endpoints for the headless Service, the answer
    should be NXDOMAIN" (CoreDNS too): the name, its SRV names and the gone endpoint's."""
    zones, objects = cluster(namespace("default"), headless(), eps("hl", [("10.244.1.9", True)]))
    name = "hl.default.svc.cluster.local."
    assert values(zones, name, A) == ["10.244.1.9"]
    objects.apply([WatchEvent(MODIFIED, eps("hl", [("10.244.1.9", False)]), 10)])
    for qname, qtype in ((name, A), (name, 28), ("_http._tcp." + name, SRV), ("10-244-1-9." + name, A)):
        ans = zones.lookup(qname, qtype)
        assert (ans.rcode, ans.answer) == (NXDOMAIN, []), qname
        assert [r.rdtype for r in ans.authority] == [SOA]
    assert zones.lookup("default.svc.cluster.local.", A).rcode == NOERROR  # the namespace still is


def test_headless_endpoints_merge_over_slices_and_ports():
    zones, _ = cluster(headless(), eps("hl", [("10.244.1.5", True, "a")], name="s1"),
                       eps("hl", [("10.244.1.6", True, "b")], ports=(("http", 8081, "TCP"),), name="s2"))
    name = "hl.default.svc.cluster.local."
    assert values(zones, name, A) == ["10.244.1.5", "10.244.1.6"]
    assert values(zones, "_http._tcp." + name, SRV) == [(0, 50, 8080, "a." + name), (0, 50, 8081, "b." + name)]


def test_pod_hostname_and_subdomain_through_the_endpoints_controller():
    """The endpoints controller copies a pod's hostname into the slice when its subdomain
    names the headless service; DNS then answers <hostname>.<subdomain>.<ns>.svc."""
    from controlplane.controllers.endpoint_builder import build_slices
    svc = headless("sub", ports=[{"name": "http", "port": 80}])
    p = Pod.from_dict({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "p1", "namespace": "default", "labels": {"app": "sub"}},
                       "spec": {"hostname": "busybox-1", "subdomain": "sub",
                                "containers": [{"name": "c", "image": "busybox"}]},
                       "status": {"phase": "Running", "podIP": "10.244.1.20",
                                  "conditions": [{"type": "Ready", "status": "True"}]}})
    content = build_slices(svc, [p])[0]
    es = eps("sub", [])
    es.endpoints, es.ports = content.endpoints, content.ports
    zones, _ = cluster(svc, es)
    assert values(zones, "busybox-1.sub.default.svc.cluster.local.", A) == ["10.244.1.20"]


# -- ExternalName ------------------------------------------------------------------------------
def test_externalname_cname_retarget_and_type_change():
    zones, objects = cluster(external())
    name = "ext.default.svc.cluster.local."
    ans = zones.lookup(name, A)
    assert [(r.rdtype, r.value) for r in ans.answer] == [(CNAME, "www.example.com.")]
    assert ans.chase == "www.example.com."  # the server resolves the target upstream
    objects.apply([WatchEvent(MODIFIED, external(target="mirror.example.org"), 10)])
    assert values(zones, name, CNAME) == ["mirror.example.org."]
    # ExternalName -> ClusterIP: the CNAME goes in the same step the A appears.
    objects.apply([WatchEvent(MODIFIED, service("ext", ip="10.96.0.77"), 11)])
    assert values(zones, name, A) == ["10.96.0.77"]
    assert zones.lookup(name, CNAME).answer == []


def test_cname_to_an_in_cluster_name_is_followed():
    zones, _ = cluster(service(), external("alias", "web.default.svc.cluster.local"))
    ans = zones.lookup("alias.default.svc.cluster.local.", A)
    assert [(r.rdtype, r.value) for r in ans.answer] == [(CNAME, "web.default.svc.cluster.local."), (A, "10.96.0.50")]
    assert ans.chase is None


# -- Pods ----------------------------------------------------------------------------------------
def test_pod_records_verified_and_insecure():
    zones, objects = cluster(pod("p", "10.244.1.5"))
    assert values(zones, "10-244-1-5.default.pod.cluster.local.", A) == ["10.244.1.5"]
    assert zones.lookup("10-244-1-6.default.pod.cluster.local.", A).rcode == NXDOMAIN
    objects.apply([WatchEvent(DELETED, pod("p", "10.244.1.5"), 9)])
    assert zones.lookup("10-244-1-5.default.pod.cluster.local.", A).rcode == NXDOMAIN
    loose, _ = cluster(namespace("any"), pods="insecure")
    assert values(loose, "10-244-1-6.any.pod.cluster.local.", A) == ["10.244.1.6"]
    assert loose.lookup("10-244-1-256.any.pod.cluster.local.", A).rcode == NXDOMAIN


@pytest.mark.parametrize("name", ["010-244-001-010", "01-2-3-4", "1-2-3-04", "1-2-3-256", "1-2-3"])
def test_insecure_pod_names_are_strict_dotted_quads(name):
    """CoreDNS answers what net.ParseIP takes: leading zeros are NXDOMAIN, not an A record
    (that dnspython then refused to write: SERVFAIL and a traceback per query)."""
    zones, _ = cluster(namespace("default"), pods="insecure")
    ans = zones.lookup(f"{name}.default.pod.cluster.local.", A)
    assert (ans.rcode, ans.answer) == (NXDOMAIN, [])


def test_insecure_pods_only_in_namespaces_that_exist():
    zones, objects = cluster(namespace("default"), pods="insecure")
    assert values(zones, "1-2-3-4.default.pod.cluster.local.", A) == ["1.2.3.4"]
    assert zones.lookup("1-2-3-4.nons.pod.cluster.local.", A).rcode == NXDOMAIN
    objects.apply([WatchEvent(DELETED, namespace("default"), 10)])
    assert zones.lookup("1-2-3-4.default.pod.cluster.local.", A).rcode == NXDOMAIN


@pytest.mark.parametrize("pods", ["verified", "insecure"])
def test_namespace_names_are_nodata_while_the_namespace_exists(pods):
    """RFC 8020: a name with names below it is not NXDOMAIN. CoreDNS answers an existing
    namespace NODATA, with or without Services or Pods in it."""
    zones, objects = cluster(namespace("other"), namespace("default"), pod("p", "10.244.1.5"), pods=pods)
    for name in ("other.svc.cluster.local.", "other.pod.cluster.local.", "default.pod.cluster.local.",
                 "pod.cluster.local.", "svc.cluster.local."):
        for qtype in (A, SRV, 0):
            ans = zones.lookup(name, qtype)
            assert (ans.rcode, ans.answer, [r.rdtype for r in ans.authority]) == (NOERROR, [], [SOA]), (name, qtype)
    assert zones.lookup("nons.svc.cluster.local.", A).rcode == NXDOMAIN
    assert zones.lookup("nons.pod.cluster.local.", A).rcode == NXDOMAIN
    objects.apply([WatchEvent(DELETED, namespace("other"), 10)])
    assert zones.lookup("other.svc.cluster.local.", A).rcode == NXDOMAIN
    assert zones.lookup("other.pod.cluster.local.", A).rcode == NXDOMAIN


def test_pods_disabled_has_no_pod_names():
    zones, _ = cluster(namespace("default"), pods="disabled")
    assert zones.lookup("default.svc.cluster.local.", A).rcode == NOERROR
    for name in ("default.pod.cluster.local.", "1-2-3-4.default.pod.cluster.local.", "pod.cluster.local."):
        assert zones.lookup(name, A).rcode == NXDOMAIN, name


# -- NXDOMAIN vs NODATA, SOA, zones -------------------------------------------------------------
def test_nodata_nxdomain_and_soa():
    zones, _ = cluster(service())
    other_type = zones.lookup("web.default.svc.cluster.local.", 28)  # AAAA of an A-only name
    assert (other_type.rcode, other_type.answer) == (NOERROR, [])
    soa = other_type.authority[0]
    assert soa.rdtype == SOA and soa.name == "cluster.local."
    mname, rname, serial, refresh, retry, expire, minimum = soa.value
    assert (mname, rname, minimum) == ("ns.dns.cluster.local.", "hostmaster.cluster.local.", 5)
    missing = zones.lookup("nope.default.svc.cluster.local.", A)
    assert missing.rcode == NXDOMAIN and missing.authority[0].rdtype == SOA
    # Empty non-terminals exist: a namespace with services, the svc subdomain.
    for ent in ("default.svc.cluster.local.", "svc.cluster.local."):
        ans = zones.lookup(ent, A)
        assert (ans.rcode, ans.answer) == (NOERROR, []), ent
    assert zones.lookup("empty-ns.svc.cluster.local.", A).rcode == NXDOMAIN
    # Apex: SOA and NS answered; dns-version TXT.
    assert zones.lookup("cluster.local.", SOA).answer[0].rdtype == SOA
    assert values(zones, "cluster.local.", NS) == ["ns.dns.cluster.local."]
    assert values(zones, "dns-version.cluster.local.", TXT) == ["1.1.0"]
    # Names outside our zones are not ours (forwarded by the server).
    assert zones.lookup("www.example.com.", A) is None
    assert zones.lookup("1.1.168.192.in-addr.arpa.", PTR) is None


def test_reverse_zones_on_octet_boundaries():
    assert reverse_zones("10.244.0.0/16") == ["244.10.in-addr.arpa."]
    z = reverse_zones("10.96.0.0/12")
    assert len(z) == 16 and z[0] == "96.10.in-addr.arpa." and z[-1] == "111.10.in-addr.arpa."
    zones, _ = cluster()
    ans = zones.lookup("7.7.100.10.in-addr.arpa.", PTR)
    assert ans.rcode == NXDOMAIN and ans.authority[0].name == "100.10.in-addr.arpa."


def test_shared_pod_ip_ptrs_are_reference_counted():
    zones, objects = cluster(headless("a"), headless("b"), eps("a", [("10.244.1.5", True)]),
                             eps("b", [("10.244.1.5", True)]))
    ptr = "5.1.244.10.in-addr.arpa."
    assert values(zones, ptr, PTR) == ["10-244-1-5.a.default.svc.cluster.local.",
                                       "10-244-1-5.b.default.svc.cluster.local."]
    objects.apply([WatchEvent(DELETED, headless("a"), 20)])
    assert values(zones, ptr, PTR) == ["10-244-1-5.b.default.svc.cluster.local."]
    assert zones.lookup("a.default.svc.cluster.local.", A).rcode == NXDOMAIN


def test_deleted_service_and_relabelled_slice():
    zones, objects = cluster(headless("a"), headless("b"), eps("a", [("10.244.1.5", True)], name="s"))
    assert values(zones, "a.default.svc.cluster.local.", A) == ["10.244.1.5"]
    objects.apply([WatchEvent(MODIFIED, eps("b", [("10.244.1.5", True)], name="s"), 30)])
    assert values(zones, "a.default.svc.cluster.local.", A) == []
    assert values(zones, "b.default.svc.cluster.local.", A) == ["10.244.1.5"]
    objects.apply([WatchEvent(DELETED, service("web"), 31), WatchEvent(DELETED, headless("b"), 32)])
    assert zones.lookup("b.default.svc.cluster.local.", A).rcode == NXDOMAIN
    assert "5.1.244.10.in-addr.arpa." not in zones


def test_nameserver_glue_from_the_kube_dns_service():
    zones, _ = cluster(service("kube-dns", "kube-system", "10.96.0.10",
                               ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]))
    ns = zones.lookup("cluster.local.", NS)
    assert [(r.name, r.value) for r in ns.additional] == [("ns.dns.cluster.local.", "10.96.0.10")]


@pytest.mark.parametrize("ttl", [5, 30])
def test_ttl_is_the_configured_one(ttl):
    from controlplane.dns.handler import Handler
    import dns.message
    zones, _ = cluster(service(), ttl=ttl)
    wire = Handler(zones, None).handle(dns.message.make_query("web.default.svc.cluster.local", "A").to_wire(), True)
    assert dns.message.from_wire(wire).answer[0].ttl == ttl

