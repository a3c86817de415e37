"""Two services that name one address:port (nothing in the API stops it: an externalIP,
a LoadBalancer IP, another service's ClusterIP): one rule decides which serves it — a
ClusterIP before a twin, then the older service (creationTimestamp: the server's, whole
seconds, so the services here are added a second apart) — in the agent's full syncs, its
incremental ones (services computed apart) and its consistency check alike. Before it,
the service changed last took the address over (a newer service could take an older
one's traffic), a restart gave it back by name order, and the consistency check then
called the maps drift and flipped it again. A real store, a real dataplane and the
packets through it."""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.agent.agent import Agent
from controlplane.agent.desired import NodeConfig
from controlplane.api import EndpointSlice, Service
from controlplane.controllers.events import events_for
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.dataplane.model import Frontend
from controlplane.dataplane.testrun import TestRunner
from controlplane.store import SqliteStore

from .agent_kit import endpoint_slice, fresh_agent, remove_service, small_dataplane
from .harness import CLIENT, CLIENT_MAC, NODE_MAC

pytestmark = pytest.mark.root
EXTERNAL_IP = "203.0.113.7"
EXTERNAL = Frontend(EXTERNAL_IP, 80, "TCP", "external")
TWIN = Frontend(EXTERNAL_IP, 80, "TCP", "cluster")


@pytest.fixture(scope="module")
def dataplane():
    with small_dataplane("pytest-conflicts") as dp:
        yield dp


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def add(store: SqliteStore, name: str, backend: str, cluster_ip: str | None = None,
        external_ips: tuple[str, ...] = ()) -> None:
    """A service with one ready endpoint, a second younger than the one added before it
    (creationTimestamp is the server's, in whole seconds)."""
    time.sleep(1.05)
    spec: dict = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    Registry(store).apply([Manifest({"apiVersion": "v1", "kind": "Service", "spec": spec, "metadata": {"name": name}},
                                    "test"), Manifest(endpoint_slice(name, [backend]), "test")],
                          "default", MODE_CREATE)
    reconcile(store)


def served(agent: Agent, fe: Frontend) -> str | None:
    """The one backend address the maps send `fe`'s new flows to."""
    state = agent.writer.installed_state(fe)
    return None if state is None else state.backends[0].ip


def conflicts(store: SqliteStore, name: str) -> list[str]:
    svc = store.get(Service, "default", name)
    return [e.message for e in events_for(store, svc) if e.reason == "FrontendConflict"]


def test_the_older_service_keeps_an_external_ip_however_the_agent_syncs(store, dataplane):
    add(store, "zzz-old", "10.244.1.1", external_ips=(EXTERNAL_IP,))
    agent = fresh_agent(store, dataplane)
    agent.full_sync("start")
    assert served(agent, EXTERNAL) == served(agent, TWIN) == "10.244.1.1"
    # a newer service naming the same address: the older keeps it, the newer is told
    add(store, "aaa-new", "10.244.2.2", external_ips=(EXTERNAL_IP,))
    agent.incremental_sync()
    assert served(agent, EXTERNAL) == served(agent, TWIN) == "10.244.1.1"
    assert agent.owner_of(EXTERNAL) == "default/zzz-old:http"
    (told,) = conflicts(store, "aaa-new")
    assert f"{EXTERNAL} is already served for default/zzz-old:http" in told
    # a change of the newer one's endpoints writes nothing over the older one's address
    es = store.get(EndpointSlice, "default", "aaa-new-abcde")
    es.endpoints[0].addresses = ["10.244.2.3"]
    store.update(es)
    agent.incremental_sync()
    assert served(agent, EXTERNAL) == "10.244.1.1"
    # a restart and the consistency check decide alike: no drift
    restarted = Agent(store, NodeConfig("node1"), dataplane)
    restarted.full_sync("restart")
    assert served(restarted, EXTERNAL) == served(restarted, TWIN) == "10.244.1.1"
    assert restarted.check_consistency() is False
    # the older one goes: the newer takes the address over
    remove_service(store, "zzz-old")
    restarted.incremental_sync()
    assert served(restarted, EXTERNAL) == served(restarted, TWIN) == "10.244.2.3"
    assert restarted.owner_of(EXTERNAL) == "default/aaa-new:http"
    assert restarted.check_consistency() is False


def test_an_older_service_that_names_a_held_address_takes_it(store, dataplane):
    add(store, "old", "10.244.1.1")
    add(store, "new", "10.244.2.2", external_ips=(EXTERNAL_IP,))
    agent = fresh_agent(store, dataplane)
    agent.full_sync("start")
    assert served(agent, EXTERNAL) == "10.244.2.2"
    svc = store.get(Service, "default", "old")
    svc.spec.external_ips = [EXTERNAL_IP]
    store.update(svc)
    agent.incremental_sync()
    assert served(agent, EXTERNAL) == served(agent, TWIN) == "10.244.1.1"
    assert any("already served for default/old:http" in m for m in conflicts(store, "new"))
    assert agent.check_consistency() is False


@pytest.mark.parametrize("externals_first", [True, False], ids=["externalip-older", "clusterip-older"])
def test_a_clusterip_keeps_its_address_for_pods_against_another_services_external_ip(
        store, dataplane, externals_first):
    """A service whose externalIP:port is another's ClusterIP:port: the pods' entry point
    (cluster scope) keeps the ClusterIP's backends whichever service is older (and came
    first to the agent); the external entry serves the externalIP's."""
    vip = "10.96.0.77"
    first, second = [("ext", "10.244.2.2", None, (vip,)), ("cip", "10.244.1.1", vip, ())][::1 if externals_first else -1]
    add(store, *first)
    agent = fresh_agent(store, dataplane)
    agent.full_sync("start")
    add(store, *second)
    agent.incremental_sync()
    cluster, external = Frontend(vip, 80, "TCP", "cluster"), Frontend(vip, 80, "TCP", "external")
    assert served(agent, cluster) == "10.244.1.1" and served(agent, external) == "10.244.2.2"
    runner = TestRunner(dataplane.prog_fd)   # a pod's SYN to the address
    pkt = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=33333, dport=80, flags="S")
    assert Ether(runner.run(bytes(pkt)).data)[IP].dst == "10.244.1.1"
    assert any("(the way in for pods and nodes) is already served for default/cip:http" in m
               for m in conflicts(store, "ext"))
    assert agent.check_consistency() is False
    es = store.get(EndpointSlice, "default", "ext-abcde")     # the loser changes: nothing moves
    es.endpoints[0].addresses = ["10.244.2.3"]
    store.update(es)
    agent.incremental_sync()
    assert served(agent, cluster) == "10.244.1.1" and served(agent, external) == "10.244.2.3"
