"""The agent's view of its source (agent/source.py): Services and their EndpointSlices, kept current
from the change feed, so a change recomputes only the services it touches."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from controlplane.api.endpoints import LABEL_SERVICE_NAME, EndpointSlice
from controlplane.api.service import Service
from controlplane.controllers.service_view import (ServiceView, SliceBackends, merge_backends, read_services,
                                                   read_slices, slice_backends, view_from_backends)
from controlplane.gcpause import paused_gc
from controlplane.store.interface import DELETED, WatchEvent

from .source import Source

ServiceKey = tuple[str, str]  # (namespace, name)
WATCHED_KINDS = (Service, EndpointSlice)


@dataclass
class ServiceCache:
    services: dict[ServiceKey, Service] = field(default_factory=dict)
    # (namespace, service name) -> {slice name: the backends that slice lists}
    slices: dict[ServiceKey, dict[str, SliceBackends]] = field(default_factory=lambda: defaultdict(dict))
    # (namespace, slice name) -> the service it was last filed under
    slice_owner: dict[tuple[str, str], ServiceKey] = field(default_factory=dict)
    resource_version: int = 0

    @classmethod
    def load(cls, source: Source) -> "ServiceCache":
        """A consistent snapshot: list both kinds, then replay what changed meanwhile. The
        slices are read as stored JSON (only their backends are kept: service_view.read_slices)."""
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
        cache.apply(source.changes_since(rv, WATCHED_KINDS))
        return cache

    def apply(self, events: list[WatchEvent]) -> set[ServiceKey]:
        """Fold events in; return the services whose view may have changed."""
        touched: set[ServiceKey] = set()
        for ev in events:
            obj = ev.object
            self.resource_version = max(self.resource_version, ev.resource_version)
            if isinstance(obj, Service):
                key = (obj.namespace, obj.name)
                if ev.type == DELETED:
                    self.services.pop(key, None)
                else:
                    self.services[key] = obj
                touched.add(key)
            elif isinstance(obj, EndpointSlice):
                owner = obj.labels.get(LABEL_SERVICE_NAME)
                slice_key = (obj.namespace, obj.name)
                # A slice may have been relabelled: take it from its previous service.
                previous = self.slice_owner.pop(slice_key, None)
                if previous is not None:
                    self.slices[previous].pop(obj.name, None)
                    touched.add(previous)
                if owner and ev.type != DELETED:
                    key = (obj.namespace, owner)
                    self.slices[key][obj.name] = slice_backends(obj)
                    self.slice_owner[slice_key] = key
                    touched.add(key)
        return touched

    def view(self, key: ServiceKey) -> ServiceView | None:
        svc = self.services.get(key)
        if svc is None:
            return None
        return view_from_backends(svc, merge_backends(self.slices.get(key, {}).values()))

    def views(self) -> list[ServiceView]:
        with paused_gc():
            return [v for key in self.services if (v := self.view(key)) is not None]
