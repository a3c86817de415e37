"""What the agent tells the socket reaper (Agent.udp_backends_left, agent/sockreap_loop.py):
after each sync, the (ip, port) of every backend a UDP frontend stopped using — and nothing
for TCP frontends, for backends kept, or for a sync that changed no backend."""
from __future__ import annotations

import pytest

from controlplane.api import EndpointSlice, Service
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.store import SqliteStore

from .agent_kit import fresh_agent, small_dataplane

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def dataplane():
    with small_dataplane("pytest-agent-udp-left") as dp:
        yield dp


def _slice(ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "dns-abcde", "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def _set(store: SqliteStore, ips: list[str]) -> None:
    current = store.get(EndpointSlice, "default", "dns-abcde").to_dict()
    current["endpoints"] = _slice(ips)["endpoints"]
    store.update(EndpointSlice.from_dict(current))


def test_the_udp_backends_a_sync_takes_out_are_told(store, dataplane):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
               "spec": {"ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
                                  {"name": "http", "port": 80, "targetPort": 8080}]}}
    Registry(store).apply([Manifest(service, "test"), Manifest(_slice(["10.244.1.1", "10.244.1.2"]), "test")],
                          "default", MODE_CREATE)
    agent = fresh_agent(store, dataplane)
    told: list[set] = []
    agent.udp_backends_left = told.append
    agent.full_sync("start")
    assert told == []                                   # added, nothing left
    _set(store, ["10.244.1.2", "10.244.1.3"])
    agent.incremental_sync()
    assert told == [{("10.244.1.1", 5353)}]             # the UDP port's only; 10.244.1.2 stays
    svc = store.get(Service, "default", "dns")
    svc.spec.session_affinity = "ClientIP"              # its frontends change, their backends do not
    store.update(svc)
    report = agent.incremental_sync()
    assert any("settings changed" in line for line in report.changed), report
    assert len(told) == 1
    store.delete(Service, "default", "dns")             # the frontend goes: all of its backends
    agent.incremental_sync()
    assert told[1:] == [{("10.244.1.2", 5353), ("10.244.1.3", 5353)}]
