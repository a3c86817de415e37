"""SqliteStore: the embedded store, one SQLite file in WAL mode.

Tables: `objects` (one row per object: kind, namespace, name, uid, rv, labels JSON, object
JSON), `changes` (the change feed: one row per write, keyed by resourceVersion, with the
labels before the write), `field_index` (label and field index entries, see store.indexes),
`claims` (allocator reservations) and `meta` (the resourceVersion counter, the compaction
mark and settings). Writes run in `BEGIN IMMEDIATE` transactions with a busy timeout, so several
processes can write to the same file safely; readers never block writers (WAL).

One SqliteStore object may be shared by threads (a lock serialises its connection), but a
follower thread that blocks in `watch` is best given its own `SqliteStore(path)`.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from controlplane.api.errors import AlreadyExists, Conflict, Gone, NotFound
from controlplane.api.kinds import kind_class
from controlplane.api.meta import ApiObject, format_timestamp, now
from controlplane.api.selectors import EQUALS, IN, Requirement, Selector

from . import indexes
from .filewatch import FileWatch
from controlplane import gcpause
from controlplane.gcpause import paused_gc
from .interface import (ADDED, DELETED, INDEX_LABELS, MODIFIED, IndexEntry, ObjectList, StoreUnavailable,
                        TextEvent, WatchEvent, place, stored_namespace)

T = TypeVar("T", bound=ApiObject)

# A stored object is a JSON document of about 0.5-2 KB (an EndpointSlice of 10 endpoints:
# ~1.1 KB). In `objects`, a table WITHOUT ROWID, a row larger than about a quarter of
# a 4 KiB page spills into an overflow page: a bulk read of 10,000 slices then cost
# ~11,000 page reads (~45 ms) and the file held half its pages as overflow. With 16 KiB
# pages such a row stays in its leaf: ~15 ms, and the file half the size.
PAGE_SIZE = 16384

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    uid TEXT NOT NULL, rv INTEGER NOT NULL, labels TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    rv INTEGER PRIMARY KEY, type TEXT NOT NULL, kind TEXT NOT NULL,
    namespace TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, prev_labels TEXT);
CREATE TABLE IF NOT EXISTS claims (
    pool TEXT NOT NULL, value TEXT NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY (pool, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('rv', '0'), ('compacted', '0');
""" + indexes.SCHEMA + ";"

DEFAULT_HISTORY = 100_000

# Waiting for a change: every committing writer touches a marker file next to the
# database after its commit, and waiters block on inotify for that (store.filewatch): one
# wake-up per commit, when the change is already visible, and no work at all while
# nothing changes. Where there is no marker (a read-only directory) or no inotify,
# waiters poll, from poll_interval backing off to POLL_MAX_S while nothing changes.
CHANGED_SUFFIX = "-changed"
POLL_MAX_S = 0.05


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class _Transaction:
    """Context manager for SqliteStore.transaction(); nested uses join the outer one."""

    def __init__(self, store: "SqliteStore") -> None:
        self.store = store
        self.outer = False

    def __enter__(self) -> "SqliteStore":
        store = self.store
        store._lock.acquire()
        if store._depth == 0:
            try:   # (another process holding the write lock past the busy timeout)
                store._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                store._lock.release()   # no __exit__ follows a failed __enter__
                raise
            try:
                store._rv = store._start_rv = int(store._meta("rv"))
            except BaseException:
                store._conn.execute("ROLLBACK")
                store._lock.release()
                raise
            self.outer = True
            gcpause.pause()   # a transaction is bulk work; resumed in __exit__
        store._depth += 1
        return store

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        store = self.store
        try:
            store._depth -= 1
            if not self.outer:
                return
            changed = False
            if exc_type is not None:
                store._conn.execute("ROLLBACK")
            else:
                try:
                    if store._rv != store._start_rv:
                        changed = True
                        store._conn.execute("UPDATE meta SET value=? WHERE key='rv'", (str(store._rv),))
                        store._maybe_compact()
                    store._conn.execute("COMMIT")
                except BaseException:
                    store._conn.execute("ROLLBACK")
                    raise
            store._rv = store._start_rv = None
            if changed:
                store._announce_change()
        finally:
            if self.outer:
                gcpause.resume()
            store._lock.release()


class SqliteStore:
    """The embedded Store implementation (see store.interface for the contract)."""

    def __init__(self, path: str | Path, history: int = DEFAULT_HISTORY, poll_interval: float = 0.001,
                 busy_timeout_s: float = 30.0) -> None:
        self.path = str(Path(path).resolve())
        self.history = history
        self.poll_interval = poll_interval
        self.busy_timeout_s = busy_timeout_s   # how long a statement waits for another process's lock
        self._lock = threading.RLock()
        self._depth = 0
        self._rv: int | None = None
        self._start_rv: int | None = None
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            # Before WAL, so a new file is made with it (an existing one keeps its size).
            self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in SCHEMA.strip().split(";"):
                        if stmt.strip():
                            self._conn.execute(stmt)
                    self._migrate()
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open store {self.path}: {exc}") from exc
        self._changed_path = self.path + CHANGED_SUFFIX
        self._watch_local = threading.local()
        self._watches: list[FileWatch] = []
        self._announce_change()   # creates the marker file if it is missing

    def _announce_change(self) -> None:
        """Touch the marker file: waiters in every process wake up (see wait_for_change)."""
        try:
            os.utime(self._changed_path)
        except FileNotFoundError:
            try:
                Path(self._changed_path).touch()
            except OSError:
                pass   # a read-only directory: waiters still see the WAL being written
        except OSError:
            pass

    # ---------------------------------------------------------------- plumbing
    def _migrate(self) -> None:
        """Bring a store made by an earlier version up to this schema (inside BEGIN)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(changes)")}
        if "prev_labels" not in columns:
            self._conn.execute("ALTER TABLE changes ADD COLUMN prev_labels TEXT")
        if self._conn.execute("SELECT 1 FROM meta WHERE key='field_index'").fetchone() is None:
            for stmt in indexes.backfill_sql():
                self._conn.execute(stmt)
            self._conn.execute("INSERT INTO meta (key, value) VALUES ('field_index', '1')")

    def reopen(self) -> "SqliteStore":
        """A second handle (own connection) on the same file, e.g. for a watcher thread."""
        return SqliteStore(self.path, self.history, self.poll_interval, self.busy_timeout_s)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            for watch in self._watches:
                watch.close()
            self._watches.clear()

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Hold the lock and one read transaction: every statement inside sees the same
        state of the file, whatever other processes commit meanwhile (WAL). Inside a
        write transaction the reads already share one."""
        with self._lock:
            own = self._depth == 0
            if own:
                self._conn.execute("BEGIN")
            try:
                yield
            finally:
                if own:
                    self._conn.execute("COMMIT")

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else "0"

    def _next_rv(self) -> int:
        assert self._rv is not None, "writes must run inside a transaction"
        self._rv += 1
        return self._rv

    def _maybe_compact(self) -> None:
        assert self._rv is not None
        compacted = int(self._meta("compacted"))
        if self._rv - compacted > self.history + max(1, self.history // 10):
            mark = self._rv - self.history
            self._conn.execute("DELETE FROM changes WHERE rv <= ?", (mark,))
            self._conn.execute("UPDATE meta SET value=? WHERE key='compacted'", (str(mark),))

    _ns = staticmethod(stored_namespace)

    @staticmethod
    def _decode(kind: str, data: str) -> ApiObject:
        return kind_class(kind).from_dict(json.loads(data))

    def _record(self, event: str, obj: ApiObject, rv: int, data: str, prev_labels: str | None) -> None:
        self._conn.execute(
            "INSERT INTO changes (rv, type, kind, namespace, name, data, prev_labels) VALUES (?,?,?,?,?,?,?)",
            (rv, event, obj.KIND, obj.namespace, obj.name, data, prev_labels),
        )

    def _reindex(self, kind: str, ns: str, name: str, old: set[indexes.Entry], new: set[indexes.Entry]) -> None:
        gone, added = old - new, new - old
        if gone:
            self._conn.executemany(
                "DELETE FROM field_index WHERE kind=? AND field=? AND key=? AND value=? AND namespace=? AND name=?",
                [(kind, f, k, v, ns, name) for f, k, v in gone])
        if added:
            self._conn.executemany(
                "INSERT OR IGNORE INTO field_index (kind, field, key, value, namespace, name) VALUES (?,?,?,?,?,?)",
                [(kind, f, k, v, ns, name) for f, k, v in added])

    # ---------------------------------------------------------------- reads
    def current_resource_version(self) -> int:
        with self._lock:
            if self._depth and self._rv is not None:
                return self._rv
            return int(self._meta("rv"))

    def get(self, cls: type[T], namespace: str, name: str) -> T:
        obj = self.try_get(cls, namespace, name)
        if obj is None:
            raise NotFound(cls.RESOURCE, name)
        return obj

    def try_get(self, cls: type[T], namespace: str, name: str) -> T | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT data FROM objects WHERE kind=? AND namespace=? AND name=?",
                (cls.KIND, self._ns(cls, namespace), name),
            ).fetchone()
        return None if row is None else cls.from_dict(json.loads(row[0]))

    def list(self, cls: type[T], namespace: str | None = None, selector: Selector | None = None) -> list[T]:
        return self.list_with_version(cls, namespace, selector).items  # type: ignore[return-value]

    def list_with_version(self, cls: type[ApiObject], namespace: str | None = None,
                          selector: Selector | None = None) -> ObjectList:
        if selector is not None and selector.match_nothing:
            return ObjectList([], self.current_resource_version())
        indexed = _indexed_requirement(selector)
        with self._snapshot():
            rv = self._rv if self._rv is not None else int(self._meta("rv"))
            if indexed is not None:  # seek the label index, then check the whole selector
                sql = ("SELECT o.labels, o.data FROM field_index f JOIN objects o "
                       "ON o.kind = f.kind AND o.namespace = f.namespace AND o.name = f.name "
                       "WHERE f.kind=? AND f.field=? AND f.key=? AND f.value=?")
                params: list[Any] = [cls.KIND, INDEX_LABELS, indexed.key, indexed.values[0]]
                if namespace is not None and cls.NAMESPACED:
                    sql += " AND f.namespace=?"
                    params.append(namespace)
                rows = self._conn.execute(sql + " ORDER BY f.namespace, f.name", params).fetchall()
            elif namespace is None or not cls.NAMESPACED:
                rows = self._conn.execute(
                    "SELECT labels, data FROM objects WHERE kind=? ORDER BY namespace, name", (cls.KIND,)
                ).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT labels, data FROM objects WHERE kind=? AND namespace=? ORDER BY name",
                    (cls.KIND, namespace),
                ).fetchall()
        loads = json.loads
        from_dict = cls.from_dict
        with paused_gc():
            if selector is None or selector.empty:
                items = [from_dict(loads(data)) for _, data in rows]
            else:
                items = [from_dict(loads(data)) for labels, data in rows if selector.matches(loads(labels))]
        return ObjectList(items, rv)

    def iter_documents(self, cls: type[ApiObject], namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """The stored JSON of every object of a kind, sorted by (namespace, name), undecoded:
        for bulk readers that need a few fields of many objects. The rows are read at once
        (one consistent snapshot); each document is parsed when the caller reaches it, so a
        reader that keeps only what it extracts never holds all of them. Each document is
        parsed afresh: the caller owns (and may change) it."""
        return map(json.loads, self.iter_json(cls, namespace))

    def iter_json(self, cls: type[ApiObject], namespace: str | None = None) -> list[str]:
        """The stored JSON text of every object of a kind, sorted by (namespace, name),
        unparsed: for a bulk reader with a decoder of its own that reads only the fields it
        needs (service_view's typed decoder). The same documents as `iter_documents`: the
        stored text carries the object's resourceVersion. Not part of the Store protocol
        (other stores hold no such text): readers check for it."""
        with self._lock:
            if namespace is None or not cls.NAMESPACED:
                rows = self._conn.execute(
                    "SELECT data FROM objects WHERE kind=? ORDER BY namespace, name", (cls.KIND,)).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT data FROM objects WHERE kind=? AND namespace=? ORDER BY name",
                    (cls.KIND, namespace)).fetchall()
        return [data for data, in rows]

    def index_entries(self, cls: type[ApiObject], index: str, namespace: str | None = None,
                      key: str | None = None, value: str | None = None) -> list[IndexEntry]:
        sql = "SELECT namespace, name, key, value FROM field_index WHERE kind=? AND field=?"
        params: list[Any] = [cls.KIND, index]
        if key is not None:
            sql += " AND key=?"
            params.append(key)
            if value is not None:
                sql += " AND value=?"
                params.append(value)
        elif value is not None:
            raise ValueError("index_entries: a value needs a key")
        if namespace is not None and cls.NAMESPACED:
            sql += " AND namespace=?"
            params.append(namespace)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY key, value, namespace, name", params).fetchall()
        return [IndexEntry(*row) for row in rows]

    # ---------------------------------------------------------------- writes
    def _serialize(self, obj: ApiObject, rv: int) -> tuple[str, dict[str, Any]]:
        obj.metadata.resource_version = str(rv)
        doc = obj.to_dict()
        return _dumps(doc), doc

    def create(self, obj: T) -> T:
        place(obj, creating=True)
        with self.transaction():
            ns = obj.namespace
            rv = self._next_rv()
            obj.metadata.uid = str(uuid.uuid4())
            obj.metadata.creation_timestamp = obj.metadata.creation_timestamp or format_timestamp(now())
            data, doc = self._serialize(obj, rv)
            try:
                self._conn.execute(
                    "INSERT INTO objects (kind, namespace, name, uid, rv, labels, data) VALUES (?,?,?,?,?,?,?)",
                    (obj.KIND, ns, obj.name, obj.metadata.uid, rv, _dumps(obj.labels), data),
                )
            except sqlite3.IntegrityError:
                self._rv = rv - 1
                raise AlreadyExists(obj.RESOURCE, obj.name) from None
            self._reindex(obj.KIND, ns, obj.name, set(), indexes.entries(obj.KIND, doc))
            self._record(ADDED, obj, rv, data, None)
        return obj

    def update(self, obj: T) -> T:
        place(obj, creating=False)
        with self.transaction():
            ns = obj.namespace
            row = self._conn.execute(
                "SELECT uid, rv, data FROM objects WHERE kind=? AND namespace=? AND name=?",
                (obj.KIND, ns, obj.name),
            ).fetchone()
            if row is None:
                raise NotFound(obj.RESOURCE, obj.name)
            uid, stored_rv, stored_data = row
            asked = obj.metadata.resource_version
            if asked and int(asked) != stored_rv:
                raise Conflict(obj.RESOURCE, obj.name)
            stored_doc = json.loads(stored_data)
            stored_meta = stored_doc["metadata"]
            obj.metadata.uid = uid
            obj.metadata.creation_timestamp = stored_meta.get("creationTimestamp")
            if self._serialize(obj, stored_rv)[0] == stored_data:
                return obj  # no-op update: nothing written, no event
            rv = self._next_rv()
            data, doc = self._serialize(obj, rv)
            self._conn.execute(
                "UPDATE objects SET rv=?, labels=?, data=? WHERE kind=? AND namespace=? AND name=?",
                (rv, _dumps(obj.labels), data, obj.KIND, ns, obj.name),
            )
            self._reindex(obj.KIND, ns, obj.name, indexes.entries(obj.KIND, stored_doc), indexes.entries(obj.KIND, doc))
            self._record(MODIFIED, obj, rv, data, _dumps(stored_meta.get("labels") or {}))
        return obj

    def delete(self, cls: type[T], namespace: str, name: str, resource_version: int | None = None) -> T:
        ns = self._ns(cls, namespace)
        with self.transaction():
            row = self._conn.execute(
                "SELECT rv, data FROM objects WHERE kind=? AND namespace=? AND name=?", (cls.KIND, ns, name)
            ).fetchone()
            if row is None:
                raise NotFound(cls.RESOURCE, name)
            if resource_version is not None and resource_version != row[0]:
                raise Conflict(cls.RESOURCE, name)
            stored_doc = json.loads(row[1])
            old_entries = indexes.entries(cls.KIND, stored_doc)
            obj = cls.from_dict(stored_doc)
            rv = self._next_rv()
            data, _ = self._serialize(obj, rv)
            self._conn.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (cls.KIND, ns, name))
            self._reindex(cls.KIND, ns, name, old_entries, set())
            self._record(DELETED, obj, rv, data, _dumps(obj.labels))
        return obj

    # ---------------------------------------------------------------- claims and settings
    def claim(self, pool: str, value: str, owner: str) -> bool:
        with self.transaction():
            current = self.claim_owner(pool, value)
            if current is not None:
                return current == owner
            self._conn.execute("INSERT INTO claims (pool, value, owner) VALUES (?,?,?)", (pool, value, owner))
            return True

    def release(self, pool: str, value: str) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM claims WHERE pool=? AND value=?", (pool, value))

    def claim_owner(self, pool: str, value: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT owner FROM claims WHERE pool=? AND value=?", (pool, value)).fetchone()
        return row[0] if row else None

    def claims(self, pool: str) -> dict[str, str]:
        with self._lock:
            rows = self._conn.execute("SELECT value, owner FROM claims WHERE pool=?", (pool,)).fetchall()
        return dict(rows)

    def get_setting(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", ("setting:" + key,)).fetchone()
        return row[0] if row else None

    def put_setting(self, key: str, value: str) -> None:
        with self.transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", ("setting:" + key, value))

    # ---------------------------------------------------------------- change feed
    def changes_since(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
                      limit: int | None = None,
                      as_text: Iterable[type[ApiObject]] = ()) -> list[WatchEvent | TextEvent]:
        kind_names = sorted({k.KIND for k in kinds}) if kinds is not None else None
        sql = "SELECT rv, type, kind, data, prev_labels FROM changes WHERE rv > ?"
        params: list[Any] = [resource_version]
        if kind_names is not None:
            sql += f" AND kind IN ({','.join('?' * len(kind_names))})"
            params.extend(kind_names)
        sql += " ORDER BY rv"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        # The mark and the rows from one snapshot: a compaction committed between two
        # separate reads would turn into a silent gap instead of Gone.
        with self._snapshot():
            compacted = int(self._meta("compacted"))
            if resource_version < compacted:
                raise Gone(resource_version, compacted)
            rows = self._conn.execute(sql, params).fetchall()
        text_kinds = {k.KIND for k in as_text}
        return [TextEvent(etype, kind, data, rv, None if prev is None else json.loads(prev)) if kind in text_kinds
                else WatchEvent(etype, self._decode(kind, data), rv, None if prev is None else json.loads(prev))
                for rv, etype, kind, data, prev in rows]

    def _change_watch(self) -> FileWatch | None:
        """This thread's inotify watch on the marker file, kept for the store's life:
        closing an inotify descriptor waits for an RCU grace period (milliseconds), too
        slow to pay on every wait. Events queued since the last wait only cause a re-read."""
        watch = getattr(self._watch_local, "watch", None)
        if watch is None and os.path.exists(self._changed_path):
            watch = FileWatch.open(os.path.dirname(self._changed_path), [os.path.basename(self._changed_path)])
            if watch is not None:
                self._watch_local.watch = watch
                with self._lock:
                    self._watches.append(watch)
        return watch

    def wait_for_change(self, resource_version: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        watch = self._change_watch()   # open before the first read: a later commit is queued
        poll = self.poll_interval
        while True:
            current = self.current_resource_version()
            remaining = deadline - time.monotonic()
            if current > resource_version or remaining <= 0:
                return current
            if watch is not None:
                watch.wait(remaining)
            else:
                time.sleep(min(poll, remaining))
                poll = min(poll * 2, POLL_MAX_S)

    def watch(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
              timeout: float | None = None, stop: Callable[[], bool] | None = None) -> Iterator[WatchEvent]:
        kinds = list(kinds) if kinds is not None else None
        rv = resource_version
        idle_since = time.monotonic()
        while not (stop and stop()):
            events = self.changes_since(rv, kinds, limit=1000)
            if events:
                for event in events:
                    yield event
                rv = events[-1].resource_version
                idle_since = time.monotonic()
                continue
            # Filtered-out changes still move the feed forward.
            current = self.current_resource_version()
            if kinds is not None and current > rv and not self.changes_since(rv, kinds, limit=1):
                rv = current
            if timeout is not None and time.monotonic() - idle_since >= timeout:
                return
            wait = 0.05 if timeout is None else max(0.0, min(0.05, timeout - (time.monotonic() - idle_since)))
            self.wait_for_change(rv, wait)


def _indexed_requirement(selector: Selector | None) -> Requirement | None:
    """The selector's first `key=value` requirement: `list` seeks the label index with it."""
    if selector is None:
        return None
    for req in selector.requirements:
        if req.operator in (EQUALS, IN) and len(req.values) == 1:
            return req
    return None
