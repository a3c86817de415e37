"""Whose is a dataplane frontend (controlplane/kubectl/frontends.py), as `svcctl trace`,
`get flows` and `get affinity` name them: a ClusterIP, the ways in from outside, and
their cluster-scope twins for pods and the node. Pure: no maps, no root."""
from __future__ import annotations

from controlplane.api import Service
from controlplane.controllers.service_view import build_service_view
from controlplane.dataplane.affinity_maps import Sticky
from controlplane.dataplane.model import Frontend
from controlplane.kubectl.affinity import rows
from controlplane.kubectl.frontends import Owners


def lb_service() -> Service:
    return Service.from_dict({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "externalIPs": ["203.0.113.9"],
                 "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}})


def test_every_frontend_of_a_service_and_its_twins_is_named():
    owners = Owners([build_service_view(lb_service(), [])])
    kinds = {}
    for vip, port in [("10.96.0.50", 80), ("203.0.113.9", 80), ("192.168.1.240", 80), ("192.168.1.31", 30080)]:
        for scope in ("cluster", "external"):
            owner = owners.of(Frontend(vip, port, "TCP", scope))
            if owner is not None:
                assert owner.label == "shop/web"
                kinds[(vip, scope)] = owner.kind
    assert kinds == {("10.96.0.50", "cluster"): "ClusterIP",
                     ("203.0.113.9", "cluster"): "externalIP", ("203.0.113.9", "external"): "externalIP",
                     ("192.168.1.240", "cluster"): "LoadBalancer IP",
                     ("192.168.1.240", "external"): "LoadBalancer IP",
                     ("192.168.1.31", "cluster"): "NodePort", ("192.168.1.31", "external"): "NodePort"}
    assert owners.of(Frontend("10.96.0.99", 80, "TCP")) is None
    # a nodePort is known by its number only where the address is no service's ClusterIP
    other = Service.from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "shop"},
                               "spec": {"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}})
    owners = Owners([build_service_view(lb_service(), []), build_service_view(other, [])])
    assert owners.of(Frontend("10.96.0.77", 30080, "TCP", "cluster")) is None


def test_affinity_rows_name_entries_of_every_way_in():
    """`get affinity` showed a service's ClusterIP entries only: those of its NodePort and
    LoadBalancer IP (from outside, and their twins) were left out."""
    owners = Owners([build_service_view(lb_service(), [])])
    entries = {"node1": [
        Sticky(Frontend("10.96.0.50", 80, "TCP", "cluster"), "10.244.1.5", ("10.244.2.7", 8080), 30.0),
        Sticky(Frontend("192.168.1.31", 30080, "TCP", "external"), "192.168.1.100", ("10.244.2.7", 8080), 20.0),
        Sticky(Frontend("192.168.1.240", 80, "TCP", "cluster"), "10.244.1.6", None, 10.0),
        Sticky(Frontend("10.96.0.99", 80, "TCP", "cluster"), "10.244.1.7", None, 10.0)]}
    got = rows(entries, owners, with_node=False, with_namespace=False, with_frontend=True)
    assert [r[:3] for r in got] == [["web", "10.96.0.50:80/TCP", "10.244.1.5"],
                                    ["web", "192.168.1.31:30080/TCP", "192.168.1.100"],
                                    ["web", "192.168.1.240:80/TCP", "10.244.1.6"]]
    assert rows(entries, owners, False, False, service="other") == []


def test_an_address_two_services_name_is_the_one_the_agent_serves_it_for():
    """The senior service (older, then by name), in either order: as the agent decides."""
    def named(name: str, created: str) -> Service:
        return Service.from_dict({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
                                  "spec": {"clusterIP": "10.96.0.60", "externalIPs": ["203.0.113.9"],
                                           "ports": [{"port": 80}]}})
    views = [build_service_view(named("aaa", "2026-06-01T00:00:00Z"), []),
             build_service_view(named("zzz", "2026-01-01T00:00:00Z"), [])]
    for order in (views, views[::-1]):
        owner = Owners(order).of(Frontend("203.0.113.9", 80, "TCP", "external"))
        assert owner is not None and owner.label == "shop/zzz"
