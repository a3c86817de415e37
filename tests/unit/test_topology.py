"""Topology hints, as kube-proxy follows them (pkg/proxy/topology.go): the rule itself
(agent/topology.py, table-driven), then the desired state it gives each frontend."""
from __future__ import annotations

import pytest

from controlplane.agent.desired import NodeConfig, desired_state
from controlplane.agent.topology import available
from controlplane.api import EndpointSlice, Service
from controlplane.controllers.service_view import Hints, build_service_view


def h(zones: str = "", nodes: str = "") -> Hints:
    return Hints(frozenset(zones.split()), frozenset(nodes.split()))


# (ready column, hints column, node, zone) -> usable mask (None: every endpoint)
CASES = [
    ("no hints at all", [True, True], [None, None], "n1", "a", None),
    ("zone hints, one for this zone", [True, True], [h("a"), h("b")], "n1", "a", [True, False]),
    ("an endpoint hinted for two zones", [True, True, True], [h("a b"), h("b"), h("c")], "n1", "b",
     [True, True, False]),
    ("a ready endpoint without hints: ignored", [True, True], [h("a"), None], "n1", "a", None),
    ("a not-ready endpoint without hints does not count", [True, False], [h("a"), None], "n1", "a", [True, False]),
    ("none hinted for this zone: ignored", [True, True], [h("b"), h("c")], "n1", "a", None),
    ("a node without a zone: ignored", [True, True], [h("a"), h("b")], "n1", "", None),
    ("a hint naming \"\" and a node without a zone, as kube-proxy compares them", [True, True],
     [h("a"), Hints(frozenset({""}), frozenset())], "n1", "", [False, True]),
    ("only a not-ready endpoint is hinted here: ignored", [False, True], [h("a"), h("b")], "n1", "a", None),
    ("no ready endpoint: ignored", [False, False], [h("a"), h("b")], "n1", "a", None),
    ("a terminating endpoint of this zone stays", [True, False], [h("a"), h("a")], "n1", "a", [True, True]),
    ("node hints on every ready endpoint, one for this node", [True, True], [h("a", "n1"), h("a", "n2")], "n1", "a",
     [True, False]),
    ("node hints, none for this node: zone hints instead", [True, True, True],
     [h("a", "n2"), h("a", "n3"), h("b", "n4")], "n1", "a", [True, True, False]),
    ("node hints on some endpoints only: zone hints", [True, True], [h("a", "n1"), h("b")], "n1", "a", [True, False]),
    ("node hints without zone hints", [True, True], [h(nodes="n1"), h(nodes="n2")], "n1", "a", [True, False]),
]


@pytest.mark.parametrize("ready,hints,node,zone,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_rule(ready, hints, node, zone, want) -> None:
    assert available(ready, hints, node, zone) == want


READY = {"ready": True}
DRAINING = {"ready": False, "serving": True, "terminating": True}


def hinted_slice(*endpoints: tuple[str, str, dict, list[str]]) -> EndpointSlice:
    """endpoints: (ip, nodeName, conditions, zones hinted)."""
    return EndpointSlice.from_dict({
        "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": cond,
                       "hints": {"forZones": [{"name": z} for z in zones]}} for ip, node, cond, zones in endpoints]})


def backends_by_frontend(svc: Service, es: EndpointSlice, node: NodeConfig) -> dict:
    """(vip, port, scope) -> ({backend ip: state}, local_drop)"""
    d = desired_state([build_service_view(svc, [es])], node)
    return {(s.frontend.vip, s.frontend.port, s.frontend.scope): ({b.ip: b.state for b in s.backends}, s.local_drop)
            for s in d.states}


def web(**spec) -> Service:
    return Service.from_dict({"metadata": {"name": "web", "namespace": "default"},
                              "spec": {"clusterIP": "10.96.0.50", "type": "NodePort",
                                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}], **spec}})


# (the controller writes no hints for a terminating endpoint)
SLICE = hinted_slice(("10.244.1.2", "node1", READY, ["a"]), ("10.244.2.2", "node2", READY, ["b"]),
                     ("10.244.3.2", "node3", READY, ["a"]), ("10.244.3.3", "node1", DRAINING, []))
ZONE_A = NodeConfig("node1", nodeport_addresses=("192.168.1.31",), zone="a")


@pytest.mark.parametrize("unchecked", [True, False])
def test_cluster_policy_frontends_take_this_zones_endpoints(monkeypatch, unchecked) -> None:
    """ClusterIP, NodePort and its twin alike (kube-proxy's cluster chain), made by the
    bulk path and by the checked constructors (the model's fallback) alike: the endpoints
    of other zones drain (terminating: their flows kept, no new ones), as does the one
    terminating anyway."""
    from controlplane.agent import desired
    made_by = []
    if unchecked:
        monkeypatch.setattr(desired, "_Checked", lambda: made_by.append("checked"))   # used: an error
    else:
        monkeypatch.setattr(desired, "UncheckedModel", lambda: None)   # its failure: the checked pass
    got = backends_by_frontend(web(), SLICE, ZONE_A)
    assert made_by == []
    in_zone = ({"10.244.1.2": "active", "10.244.2.2": "terminating", "10.244.3.2": "active",
                "10.244.3.3": "terminating"}, False)
    assert got == {("10.96.0.50", 80, "cluster"): in_zone, ("192.168.1.31", 30080, "external"): in_zone,
                   ("192.168.1.31", 30080, "cluster"): in_zone}


def test_local_policies_take_this_nodes_endpoints_whatever_their_hints() -> None:
    node_b = NodeConfig("node1", nodeport_addresses=("192.168.1.31",), zone="b")
    got = backends_by_frontend(web(externalTrafficPolicy="Local", internalTrafficPolicy="Local"), SLICE, node_b)
    mine = ({"10.244.1.2": "active", "10.244.3.3": "terminating"}, False)   # 10.244.1.2 hinted for zone a
    assert got[("10.96.0.50", 80, "cluster")] == mine
    assert got[("192.168.1.31", 30080, "external")] == mine
    # the twin is the cluster chain: zone b's endpoint takes the new flows
    assert got[("192.168.1.31", 30080, "cluster")] == ({"10.244.1.2": "terminating", "10.244.2.2": "active",
                                                        "10.244.3.2": "terminating", "10.244.3.3": "terminating"},
                                                       False)


def test_without_a_zone_or_with_an_unhinted_ready_endpoint_every_endpoint_serves() -> None:
    every = ({"10.244.1.2": "active", "10.244.2.2": "active", "10.244.3.2": "active",
              "10.244.3.3": "terminating"}, False)
    assert backends_by_frontend(web(), SLICE, NodeConfig("node1"))[("10.96.0.50", 80, "cluster")] == every
    es = hinted_slice(("10.244.1.2", "node1", READY, ["a"]), ("10.244.2.2", "node2", READY, []))
    assert backends_by_frontend(web(), es, ZONE_A)[("10.96.0.50", 80, "cluster")] == \
        ({"10.244.1.2": "active", "10.244.2.2": "active"}, False)
