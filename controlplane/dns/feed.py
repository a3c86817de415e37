"""Keeps the zones current from the store: a snapshot at start, then the change feed.

A thread blocks on the store (`wait_for_change`, `changes_since`) and hands each batch of
events to the serving loop (`call_soon_threadsafe`), where `ClusterObjects.apply` folds them
in and replaces the records of exactly the objects they touch. The loop is the only
writer of the zones, so a query never sees half an update. A compacted feed (Gone) is
answered with a fresh snapshot, as a Kubernetes watch would relist.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.api.endpoints import LABEL_SERVICE_NAME, EndpointSlice
from controlplane.api.errors import Gone
from controlplane.api.namespace import Namespace
from controlplane.api.pod import Pod
from controlplane.api.service import Service
from controlplane.gcpause import paused_gc
from controlplane.store.interface import DELETED, Store, WatchEvent

from .records import A, Record, absolute, namespace_records, pod_records, service_records
from .zone import Zones

log = logging.getLogger("svcxdp.dns.feed")

ServiceKey = tuple[str, str]
# The Service whose ClusterIP is the zone's nameserver address (ns.dns.<zone>).
DNS_SERVICE: ServiceKey = ("kube-system", "kube-dns")


@dataclass
class Snapshot:
    resource_version: int
    events: list[WatchEvent] = field(default_factory=list)


@dataclass
class ClusterObjects:
    """Namespaces, Services, their EndpointSlices and Pods, and the zone records they make."""
    zones: Zones
    services: dict[ServiceKey, Service] = field(default_factory=dict)
    slices: dict[ServiceKey, dict[str, EndpointSlice]] = field(default_factory=dict)
    slice_owner: dict[tuple[str, str], ServiceKey] = field(default_factory=dict)

    @property
    def kinds(self) -> tuple[type, ...]:
        kinds = (Namespace, Service, EndpointSlice)
        return kinds + (Pod,) if self.zones.pods_mode == "verified" else kinds

    def apply(self, events: list[WatchEvent]) -> bool:
        """Fold events in; True if any record changed."""
        touched: set[ServiceKey] = set()
        changed = False
        for ev in events:
            obj = ev.object
            if isinstance(obj, Service):
                key = (obj.namespace, obj.name)
                if ev.type == DELETED:
                    self.services.pop(key, None)
                else:
                    self.services[key] = obj
                touched.add(key)
            elif isinstance(obj, EndpointSlice):
                touched |= self._file_slice(obj, ev.type == DELETED)
            elif isinstance(obj, Pod):
                records = [] if ev.type == DELETED else pod_records(obj, self.zones.domain)
                changed |= self.zones.replace(("pod", obj.namespace, obj.name), records)
            elif isinstance(obj, Namespace):
                records = [] if ev.type == DELETED else namespace_records(
                    obj.name, self.zones.domain, self.zones.pods_mode != "disabled")
                changed |= self.zones.replace(("namespace", obj.name), records)
        for key in touched:
            changed |= self._refresh(key)
        return changed

    def _file_slice(self, es: EndpointSlice, deleted: bool) -> set[ServiceKey]:
        touched = set()
        slice_key = (es.namespace, es.name)
        previous = self.slice_owner.pop(slice_key, None)  # it may have been relabelled
        if previous is not None:
            self.slices.get(previous, {}).pop(es.name, None)
            touched.add(previous)
        owner = es.labels.get(LABEL_SERVICE_NAME)
        if owner and not deleted:
            key = (es.namespace, owner)
            self.slices.setdefault(key, {})[es.name] = es
            self.slice_owner[slice_key] = key
            touched.add(key)
        return touched

    def _refresh(self, key: ServiceKey) -> bool:
        svc = self.services.get(key)
        domain = self.zones.domain.rstrip(".")
        records = service_records(svc, self.slices.get(key, {}).values(), domain) if svc else []
        changed = self.zones.replace(("svc",) + key, records)
        if key == DNS_SERVICE:
            glue = [Record(absolute(self.zones.nameserver), A, r.value) for r in records if r.rdtype == A
                    and r.name == absolute(f"{key[1]}.{key[0]}.svc.{domain}")]
            changed |= self.zones.replace(("nameserver",), glue)
        return changed


class StoreFeed:
    """The thread that reads the store and posts batches to the loop."""

    def __init__(self, store: Store, objects: ClusterObjects, loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[], None]) -> None:
        self.store, self.objects, self.loop, self.on_change = store, objects, loop, on_change
        self.rv = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dns-feed", daemon=True)

    def load(self) -> None:
        """The initial snapshot, applied before the server answers anything."""
        with paused_gc():
            self._apply(self._snapshot())

    def start(self) -> None:
        self.thread.start()

    def _snapshot(self) -> Snapshot:
        """Every object listed, then the changes since the list. The resume point moves
        only once all of it is read: a read failing halfway leaves it where it was, so
        the next try relists again (moved at once, the feed would go on from the list's
        version with the list itself never applied)."""
        rv = self.store.current_resource_version()
        events = [WatchEvent("ADDED", obj, rv) for kind in self.objects.kinds for obj in self.store.list(kind)]
        later = self.store.changes_since(rv, self.objects.kinds)
        self.rv = later[-1].resource_version if later else rv
        return Snapshot(rv, events + later)

    def _changes(self) -> list[WatchEvent]:
        events = self.store.changes_since(self.rv, self.objects.kinds)
        if events:
            self.rv = max(self.rv, events[-1].resource_version)
        return events

    def _apply(self, batch: Snapshot | list[WatchEvent]) -> None:
        events = batch.events if isinstance(batch, Snapshot) else batch
        if isinstance(batch, Snapshot):
            self._reset()
        if self.objects.apply(events) or isinstance(batch, Snapshot):
            self.on_change()

    def _reset(self) -> None:
        """Drop everything before a relist (objects deleted meanwhile must go too)."""
        zones = self.objects.zones
        for source in list(zones.sources):
            if source[0] in ("svc", "pod", "namespace", "nameserver"):
                zones.replace(source, [])
        self.objects.services.clear()
        self.objects.slices.clear()
        self.objects.slice_owner.clear()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                current = self.store.wait_for_change(self.rv, timeout=0.5)
                if current <= self.rv:
                    continue
                try:
                    batch: Snapshot | list[WatchEvent] = self._changes()
                except Gone:
                    log.warning("change feed compacted past %d: relisting", self.rv)
                    batch = self._snapshot()
                self.rv = max(self.rv, current)
                if batch:
                    self.loop.call_soon_threadsafe(self._apply, batch)
            except Exception:
                log.exception("reading the store failed; retrying")
                self.stop.wait(1.0)
