"""The agent with the Kubernetes API as its source (kubeapi.feed.KubeFeed, the official
`kubernetes` client) against tests/kube_api_server.py, a protocol-faithful API server on
127.0.0.1 inside this test process (no real apiserver runs on these machines): the real
agent loop, real BPF maps read back afresh, packets through the loaded program.

Services and EndpointSlices listed, then watched, land in the maps (every Service type;
traffic policies by nodeName; terminating-but-serving endpoints); a bookmark moves the
resume point; 410 Gone (as an ERROR event or an HTTP status) means a relist that leaves no
stale frontend; a connection cut mid-chunk resumes from the last resourceVersion without
losing an event and without a relist; deleting a Service removes its frontends. Topology
hints (as the EndpointSlice controller writes them for trafficDistribution) keep Cluster-
policy traffic in the node's zone, read from its Node, or on the node itself.
"""
from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass

import pytest

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.agent.agent import Agent
from controlplane.agent.commands import _node_zone
from controlplane.agent.desired import NodeConfig
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import MapWriter
from controlplane.kubeapi.connect import api_client
from controlplane.kubeapi.feed import KubeFeed
from tests.kube_api_server import ENDPOINTSLICES, SERVICES, KubeApiServer

from .agent_kit import AgentLoop, Client, fresh_agent, small_dataplane, wait_until
from .harness import CLIENT, CLIENT_MAC, NODE_MAC

pytestmark = pytest.mark.root

NODE = "node1"
NODE_IP = "192.168.50.1"          # the address NodePorts are served on (no packet goes there)
LB_IP = "203.0.113.7"
EXTERNAL_IP = "198.51.100.9"


def service(name: str, cluster_ip: str | None, type_: str = "ClusterIP", node_port: int | None = None,
            labels: dict[str, str] | None = None, **spec: object) -> dict:
    """A Service as the API serves it: defaulted, allocated."""
    port: dict[str, object] = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    if node_port:
        port["nodePort"] = node_port
    s: dict[str, object] = {"type": type_, "ports": [port], "sessionAffinity": "None",
                            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                            "internalTrafficPolicy": "Cluster", **spec}
    if cluster_ip:
        s["clusterIP"] = cluster_ip
        s["clusterIPs"] = [cluster_ip]
    if type_ == "ExternalName":
        s = {"type": type_, "externalName": "db.example.org"}
    return {"metadata": {"name": name, "namespace": "default", "labels": labels or {}},
            "spec": s, "status": {"loadBalancer": {}}}


def endpoint_slice(service_name: str, endpoints: list[tuple[str, str, dict[str, bool]]]) -> dict:
    """endpoints: (ip, nodeName, conditions)."""
    return {"metadata": {"name": f"{service_name}-x1y2z", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": cond,
                           "targetRef": {"kind": "Pod", "namespace": "default", "name": f"pod-{ip}"}}
                          for ip, node, cond in endpoints]}


READY = {"ready": True, "serving": True, "terminating": False}
DRAINING = {"ready": False, "serving": True, "terminating": True}


def put_service(api: KubeApiServer, name: str, cluster_ip: str | None, ips: list[str], **kw: object) -> None:
    api.put(SERVICES, service(name, cluster_ip, **kw))
    api.put(ENDPOINTSLICES, endpoint_slice(name, [(ip, NODE, READY) for ip in ips]))


def remove_service(api: KubeApiServer, name: str) -> None:
    api.delete(ENDPOINTSLICES, "default", f"{name}-x1y2z")
    api.delete(SERVICES, "default", name)


def programmed(dp: Dataplane) -> dict[tuple[str, int, str], dict[str, str]]:
    """What the maps hold, read back from them: (vip, port, scope) -> {backend ip: state}."""
    return {(fe.vip, fe.port, fe.scope): {b.ip: b.state for b in state.backends}
            for fe, state in MapWriter(dp).installed().items()}


@pytest.fixture(scope="module")
def dataplane():
    with small_dataplane("svcxdp-kapi-test") as dp:
        yield dp


@pytest.fixture
def api():
    server = KubeApiServer().start()
    yield server
    server.stop()


@dataclass
class Running:
    api: KubeApiServer
    feed: KubeFeed
    loop: AgentLoop

    @property
    def agent(self) -> Agent:
        return self.loop.agent

    def converges_to(self, want: dict, timeout_s: float = 15.0) -> dict:
        wait_until(lambda: programmed(self.agent.dp) == want, timeout_s)
        return programmed(self.agent.dp)

    def resume_point(self, resource: str) -> str | None:
        return self.feed.reflectors[resource].resource_version


@pytest.fixture
def start_agent(api, dataplane, tmp_path):
    """Start the agent (its own thread) on a KubeFeed of `api`, as `svcctl agent
    --source kubernetes --kubeconfig FILE` does."""
    running: list[Running] = []
    stopped = threading.Event()

    def start(zone_from_node: bool = False) -> Running:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(api.kubeconfig())
        client = api_client(str(kubeconfig))
        # as `svcctl agent` follows it (read beside the start, and again until it has one)
        zone = _node_zone(argparse.Namespace(node=NODE, node_zone=None if zone_from_node else ""), client,
                          stopped, logging.getLogger("test"))
        if zone_from_node:
            wait_until(lambda: zone.zone != "", 2)   # (usually found before the agent is made)
        feed = KubeFeed(client, watch_timeout_s=60).start()
        for r in feed.reflectors.values():
            r.backoff_first_s = 0.05
        assert feed.wait_synced(10)
        assert wait_until(lambda: api.watchers() == 2)   # both resources are being watched
        agent = fresh_agent(feed, dataplane, NodeConfig(NODE, nodeport_addresses=(NODE_IP,), zone=zone.zone),
                            check_every_s=3600)
        zone.tell(agent)
        running.append(Running(api, feed, AgentLoop(agent, poll_s=0.05).start()))
        return running[-1]

    yield start
    stopped.set()
    for r in running:
        r.loop.stop()
        r.feed.close()


A = ["10.244.1.1", "10.244.1.2"]
A2 = ["10.244.1.3"]
B = ["10.244.2.1"]
C = ["10.244.3.1", "10.244.3.2"]


def test_services_of_every_type_listed_then_watched_land_in_the_maps(api, start_agent):
    put_service(api, "a", "10.96.0.10", A)                       # listed
    run = start_agent()
    assert run.converges_to({("10.96.0.10", 80, "cluster"): dict.fromkeys(A, "active")}) == \
        {("10.96.0.10", 80, "cluster"): dict.fromkeys(A, "active")}
    client = Client(run.agent, {"a": "10.96.0.10"})
    assert client.backends_of("a") == set(A)

    # watched: a NodePort, a LoadBalancer with its status IP, a Local external policy,
    # and the ones kube-proxy does not serve
    put_service(api, "np", "10.96.0.11", B, type_="NodePort", node_port=30080, externalIPs=[EXTERNAL_IP])
    lb = service("lb", "10.96.0.12", type_="LoadBalancer", node_port=30081)
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP, "ipMode": "VIP"}]}}
    api.put(SERVICES, lb)
    api.put(ENDPOINTSLICES, endpoint_slice("lb", [(C[0], NODE, READY)]))
    api.put(SERVICES, service("local", "10.96.0.13", type_="NodePort", node_port=30082,
                              externalTrafficPolicy="Local"))
    api.put(ENDPOINTSLICES, endpoint_slice("local", [(C[0], NODE, READY), (C[1], "node2", READY)]))
    api.put(ENDPOINTSLICES, endpoint_slice("a", [(A[0], NODE, READY), (A[1], "node2", DRAINING)]))
    put_service(api, "ext", None, B, type_="ExternalName")
    put_service(api, "headless", "None", B)
    put_service(api, "other-proxy", "10.96.0.14", B, labels={"service.kubernetes.io/service-proxy-name": "foo"})
    put_service(api, "headless-label", "10.96.0.15", B, labels={"service.kubernetes.io/headless": ""})
    want = {
        ("10.96.0.10", 80, "cluster"): {A[0]: "active", A[1]: "terminating"},
        ("10.96.0.11", 80, "cluster"): dict.fromkeys(B, "active"),
        (NODE_IP, 30080, "external"): dict.fromkeys(B, "active"),
        (EXTERNAL_IP, 80, "external"): dict.fromkeys(B, "active"),
        ("10.96.0.12", 80, "cluster"): {C[0]: "active"},
        (LB_IP, 80, "external"): {C[0]: "active"},
        (NODE_IP, 30081, "external"): {C[0]: "active"},
        ("10.96.0.13", 80, "cluster"): dict.fromkeys(C, "active"),
        (NODE_IP, 30082, "external"): {C[0]: "active"},          # Local: this node's only
    }
    # each way in from outside has a cluster-scope twin for pods and the node, with
    # the endpoints traffic from inside gets (a Local external policy does not apply)
    want.update({(ip, port, "cluster"): dict(backends) for (ip, port, scope), backends in list(want.items())
                 if scope == "external"})
    want[(NODE_IP, 30082, "cluster")] = dict.fromkeys(C, "active")
    assert run.converges_to(want) == want
    assert client.backends_of("a") == {A[0]}   # new flows: ready before draining

    remove_service(api, "lb")                                     # deletion removes its frontends
    remove_service(api, "np")
    for ip, port in [(LB_IP, 80), (NODE_IP, 30081), (NODE_IP, 30080), (EXTERNAL_IP, 80)]:
        del want[(ip, port, "external")], want[(ip, port, "cluster")]
    for fe in [("10.96.0.12", 80, "cluster"), ("10.96.0.11", 80, "cluster")]:
        del want[fe]
    assert run.converges_to(want) == want
    assert run.api.lists(SERVICES) == 1 and run.api.lists(ENDPOINTSLICES) == 1


def test_a_bookmark_moves_the_resume_point(api, start_agent):
    put_service(api, "a", "10.96.0.10", A)
    run = start_agent()
    run.converges_to({("10.96.0.10", 80, "cluster"): dict.fromkeys(A, "active")})
    for _ in range(3):
        api.touch_other()              # other kinds change: the revision moves past ours
    assert all(run.resume_point(r) != str(api.revision) for r in (SERVICES, ENDPOINTSLICES))
    mark = api.bookmark()
    assert wait_until(lambda: all(run.resume_point(r) == str(mark) for r in (SERVICES, ENDPOINTSLICES)))
    api.compact()                      # every revision before the bookmark expires
    assert api.hold() == 2             # both watches cut
    api.put(ENDPOINTSLICES, endpoint_slice("a", [(ip, NODE, READY) for ip in A2]))
    api.release()
    assert run.converges_to({("10.96.0.10", 80, "cluster"): dict.fromkeys(A2, "active")}) == \
        {("10.96.0.10", 80, "cluster"): dict.fromkeys(A2, "active")}
    assert wait_until(lambda: api.watchers() == 2)
    # resumed from the bookmark (not expired), so no relist was needed
    assert api.watches(ENDPOINTSLICES)[-1].query["resourceVersion"] == str(mark)
    assert api.watches(ENDPOINTSLICES)[-1].query["allowWatchBookmarks"] == "true"
    assert api.lists(SERVICES) == 1 and api.lists(ENDPOINTSLICES) == 1


@pytest.mark.parametrize("how", ["error-event", "http-status"])
def test_410_gone_relists_and_leaves_no_stale_entry(api, start_agent, how):
    put_service(api, "a", "10.96.0.10", A)
    put_service(api, "c", "10.96.0.12", C)
    run = start_agent()
    run.converges_to({("10.96.0.10", 80, "cluster"): dict.fromkeys(A, "active"),
                      ("10.96.0.12", 80, "cluster"): dict.fromkeys(C, "active")})
    api.hold()                         # out of reach while things change
    remove_service(api, "c")
    api.put(ENDPOINTSLICES, endpoint_slice("a", [(ip, NODE, READY) for ip in A2]))
    put_service(api, "b", "10.96.0.11", B)
    if how == "error-event":
        api.compact()                  # the watch cache no longer reaches back: ERROR 410 Expired
    else:
        api.fail_next_watch_with_http_410()
    api.release()
    want = {("10.96.0.10", 80, "cluster"): dict.fromkeys(A2, "active"),
            ("10.96.0.11", 80, "cluster"): dict.fromkeys(B, "active")}
    assert run.converges_to(want) == want                          # c is gone, nothing stale
    assert Client(run.agent, {"a": "10.96.0.10", "c": "10.96.0.12"}).backends_of("c") is None
    assert api.lists(SERVICES) + api.lists(ENDPOINTSLICES) >= 3    # relisted


def test_a_dropped_connection_resumes_without_losing_an_event(api, start_agent):
    put_service(api, "a", "10.96.0.10", A)
    put_service(api, "c", "10.96.0.12", C)
    run = start_agent()
    run.converges_to({("10.96.0.10", 80, "cluster"): dict.fromkeys(A, "active"),
                      ("10.96.0.12", 80, "cluster"): dict.fromkeys(C, "active")})
    before = {r: run.resume_point(r) for r in (SERVICES, ENDPOINTSLICES)}
    assert api.hold() == 2             # both watches cut in the middle of a chunk
    api.put(ENDPOINTSLICES, endpoint_slice("a", [(ip, NODE, READY) for ip in A2]))
    remove_service(api, "c")
    put_service(api, "b", "10.96.0.11", B)
    api.release()
    want = {("10.96.0.10", 80, "cluster"): dict.fromkeys(A2, "active"),
            ("10.96.0.11", 80, "cluster"): dict.fromkeys(B, "active")}
    assert run.converges_to(want) == want
    assert Client(run.agent, {"a": "10.96.0.10"}).backends_of("a") == set(A2)
    # resumed from where each watch was, with no relist
    assert wait_until(lambda: api.watchers() == 2)
    for r in (SERVICES, ENDPOINTSLICES):
        assert api.watches(r)[1].query["resourceVersion"] == before[r]
    assert api.lists(SERVICES) == 1 and api.lists(ENDPOINTSLICES) == 1



def hinted_slice(service_name: str, endpoints: list[tuple[str, str, list[str] | None, list[str] | None]]) -> dict:
    """endpoints: (ip, nodeName, zones hinted, nodes hinted), all ready; None: no such hint."""
    es = endpoint_slice(service_name, [(ip, node, READY) for ip, node, _, _ in endpoints])
    for ep, (_, _, zones, nodes) in zip(es["endpoints"], endpoints):
        hints = {}
        if zones is not None:
            hints["forZones"] = [{"name": z} for z in zones]
        if nodes is not None:
            hints["forNodes"] = [{"name": n} for n in nodes]
        if hints:
            ep["hints"] = hints
    return es


def test_topology_hints_keep_cluster_traffic_in_the_nodes_zone(api, start_agent):
    """kube-proxy's rule (pkg/proxy/topology.go): with every ready endpoint hinted for a
    zone and one for the node's (read from its Node, as kube-proxy reads it), new flows of
    Cluster-policy traffic, the twins' included, go to the endpoints of that zone (the
    others drain: terminating, their flows kept); Local policy ignores hints; a ready
    endpoint without hints, or node hints for every endpoint, change the choice."""
    api.put_node({"metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
    zoned = {A[0]: (NODE, ["zone-a"]), A[1]: ("node2", ["zone-b"]), C[0]: ("node2", ["zone-a"])}
    api.put(SERVICES, service("z", "10.96.0.20", type_="NodePort", node_port=30090))
    api.put(ENDPOINTSLICES, hinted_slice("z", [(ip, node, zones, None) for ip, (node, zones) in zoned.items()]))
    # Local internal policy: this node's endpoints whatever their hints
    api.put(SERVICES, service("zl", "10.96.0.21", internalTrafficPolicy="Local"))
    api.put(ENDPOINTSLICES, hinted_slice("zl", [(A2[0], NODE, ["zone-b"], None), (B[0], "node2", ["zone-a"], None)]))
    run = start_agent(zone_from_node=True)
    in_zone = {A[0]: "active", A[1]: "terminating", C[0]: "active"}
    want = {("10.96.0.20", 80, "cluster"): in_zone, (NODE_IP, 30090, "external"): in_zone,
            (NODE_IP, 30090, "cluster"): in_zone, ("10.96.0.21", 80, "cluster"): {A2[0]: "active"}}
    assert run.converges_to(want) == want
    client = Client(run.agent, {"z": "10.96.0.20", "zl": "10.96.0.21"})
    assert client.backends_of("z") == {A[0], C[0]}
    assert client.backends_of("zl") == {A2[0]}

    # a ready endpoint without hints: the hints are ignored, every endpoint serves
    api.put(ENDPOINTSLICES, hinted_slice("z", [(ip, node, zones, None) for ip, (node, zones) in zoned.items()]
                                         + [(B[0], "node3", None, None)]))
    every = dict.fromkeys([A[0], A[1], C[0], B[0]], "active")
    want.update({fe: every for fe in [("10.96.0.20", 80, "cluster"), (NODE_IP, 30090, "external"),
                                      (NODE_IP, 30090, "cluster")]})
    assert run.converges_to(want) == want
    assert client.backends_of("z", tries=48) == set(every)
    # a connection to an endpoint of another zone, established while the hints are ignored
    sport = next(p for p in range(40000, 40200) if _first_hop(client, "10.96.0.20", p, "S") == A[1])
    assert _first_hop(client, "10.96.0.20", sport, "A") == A[1]   # confirmed

    # node hints on every endpoint, one for this node (PreferSameNode): that one only
    api.put(ENDPOINTSLICES, hinted_slice("z", [(A[0], NODE, ["zone-a"], [NODE]), (A[1], "node2", ["zone-b"], ["node2"]),
                                               (C[0], "node2", ["zone-a"], ["node2"])]))
    mine = {A[0]: "active", A[1]: "terminating", C[0]: "terminating"}
    want.update({fe: mine for fe in [("10.96.0.20", 80, "cluster"), (NODE_IP, 30090, "external"),
                                     (NODE_IP, 30090, "cluster")]})
    assert run.converges_to(want) == want
    assert client.backends_of("z") == {A[0]}
    # the endpoint left out drains: the established connection keeps it
    assert _first_hop(client, "10.96.0.20", sport, "A") == A[1]


def test_a_zone_labelled_after_the_agent_started_is_followed(api, start_agent):
    """A cloud controller labels a new Node's zone after the kubelet registered it, maybe
    after the agent started: without a zone the agent ignores zone hints (every endpoint
    serves); it reads its Node again until it has one, and then follows them."""
    api.put_node({"metadata": {"name": NODE}})
    zoned = {A[0]: (NODE, ["zone-a"]), A[1]: ("node2", ["zone-b"]), C[0]: ("node2", ["zone-a"])}
    api.put(SERVICES, service("z", "10.96.0.20"))
    api.put(ENDPOINTSLICES, hinted_slice("z", [(ip, node, zones, None) for ip, (node, zones) in zoned.items()]))
    run = start_agent(zone_from_node=True)
    every = {("10.96.0.20", 80, "cluster"): dict.fromkeys(zoned, "active")}
    assert run.converges_to(every) == every
    api.put_node({"metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
    in_zone = {("10.96.0.20", 80, "cluster"): {A[0]: "active", A[1]: "terminating", C[0]: "active"}}
    assert run.converges_to(in_zone, timeout_s=45) == in_zone   # (read again 10 s after the first)
    assert run.agent.node.zone == "zone-a"


def _first_hop(client: Client, vip: str, sport: int, flags: str) -> str:
    """Where the program sends a TCP segment from the client's `sport` to vip:80."""
    pkt = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=sport, dport=80, flags=flags)
    out = client.runner.run(bytes(pkt))
    assert out.verdict_name == "XDP_PASS"
    return Ether(out.data)[IP].dst
