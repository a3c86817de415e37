"""One long-lived etcd watch on /registry/ that a following process (an agent, the kubelet,
the controllers) waits on and reads its changes from, instead of opening a watch per change.

Why: a watch that starts at a past revision is "unsynced" in etcd and is caught up by a loop
that runs every 100 ms, so opening one per `changes_since` cost 0-100 ms per change on top
of the round trips; a watch that is already caught up gets every commit pushed at once.

    feed = EtcdFeed(client, start_revision=R, store_revision=S)   # S: the store rv at R
    feed.wait(rv, timeout)               # -> the store revision the feed has reached
    feed.events_since(rv, until)         # raw watch events in (rv, until], or None

The feed keeps the raw events (the gateway's JSON, decoded by the caller for its own use)
of the last MAX_EVENTS object writes. It covers store revisions from `base` on: asked for
anything older (or after a compaction it could not follow), it answers None and the caller
falls back to a replay from etcd's history (which raises Gone when that is compacted). A
dropped stream reconnects from the last revision seen, with backoff.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from .etcd_client import EtcdClient, EtcdUnavailable, WatchBroken, unb64

MAX_EVENTS = 200_000


class EtcdFeed:
    def __init__(self, client: EtcdClient, prefix: str, prefix_end: str, marker_key: str,
                 start_revision: int, store_revision: int, max_events: int = MAX_EVENTS) -> None:
        self.client = client
        self.prefix, self.prefix_end, self.marker_key = prefix, prefix_end, marker_key
        self.max_events = max_events
        self.revision = start_revision     # etcd revision the stream has delivered up to
        self.store_revision = store_revision   # the marker key's mod_revision seen last
        self.base = store_revision          # events after this store revision are all held
        self.heard = time.monotonic()       # last response (event or progress notification)
        self.connected = False
        self._events: deque[tuple[int, dict[str, Any]]] = deque()   # (mod_revision, raw event)
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._stream = None
        self._thread = threading.Thread(target=self._run, name="etcd-feed", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- reading
    def wait(self, store_revision: int, timeout: float) -> int:
        """Until the feed has seen a store revision above `store_revision` (or timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.store_revision <= store_revision:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped.is_set():
                    break
                self._cond.wait(remaining)
            return self.store_revision

    def events_since(self, store_revision: int, until: int) -> list[dict[str, Any]] | None:
        """Raw events of object writes after `store_revision` up to `until` (whole
        revisions), or None when the feed does not hold all of them."""
        with self._cond:
            if store_revision < self.base or until > self.store_revision:
                return None
            return [ev for rev, ev in self._events if store_revision < rev <= until]

    def stale(self, quiet_s: float) -> bool:
        """Nothing heard for `quiet_s` (a silent partition looks like an idle cluster)."""
        return not self.connected or time.monotonic() - self.heard > quiet_s

    def restart(self) -> None:
        """Drop the stream; the feed reconnects from the last revision it saw."""
        stream = self._stream
        if stream is not None:
            stream.close()

    def close(self) -> None:
        self._stopped.set()
        self.restart()
        with self._cond:
            self._cond.notify_all()

    # ---------------------------------------------------------------- the stream
    def _run(self) -> None:
        delay = 0.05
        while not self._stopped.is_set():
            try:
                self._stream = self.client.watch_after(self.prefix, self.prefix_end, self.revision,
                                                       prev_kv=True, progress_notify=True)
            except EtcdUnavailable:
                self.connected = False
                self._stopped.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                while not self._stopped.is_set():
                    resp = self._stream.next(1.0)
                    if resp is None:
                        continue
                    self.connected = True
                    delay = 0.05
                    if resp.get("canceled"):
                        self._compacted(resp)
                        break
                    self._take(resp)
            except WatchBroken:
                self.connected = False
                self._stopped.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                self._stream.close()

    def _take(self, resp: dict[str, Any]) -> None:
        events = resp.get("events") or []
        with self._cond:
            self.heard = time.monotonic()
            for ev in events:
                rev = int(ev["kv"]["mod_revision"])
                if rev <= self.revision:
                    continue                      # the revision it resumed after (watch_after)
                if unb64(ev["kv"]["key"]) == self.marker_key:
                    self.store_revision = max(self.store_revision, rev)
                else:
                    self._events.append((rev, ev))
            if events:
                self.revision = max(self.revision, int(events[-1]["kv"]["mod_revision"]))
            elif not resp.get("created") and "revision" in resp.get("header", {}):
                self.revision = max(self.revision, int(resp["header"]["revision"]))   # progress
            while len(self._events) > self.max_events:
                rev, _ = self._events.popleft()
                while self._events and self._events[0][0] == rev:   # never keep half a revision
                    self._events.popleft()
                self.base = max(self.base, rev)
            if events:
                self._cond.notify_all()

    def _compacted(self, resp: dict[str, Any]) -> None:
        """The stream's resume point was compacted (it was away for a while): what it missed
        is gone; it goes on from etcd's present, holding nothing older."""
        compacted = int(resp.get("compact_revision") or 0)
        with self._cond:
            self._events.clear()
            self.revision = max(self.revision, compacted)
            self.base = 1 << 62          # nothing until the fresh start below
        delay = 0.05
        while True:   # (given up, the feed would answer None for good: every read a replay)
            try:
                resp2 = self.client.range(self.marker_key)
                break
            except EtcdUnavailable:
                if self._stopped.wait(delay):
                    return
                delay = min(delay * 2, 2.0)
        kvs = resp2.get("kvs") or []
        with self._cond:
            self.revision = int(resp2["header"]["revision"])
            self.store_revision = int(kvs[0]["mod_revision"]) if kvs else 0
            self.base = self.store_revision
            self._cond.notify_all()
