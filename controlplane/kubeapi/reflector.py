"""List then watch one resource of the Kubernetes API, as client-go's reflector does.

    list                 GET .../services?limit=500, then &continue=TOKEN while the server
                         says there is more -> every object and the list's resourceVersion
    watch from there     GET .../services?watch=true&resourceVersion=RV&allowWatchBookmarks=true
                         &timeoutSeconds=T: each ADDED / MODIFIED / DELETED moves the resume
                         point to the object's resourceVersion, each BOOKMARK to the
                         bookmark's; the server ending the stream (timeoutSeconds) -> watch
                         again from the resume point
    410 Gone / Expired   (an ERROR event or an HTTP 410) the resume point is too old: list
                         again; the handler gets the whole new list (replace) and works out
                         what changed
    connection dropped   (reset, cut mid-chunk, read timeout, refused) -> watch again from
                         the resume point after a backoff: nothing is lost, because the
                         server replays every change after it

A `label_selector` (as kube-proxy's informers give one) is sent with every list and
watch: the server leaves out what does not match, and tells a watch that an object
stopped matching (a label added) as DELETED.

resourceVersions are opaque strings: only the server compares them.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("svcxdp.kubeapi")

GONE = 410


class Handler(Protocol):
    def replace(self, resource: str, items: list[dict[str, Any]]) -> None:
        """A fresh list: these are all the objects there are."""

    def event(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        """One ADDED / MODIFIED / DELETED from the watch."""


class _RawWatch(watch.Watch):
    """Events as plain JSON dicts: svcxdp's codec decodes them, not the client's models
    (and the client's `deserialize=False` path does not handle ERROR events)."""

    def get_return_type(self, func: Callable[..., Any]) -> None:
        return None


@dataclass
class Reflector:
    resource: str                       # "services", "endpointslices" (for logs and the handler)
    list_func: Callable[..., Any]       # e.g. CoreV1Api.list_service_for_all_namespaces
    handler: Handler
    watch_timeout_s: int = 300          # timeoutSeconds of each watch request
    label_selector: str | None = None   # labelSelector of each list and watch request (None: all)
    page_size: int = 500                # limit of each list request (client-go's pager default)
    connect_timeout_s: float = 10.0
    backoff_first_s: float = 0.2
    backoff_max_s: float = 30.0
    resource_version: str | None = None   # the resume point; None: list first
    lists: int = 0                      # how many times it listed (for logs and tests)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _watch: _RawWatch | None = field(default=None, repr=False)
    _progress: bool = field(default=False, repr=False)   # this attempt's watch delivered an event

    def run(self) -> None:
        """List and watch until stop(). Nothing ends the loop but stop()."""
        failures = 0
        while not self._stop.is_set():
            self._progress = False
            try:
                if self.resource_version is None:
                    self._list()
                self._watch_once()
                failures = 0
            except ApiException as exc:
                if self._stop.is_set():
                    break
                failures = 1 if self._progress else failures + 1   # a watch that delivered resets the backoff
                if exc.status == GONE:
                    log.info("%s: resourceVersion %s expired (%s); listing again",
                             self.resource, self.resource_version, exc.reason)
                    self.resource_version = None
                    if failures > 1:   # expired again right after a list: do not hammer the API
                        self._pause(failures, "expired again")
                    continue
                self._pause(failures, f"API answered {exc.status} {exc.reason}")
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break   # stop() cut the connection
                failures = 1 if self._progress else failures + 1
                self._pause(failures, f"{type(exc).__name__}: {exc}")
            except Exception:   # a bug must not end the watch for good: log it, list again
                if self._stop.is_set():
                    break
                log.exception("%s: unexpected failure; listing again", self.resource)
                failures += 1
                self.resource_version = None
                self._pause(failures, "unexpected failure")

    def stop(self) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()   # shuts the socket down: a blocked read returns at once

    def _pause(self, failures: int, why: str) -> None:
        delay = min(self.backoff_max_s, self.backoff_first_s * 2 ** (failures - 1))
        what = f"resuming the watch from resourceVersion {self.resource_version}" \
            if self.resource_version is not None else "listing again"
        (log.warning if failures > 1 else log.info)("%s: %s; %s in %.1f s", self.resource, why, what, delay)
        self._stop.wait(delay)

    def _selector(self) -> dict[str, str]:
        """The label selector as the client's keyword argument (none when unset)."""
        return {"label_selector": self.label_selector} if self.label_selector else {}

    def _list(self) -> None:
        """Every object, in pages of `page_size` (as client-go's pager) from one snapshot;
        a snapshot that expires between pages raises 410, and the whole list starts again."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        rv = None
        while True:
            kw = {"_continue": token} if token else {}
            kw.update(self._selector())
            resp = self.list_func(limit=self.page_size, _preload_content=False,
                                  _request_timeout=(self.connect_timeout_s, self.watch_timeout_s), **kw)
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            meta = body.get("metadata") or {}
            items.extend(body.get("items") or [])
            rv = rv or meta.get("resourceVersion")
            token = meta.get("continue")
            if not token:
                break
        if not rv:
            raise ValueError(f"{self.resource} list has no metadata.resourceVersion")
        self.handler.replace(self.resource, items)
        self.resource_version = rv
        self.lists += 1
        log.info("%s: listed %d at resourceVersion %s", self.resource, len(items), rv)

    def _watch_once(self) -> None:
        """One watch request, from the resume point until the server ends it."""
        w = self._watch = _RawWatch()
        if self._stop.is_set():
            return
        # A read gets at least a bookmark or the end of the stream within timeoutSeconds;
        # silence beyond it means a dead connection.
        stream = w.stream(self.list_func, resource_version=self.resource_version,
                          allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s,
                          _request_timeout=(self.connect_timeout_s, self.watch_timeout_s + 30),
                          **self._selector())
        for ev in stream:
            kind, obj = ev.get("type"), ev.get("raw_object") or {}
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind == "BOOKMARK":
                log.debug("%s: bookmark at resourceVersion %s", self.resource, rv)
            elif kind in ("ADDED", "MODIFIED", "DELETED"):
                self.handler.event(self.resource, kind, obj)
            else:
                log.warning("%s: unknown watch event type %r ignored", self.resource, kind)
                continue
            if rv:
                self.resource_version = rv
            self._progress = True
