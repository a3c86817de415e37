"""Events in the store (controllers/events.py) on both stores: aggregation, expiry, the
batch that is written only when its operation commits, and a recorder that never fails."""
from __future__ import annotations

import pytest

from controlplane.api import ObjectMeta, Service
from controlplane.api.event import Event
from controlplane.api.service import ServicePort, ServiceSpec
from controlplane.controllers import events
from controlplane.controllers.events import (NORMAL, WARNING, EventRecorder, Involved, Pending, committed, emit,
                                             events_for, expire_events, live_events, write_events)
from controlplane.controllers.registry import Registry
from controlplane.store import SqliteStore


@pytest.fixture
def store(any_store):
    events._last_sweep.clear()
    return any_store


def created_service(store, name: str = "web") -> Service:
    svc = Service(metadata=ObjectMeta(name=name, namespace="default"),
                  spec=ServiceSpec(selector={"app": name}, ports=[ServicePort(port=80, protocol="TCP")]))
    return Registry(store).create(svc)


def test_a_repeated_event_is_aggregated_into_one_object(store) -> None:
    svc = created_service(store)
    t0 = 1_900_000_000.0
    for i in range(3):
        write_events(store, [Pending(svc, WARNING, "FailedProgramming", "does not fit", "svcxdp-agent", "node1")],
                     at=t0 + 10 * i)
    write_events(store, [Pending(svc, WARNING, "FailedProgramming", "other text", "svcxdp-agent", "node1")], at=t0)
    stored = [e for e in store.list(Event, "default") if e.reason == "FailedProgramming"]
    assert len(stored) == 2      # (the sweep at t0, years ahead, removed the allocation events)
    by_message = {e.message: e for e in stored}
    agg = by_message["does not fit"]
    assert (agg.count, agg.first_timestamp, agg.last_timestamp) == (3, "2030-03-17T17:46:40Z", "2030-03-17T17:47:00Z")
    assert agg.involved_object.uid == svc.metadata.uid and agg.source.host == "node1"
    assert by_message["other text"].count == 1
    assert [e.reason for e in events_for(store, svc, at=t0 + 30)][-2:] == ["FailedProgramming", "FailedProgramming"]


def test_events_expire_after_the_ttl(store) -> None:
    svc = created_service(store, "old")
    t0 = 1_900_000_000.0
    write_events(store, [Pending(svc, NORMAL, "A", "first", "test")], ttl_s=3600, at=t0)
    write_events(store, [Pending(svc, NORMAL, "B", "second", "test")], ttl_s=3600, at=t0 + 1800)
    assert {e.reason for e in live_events(store, "default", at=t0 + 3599)} >= {"A", "B"}
    # readers hide an expired event before any sweep deletes it
    assert "A" not in {e.reason for e in live_events(store, "default", at=t0 + 3600)}
    assert "A" in {e.reason for e in store.list(Event, "default")}
    # the next write a sweep interval later deletes it from the store; B, seen later, stays
    write_events(store, [Pending(Involved("Node", "node1"), WARNING, "C", "third", "test")], ttl_s=3600,
                 at=t0 + 1800 + events.SWEEP_EVERY_S)
    write_events(store, [Pending(svc, NORMAL, "D", "fourth", "test")], ttl_s=3600, at=t0 + 3700)
    left = {e.reason for e in store.list(Event)}
    assert "A" not in left and {"B", "C", "D"} <= left
    # a sweep when every event is older than the TTL leaves none
    assert expire_events(store, ttl_s=3600, at=t0 + 3700 + 3600) == len(left)
    assert store.list(Event) == []


def test_events_of_an_operation_are_written_only_when_it_commits(store) -> None:
    svc = created_service(store, "tx")
    n = len(store.list(Event))

    def failing() -> None:
        with store.transaction():
            emit(svc, NORMAL, "Never", "rolled back", "test")
            raise RuntimeError("the operation fails")

    with pytest.raises(RuntimeError):
        committed(store, failing)
    assert len(store.list(Event)) == n
    emit(svc, NORMAL, "Dropped", "no operation collects it", "test")   # outside any operation
    committed(store, lambda: emit(svc, NORMAL, "Kept", "committed", "test"))
    assert [e.reason for e in store.list(Event) if e.reason in ("Never", "Dropped", "Kept")] == ["Kept"]


def test_an_operation_records_a_bounded_number_of_events(store) -> None:
    svc = created_service(store, "many")
    n = len(store.list(Event))
    write_events(store, [Pending(svc, NORMAL, "R", f"message {i}", "test") for i in range(events.MAX_PER_OPERATION + 7)])
    assert len(store.list(Event)) == n + events.MAX_PER_OPERATION


def test_recording_never_fails_the_caller(tmp_path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    svc = created_service(store, "closed")
    recorder = EventRecorder(store, "svcxdp-agent", "node1")
    assert recorder.record(svc, WARNING, "Works", "before the store closes")
    store.close()
    assert recorder.record(svc, WARNING, "Lost", "the store is closed") is False   # logged, not raised
