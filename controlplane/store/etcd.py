"""EtcdStore: the `Store` protocol on etcd v3 (see store.interface for the contract).

Layout, as the Kubernetes apiserver lays objects out:

    /registry/<resource>/<namespace>/<name>   namespaced objects (JSON)
    /registry/<resource>/<name>               cluster-scoped objects (namespaces)
    /registry/ranges/<pool>/<value>           allocator claims (value: the owner)
    /registry/svcxdp/settings/<key>           store settings
    /registry/svcxdp/revision                 written by every transaction that writes objects

resourceVersion is the key's `mod_revision` (it is not stored in the JSON, as in Kubernetes).
The store's resourceVersion is the mod_revision of `/registry/svcxdp/revision`: the revision
of the last store transaction that wrote objects, so claims, settings and writes by other
etcd users do not count as changes (as in SqliteStore).

Transactions: reads inside `transaction()` are pinned to the revision of the block's first
read and remember each key's mod_revision; writes are buffered (and visible to the block's own
reads, lists and change feed). At the end, one etcd txn commits them all, guarded by a compare
per key read ("mod_revision unchanged"; 0 for "still absent"). A failed compare means another
writer got there first: CommitConflict (an api Conflict) is raised and nothing is written; the
registry retries the whole operation. Stale resourceVersions given by the caller are refused
inside the block with the plain Conflict, exactly as SqliteStore does.

If etcd refuses the txn as too large (--max-txn-ops, 128 by default; --max-request-bytes,
1.5 MiB), the writes are committed in chunks that fit, in order; if a later chunk fails its
compares, the chunks already committed are rolled back (each key restored to its previous
value, guarded by "still at the revision we wrote"), so the user sees all or nothing. While a
split commit runs, watchers can see its chunks arrive one by one, and a client that dies between
chunks leaves the chunks it committed: the one-transaction guarantee holds only for what fits
in one etcd request.

Inside a transaction, each buffered write takes a provisional resourceVersion (the store's
revision + 1, + 2, ...) so that the controllers' fixed-point loop sees its own writes in
`changes_since`; after the commit, every written object carries the real revision.

The change feed is etcd's watch on /registry/ with prev_kv (the last state of deleted objects
and the labels before a change). Asking for history etcd has compacted raises api Gone.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterable, Iterator, TypeVar

from controlplane.api.errors import AlreadyExists, Conflict, Gone, NotFound
from controlplane.api.kinds import KINDS
from controlplane.api.meta import ApiObject, format_timestamp, now
from controlplane.api.selectors import Selector
from controlplane import gcpause
from controlplane.gcpause import paused_gc

from . import indexes
from .etcd_client import EtcdClient, EtcdRequestError, EtcdUnavailable, WatchBroken, b64, prefix_end, unb64
from .etcd_feed import EtcdFeed
from .interface import (ADDED, DELETED, MODIFIED, CommitConflict, IndexEntry, ObjectList, TextEvent, WatchEvent,
                        place, stored_namespace)

T = TypeVar("T", bound=ApiObject)

PREFIX = "/registry/"
REVISION_KEY = "/registry/svcxdp/revision"
SETTINGS_PREFIX = "/registry/svcxdp/settings/"
CLAIMS_PREFIX = "/registry/ranges/"

CHUNK_OPS = 128                 # etcd's default --max-txn-ops
CHUNK_BYTES = 1024 * 1024       # under etcd's default --max-request-bytes (1.5 MiB)
FEED_QUIET_S = 3.0              # a feed that heard nothing this long is checked with a read

_BY_RESOURCE: dict[str, type[ApiObject]] = {cls.RESOURCE: cls for cls in KINDS}


# ---------------------------------------------------------------------- keys
def object_key(cls: type[ApiObject], namespace: str, name: str) -> str:
    if cls.NAMESPACED:
        return f"{PREFIX}{cls.RESOURCE}/{namespace}/{name}"
    return f"{PREFIX}{cls.RESOURCE}/{name}"


def kind_prefix(cls: type[ApiObject], namespace: str | None = None) -> str:
    if cls.NAMESPACED and namespace is not None:
        return f"{PREFIX}{cls.RESOURCE}/{namespace}/"
    return f"{PREFIX}{cls.RESOURCE}/"


def parse_object_key(key: str) -> tuple[type[ApiObject], str, str] | None:
    """(class, namespace, name) of an object key; None for the store's other keys."""
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX):].split("/")
    cls = _BY_RESOURCE.get(parts[0])
    if cls is None:
        return None
    if cls.NAMESPACED and len(parts) == 3:
        return cls, parts[1], parts[2]
    if not cls.NAMESPACED and len(parts) == 2:
        return cls, "", parts[1]
    return None


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _document(obj: ApiObject) -> dict[str, Any]:
    """The stored form: the object without its resourceVersion (that is the key's revision)."""
    doc = obj.to_dict()
    doc.get("metadata", {}).pop("resourceVersion", None)
    return doc


def _with_version(doc: dict[str, Any], rv: int) -> dict[str, Any]:
    doc.setdefault("metadata", {})["resourceVersion"] = str(rv)
    return doc


# ---------------------------------------------------------------------- transactions
class FencedOut(Exception):
    """A commit was refused because this process no longer holds the lease it was fenced
    with (another process leads now): nothing was written."""


@dataclass(frozen=True)
class _Fence:
    key: str
    create_revision: int


@dataclass
class _PendingEvent:
    """One of a transaction's own writes, made a WatchEvent only if the block reads its own
    change feed (a deep copy of every object written made bulk creates twice as slow)."""
    type: str
    cls: type[ApiObject]
    data: str                    # the stored JSON (for a delete: the object's last state)
    resource_version: int
    previous_labels: dict[str, str] | None

    def event(self, text_kinds: Container[str] = ()) -> WatchEvent | TextEvent:
        if self.cls.KIND in text_kinds:
            return TextEvent(self.type, self.cls.KIND, self.data, self.resource_version, self.previous_labels)
        obj = self.cls.from_dict(_with_version(json.loads(self.data), self.resource_version))
        return WatchEvent(self.type, obj, self.resource_version, self.previous_labels)


@dataclass
class _Txn:
    read_revision: int | None = None   # reads see etcd as of this revision (set by the first read)
    base: int = 0                      # the store's resourceVersion at that revision
    compares: dict[str, int] = field(default_factory=dict)        # key -> mod_revision read (0: absent)
    previous: dict[str, str | None] = field(default_factory=dict)  # key -> value before this txn
    writes: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # key -> (value, provisional rv)
    events: list[_PendingEvent] = field(default_factory=list)      # the block's own change feed
    written: list[ApiObject] = field(default_factory=list)         # stamped with the commit revision
    prefetched: set[str] = field(default_factory=set)              # prefixes whose keys are known
    present: set[str] = field(default_factory=set)                 # keys that exist under those

    @property
    def provisional(self) -> int:
        return self.base + len(self.events)


class _Transaction(AbstractContextManager):
    def __init__(self, store: "EtcdStore") -> None:
        self.store = store
        self.outer = False

    def __enter__(self) -> "EtcdStore":
        store = self.store
        store._lock.acquire()
        if store._depth == 0:
            self.outer = True
            store._txn = _Txn()   # pinned by its first read (store._pin), in the same request
            gcpause.pause()   # a transaction is bulk work; resumed in __exit__
        store._depth += 1
        return store

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        store = self.store
        try:
            store._depth -= 1
            if self.outer:
                txn, store._txn = store._txn, None
                if exc_type is None and txn is not None and txn.writes:
                    store._commit(txn)
        finally:
            if self.outer:
                gcpause.resume()
            store._lock.release()


class EtcdStore:
    """The Store protocol on etcd v3."""

    provisional_versions = True   # versions inside a transaction are settled at the commit

    def __init__(self, client: EtcdClient, url: str = "") -> None:
        self.client = client
        self.url = url
        self.path = url    # what `svcctl` prints as "the store"
        self._lock = threading.RLock()
        self._depth = 0
        self._txn: _Txn | None = None
        self._fence: _Fence | None = None
        self._feed: EtcdFeed | None = None   # started by the first wait_for_change
        self._observed = 0     # the newest store revision this object has read or written

    def fence(self, key: str, create_revision: int) -> None:
        """Make every later commit require `key` to still be the one created at
        `create_revision` (a leader's key): a deposed leader cannot write (FencedOut)."""
        self._fence = _Fence(key, create_revision)

    def unfence(self) -> None:
        self._fence = None

    def _fence_compares(self) -> list[dict[str, Any]]:
        if self._fence is None:
            return []
        return [{"key": b64(self._fence.key), "target": "CREATE", "result": "EQUAL",
                 "create_revision": self._fence.create_revision}]

    def _check_fence(self) -> None:
        if self._fence is not None:
            kvs = self.client.range(self._fence.key).get("kvs") or []
            if not kvs or int(kvs[0]["create_revision"]) != self._fence.create_revision:
                raise FencedOut(f"{self._fence.key} is no longer ours: another process leads")

    def reopen(self) -> "EtcdStore":
        return EtcdStore(self.client, self.url)   # the fence is not carried over

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    # ---------------------------------------------------------------- key-value plumbing
    def _revisions(self) -> tuple[int, int]:
        """(etcd's revision now, the store's resourceVersion at that revision)."""
        resp = self.client.range(REVISION_KEY)
        kvs = resp.get("kvs") or []
        base = int(kvs[0]["mod_revision"]) if kvs else 0
        self._observed = max(self._observed, base)
        return int(resp["header"]["revision"]), base

    def _read(self, key: str) -> tuple[str | None, int]:
        """(value, mod_revision) of one key; (None, 0) if absent. In a transaction: the
        block's own write if any, else etcd at the pinned revision (remembered for the
        commit's compares)."""
        txn = self._txn
        if txn is not None and key in txn.writes:
            return txn.writes[key]
        if txn is not None and key not in txn.present and any(key.startswith(p) for p in txn.prefetched):
            txn.compares.setdefault(key, 0)      # known absent at the pinned revision
            txn.previous.setdefault(key, None)
            return None, 0
        resp = self._pin(txn, key) if txn is not None else None
        if resp is None:
            resp = self.client.range(key, revision=txn.read_revision if txn else None)
        kvs = resp.get("kvs") or []
        value = unb64(kvs[0].get("value", "")) if kvs else None
        mod = int(kvs[0]["mod_revision"]) if kvs else 0
        if txn is not None:
            txn.compares.setdefault(key, mod)
            txn.previous.setdefault(key, value)
        return value, mod

    def _pin(self, txn: _Txn, key: str | None = None) -> dict[str, Any] | None:
        """Pin a transaction's reads to etcd's revision at its first read. With `key`, that
        read and the store revision come in one request (a txn of two ranges), and the key's
        range response is returned; None when already pinned."""
        if txn.read_revision is not None:
            return None
        if key is None:
            txn.read_revision, txn.base = self._revisions()
            return None
        resp = self.client.txn([], [{"request_range": {"key": b64(REVISION_KEY)}},
                                    {"request_range": {"key": b64(key)}}])
        marker, found = (r["response_range"] for r in resp["responses"])
        txn.read_revision = int(resp["header"]["revision"])
        txn.base = int(marker["kvs"][0]["mod_revision"]) if marker.get("kvs") else 0
        self._observed = max(self._observed, txn.base)
        return found

    def prefetch(self, cls: type[ApiObject], namespace: str | None = None) -> None:
        """Inside a transaction: learn which keys of a kind exist with one keys-only range at
        the pinned revision, so that creating many objects does not read each absent key
        (a round trip each). Outside a transaction, nothing to do."""
        txn = self._txn
        if txn is None:
            return
        prefix = kind_prefix(cls, namespace)
        self._pin(txn)
        resp = self.client.range(prefix, prefix_end(prefix), revision=txn.read_revision, keys_only=True)
        txn.present.update(unb64(kv["key"]) for kv in resp.get("kvs") or [])
        txn.prefetched.add(prefix)

    def _range(self, prefix: str) -> list[tuple[str, str, int]]:
        """(key, value, mod_revision) of every key under prefix, the block's writes included."""
        txn = self._txn
        if txn is not None:
            self._pin(txn)
        resp = self.client.range(prefix, prefix_end(prefix), revision=txn.read_revision if txn else None)
        rows = {unb64(kv["key"]): (unb64(kv.get("value", "")), int(kv["mod_revision"]))
                for kv in resp.get("kvs") or []}
        if txn is not None:
            for key, (value, rv) in txn.writes.items():
                if key.startswith(prefix):
                    if value is None:
                        rows.pop(key, None)
                    else:
                        rows[key] = (value, rv)
        return [(key, value, rv) for key, (value, rv) in rows.items()]

    def _write(self, key: str, value: str | None) -> int:
        """Buffer a put (or a delete, value None) in the current transaction."""
        txn = self._txn
        assert txn is not None, "writes must run inside a transaction"
        if key not in txn.previous:
            self._read(key)   # remembers the old value (for a split commit's rollback) and guards it
        rv = txn.provisional + 1
        txn.writes[key] = (value, rv)
        return rv

    def _commit(self, txn: _Txn) -> None:
        compares = [{"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": rv}
                    for k, rv in txn.compares.items()]
        ops = [_op(k, v) for k, (v, _) in txn.writes.items()]
        compares += self._fence_compares()
        split: dict[str, int] = {}
        try:
            resp = self.client.txn(compares, ops + self._marker(txn))
        except EtcdRequestError as exc:
            if not exc.too_large:
                raise
            split = self._commit_split(txn)
            revision = max(split.values())
        else:
            if not resp.get("succeeded"):
                self._check_fence()
                raise self._conflict(txn)
            revision = int(resp["header"]["revision"])
        if txn.events:
            self._observed = max(self._observed, revision)
        for obj in txn.written:   # committed in chunks: each object at its own chunk's revision
            obj.metadata.resource_version = str(
                split[object_key(type(obj), obj.namespace, obj.name)] if split else revision)

    @staticmethod
    def _marker(txn: _Txn) -> list[dict[str, Any]]:
        """The store revision moves with object writes only (as SQLite's resourceVersion:
        claims and settings do not count)."""
        return [_op(REVISION_KEY, "")] if txn.events else []

    def _commit_split(self, txn: _Txn) -> dict[str, int]:
        """Commit writes too big for one etcd txn in chunks; roll back on a failed chunk.
        Returns the revision each key was written at (its chunk's).

        etcd takes at most CHUNK_OPS compares and CHUNK_OPS ops per txn, the fence's compare
        among them. A chunk compares its own keys; the keys only read are compared in the
        chunks' room left over and, what does not fit there, in compare-only txns before
        the first chunk writes: every key read is checked (the first chunk alone took as
        many as fitted, and the rest went unchecked), and a fenced store's chunk no longer
        asks one compare too many."""
        fence = self._fence_compares()
        room = CHUNK_OPS - len(fence)               # compares a txn has for our keys
        per_chunk = min(CHUNK_OPS - 1, room)        # written keys per chunk (+ the marker op)

        def compare(k: str) -> dict[str, Any]:
            return {"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": txn.compares[k]}
        chunks: list[list[str]] = []
        size = 0
        for key in txn.writes:
            value = txn.writes[key][0] or ""
            if not chunks or len(chunks[-1]) >= per_chunk or size + len(key) + len(value) > CHUNK_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(key)
            size += len(key) + len(value) + 64
        read_only = [k for k in txn.compares if k not in txn.writes]
        guards = []
        for chunk in chunks:
            guards.append([k for k in chunk if k in txn.compares] + read_only[:room - len(chunk)])
            read_only = read_only[room - len(chunk):]
        for i in range(0, len(read_only), room):    # what the chunks had no room for
            if not self.client.txn([compare(k) for k in read_only[i:i + room]] + fence, []).get("succeeded"):
                self._check_fence()
                raise self._conflict(txn)
        done: list[tuple[list[str], int]] = []
        for chunk, guard in zip(chunks, guards):
            resp = self.client.txn([compare(k) for k in guard] + fence,
                                   [_op(k, txn.writes[k][0]) for k in chunk] + self._marker(txn))
            if not resp.get("succeeded"):
                self._rollback(txn, done)
                self._check_fence()
                raise self._conflict(txn)
            done.append((chunk, int(resp["header"]["revision"])))
        return {key: revision for chunk, revision in done for key in chunk}

    def _rollback(self, txn: _Txn, done: list[tuple[list[str], int]]) -> None:
        """Undo committed chunks, newest first: each chunk in one txn guarded by "still at the
        revision we wrote"; if someone changed a key since, key by key, leaving theirs."""
        for chunk, revision in reversed(done):
            def guard(keys: list[str]) -> list[dict[str, Any]]:
                return [{"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": revision} for k in keys]
            undo = [_op(k, txn.previous.get(k)) for k in chunk] + [_op(REVISION_KEY, "")]
            if not self.client.txn(guard(chunk), undo).get("succeeded"):
                for key in chunk:
                    self.client.txn(guard([key]), [_op(key, txn.previous.get(key)), _op(REVISION_KEY, "")])

    def _conflict(self, txn: _Txn) -> CommitConflict:
        """The error naming the first key whose compare failed."""
        for key, rv in txn.compares.items():
            resp = self.client.range(key)
            kvs = resp.get("kvs") or []
            if (int(kvs[0]["mod_revision"]) if kvs else 0) != rv:
                parsed = parse_object_key(key)
                if parsed is not None:
                    return CommitConflict(parsed[0].RESOURCE, parsed[2])
                return CommitConflict(key.rsplit("/", 2)[-2], key.rsplit("/", 1)[-1])
        return CommitConflict("keys", "(unknown)")

    # ---------------------------------------------------------------- reads
    def current_resource_version(self) -> int:
        """Linearizable (a read) — except in a process that follows the feed while it is
        live: the newest store revision this object has seen, read or pushed, with no round
        trip. changes_since then serves everything up to at least that revision."""
        with self._lock:
            if self._txn is not None:
                self._pin(self._txn)
                return self._txn.provisional
        return self._known_revision()

    def _known_revision(self) -> int:
        feed = self._feed
        if feed is not None and not feed.stale(FEED_QUIET_S):
            return max(self._observed, feed.store_revision)
        return self._revisions()[1]

    def get(self, cls: type[T], namespace: str, name: str) -> T:
        obj = self.try_get(cls, namespace, name)
        if obj is None:
            raise NotFound(cls.RESOURCE, name)
        return obj

    def try_get(self, cls: type[T], namespace: str, name: str) -> T | None:
        with self._lock:
            value, rv = self._read(object_key(cls, self._ns(cls, namespace), name))
        if value is None:
            return None
        return cls.from_dict(_with_version(json.loads(value), rv))

    def list(self, cls: type[T], namespace: str | None = None, selector: Selector | None = None) -> list[T]:
        return self.list_with_version(cls, namespace, selector).items  # type: ignore[return-value]

    def _rows(self, cls: type[ApiObject], namespace: str | None) -> tuple[list[tuple[str, str, int]], int]:
        """The objects of a kind (sorted by namespace, name) and the store's resourceVersion
        they were read at, in one consistent read."""
        with self._lock:
            if self._txn is not None:
                rows, rv = self._range(kind_prefix(cls, namespace)), self._txn.provisional
            else:
                resp = self.client.txn([], [
                    {"request_range": {"key": b64(REVISION_KEY)}},
                    {"request_range": {"key": b64(kind_prefix(cls, namespace)),
                                       "range_end": b64(prefix_end(kind_prefix(cls, namespace)))}}])
                marker, objects = (r["response_range"] for r in resp["responses"])
                rv = int(marker["kvs"][0]["mod_revision"]) if marker.get("kvs") else 0
                self._observed = max(self._observed, rv)
                rows = [(unb64(kv["key"]), unb64(kv.get("value", "")), int(kv["mod_revision"]))
                        for kv in objects.get("kvs") or []]
        keyed = []
        for key, value, mod in rows:
            parsed = parse_object_key(key)
            if parsed is not None and parsed[0] is cls:
                keyed.append(((parsed[1], parsed[2]), key, value, mod))
        keyed.sort(key=lambda row: row[0])
        return [(key, value, mod) for _, key, value, mod in keyed], rv

    def list_with_version(self, cls: type[ApiObject], namespace: str | None = None,
                          selector: Selector | None = None) -> ObjectList:
        if selector is not None and selector.match_nothing:
            return ObjectList([], self.current_resource_version())
        rows, rv = self._rows(cls, namespace)
        from_dict = cls.from_dict
        with paused_gc():
            items = [from_dict(_with_version(json.loads(value), mod)) for _, value, mod in rows]
        if selector is not None and not selector.empty:
            items = [obj for obj in items if selector.matches(obj.labels)]
        return ObjectList(items, rv)

    def iter_documents(self, cls: type[ApiObject], namespace: str | None = None) -> Iterator[dict[str, Any]]:
        rows, _ = self._rows(cls, namespace)
        return (_with_version(json.loads(value), mod) for _, value, mod in rows)

    def index_entries(self, cls: type[ApiObject], index: str, namespace: str | None = None,
                      key: str | None = None, value: str | None = None) -> list[IndexEntry]:
        """Computed from the kind's objects (etcd keeps no secondary indexes): costs a read of
        the kind in the namespace, as the apiserver's own label selection does without its
        watch cache."""
        if value is not None and key is None:
            raise ValueError("index_entries: a value needs a key")
        out = []
        for doc in self.iter_documents(cls, namespace if cls.NAMESPACED else None):
            meta = doc.get("metadata") or {}
            for field_name, k, v in indexes.entries(cls.KIND, doc):
                if field_name == index and (key is None or k == key) and (value is None or v == value):
                    out.append(IndexEntry(meta.get("namespace") or "", meta.get("name") or "", k, v))
        return sorted(out, key=lambda e: (e.key, e.value, e.namespace, e.name))

    _ns = staticmethod(stored_namespace)

    # ---------------------------------------------------------------- writes
    def _record(self, event: str, obj: ApiObject, rv: int, previous_labels: dict[str, str] | None,
                data: str) -> None:
        assert self._txn is not None
        self._txn.events.append(_PendingEvent(event, type(obj), data, rv, previous_labels))
        self._txn.written.append(obj)

    def create(self, obj: T) -> T:
        place(obj, creating=True)
        with self.transaction():
            key = object_key(type(obj), obj.namespace, obj.name)
            if self._read(key)[0] is not None:
                raise AlreadyExists(obj.RESOURCE, obj.name)
            obj.metadata.uid = str(uuid.uuid4())
            obj.metadata.creation_timestamp = obj.metadata.creation_timestamp or format_timestamp(now())
            data = _dumps(_document(obj))
            rv = self._write(key, data)
            obj.metadata.resource_version = str(rv)
            self._record(ADDED, obj, rv, None, data)
        return obj

    def update(self, obj: T) -> T:
        place(obj, creating=False)
        with self.transaction():
            key = object_key(type(obj), obj.namespace, obj.name)
            stored, stored_rv = self._read(key)
            if stored is None:
                raise NotFound(obj.RESOURCE, obj.name)
            asked = obj.metadata.resource_version
            if asked and int(asked) != stored_rv:
                raise Conflict(obj.RESOURCE, obj.name)
            stored_doc = json.loads(stored)
            stored_meta = stored_doc.get("metadata") or {}
            obj.metadata.uid = stored_meta.get("uid")
            obj.metadata.creation_timestamp = stored_meta.get("creationTimestamp")
            data = _dumps(_document(obj))
            if data == stored:
                obj.metadata.resource_version = str(stored_rv)
                return obj  # no-op update: nothing written, no event
            rv = self._write(key, data)
            obj.metadata.resource_version = str(rv)
            self._record(MODIFIED, obj, rv, dict(stored_meta.get("labels") or {}), data)
        return obj

    def delete(self, cls: type[T], namespace: str, name: str, resource_version: int | None = None) -> T:
        with self.transaction():
            key = object_key(cls, self._ns(cls, namespace), name)
            stored, stored_rv = self._read(key)
            if stored is None:
                raise NotFound(cls.RESOURCE, name)
            if resource_version is not None and resource_version != stored_rv:
                raise Conflict(cls.RESOURCE, name)
            obj = cls.from_dict(json.loads(stored))
            rv = self._write(key, None)
            obj.metadata.resource_version = str(rv)
            self._record(DELETED, obj, rv, dict(obj.labels), stored)
        return obj

    # ---------------------------------------------------------------- claims and settings
    def claim(self, pool: str, value: str, owner: str) -> bool:
        with self.transaction():
            current = self.claim_owner(pool, value)
            if current is not None:
                return current == owner
            self._write(f"{CLAIMS_PREFIX}{pool}/{value}", owner)
            return True

    def release(self, pool: str, value: str) -> None:
        with self.transaction():
            if self.claim_owner(pool, value) is not None:
                self._write(f"{CLAIMS_PREFIX}{pool}/{value}", None)

    def claim_owner(self, pool: str, value: str) -> str | None:
        with self._lock:
            return self._read(f"{CLAIMS_PREFIX}{pool}/{value}")[0]

    def claims(self, pool: str) -> dict[str, str]:
        prefix = f"{CLAIMS_PREFIX}{pool}/"
        with self._lock:
            return {key[len(prefix):]: owner for key, owner, _ in self._range(prefix)}

    def get_setting(self, key: str) -> str | None:
        with self._lock:
            return self._read(SETTINGS_PREFIX + key)[0]

    def put_setting(self, key: str, value: str) -> None:
        with self.transaction():
            self._write(SETTINGS_PREFIX + key, value)

    # ---------------------------------------------------------------- change feed
    def compact(self, revision: int | None = None) -> int:
        """Compact etcd's history up to `revision` (default: now); returns it. In production
        etcd's --auto-compaction-* flags do this; tests and operators may call it."""
        revision = revision or self._revisions()[0]
        self.client.compact(revision)
        return revision

    def _decode_event(self, ev: dict[str, Any], kinds: set[str] | None,
                      text_kinds: set[str]) -> WatchEvent | TextEvent | None:
        """One event of the watch, decoded; as a TextEvent for a kind in `text_kinds`."""
        kv = ev["kv"]
        parsed = parse_object_key(unb64(kv["key"]))
        if parsed is None or (kinds is not None and parsed[0].KIND not in kinds):
            return None
        cls = parsed[0]
        rv = int(kv["mod_revision"])
        prev = ev.get("prev_kv")
        prev_text = unb64(prev["value"]) if prev and prev.get("value") else None
        prev_doc = json.loads(prev_text) if prev_text is not None else None
        prev_labels = dict((prev_doc.get("metadata") or {}).get("labels") or {}) if prev_doc else None
        if ev.get("type") == "DELETE":
            if prev_text is None:
                # Its last state was compacted away (etcd watches from the compacted
                # revision itself but cannot give the state before it): the deletion
                # cannot be told, so the reader must relist, as for history gone.
                raise Gone(rv - 1, rv)
            etype, text = DELETED, prev_text
        else:
            etype, text = ADDED if int(kv.get("version", 1)) == 1 else MODIFIED, unb64(kv["value"])
            if etype == ADDED:
                prev_labels = None
        if cls.KIND in text_kinds:
            return TextEvent(etype, cls.KIND, text, rv, prev_labels)
        doc = prev_doc if etype == DELETED else json.loads(text)
        return WatchEvent(etype, cls.from_dict(_with_version(doc, rv)), rv, prev_labels)

    def _history(self, rv: int, until: int, kinds: set[str] | None, limit: int | None,
                 text_kinds: set[str]) -> list[WatchEvent | TextEvent]:
        """Committed events after `rv` up to store revision `until`, whole revisions only."""
        out: list[WatchEvent | TextEvent] = []
        with self.client.watch_after(PREFIX, prefix_end(PREFIX), rv, prev_kv=True) as stream:
            while True:
                resp = stream.next(self.client.timeout)
                if resp is None:
                    raise EtcdUnavailable("etcd watch sent nothing while replaying history")
                if resp.get("canceled"):
                    raise _cancelled(resp, rv)
                events = resp.get("events") or []
                for ev in events:
                    event_rv = int(ev["kv"]["mod_revision"])
                    if event_rv <= rv:
                        continue                  # the revision it resumes after (watch_after)
                    if event_rv > until:
                        return out
                    if limit is not None and len(out) >= limit and event_rv != out[-1].resource_version:
                        return out
                    decoded = self._decode_event(ev, kinds, text_kinds)
                    if decoded is not None:
                        out.append(decoded)
                if events and int(events[-1]["kv"]["mod_revision"]) >= until:
                    return out

    def changes_since(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
                      limit: int | None = None,
                      as_text: Iterable[type[ApiObject]] = ()) -> list[WatchEvent | TextEvent]:
        kind_names = {k.KIND for k in kinds} if kinds is not None else None
        text_kinds = {k.KIND for k in as_text}
        with self._lock:
            txn = self._txn
            if txn is not None:
                self._pin(txn)
            until = txn.base if txn is not None else self._known_revision()
            out = self._from_feed(resource_version, until, kind_names, limit, text_kinds) if txn is None else None
            if out is None:
                out = self._history(resource_version, until, kind_names, limit, text_kinds) \
                    if until > resource_version else []
            if txn is not None:   # the block's own writes follow, with provisional versions
                out += [e.event(text_kinds) for e in txn.events if e.resource_version > resource_version
                        and (kind_names is None or e.cls.KIND in kind_names)]
                if limit is not None:
                    out = out[:limit]
        return out

    def _from_feed(self, rv: int, until: int, kinds: set[str] | None, limit: int | None,
                   text_kinds: set[str]) -> list[WatchEvent | TextEvent] | None:
        """Events in (rv, until] from this process's long-lived watch, when it holds them
        all (it is given a moment to reach `until`, the newest revision this object knows)."""
        feed = self._feed
        if feed is None or until <= rv:
            return None if feed is None else []
        feed.wait(until - 1, self.client.timeout)
        raw = feed.events_since(rv, until)
        if raw is None:
            return None
        out: list[WatchEvent | TextEvent] = []
        for ev in raw:
            if limit is not None and len(out) >= limit and int(ev["kv"]["mod_revision"]) != out[-1].resource_version:
                break
            decoded = self._decode_event(ev, kinds, text_kinds)
            if decoded is not None:
                out.append(decoded)
        return out

    def _ensure_feed(self) -> EtcdFeed:
        if self._feed is None:
            revision, base = self._revisions()
            self._feed = EtcdFeed(self.client, PREFIX, prefix_end(PREFIX), REVISION_KEY, revision, base)
        return self._feed

    def wait_for_change(self, resource_version: int, timeout: float) -> int:
        """Wait on this process's long-lived watch (etcd pushes each commit to it). When it
        has heard nothing for FEED_QUIET_S (etcd gone, or cut off: a silent partition looks
        like an idle cluster), a read checks etcd: EtcdUnavailable if no member answers; a
        feed found behind is reconnected."""
        feed = self._ensure_feed()
        got = feed.wait(resource_version, max(timeout, 0.0))
        if got > resource_version:
            return got
        if feed.stale(FEED_QUIET_S):
            current = self._revisions()[1]
            if current > feed.store_revision:
                feed.restart()
            return max(current, got)
        return got

    def watch(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
              timeout: float | None = None, stop: Callable[[], bool] | None = None) -> Iterator[WatchEvent]:
        """Follow /registry/ from `resource_version`: reconnects (to the next member, with
        backoff) from the last revision seen, events or progress notifications; a compacted
        start raises Gone. Resume from a revision only after consuming all of its events
        (one etcd transaction is one revision)."""
        kind_names = {k.KIND for k in kinds} if kinds is not None else None
        rv = resource_version
        idle_since = time.monotonic()
        delay = 0.05
        while not (stop and stop()):
            try:
                stream = self.client.watch_after(PREFIX, prefix_end(PREFIX), rv, prev_kv=True,
                                                 progress_notify=True)
            except EtcdUnavailable:
                if timeout is not None and time.monotonic() - idle_since >= timeout:
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                while not (stop and stop()):
                    if timeout is not None and time.monotonic() - idle_since >= timeout:
                        return
                    resp = stream.next(0.05)
                    if resp is None:
                        continue
                    delay = 0.05
                    if resp.get("canceled"):
                        raise _cancelled(resp, rv)
                    events = resp.get("events") or []
                    for ev in events:
                        if int(ev["kv"]["mod_revision"]) <= rv:
                            continue              # the revision it resumes after (watch_after)
                        decoded = self._decode_event(ev, kind_names, set())
                        if decoded is not None:
                            idle_since = time.monotonic()
                            yield decoded
                    if events:
                        rv = max(rv, int(events[-1]["kv"]["mod_revision"]))
                    elif not resp.get("created") and "revision" in resp.get("header", {}):
                        # a progress notification: nothing under /registry/ before this revision
                        rv = max(rv, int(resp["header"]["revision"]))
            except WatchBroken:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                stream.close()


def _op(key: str, value: str | None) -> dict[str, Any]:
    if value is None:
        return {"request_delete_range": {"key": b64(key)}}
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def _cancelled(resp: dict[str, Any], rv: int) -> Exception:
    compacted = int(resp.get("compact_revision") or 0)
    if compacted:
        return Gone(rv, compacted)
    return EtcdUnavailable(f"etcd cancelled the watch: {resp.get('cancel_reason') or 'no reason given'}")
