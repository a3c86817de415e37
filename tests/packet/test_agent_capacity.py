"""The agent when a service does not fit the maps: the others are programmed, the
misfit is reported (log, /healthz 503) and programmed as soon as room is made.

A real dataplane whose backends map holds 24 backends, and three services of ten
endpoints each in a real store.
"""
from __future__ import annotations

import pytest

from controlplane.agent.agent import Agent
from controlplane.controllers.events import events_for
from controlplane.agent.desired import NodeConfig
from controlplane.api import EndpointSlice, Service
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.ids import CapacityError
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.store import SqliteStore

pytestmark = pytest.mark.root

ENDPOINTS = 10


def service(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def endpoint_slice(i: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-abcde", "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.244.{i}.{j + 1}"], "conditions": {"ready": True}}
                          for j in range(ENDPOINTS)]}


@pytest.fixture
def agent(tmp_path):
    store = SqliteStore(tmp_path / "store.db")
    docs = [Manifest(service(i), "test") for i in range(3)] + [Manifest(endpoint_slice(i), "test") for i in range(3)]
    Registry(store).apply(docs, "default", MODE_CREATE)
    reconcile(store)
    dp = Dataplane.load(DataplaneConfig(instance="pytest-agent-cap", pin=False, ct_size=1024,
                                        max_services=16, max_backends=25, max_slots=64, source_ranges_size=8))
    try:
        yield Agent(store, NodeConfig("node1"), dp)
    finally:
        dp.close()


def cluster_ip(agent: Agent, i: int) -> str:
    return agent.source.get(Service, "default", f"svc-{i}").spec.cluster_ip


def programmed(agent: Agent) -> set[int]:
    """Which of svc-0..2 the maps hold (the store also has default/kubernetes)."""
    vips = {fe.vip for fe in agent.writer.installed()}
    return {i for i in range(3) if agent.source.try_get(Service, "default", f"svc-{i}")
            and cluster_ip(agent, i) in vips}


def test_a_service_that_does_not_fit_blocks_no_other_and_lands_when_room_is_made(agent):
    report = agent.full_sync("start")
    assert len(programmed(agent)) == 2                  # 2 x 10 of the 24 backends
    (missing,) = set(range(3)) - programmed(agent)
    assert len(report.failed) == 1 and f"svc-{missing}" in report.failed[0]
    assert "max_backends=25" in report.failed[0]
    assert not any(f"svc-{missing}" in line for line in report.added)
    status, body = agent.health.report()
    assert status == 503 and body["nodeHealthy"] is False
    assert agent.check_consistency() is False          # known and reported, not drift
    assert len(programmed(agent)) == 2
    # an event on the service says why; the retry that failed again counts it twice
    missed = agent.source.get(Service, "default", f"svc-{missing}")
    (event,) = [e for e in events_for(agent.source, missed) if e.reason == "FailedProgramming"]
    assert event.type == "Warning" and event.count == 2 and "max_backends=25" in event.message
    assert event.source.host == "node1"

    victim = min(programmed(agent))
    agent.source.delete(EndpointSlice, "default", f"svc-{victim}-abcde")
    agent.source.delete(Service, "default", f"svc-{victim}")
    agent.incremental_sync()
    agent.check_consistency()                            # retries what did not fit
    assert programmed(agent) == set(range(3)) - {victim}
    assert agent.health.report()[0] == 200


def test_an_update_that_does_not_fit_keeps_the_old_state_serving(agent):
    agent.source.delete(EndpointSlice, "default", "svc-2-abcde")
    agent.source.delete(Service, "default", "svc-2")
    agent.full_sync("start")
    assert programmed(agent) == {0, 1}
    grown = agent.source.get(EndpointSlice, "default", "svc-0-abcde").to_dict()
    grown["endpoints"] += [{"addresses": [f"10.244.0.{j}"], "conditions": {"ready": True}}
                           for j in range(100, 105)]
    agent.source.update(EndpointSlice.from_dict(grown))   # 15 + 10 > 24
    report = agent.incremental_sync()
    assert len(report.failed) == 1 and "svc-0" in report.failed[0]
    assert agent.check_consistency() is False           # the old 10 endpoints stay, not deleted
    fe = next(fe for fe in agent.writer.installed() if fe.vip == cluster_ip(agent, 0))
    assert len(agent.writer.installed_state(fe).backends) == ENDPOINTS
    assert agent.health.report()[0] == 503


def test_source_ranges_that_do_not_fit_are_refused_before_anything_is_written(agent):
    """A LoadBalancer IP's ranges are written twice (its external entry and its twin for
    pods): two such IPs of three ranges need 12 of the trie's 8. The second is refused
    by name before any of its entries is written; a full trie used to fail part-way
    through the write, its slots and backends written, its entry not."""
    writer = agent.writer

    def lb(ip: str, scope: str) -> ServiceState:
        return ServiceState(Frontend(ip, 80, "TCP", scope), (Backend("10.244.9.1", 8080),),
                            source_ranges=("10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24"))
    first = [lb("192.168.1.240", "external"), lb("192.168.1.240", "cluster")]
    writer.upsert_many(first)
    before = (set(writer.installed()), writer.writes, len(list(agent.dp.table("source_ranges").keys())))
    assert before[2] == 6
    with pytest.raises(CapacityError, match=r"192\.168\.1\.241:80/TCP.*source_ranges_size=8.*2 entries left"):
        writer.upsert_many([lb("192.168.1.241", "external"), lb("192.168.1.241", "cluster")])
    assert (set(writer.installed()), writer.writes, len(list(agent.dp.table("source_ranges").keys()))) == before
    # room made (the first goes), the second fits
    writer.delete_many([s.frontend for s in first])
    writer.upsert_many([lb("192.168.1.241", "external"), lb("192.168.1.241", "cluster")])
    assert len(list(agent.dp.table("source_ranges").keys())) == 6


def _slices_of(store, name: str, count: int, third: int) -> None:
    """Service `name`'s one slice, `count` ready endpoints in 10.244.<third>.0/24."""
    doc = endpoint_slice(0)
    doc["metadata"] = {"name": f"{name}-abcde", "labels": {"kubernetes.io/service-name": name}}
    doc["endpoints"] = [{"addresses": [f"10.244.{third}.{j + 1}"], "conditions": {"ready": True}} for j in range(count)]
    Registry(store).apply([Manifest(doc, "test")], "default")


@pytest.fixture
def full_slots(tmp_path):
    """A store of a (5 endpoints) and b (3), and a dataplane of exactly 8 slots: full."""
    store = SqliteStore(tmp_path / "store.db")
    docs = [Manifest(service(i), "test") for i in range(2)]
    Registry(store).apply(docs, "default", MODE_CREATE)
    reconcile(store)
    _slices_of(store, "svc-0", 5, 0)
    _slices_of(store, "svc-1", 3, 1)
    store.delete(Service, "default", "kubernetes")
    dp = Dataplane.load(DataplaneConfig(instance="pytest-agent-slots", pin=False, ct_size=1024,
                                        max_services=16, max_backends=32, max_slots=8, source_ranges_size=8))
    try:
        yield store, dp
    finally:
        dp.close()


def _holds_the_store(agent: Agent) -> bool:
    """The maps hold what a fresh read of the store wants."""
    from controlplane.agent.cache import ServiceCache
    from controlplane.agent.desired import desired_served
    want = desired_served(ServiceCache.load(agent.source).views(), agent.node).states
    return agent.writer.installed() == {s.frontend: s for s in want}


def test_one_service_shrinking_and_another_growing_in_a_full_slots_map(full_slots):
    """8 of 8 slots held; one sync takes a from 5 endpoints to 3 and b from 3 to 5. Every
    frontend's new slots are written before any frontend's surplus ones go, so the
    capacity check netted b's growth against a's shrinking, passed, and the write failed
    half-way (E2BIG); the half-written maps then failed every later sync (wedged: 503
    until flushed by hand). Now the batch is refused before anything is written, and the
    services are written one by one: a shrinks, then b grows into the room."""
    store, dp = full_slots
    agent = Agent(store, NodeConfig("node1"), dp)
    agent.full_sync("start")
    assert _holds_the_store(agent)
    _slices_of(store, "svc-0", 3, 0)
    _slices_of(store, "svc-1", 5, 1)
    report = agent.incremental_sync()
    assert report.failed == [] and _holds_the_store(agent)
    assert agent.health.report()[0] == 200 and agent.check_consistency() is False


def test_maps_left_half_written_by_a_failed_write_are_repaired_by_the_next_agent(full_slots, monkeypatch):
    """A write that fails half-way (here: the capacity check skipped, so the kernel refuses
    the slots map's ninth entry) leaves a service whose adopted state does not fit as
    adoption reads it. Repairing it raised CapacityError at the start of every full sync,
    before anything else was written: no retry, nor deleting a service, got the agent out.
    Now the repair leaves it to the sync, which writes it as the store wants."""
    from controlplane.dataplane import writer as writer_module
    store, dp = full_slots
    Agent(store, NodeConfig("node1"), dp).full_sync("start")
    _slices_of(store, "svc-0", 3, 0)
    _slices_of(store, "svc-1", 5, 1)
    broken = Agent(store, NodeConfig("node1"), dp)
    monkeypatch.setattr(writer_module, "check_capacity", lambda *a, **k: None)
    with pytest.raises(OSError):
        broken.full_sync("start")
    monkeypatch.undo()
    agent = Agent(store, NodeConfig("node1"), dp)     # a restart: adopts what the maps hold
    assert agent.writer.adoption_drift
    report = agent.full_sync("retry")
    assert report.failed == [] and _holds_the_store(agent)
    assert not Agent(store, NodeConfig("node1"), dp).writer.adoption_drift
