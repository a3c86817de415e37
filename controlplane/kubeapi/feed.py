"""The Kubernetes API as the agent's Source (agent/source.py).

Two reflectors (reflector.py) list and watch `services` (core/v1) and `endpointslices`
(discovery.k8s.io/v1) across all namespaces. What they see is folded into a local change
feed with the agent's five reads:

- every change becomes a WatchEvent numbered by a local counter (the feed's
  resourceVersion: Kubernetes' own are opaque strings, and two resources' are not
  meant to be compared);
- a relist (after 410 Gone) is turned into the events that tell the old objects from
  the new ones: ADDED / MODIFIED by resourceVersion, DELETED for what is gone, so the
  agent applies a relist as an ordinary change and keeps no stale frontend;
- the feed keeps the last `history` events; an agent further behind gets Gone and
  relists from this feed (not from the API);
- until both resources have been listed once, reads raise StoreUnavailable: an agent
  started before the API answers keeps the pinned dataplane as it is (/healthz 503)
  instead of taking an empty list for "no services".

Services are decoded with svcxdp's codec (api.Service), so every type is mapped as from
svcxdp's own store; which ones are served is decided downstream (Service.proxied skips
ExternalName, headless, and the service-proxy-name / headless labels, as kube-proxy).
EndpointSlices are listed and watched with kube-proxy's label selector (no
service-proxy-name, no headless label: api.endpoints.PROXIED_SLICE_SELECTOR), so the API
sends none of the slices kube-proxy does not see (a headless Service's, or one another
proxy serves); the readers leave such slices out too (proxied_slice_owner), whatever the
source.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Iterable, Iterator

from kubernetes import client

from controlplane.api.codec import DecodeError
from controlplane.api.endpoints import PROXIED_SLICE_SELECTOR, EndpointSlice
from controlplane.api.errors import Gone
from controlplane.api.meta import ApiObject
from controlplane.api.service import Service
from controlplane.store.interface import ADDED, DELETED, MODIFIED, StoreUnavailable, WatchEvent

from .reflector import Reflector

log = logging.getLogger("svcxdp.kubeapi")

SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
KINDS: dict[str, type[ApiObject]] = {SERVICES: Service, ENDPOINTSLICES: EndpointSlice}
RESOURCES = {cls: resource for resource, cls in KINDS.items()}

Key = tuple[str, str]   # (namespace, name)


class KubeFeed:
    takes_events = False   # read-only: the agent writes no Events through this source

    def __init__(self, api: client.ApiClient, history: int = 100_000, watch_timeout_s: int = 300) -> None:
        self._cond = threading.Condition()
        # resource -> (namespace, name) -> the API's JSON document (and its decoded object)
        self._objects: dict[str, dict[Key, _Entry]] = {r: {} for r in KINDS}
        self._log: deque[WatchEvent] = deque(maxlen=history)
        self._rv = 0
        self._listed: set[str] = set()
        self.reflectors = {
            SERVICES: Reflector(SERVICES, client.CoreV1Api(api).list_service_for_all_namespaces, self,
                                watch_timeout_s),
            ENDPOINTSLICES: Reflector(ENDPOINTSLICES,
                                      client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces, self,
                                      watch_timeout_s, label_selector=PROXIED_SLICE_SELECTOR),
        }
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> "KubeFeed":
        for name, reflector in self.reflectors.items():
            t = threading.Thread(target=reflector.run, name=f"watch-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop watching. A request just being sent cannot be cut until its response
        starts, so stop() is repeated until the threads are gone (or `timeout_s`: a list
        the API does not answer ends with its read timeout; the threads are daemons)."""
        deadline = time.monotonic() + timeout_s
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            for reflector in self.reflectors.values():
                reflector.stop()
            for t in self._threads:
                t.join(0.05)

    def wait_synced(self, timeout: float) -> bool:
        """True once both resources have been listed (False after `timeout` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._listed) == len(KINDS), timeout)

    # ---- what the reflectors tell (reflector.Handler) --------------------------------
    def replace(self, resource: str, items: list[dict[str, Any]]) -> None:
        """A (re)list. The first one only fills the feed: no reader can be at an earlier
        position (reads wait for both first lists), and it decodes nothing yet (10,000
        slices take seconds to decode; the agent reads their JSON). A later one becomes
        the events that turn the old objects into the new ones; unchanged objects (same
        resourceVersion) are kept as they were, decoded or not."""
        with self._cond:
            first = resource not in self._listed
            old = self._objects[resource]
            fresh: dict[Key, _Entry] = {}
            for doc in items:
                meta = doc.get("metadata") or {}
                key = (meta.get("namespace") or "", meta.get("name") or "")
                before = old.get(key)
                if before is not None and _rv(before.doc) == _rv(doc):
                    fresh[key] = before
                    continue
                entry = _Entry(doc)
                if not first:
                    obj = entry.decoded(resource)
                    if obj is None:
                        continue
                    previous = before.decoded(resource) if before is not None else None
                    self._append(MODIFIED if previous else ADDED, obj, previous.labels if previous else None)
                fresh[key] = entry
            for key in old.keys() - fresh.keys():
                gone = old[key].decoded(resource)
                if gone is not None:
                    self._append(DELETED, gone, gone.labels)
            self._objects[resource] = fresh
            self._listed.add(resource)
            self._cond.notify_all()

    def event(self, resource: str, kind: str, doc: dict[str, Any]) -> None:
        entry = _Entry(doc)
        obj = entry.decoded(resource)
        meta = doc.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        with self._cond:
            objects = self._objects[resource]
            before = objects.get(key)
            previous = before.decoded(resource) if before is not None else None
            if obj is None or kind == DELETED:
                # A version svcxdp cannot read (logged by _decode) ends the object for it,
                # as a relist would have it: its last readable version must not go on
                # serving (a slice's old endpoints kept taking traffic).
                if before is None:
                    return
                del objects[key]
                gone = obj if obj is not None else previous
                if gone is not None:
                    self._append(DELETED, gone, previous.labels if previous else None)
            else:
                objects[key] = entry
                self._append(ADDED if before is None else MODIFIED, obj, previous.labels if previous else None)
            self._cond.notify_all()

    def _append(self, kind: str, obj: ApiObject, previous_labels: dict[str, str] | None) -> None:
        self._rv += 1
        self._log.append(WatchEvent(kind, obj, self._rv, previous_labels))

    # ---- the agent's reads (agent.source.Source) -------------------------------------
    def _synced(self) -> None:
        missing = sorted(set(KINDS) - self._listed)
        if missing:
            raise StoreUnavailable(f"the Kubernetes API has not been listed yet: {', '.join(missing)}")

    def current_resource_version(self) -> int:
        with self._cond:
            self._synced()
            return self._rv

    def list(self, cls: type[ApiObject]) -> list[Any]:
        with self._cond:
            self._synced()
            resource = RESOURCES[cls]
            objs = (entry.decoded(resource) for _, entry in sorted(self._objects[resource].items()))
            return [obj for obj in objs if obj is not None]

    def iter_documents(self, cls: type[ApiObject]) -> Iterator[dict[str, Any]]:
        with self._cond:
            self._synced()
            docs = [entry.doc for _, entry in sorted(self._objects[RESOURCES[cls]].items())]
        return iter(docs)

    def changes_since(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
                      as_text: Iterable[type[ApiObject]] = ()) -> list[WatchEvent]:
        """The events after `resource_version`, decoded whatever `as_text` asks: the API
        client has parsed them already, so there is no text to save decoding."""
        wanted = tuple(kinds) if kinds is not None else tuple(KINDS.values())
        with self._cond:
            self._synced()
            oldest = self._log[0].resource_version if self._log else self._rv + 1
            if resource_version < oldest - 1:
                raise Gone(resource_version, oldest - 1)
            out = []
            for ev in reversed(self._log):   # newest first: costs what it returns
                if ev.resource_version <= resource_version:
                    break
                if isinstance(ev.object, wanted):
                    out.append(ev)
            out.reverse()
            return out

    def wait_for_change(self, resource_version: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._rv > resource_version, timeout)
            return self._rv


class _Entry:
    """One object as the API sent it; decoded on first need, then kept."""
    __slots__ = ("doc", "_obj", "_bad")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self._obj: ApiObject | None = None
        self._bad = False

    def decoded(self, resource: str) -> ApiObject | None:
        if self._obj is None and not self._bad:
            self._obj = _decode(resource, self.doc)
            self._bad = self._obj is None
        return self._obj


def _rv(doc: dict[str, Any]) -> str | None:
    return (doc.get("metadata") or {}).get("resourceVersion")


def _decode(resource: str, doc: dict[str, Any]) -> ApiObject | None:
    """The object, or None (logged, naming the object and the field) when the API sent
    something svcxdp's codec cannot read."""
    try:
        return KINDS[resource].from_dict(doc)
    except (DecodeError, TypeError, AttributeError) as exc:
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        name = f"{(meta or {}).get('namespace', '')}/{(meta or {}).get('name', '?')}"
        log.warning("%s %s ignored: %s", resource, name, exc)
        return None
