"""The store seam: what the registry, the controllers, the CLI and the agent may rely on.

`Store` is a Protocol; `SqliteStore` (store.sqlite) is the embedded implementation, and an
etcd- or Kubernetes-API-backed source can implement the same methods later.

Semantics, in Kubernetes terms:
- Objects are keyed by (kind, namespace, name); cluster-scoped kinds use namespace "".
- Every write takes the next value of one store-wide counter as the object's
  `metadata.resourceVersion`; `create` also sets `uid` and `creationTimestamp`.
- `update(obj)` is refused with api.errors.Conflict when `obj.metadata.resourceVersion` is
  set and is not the stored one (optimistic concurrency). An update that changes nothing is
  not written and does not produce an event.
- `transaction()` groups writes: all of them commit, or none (an exception inside the block
  rolls back). Reads inside the block see the block's own writes.
- The change feed: `changes_since(rv)` returns the ADDED / MODIFIED / DELETED events after
  resourceVersion `rv`, oldest first; `wait_for_change(rv, timeout)` blocks until the store's
  resourceVersion passes `rv`; `watch(rv)` iterates events forever (or until `stop()` or a
  timeout). History is compacted: asking for an rv older than the oldest kept raises
  api.errors.Gone, and the consumer relists (`list` returns the rv to resume from).
- `changes_since(rv, kinds, as_text=kinds)` hands the events of the kinds in `as_text` as
  TextEvents: the object's stored JSON, not decoded. A reader that wants a few fields of
  many objects (the agent: an EndpointSlice's backends) decodes them its own way, at a
  fraction of the cost of a whole object (see TextEvent).
- Every event carries `previous_labels`: the object's labels before the change (MODIFIED),
  or its last labels (DELETED), so a consumer can tell which label selectors it left.
- Indexes: `index_entries(cls, index, ...)` looks up (key, value) entries the store keeps
  for every object's labels (INDEX_LABELS; `list` with an equality selector uses it), a
  Service's `spec.selector` pairs (INDEX_SELECTOR) and a Pod's deletionTimestamp
  (INDEX_DELETION, key "") and ownerReferences uids (INDEX_OWNER, key ""). Lookups cost what they return, not the number of objects.
- Claims are small (pool, value) -> owner reservations the allocators use (cluster IPs,
  node ports). They commit together with the objects of the same transaction.
"""
from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from controlplane.api.errors import Conflict
from controlplane.api.meta import ApiObject
from controlplane.api.selectors import Selector

T = TypeVar("T", bound=ApiObject)
R = TypeVar("R")

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


INDEX_LABELS = "labels"                # every kind: metadata.labels
INDEX_SELECTOR = "selector"            # Service: spec.selector
INDEX_DELETION = "deletionTimestamp"   # Pod: metadata.deletionTimestamp (key "")
INDEX_OWNER = "owner"                  # Pod: metadata.ownerReferences[].uid (key "")


def stored_namespace(cls: type[ApiObject], namespace: str | None) -> str:
    """The namespace part of an object's key: "" for a cluster-scoped kind."""
    return (namespace or "") if cls.NAMESPACED else ""


def place(obj: ApiObject, creating: bool) -> None:
    """Before `obj` is written: a namespaced object being created must name its namespace
    (ValueError naming the object); a cluster-scoped one is kept with none."""
    if creating and obj.NAMESPACED and not obj.metadata.namespace:
        raise ValueError(f"{obj.KIND} {obj.name!r}: namespace required")
    if not obj.NAMESPACED:
        obj.metadata.namespace = None


@dataclass(frozen=True)
class WatchEvent:
    type: str                 # ADDED | MODIFIED | DELETED
    object: ApiObject         # the object after the change (for DELETED: its last state)
    resource_version: int     # the store resourceVersion of this change
    # labels before the change (MODIFIED), the last labels (DELETED); None for ADDED, and
    # for changes recorded by a store that did not keep them
    previous_labels: dict[str, str] | None = None


@dataclass(frozen=True)
class TextEvent:
    """A WatchEvent whose object is left as the store holds it: its JSON text (for DELETED,
    its last state). Asked for with changes_since(..., as_text=...). Why: a 3-node etcd lab
    taking 10,000 services x 10 endpoints spent half of its agents' CPU decoding slices into
    whole objects, of which the agent keeps only the backends; read from the text with
    service_view's typed decoder, a slice costs about a fifth of that."""
    type: str                 # ADDED | MODIFIED | DELETED
    kind: str                 # the object's KIND
    text: str                 # its JSON document, as stored (the store's resourceVersion may be absent)
    resource_version: int
    previous_labels: dict[str, str] | None = None


@dataclass(frozen=True)
class IndexEntry:
    namespace: str
    name: str
    key: str
    value: str


@dataclass(frozen=True)
class ObjectList:
    items: list[ApiObject]
    resource_version: int     # watch from here to see every later change


class CommitConflict(Conflict):
    """A transaction's reads went stale before it could commit (another writer won the race):
    nothing was written; the whole operation may be run again (`retry_commit`)."""


def retry_commit(fn: Callable[[], R], attempts: int = 20) -> R:
    """Run `fn` (which opens its own transaction) again while it loses commit races."""
    for attempt in range(attempts):
        try:
            return fn()
        except CommitConflict:
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))   # de-synchronise the racers
    raise AssertionError("unreachable")


class StoreUnavailable(Exception):
    """The store cannot be opened (missing permissions, bad path, corrupt file)."""


class StoreReader(Protocol):
    def get(self, cls: type[T], namespace: str, name: str) -> T:
        """The object, or api.errors.NotFound."""

    def try_get(self, cls: type[T], namespace: str, name: str) -> T | None: ...

    def list(self, cls: type[T], namespace: str | None = None,
             selector: Selector | None = None) -> list[T]:
        """Objects of a kind, sorted by (namespace, name). namespace=None means all."""

    def list_with_version(self, cls: type[ApiObject], namespace: str | None = None,
                          selector: Selector | None = None) -> ObjectList: ...

    def iter_documents(self, cls: type[ApiObject], namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """The stored JSON documents of a kind, undecoded, sorted by (namespace, name).
        (SqliteStore also has `iter_json`, the same documents as unparsed text, outside this
        protocol: bulk readers such as service_view.read_slices use it where present.)"""

    def current_resource_version(self) -> int: ...

    def index_entries(self, cls: type[ApiObject], index: str, namespace: str | None = None,
                      key: str | None = None, value: str | None = None) -> list[IndexEntry]:
        """Entries of `index` for objects of a kind, optionally only those with this `key`
        (and `value`) in this namespace; sorted by (key, value, namespace, name)."""


class StoreWriter(StoreReader, Protocol):
    def create(self, obj: T) -> T:
        """Insert; api.errors.AlreadyExists if the key is taken. Returns the stored copy."""

    def update(self, obj: T) -> T:
        """Replace; NotFound if missing, Conflict on a stale resourceVersion."""

    def delete(self, cls: type[T], namespace: str, name: str,
               resource_version: int | None = None) -> T:
        """Remove and return the last state; NotFound if missing, Conflict if the
        precondition resourceVersion is given and stale."""

    def claim(self, pool: str, value: str, owner: str) -> bool:
        """Reserve `value` in `pool` for `owner`; False if someone else holds it
        (True if `owner` already holds it)."""

    def release(self, pool: str, value: str) -> None: ...

    def claim_owner(self, pool: str, value: str) -> str | None: ...

    def claims(self, pool: str) -> dict[str, str]:
        """All reservations of a pool: value -> owner."""

    def get_setting(self, key: str) -> str | None: ...

    def put_setting(self, key: str, value: str) -> None: ...


class Store(StoreWriter, Protocol):
    def transaction(self) -> AbstractContextManager[StoreWriter]:
        """All-or-nothing group of writes (nested calls join the outer transaction)."""

    def changes_since(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
                      limit: int | None = None,
                      as_text: Iterable[type[ApiObject]] = ()) -> list[WatchEvent | TextEvent]: ...

    def wait_for_change(self, resource_version: int, timeout: float) -> int:
        """Block until the store's resourceVersion exceeds `resource_version` or `timeout`
        seconds pass; returns the current resourceVersion."""

    def watch(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
              timeout: float | None = None, stop: Callable[[], bool] | None = None) -> Iterator[WatchEvent]:
        """Follow the change feed from `resource_version`. Ends when `stop()` returns True or
        no event arrived for `timeout` seconds (never, if timeout is None)."""

    def close(self) -> None: ...
