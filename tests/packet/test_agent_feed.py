"""The agent against a real store and a real dataplane when the change feed fails it:
a feed compacted past the agent (Gone -> relist), an event the agent never saw (the
consistency check reads the store afresh and repairs), maps changed behind its back.
Each case ends with packets through the loaded program going to the store's endpoints.
"""
from __future__ import annotations

import logging

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.agent.agent import Agent
from controlplane.agent.desired import NodeConfig
from controlplane.api import EndpointSlice, Gone, Service
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.writer import MapWriter
from controlplane.store import SqliteStore

from .harness import CLIENT, CLIENT_MAC, NODE_MAC

pytestmark = pytest.mark.root

HISTORY = 10   # the store keeps ~10 changes: a few writes compact past the agent


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def endpoint_slice(name: str, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-abcde", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def add_service(store: SqliteStore, name: str, ips: list[str]) -> None:
    Registry(store).apply([Manifest(service(name), "test"), Manifest(endpoint_slice(name, ips), "test")],
                          "default", MODE_CREATE)


def set_endpoints(store: SqliteStore, name: str, ips: list[str]) -> None:
    current = store.get(EndpointSlice, "default", f"{name}-abcde").to_dict()
    current["endpoints"] = endpoint_slice(name, ips)["endpoints"]
    store.update(EndpointSlice.from_dict(current))


def remove_service(store: SqliteStore, name: str) -> None:
    store.delete(EndpointSlice, "default", f"{name}-abcde")
    store.delete(Service, "default", name)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "store.db", history=HISTORY)
    yield s
    s.close()


@pytest.fixture(scope="module")
def dataplane():
    dp = Dataplane.load(DataplaneConfig(instance="pytest-agent-feed", pin=False, ct_size=1024,
                                        max_services=64, max_backends=256, max_slots=1024))
    yield dp
    dp.close()


@pytest.fixture
def agent(store, dataplane):
    MapWriter(dataplane).sync([])   # no services, whatever an earlier test left
    return Agent(store, NodeConfig("node1"), dataplane)


class Client:
    """SYNs from fresh source ports to a service's cluster IP, through the real program."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.runner = TestRunner(agent.dp.prog_fd)
        self.sport = 20000

    def backends_of(self, name: str, tries: int = 24) -> set[str] | None:
        """Where new connections to the service go; None when the program does not
        translate them (not a service it knows)."""
        vip = self.agent.store.get(Service, "default", name).spec.cluster_ip
        seen: set[str] = set()
        for _ in range(tries):
            self.sport += 1
            pkt = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=self.sport, dport=80, flags="S")
            out = self.runner.run(bytes(pkt))
            assert out.verdict_name == "XDP_PASS"
            dst = Ether(out.data)[IP].dst
            if dst == vip:
                return None
            seen.add(dst)
        return seen


A1 = ["10.244.1.1", "10.244.1.2", "10.244.1.3"]
A2 = ["10.244.1.7", "10.244.1.8"]
B = ["10.244.2.1", "10.244.2.2"]
C = ["10.244.3.1"]


def test_a_feed_compacted_past_the_agent_is_relisted(store, agent, caplog):
    add_service(store, "a", A1)
    add_service(store, "c", C)
    agent.full_sync("start")
    client = Client(agent)
    c_vip_before = store.get(Service, "default", "c").spec.cluster_ip
    assert client.backends_of("a") == set(A1) and client.backends_of("c") == set(C)

    other = store.reopen()           # another writer; its writes compact the feed
    set_endpoints(other, "a", A2)
    add_service(other, "b", B)
    remove_service(other, "c")
    for i in range(HISTORY + 2):
        add_service(other, f"filler-{i}", [f"10.244.9.{i + 1}"])
    other.close()
    with pytest.raises(Gone):
        store.changes_since(agent.resource_version)

    with caplog.at_level(logging.INFO, logger="svcxdp.agent"):
        agent.incremental_sync()
    assert "full resync" in caplog.text
    assert client.backends_of("a") == set(A2)
    assert client.backends_of("b") == set(B)
    assert c_vip_before not in {fe.vip for fe in agent.writer.installed()}
    assert agent.check_consistency() is False


def test_an_event_the_agent_missed_is_repaired_by_the_consistency_check(store, agent, caplog):
    add_service(store, "a", A1)
    add_service(store, "c", C)
    agent.full_sync("start")
    client = Client(agent)
    c_vip = store.get(Service, "default", "c").spec.cluster_ip

    set_endpoints(store, "a", A2)
    add_service(store, "b", B)
    remove_service(store, "c")
    # The events are lost (as a feed gap loses them): the agent's cache moves past them.
    agent.cache.resource_version = store.current_resource_version()
    agent.incremental_sync()
    assert client.backends_of("a") == set(A1)          # stale: nothing told the agent

    with caplog.at_level(logging.WARNING, logger="svcxdp.agent"):
        assert agent.check_consistency() is True
    assert "maps differ from the store" in caplog.text
    assert client.backends_of("a") == set(A2)
    assert client.backends_of("b") == set(B)
    assert c_vip not in {fe.vip for fe in agent.writer.installed()}
    # The agent's own view follows the store again: later events build on it.
    assert agent.check_consistency() is False
    set_endpoints(store, "b", B[:1])
    agent.incremental_sync()
    assert client.backends_of("b") == set(B[:1])


def test_changes_not_yet_followed_are_applied_not_called_drift(store, agent, caplog):
    add_service(store, "a", A1)
    agent.full_sync("start")
    set_endpoints(store, "a", A2)
    with caplog.at_level(logging.WARNING, logger="svcxdp.agent"):
        assert agent.check_consistency() is False
    assert "differ" not in caplog.text
    assert Client(agent).backends_of("a") == set(A2)


def test_maps_changed_behind_the_agents_back_are_repaired(store, agent):
    add_service(store, "a", A1)
    add_service(store, "b", B)
    agent.full_sync("start")
    client = Client(agent)
    other = MapWriter(agent.dp)      # e.g. another tool writing the pinned maps
    fe_b = next(fe for fe in other.installed() if fe.vip == store.get(Service, "default", "b").spec.cluster_ip)
    other.delete(fe_b)
    assert client.backends_of("b") is None
    assert agent.check_consistency() is True
    assert client.backends_of("b") == set(B)
    assert client.backends_of("a") == set(A1)
