"""The agent's view of its source (agent/source.py): Services and their EndpointSlices, kept current
from the change feed, so a change recomputes only the services it touches."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from controlplane.api.endpoints import LAST_CHANGE_TRIGGER_TIME, EndpointSlice, proxied_slice_owner
from controlplane.api.errors import Gone
from controlplane.api.service import Service
from controlplane.controllers.service_view import (ServiceView, SliceBackends, SliceRead, merge_backends,
                                                   read_services, read_slices, service_text_read, slice_backends,
                                                   slice_change_read, view_from_backends)
from controlplane.gcpause import paused_gc
from controlplane.store.interface import DELETED, TextEvent, WatchEvent

from .source import Source

ServiceKey = tuple[str, str]  # (namespace, name)
WATCHED_KINDS = (Service, EndpointSlice)
TEXT_KINDS = (Service, EndpointSlice)   # asked for as stored text: each read with service_view's typed decoders


@dataclass
class ServiceCache:
    services: dict[ServiceKey, Service] = field(default_factory=dict)
    # (namespace, service name) -> {slice name: the backends that slice lists}
    slices: dict[ServiceKey, dict[str, SliceBackends]] = field(default_factory=lambda: defaultdict(dict))
    # (namespace, slice name) -> the service it was last filed under
    slice_owner: dict[tuple[str, str], ServiceKey] = field(default_factory=dict)
    resource_version: int = 0

    @classmethod
    def load(cls, source: Source, attempts: int = 3) -> "ServiceCache":
        """A consistent snapshot: list both kinds, then replay what changed meanwhile. The
        slices are read as stored JSON (only their backends are kept: service_view.read_slices).
        A replay refused as compacted (Gone) is a snapshot to take again: the revision read
        first was older than the store's compaction (an etcd follower's feed, behind after
        the agent was paused, answers it without a round trip), and the lists have moved
        it on. Raised, it failed the consistency check or the full sync that asked, a
        traceback and a retry later."""
        for _ in range(attempts - 1):
            try:
                return cls._load(source)
            except Gone:
                continue
        return cls._load(source)

    @classmethod
    def _load(cls, source: Source) -> "ServiceCache":
        rv = source.current_resource_version()
        cache = cls(resource_version=rv)
        with paused_gc():
            for svc in read_services(source):
                cache.services[(svc.namespace, svc.name)] = svc
            for es in read_slices(source):
                if es.service:
                    key = (es.namespace, es.service)
                    cache.slices[key][es.name] = es.backends
                    cache.slice_owner[(es.namespace, es.name)] = key
        cache.apply(source.changes_since(rv, WATCHED_KINDS, as_text=TEXT_KINDS))
        return cache

    def apply(self, events: list[WatchEvent | TextEvent],
              triggers: list[tuple[str, str, str]] | None = None) -> set[ServiceKey]:
        """Fold events in; return the services whose view may have changed. Services and
        slices may come as their stored text (TextEvent, as TEXT_KINDS asks the source):
        read with the typed decoders, of a slice only its backends. `triggers`, when
        given, gets (namespace, slice, stamp) for each changed slice that carries a
        last-change-trigger-time."""
        touched: set[ServiceKey] = set()
        for ev in events:
            self.resource_version = max(self.resource_version, ev.resource_version)
            deleted = ev.type == DELETED
            if ev.__class__ is TextEvent:
                if ev.kind == Service.KIND:
                    svc = service_text_read(ev.text)
                    if svc.metadata.resource_version is None:   # as the store's decoded event stamps it
                        svc.metadata.resource_version = str(ev.resource_version)
                    self._put_service(svc, deleted, touched)
                    continue
                if ev.kind != EndpointSlice.KIND:
                    continue
                read, stamp = slice_change_read(ev.text)
            else:
                obj = ev.object
                if isinstance(obj, Service):
                    self._put_service(obj, deleted, touched)
                    continue
                if not isinstance(obj, EndpointSlice):
                    continue
                # (a slice labelled service-proxy-name or headless has no owner here: as a
                # slice kube-proxy's selector stops matching, it leaves its service)
                owner = proxied_slice_owner(obj.labels)
                read = SliceRead(obj.namespace, obj.name, owner, slice_backends(obj) if owner and not deleted else {})
                stamp = obj.annotations.get(LAST_CHANGE_TRIGGER_TIME)
            self._put_slice(read, deleted, touched)
            if stamp and triggers is not None and not deleted:
                triggers.append((read.namespace, read.name, stamp))
        return touched

    def _put_service(self, svc: Service, deleted: bool, touched: set[ServiceKey]) -> None:
        key = (svc.namespace, svc.name)
        if deleted:
            self.services.pop(key, None)
        else:
            self.services[key] = svc
        touched.add(key)

    def _put_slice(self, read: SliceRead, deleted: bool, touched: set[ServiceKey]) -> None:
        """File a changed slice's backends under its service (none when deleted)."""
        slice_key = (read.namespace, read.name)
        # A slice may have been relabelled: take it from its previous service.
        previous = self.slice_owner.pop(slice_key, None)
        if previous is not None:
            self.slices[previous].pop(read.name, None)
            touched.add(previous)
        if read.service and not deleted:
            key = (read.namespace, read.service)
            self.slices[key][read.name] = read.backends
            self.slice_owner[slice_key] = key
            touched.add(key)

    def view(self, key: ServiceKey) -> ServiceView | None:
        """The service's view, its slices merged in name order, as a full load reads them
        (the first slice listing an address wins it: in the order slices changed, an
        endpoint two slices list, ready in one and terminating in the other while the
        EndpointSlice controller moves it, took the state of whichever changed last)."""
        svc = self.services.get(key)
        if svc is None:
            return None
        slices = self.slices.get(key)
        if not slices:
            return view_from_backends(svc, merge_backends(()))
        merged = merge_backends(slices.values() if len(slices) == 1 else [slices[n] for n in sorted(slices)])
        return view_from_backends(svc, merged)

    def views(self) -> list[ServiceView]:
        with paused_gc():
            return [v for key in self.services if (v := self.view(key)) is not None]
