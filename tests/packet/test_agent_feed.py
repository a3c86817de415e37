"""The agent against a real store and a real dataplane when the store fails it: a
feed compacted past the agent (Gone -> relist), an event the agent never saw (the
consistency check reads the store afresh and repairs), maps changed behind its back, a
store nobody can read for a while (at start and while following). Each case ends with
packets through the loaded program going to the store's endpoints. And what the agent
logs of each change it programs.
"""
from __future__ import annotations

import contextlib
import logging
import time

import pytest

from controlplane.agent.agent import Agent
from controlplane.agent.metric_names import AgentNaming
from controlplane.agent.desired import NodeConfig
from controlplane.api import EndpointSlice, Gone, Service
from controlplane.api.event import Event
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.dataplane.writer import MapWriter
from controlplane.store import SqliteStore

from .agent_kit import (AgentLoop, Client, add_service, endpoint_slice, fresh_agent, remove_service, service,
                        set_endpoints, small_dataplane, store_under_recovery, wait_until)

pytestmark = pytest.mark.root

HISTORY = 10   # the store keeps ~10 changes: a few writes compact past the agent


@pytest.fixture
def store(tmp_path):
    # a short busy timeout: a locked store fails a read in 0.2 s, not 30
    s = SqliteStore(tmp_path / "store.db", history=HISTORY, busy_timeout_s=0.2)
    yield s
    s.close()


@pytest.fixture(scope="module")
def dataplane():
    with small_dataplane("pytest-agent-feed") as dp:
        yield dp


@pytest.fixture
def agent(store, dataplane):
    return fresh_agent(store, dataplane)


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


def test_a_verbose_agent_logs_the_endpoints_each_change_programs(store, agent, caplog):
    """At debug level (`svcctl agent -v`, as the soak runs it) each programmed change
    names its endpoints' addresses; at info only their count."""
    add_service(store, "a", A1)
    with caplog.at_level(logging.INFO, logger="svcxdp.agent"):
        agent.full_sync("start")
    assert "service added: default/a:http" in caplog.text and "(3 endpoints, random)" in caplog.text
    assert "10.244.1.1" not in caplog.text
    caplog.clear()
    set_endpoints(store, "a", A2)
    with caplog.at_level(logging.DEBUG, logger="svcxdp.agent"):
        agent.incremental_sync()
    assert "endpoints 3 -> 2 (2 endpoints, random: 10.244.1.7:8080 10.244.1.8:8080)" in caplog.text
    caplog.clear()
    set_endpoints(store, "a", [])
    with caplog.at_level(logging.DEBUG, logger="svcxdp.agent"):
        agent.incremental_sync()
    assert "(0 endpoints, random: none)" in caplog.text


def test_maps_changed_behind_the_agents_back_are_repaired(store, agent):
    add_service(store, "a", A1)
    add_service(store, "b", B)
    agent.full_sync("start")
    client = Client(agent)
    other = MapWriter(agent.dp)      # e.g. another tool writing the pinned maps
    fe_b = next(fe for fe in other.installed() if fe.vip == store.get(Service, "default", "b").spec.cluster_ip)
    other.delete(fe_b)
    assert client.backends_of("b") is None
    assert not [e for e in store.list(Event) if e.reason == "DataplaneResynced"]
    assert agent.check_consistency() is True
    assert client.backends_of("b") == set(B)
    assert client.backends_of("a") == set(A1)
    # the repair is an event in the store, about the node, from its agent
    (event,) = [e for e in store.list(Event) if e.reason == "DataplaneResynced"]
    assert (event.type, event.involved_object.kind, event.involved_object.name) == ("Warning", "Node", "node1")
    assert (event.source.component, event.source.host, event.count) == ("svcxdp-agent", "node1", 1)
    assert "differed from the store" in event.message


def test_the_loop_checks_when_quiet_and_at_most_its_share_of_the_time(store, dataplane):
    """The agent's own loop: maps changed behind its back are repaired by the periodic
    check, which waits for a poll without changes; a check charged T puts the next
    T / --check-max-share away (both in the metrics)."""
    from prometheus_client import CollectorRegistry

    from controlplane.agent.metrics import SyncMetrics

    add_service(store, "a", A1)
    add_service(store, "b", B)
    agent = fresh_agent(store, dataplane, check_every_s=0.3, check_max_share=0.002)
    registry = CollectorRegistry()
    agent.metrics = SyncMetrics(registry)
    client = Client(agent)
    with AgentLoop(agent) as loop:
        assert wait_until(lambda: client.backends_of("b") == set(B))
        other = MapWriter(agent.dp)
        other.delete(next(fe for fe in other.installed()
                          if fe.vip == store.get(Service, "default", "b").spec.cluster_ip))
        # The first check comes T / 0.002 after the start sync that cost T (CheckSchedule):
        # ~1 s here, but a start sync slowed to 20 ms by a busy machine puts it 10 s away,
        # so the wait allows for that (it ends as soon as the repair is seen).
        assert wait_until(lambda: client.backends_of("b") == set(B), timeout_s=60), "not repaired"
        assert loop.healthy()
    took = registry.get_sample_value("svcxdp_consistency_check_duration_seconds")
    interval = registry.get_sample_value("svcxdp_consistency_check_interval_seconds")
    # stretched past --check-interval by the check's cost (at most its time on the clock)
    assert took > 0.0006 and 0.45 < interval <= took / 0.002 * 1.01
    assert [e for e in store.list(Event) if e.reason == "DataplaneResynced"]


class _StallingFirstRead:
    """The store, whose first read stalls `stall_s` on the clock without work (an etcd
    member timing out before another answers)."""

    def __init__(self, store, stall_s: float) -> None:
        self._store, self._stall_s = store, stall_s

    def __getattr__(self, name):
        return getattr(self._store, name)

    def current_resource_version(self) -> int:
        stall, self._stall_s = self._stall_s, 0.0
        time.sleep(stall)
        return self._store.current_resource_version()


def test_a_start_sync_spent_waiting_does_not_push_the_first_check_away(store, dataplane):
    """The loop charges a sync that mostly waited on the store (a retry through an etcd
    hiccup) by its work, not by the clock (CheckSchedule.cost): a 1.5 s stall in the start
    sync's read would otherwise put the first check 1.5 / 0.01 = 150 s out."""
    from prometheus_client import CollectorRegistry

    from controlplane.agent.metrics import SyncMetrics

    add_service(store, "a", A1)
    agent = fresh_agent(_StallingFirstRead(store, 1.5), dataplane, check_every_s=0.3, check_max_share=0.01)
    registry = CollectorRegistry()
    agent.metrics = SyncMetrics(registry)
    with AgentLoop(agent):
        assert wait_until(lambda: Client(agent).backends_of("a") == set(A1), timeout_s=30)
    interval = registry.get_sample_value("svcxdp_consistency_check_interval_seconds")
    assert interval is not None and 0 < interval < 60, interval


def test_the_loop_sweeps_the_held_heap_when_quiet(store, dataplane, caplog, monkeypatch):
    """In a process that holds its long-lived heap (gcpause.hold_long_lived, as `svcctl
    agent` does), the agent's own loop sweeps it on a poll that brought no change."""
    from controlplane import gcpause

    monkeypatch.setattr(gcpause, "SWEEP_FLOOR", 0)   # a small heap: due at once
    add_service(store, "a", A1)
    agent = fresh_agent(store, dataplane)
    gcpause.hold_long_lived()
    try:
        with caplog.at_level(logging.INFO, logger="svcxdp.agent"), AgentLoop(agent):
            assert wait_until(lambda: "gc: swept the long-lived heap" in caplog.text, timeout_s=10)
    finally:
        gcpause.hold_long_lived(False)


def test_an_ignored_annotation_is_an_event_on_its_service(store, agent):
    add_service(store, "a", A1)
    svc = store.get(Service, "default", "a")      # written past apply's validation, as an old store may hold it
    svc.metadata.annotations = {"svcxdp.io/lb-algorithm": "fastest"}
    store.update(svc)
    agent.full_sync("start")
    assert Client(agent).backends_of("a") == set(A1)     # served with the node's default algorithm
    (event,) = [e for e in store.list(Event) if e.reason == "InvalidAnnotation"]
    assert (event.type, event.involved_object.name, event.source.host) == ("Warning", "a", "node1")
    assert "'fastest' is not a known algorithm" in event.message


def test_a_service_the_dataplane_cannot_hold_leaves_the_others_served(store, dataplane):
    """A Service whose addresses the API took but the IPv4 dataplane cannot hold (a
    ClusterIP written with leading zeros, as an older API server stored it) failed the
    whole sync, at start and after: nothing was programmed, /healthz said 503 (and every
    externalTrafficPolicy: Local health check with it). Now that service alone is not
    served, with an event saying why, and the others are."""
    add_service(store, "a", A1)
    store.create(Service.from_dict({"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": "odd", "namespace": "default"},
                                    "spec": {"clusterIP": "010.096.000.061",
                                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    agent = fresh_agent(store, dataplane)
    agent.full_sync("start")
    assert Client(agent).backends_of("a") == set(A1)
    (event,) = [e for e in store.list(Event) if e.reason == "NotServed"]
    assert event.involved_object.name == "odd" and "not served" in event.message
    add_service(store, "b", B)                    # and changes after it are followed
    agent.incremental_sync()
    assert Client(agent).backends_of("b") == set(B)
    # the consistency check agrees: the maps hold what the store wants (it raised the
    # model's error on every check, counted as a failed sync: /healthz 503, a resync)
    assert agent.check_consistency() is False
    assert agent.health.report()[0] == 200


def test_a_restarted_agent_settles_its_adopted_records_and_follows_changes(store, dataplane):
    """A restart adopts every record from the maps; its start sync finds them held and
    hands them its own states (MapWriter.settle), after which changes are written as usual."""
    add_service(store, "a", A1)
    add_service(store, "b", A2)
    Agent(store, NodeConfig("node1"), dataplane).full_sync("start")   # an agent before a restart
    agent = Agent(store, NodeConfig("node1"), dataplane)
    assert agent.writer.unsettled == len(agent.writer.records()) > 0
    report = agent.full_sync("start")
    assert report.writes == 0 and agent.writer.unsettled == 0
    ips = {id(b.ip) for key in agent.cache.services for s in agent._desired_for([key])[key].states
           for b in s.backends}
    assert len(ips) == len(A1) + len(A2)           # (the desired states share the cache's strings)
    for rec in agent.writer.records().values():
        assert {id(ip) for ip, _ in rec.backend_ids} <= ips
    client = Client(agent)
    set_endpoints(store, "a", A2)
    agent.incremental_sync()
    assert client.backends_of("a") == set(A2) and client.backends_of("b") == set(A2)


def test_metric_names_scraped_before_a_restarts_first_sync_get_their_services_after_it(store, dataplane):
    """/metrics is served from the agent's start. A scrape before a restart's first sync
    names the adopted ids with no service (none read yet); that sync writes nothing (the
    maps hold it all), and the names must still follow: the service label, and the
    settled records rather than adoption's."""
    add_service(store, "a", A1)
    add_service(store, "b", A2)
    Agent(store, NodeConfig("node1"), dataplane).full_sync("start")   # an agent before a restart
    agent = Agent(store, NodeConfig("node1"), dataplane)
    naming = AgentNaming(agent)
    early = naming()
    assert early.services and {values[3] for values in early.services.values()} == {""}
    assert agent.full_sync("start").writes == 0
    names = naming()
    owners = {agent.owner_of(fe) for fe in agent.writer.records()}
    assert "" not in owners
    assert {values[3] for values in names.services.values()} == owners
    backend_owners = {values[0] for values in names.backends.values()}
    assert backend_owners and backend_owners <= owners   # (a service with no endpoints has none)
    assert all(naming._seen[fe][0] is rec for fe, rec in agent.writer.records().items())

    # The agent adopts the maps afresh (as after a failed sync or on drift): new records,
    # the same ids and owners, so nothing is named again; only the records held move.
    added = []
    add = naming._naming.add
    naming._naming.add = lambda *a: (added.append(a[0]), add(*a))
    agent.writer = MapWriter(dataplane)
    assert naming().services == names.services and added == []
    agent.full_sync("repair")
    assert naming().services == names.services and added == []
    assert all(naming._seen[fe][0] is rec for fe, rec in agent.writer.records().items())

    # A service's port renamed, its slice's with it: the same frontend and backends (nothing
    # written), another owner, which the names follow.
    svc = store.get(Service, "default", "a")
    svc.spec.ports[0].name = "web"
    es = store.get(EndpointSlice, "default", "a-abcde")
    es.ports[0].name = "web"
    store.update(svc)
    store.update(es)
    assert agent.incremental_sync().writes == 0
    assert "default/a:web" in {values[3] for values in naming().services.values()}


def test_a_store_locked_at_start_is_retried_while_the_dataplane_serves(store, dataplane, caplog):
    add_service(store, "a", A1)
    Agent(store, NodeConfig("node1"), dataplane).full_sync("start")   # an agent before a restart
    agent = Agent(store, NodeConfig("node1"), dataplane, retry_max_s=0.2)
    client = Client(agent, {"a": store.get(Service, "default", "a").spec.cluster_ip})
    locked = contextlib.ExitStack()
    locked.enter_context(store_under_recovery(store))
    with locked, AgentLoop(agent) as running, caplog.at_level(logging.INFO, "svcxdp.agent"):
        assert wait_until(lambda: caplog.text.count("sync failed") >= 2)
        assert running.thread.is_alive()
        assert agent.health.report()[0] == 503
        assert client.backends_of("a") == set(A1)      # the adopted maps keep serving
        locked.close()                                  # the store is readable again
        set_endpoints(store, "a", A2)
        assert wait_until(lambda: running.healthy() and client.backends_of("a") == set(A2))
        assert running.thread.is_alive()


def test_a_store_locked_while_following_is_retried(store, dataplane, caplog):
    add_service(store, "a", A1)
    agent = Agent(store, NodeConfig("node1"), dataplane, retry_max_s=0.2)
    client = Client(agent)
    with AgentLoop(agent) as running, caplog.at_level(logging.INFO, "svcxdp.agent"):
        assert wait_until(running.healthy)
        assert client.backends_of("a") == set(A1)
        with store_under_recovery(store):
            assert wait_until(lambda: "sync failed" in caplog.text)
            assert wait_until(lambda: not running.healthy())
            assert running.thread.is_alive()
            assert client.backends_of("a") == set(A1)
        set_endpoints(store, "a", A2)
        assert wait_until(lambda: running.healthy() and client.backends_of("a") == set(A2))
        assert "sync recovered" in caplog.text
        assert running.thread.is_alive()


def test_last_updated_moves_with_syncs_not_with_idle_polls(store, dataplane):
    add_service(store, "a", A1)
    agent = Agent(store, NodeConfig("node1"), dataplane)
    health = agent.health
    with AgentLoop(agent) as running:
        assert wait_until(running.healthy)
        synced_at = health.report()[1]["lastUpdated"]
        time.sleep(0.3)   # the loop polls every 20 ms: it goes round idle many times
        status, body = health.report()
        assert (status, body["lastUpdated"]) == (200, synced_at)
        set_endpoints(store, "a", A2)
        assert wait_until(lambda: health.report()[1]["lastUpdated"] != synced_at)
        assert health.report()[0] == 200


def _ids_by_service(agent: Agent) -> dict[str, int]:
    """The service id of each installed frontend, by the name of the service owning it."""
    return {agent.owner_of(fe).split("/")[1].split(":")[0]: agent.writer.svc_id(fe)
            for fe in agent.writer.installed()}


def test_syncs_take_services_in_the_sources_order(tmp_path, dataplane):
    """Ids are handed out in the order the agent takes services; that order is the
    source's (namespace, name), the order the objects were read and made in, not a set's
    hash order (walked in which, a sync of 10,000 services misses the CPU's caches)."""
    store = SqliteStore(tmp_path / "ordered.db")   # its history holds the whole batch below
    agent = fresh_agent(store, dataplane)
    names = [f"s{i:02d}" for i in range(24)]
    for name in names[::7] + [n for n in names if n not in names[::7]]:   # created out of order
        add_service(store, name, [f"10.244.4.{names.index(name) + 1}"])
    agent.full_sync("start")
    ids = _ids_by_service(agent)
    assert set(names) <= set(ids)   # (with the store's own `kubernetes` service)
    assert [ids[n] for n in sorted(ids)] == sorted(ids.values())

    later = [f"t{i:02d}" for i in range(24)]
    Registry(store).apply([Manifest(m, "test") for i, name in enumerate(reversed(later))
                           for m in (service(name), endpoint_slice(name, [f"10.244.5.{i + 1}"]))],
                          "default", MODE_CREATE)   # one transaction: one incremental sync
    report = agent.incremental_sync()
    assert len(report.added) == len(later)   # incremental, not a relist
    ids = _ids_by_service(agent)
    assert [ids[n] for n in later] == sorted(ids[n] for n in later)
    store.close()


def test_changed_slices_are_read_as_text_and_still_timed(store, agent, monkeypatch):
    """The agent asks the feed for EndpointSlices as their stored text (TEXT_KINDS: it keeps
    only their backends, and decoding whole slices was half its CPU taking a big batch);
    from that text it still takes the new backends into the maps and the slice's
    last-change-trigger-time into its programming latency."""
    import datetime

    from controlplane.agent.cache import TEXT_KINDS
    from controlplane.api import EndpointSlice
    from controlplane.api.endpoints import LAST_CHANGE_TRIGGER_TIME
    from controlplane.api.meta import format_timestamp
    from controlplane.store.interface import TextEvent
    add_service(store, "a", A1)
    agent.full_sync("start")
    asked: list[tuple] = []
    handed: list = []
    read = store.changes_since

    def recording(rv, kinds=None, limit=None, as_text=()):
        asked.append(tuple(as_text))
        events = read(rv, kinds, limit, as_text)
        handed.extend(events)
        return events

    monkeypatch.setattr(store, "changes_since", recording)
    es = store.get(EndpointSlice, "default", "a-abcde")
    stamp = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
    es.metadata.annotations = {LAST_CHANGE_TRIGGER_TIME: format_timestamp(stamp)}
    store.update(es)
    set_endpoints(store, "a", A2)
    report = agent.incremental_sync()
    assert asked == [TEXT_KINDS]
    assert [ev.__class__ for ev in handed] == [TextEvent, TextEvent]
    assert report.changed and report.writes > 0
    (fe,) = [fe for fe in agent.writer.installed() if agent.owner_of(fe).startswith("default/a:")]
    assert sorted(b.ip for b in agent.writer.installed()[fe].backends) == A2
    assert len(report.programming_s) == 1 and 2 <= report.programming_s[0] < 60


def test_a_frontend_one_service_drops_stays_with_the_other_that_lists_it(store, agent):
    """Two services listing one externalIP:port (a conflict the store lets through): the
    older holds it in the maps (test_agent_conflicts.py). When that one drops the
    address, the other takes it, its own state written, rather than the address going
    dark until the consistency check."""
    add_service(store, "a", A1)
    add_service(store, "b", B)
    for name in ("b", "a"):   # b names it first: a, older (or as old, and first by name), holds it
        svc = store.get(Service, "default", name)
        svc.spec.external_ips = ["203.0.113.9"]
        store.update(svc)
        agent.incremental_sync()
    client = Client(agent, {"x": "203.0.113.9"})   # from a pod: the address's twin
    assert client.backends_of("x") == set(A1)
    svc = store.get(Service, "default", "a")
    svc.spec.external_ips = None
    store.update(svc)
    agent.incremental_sync()
    assert client.backends_of("x") == set(B)
    assert agent.check_consistency() is False        # nothing left for the check to repair
