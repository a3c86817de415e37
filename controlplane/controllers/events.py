"""Kubernetes-style events in the store (any Store: SQLite or etcd, through the protocol).

Two ways in:
- `emit(obj, type, reason, message, component)` from code running inside an operation (a
  store transaction its caller may run again on a commit race): the event waits in the
  thread's batch and is written only after the operation committed, by the `collecting()`
  block around it (`committed(store, fn)` = retry_commit inside one). An operation that
  fails or rolls back records nothing; with no block open, emit() drops the event.
- `EventRecorder.record(...)` from code outside any transaction (the agent): written at once.

Either way writing an event never fails what it describes: a store error is logged.

Bounded, as Kubernetes keeps events:
- Aggregation: an event's name is derived from what it says (involved object, type,
  reason, message, source), so a repeat finds the stored one and raises its `count` and
  `lastTimestamp` (the event correlator's aggregation) instead of adding an object.
- Expiry: an event not seen again for `ttl_s` (default 1 h, kube-apiserver's --event-ttl)
  is deleted by the next write that comes at least SWEEP_EVERY_S after the last sweep in
  that process; readers (`live_events`) never show an expired one, swept or not.
- At most MAX_PER_OPERATION events per operation (a batch apply of 10,000 services records
  the first ones and logs how many it left out), as Kubernetes' broadcaster drops events
  when its queue is full, so recording costs an operation a bounded amount.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from controlplane.api.endpoints import ObjectReference
from controlplane.api.event import NORMAL, WARNING, Event, EventSource  # noqa: F401 (re-exported)
from controlplane.api.meta import ApiObject, ObjectMeta, format_timestamp, now, parse_timestamp
from controlplane.store.interface import Store, retry_commit

log = logging.getLogger("svcxdp.events")

DEFAULT_TTL_S = 3600.0
SWEEP_EVERY_S = 60.0
MAX_PER_OPERATION = 50
NODE_EVENTS_NAMESPACE = "default"   # where events about cluster-scoped objects (nodes) live

R = TypeVar("R")


@dataclass(frozen=True)
class Involved:
    """What an event is about, when there is no stored object at hand (a node)."""
    kind: str
    name: str
    namespace: str = ""
    uid: str | None = None
    api_version: str = "v1"


@dataclass
class Pending:
    involved: ApiObject | Involved    # read when written: a new object has its uid by then
    type: str
    reason: str
    message: str
    component: str
    host: str | None = None


def _reference(involved: ApiObject | Involved) -> ObjectReference:
    if isinstance(involved, Involved):
        return ObjectReference(kind=involved.kind, namespace=involved.namespace or None, name=involved.name,
                               uid=involved.uid, api_version=involved.api_version)
    return ObjectReference(kind=involved.KIND, namespace=involved.namespace or None, name=involved.name,
                           uid=involved.metadata.uid, api_version=involved.api_version_string())


def event_name(ref: ObjectReference, ev: Pending) -> str:
    """`<object>.<16 hex>`: the same event always gets the same name (aggregation)."""
    digest = hashlib.sha256("\0".join((ref.kind or "", ref.namespace or "", ref.name or "", ref.uid or "",
                                       ev.type, ev.reason, ev.message, ev.component, ev.host or "")).encode())
    return f"{(ref.name or 'event')[:200]}.{digest.hexdigest()[:16]}"


# ---------------------------------------------------------------------- batches
_local = threading.local()


def emit(involved: ApiObject | Involved, type: str, reason: str, message: str, component: str,
         host: str | None = None) -> None:
    """Record an event once the surrounding operation commits (see the module doc)."""
    batch = getattr(_local, "batch", None)
    if batch is None:
        log.debug("event dropped (no operation collects events): %s %s", reason, message)
        return
    batch.append(Pending(involved, type, reason, message, component, host))


@contextmanager
def collecting(store: Store, ttl_s: float = DEFAULT_TTL_S) -> Iterator[list[Pending]]:
    """Collect the events emitted inside the block; write them when it ends without an
    exception. A nested block hands its events to the outer one."""
    outer = getattr(_local, "batch", None)
    batch: list[Pending] = []
    _local.batch = batch
    try:
        yield batch
    finally:
        _local.batch = outer
    if outer is not None:
        outer.extend(batch)
    elif batch:
        write_events(store, batch, ttl_s)


def committed(store: Store, fn: Callable[[], R]) -> R:
    """retry_commit(fn), keeping only the events of the attempt that committed."""
    with collecting(store) as batch:
        def attempt() -> R:
            del batch[:]
            return fn()
        return retry_commit(attempt)


# ---------------------------------------------------------------------- writing
_last_sweep: dict[int, float] = {}


def write_events(store: Store, events: list[Pending], ttl_s: float = DEFAULT_TTL_S,
                 at: float | None = None) -> int:
    """Write (or aggregate) `events` in one transaction, sweeping expired ones when due.
    Returns how many were written; never raises (a failure is logged)."""
    if len(events) > MAX_PER_OPERATION:
        log.info("%d events of one operation not recorded (at most %d per operation)",
                 len(events) - MAX_PER_OPERATION, MAX_PER_OPERATION)
        events = events[:MAX_PER_OPERATION]
    wall = time.time() if at is None else at
    sweep = wall - _last_sweep.get(id(store), float("-inf")) >= SWEEP_EVERY_S
    try:
        def attempt() -> int:
            with store.transaction() as tx:
                for ev in events:
                    _write_one(tx, ev, wall)
                if sweep:
                    expire_events(tx, ttl_s, wall)
            return len(events)
        written = retry_commit(attempt)
    except Exception as exc:   # an event must never fail what it describes
        log.warning("recording %d events failed: %s", len(events), exc)
        return 0
    if sweep:
        _last_sweep[id(store)] = wall
    return written


def _stamp(wall: float) -> str:
    return format_timestamp(_dt.datetime.fromtimestamp(wall, _dt.timezone.utc))


def _write_one(tx, ev: Pending, wall: float) -> None:
    ref = _reference(ev.involved)
    namespace = ref.namespace or NODE_EVENTS_NAMESPACE
    name = event_name(ref, ev)
    stamp = _stamp(wall)
    live = tx.try_get(Event, namespace, name)
    if live is not None:
        live.count = (live.count or 1) + 1
        live.last_timestamp = stamp
        tx.update(live)
        return
    tx.create(Event(
        metadata=ObjectMeta(name=name, namespace=namespace), involved_object=ref, reason=ev.reason,
        message=ev.message, source=EventSource(component=ev.component, host=ev.host),
        first_timestamp=stamp, last_timestamp=stamp, count=1, type=ev.type,
        reporting_component=ev.component, reporting_instance=ev.host))


def expired(event: Event, ttl_s: float, wall: float) -> bool:
    seen = event.last_seen
    return seen is not None and parse_timestamp(seen).timestamp() + ttl_s <= wall


def expire_events(tx, ttl_s: float = DEFAULT_TTL_S, at: float | None = None) -> int:
    """Delete every event last seen `ttl_s` or more ago; returns how many."""
    wall = time.time() if at is None else at
    gone = 0
    for event in tx.list(Event):
        if expired(event, ttl_s, wall):
            tx.delete(Event, event.namespace, event.name)
            gone += 1
    return gone


# ---------------------------------------------------------------------- reading
def visible(events: list[Event], ttl_s: float = DEFAULT_TTL_S, at: float | None = None) -> list[Event]:
    """The events not expired (swept or not), oldest last-seen first."""
    wall = time.time() if at is None else at
    return sorted((e for e in events if not expired(e, ttl_s, wall)),
                  key=lambda e: (e.last_seen or "", e.resource_version))


def live_events(store, namespace: str | None = None, ttl_s: float = DEFAULT_TTL_S,
                at: float | None = None) -> list[Event]:
    """Events not expired, oldest last-seen first (namespace None: all)."""
    return visible(store.list(Event, namespace), ttl_s, at)


def events_for(store, obj: ApiObject, ttl_s: float = DEFAULT_TTL_S, at: float | None = None) -> list[Event]:
    """The live events about `obj` (same kind, name, and uid when both carry one)."""
    uid = obj.metadata.uid
    return [e for e in live_events(store, obj.namespace or NODE_EVENTS_NAMESPACE, ttl_s, at)
            if e.involved_object.kind == obj.KIND and e.involved_object.name == obj.name
            and (not uid or not e.involved_object.uid or e.involved_object.uid == uid)]


# ---------------------------------------------------------------------- outside transactions
@dataclass
class EventRecorder:
    """Writes events at once (for code that runs outside a store transaction)."""
    store: Store
    component: str
    host: str | None = None
    ttl_s: float = DEFAULT_TTL_S

    def record(self, involved: ApiObject | Involved, type: str, reason: str, message: str) -> bool:
        """True when written; False (logged) when the store refused it."""
        return write_events(self.store, [Pending(involved, type, reason, message, self.component, self.host)],
                            self.ttl_s) == 1
