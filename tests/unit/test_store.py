"""The Store protocol, against both implementations (SqliteStore and EtcdStore on a real etcd
started by the tests): CRUD, optimistic concurrency, transactions, change feed, durability,
two writers at once. SQLite- and etcd-only behaviour follows at the end."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from controlplane.api import AlreadyExists, Conflict, Gone, Namespace, NotFound, ObjectMeta, Selector, Service
from controlplane.api.endpoints import EndpointSlice
from controlplane.api.pod import Pod
from controlplane.store import ADDED, DELETED, MODIFIED, SqliteStore, open_store
from controlplane.store.etcd import EtcdStore
from controlplane.store.interface import StoreUnavailable, retry_commit


def svc(name: str, ns: str = "default", **labels: str) -> Service:
    return Service(metadata=ObjectMeta(name=name, namespace=ns, labels=labels or None))


@pytest.fixture
def store(any_store):
    return any_store


def test_create_sets_identity_and_rejects_duplicates(store: SqliteStore) -> None:
    created = store.create(svc("a"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.resource_version == store.current_resource_version() > 0
    assert store.get(Service, "default", "a").resource_version == created.resource_version
    with pytest.raises(AlreadyExists, match='services "a" already exists'):
        store.create(svc("a"))
    with pytest.raises(NotFound, match='services "b" not found'):
        store.get(Service, "default", "b")


def test_a_namespaced_object_needs_a_namespace_and_a_cluster_scoped_one_has_none(store: SqliteStore) -> None:
    rv = store.current_resource_version()
    with pytest.raises(ValueError, match="Service 'a': namespace required"):
        store.create(svc("a", ns=""))
    assert store.current_resource_version() == rv                  # nothing written
    team = store.create(Namespace(metadata=ObjectMeta(name="team", namespace="default")))
    assert team.metadata.namespace is None
    assert store.get(Namespace, "anything", "team").metadata.namespace is None
    team.metadata.namespace, team.metadata.labels = "default", {"a": "b"}
    assert store.update(team).metadata.namespace is None
    assert store.get(Namespace, "", "team").labels == {"a": "b"}


def test_list_by_namespace_and_label_selector(store: SqliteStore) -> None:
    store.create(svc("b", app="web"))
    store.create(svc("a", app="db"))
    store.create(svc("c", "other", app="web"))
    assert [s.name for s in store.list(Service, "default")] == ["a", "b"]
    assert [s.key for s in store.list(Service)] == ["default/a", "default/b", "other/c"]
    assert [s.key for s in store.list(Service, None, Selector.parse("app=web"))] == ["default/b", "other/c"]


def test_stale_update_is_a_conflict_and_noop_update_writes_nothing(store: SqliteStore) -> None:
    store.create(svc("a"))
    first = store.get(Service, "default", "a")
    second = store.get(Service, "default", "a")
    first.spec.selector = {"app": "a"}
    store.update(first)
    second.spec.selector = {"app": "b"}
    with pytest.raises(Conflict, match='Operation cannot be fulfilled on services "a": the object has been modified'):
        store.update(second)
    rv = store.current_resource_version()
    again = store.get(Service, "default", "a")
    assert store.update(again).resource_version == rv
    assert store.current_resource_version() == rv


def test_transaction_is_all_or_nothing(store: SqliteStore) -> None:
    rv = store.current_resource_version()
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.create(svc("a"))
            tx.create(svc("b"))
            assert tx.try_get(Service, "default", "a") is not None  # own writes are visible
            raise RuntimeError("boom")
    assert store.list(Service) == []
    assert store.current_resource_version() == rv
    assert store.changes_since(rv) == []


def test_a_transaction_pauses_the_collector_until_it_ends(store: SqliteStore) -> None:
    """A transaction is bulk work (a whole manifest, a controller's batch): the cyclic
    collector waits until the outermost block ends, committed or rolled back."""
    import gc
    assert gc.isenabled()
    with store.transaction() as tx:
        with tx.transaction():
            tx.create(svc("a"))
        assert not gc.isenabled()
        tx.create(svc("b"))
    assert gc.isenabled()
    with pytest.raises(AlreadyExists):
        with store.transaction() as tx:
            assert not gc.isenabled()
            tx.create(svc("a"))
    assert gc.isenabled()


def test_a_transaction_that_cannot_begin_leaves_the_store_to_other_threads_sqlite(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout fails the
    transaction's BEGIN; the store's own lock and the collector's pause are not left
    held by the thread that tried."""
    import gc
    import sqlite3
    store = SqliteStore(tmp_path / "locked.db", busy_timeout_s=0.1)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")   # another writer holds the write lock
    with pytest.raises((sqlite3.OperationalError, StoreUnavailable)):
        with store.transaction() as tx:
            tx.create(svc("a"))
    assert gc.isenabled()
    other.execute("ROLLBACK")
    other.close()
    created: list[Service] = []
    writer = threading.Thread(target=lambda: created.append(store.create(svc("b"))), daemon=True)
    writer.start()
    writer.join(10)
    assert created, "another thread could not write: the store's lock was left held"
    store.close()


def _a_history(store: SqliteStore, a: Service, change) -> None:
    """Service a created, changed by `change`, a Pod p created, a deleted: four events."""
    store.create(a)
    current = store.get(Service, "default", a.name)
    change(current)
    store.update(current)
    store.create(Pod(metadata=ObjectMeta(name="p", namespace="default")))
    store.delete(Service, "default", a.name)


def test_change_feed_reports_every_write_in_order(store: SqliteStore) -> None:
    rv0 = store.current_resource_version()
    _a_history(store, svc("a"), lambda s: setattr(s.spec, "selector", {"x": "y"}))
    events = store.changes_since(rv0)
    first = events[0].resource_version
    assert [(e.type, e.object.KIND, e.resource_version - first) for e in events] == [
        (ADDED, "Service", 0), (MODIFIED, "Service", 1), (ADDED, "Pod", 2), (DELETED, "Service", 3)]
    assert events[-1].object.spec.selector == {"x": "y"}  # the last state of a deleted object
    assert [e.type for e in store.changes_since(first + 1, kinds=[Service])] == [DELETED]
    assert store.current_resource_version() == events[-1].resource_version


def test_the_change_feed_hands_the_kinds_asked_as_text_undecoded(store: SqliteStore) -> None:
    """changes_since(..., as_text=kinds): those kinds' events as TextEvents (the object's
    stored JSON; a deleted one's last state), the others decoded, in the same order with
    the same types, versions and previous labels as the decoded feed. Read in each way a
    store serves the feed: from history, from a follower's long-lived watch, and inside a
    transaction (its own writes)."""
    import json

    from controlplane.store.interface import TextEvent

    def same(plain: list, texty: list) -> None:
        assert [(e.type, e.resource_version, e.previous_labels) for e in texty] == \
            [(e.type, e.resource_version, e.previous_labels) for e in plain]
        for p, t in zip(plain, texty):
            if p.object.KIND == "Pod":
                assert t == p
                continue
            assert isinstance(t, TextEvent) and t.kind == p.object.KIND == "Service"
            doc, want = json.loads(t.text), p.object.to_dict()
            doc["metadata"].pop("resourceVersion", None)
            want["metadata"].pop("resourceVersion", None)
            assert doc == want

    follower = store.reopen()
    rv0 = store.current_resource_version()
    follower.wait_for_change(rv0, 0.01)    # etcd: the follower's watch starts here
    _a_history(store, svc("a", app="one"), lambda a: setattr(a.metadata, "labels", {"app": "two"}))
    plain = store.changes_since(rv0)
    assert [e.type for e in plain] == [ADDED, MODIFIED, ADDED, DELETED]
    same(plain, store.changes_since(rv0, as_text=[Service]))
    assert follower.wait_for_change(rv0, 5) == plain[-1].resource_version
    same(plain, follower.changes_since(rv0, as_text=[Service]))
    follower.close()
    rv1 = store.current_resource_version()
    with store.transaction():
        store.create(svc("b", app="three"))
        store.create(Pod(metadata=ObjectMeta(name="q", namespace="default")))
        same(store.changes_since(rv1), store.changes_since(rv1, as_text=[Service]))


def test_watch_follows_writes_from_another_handle(store: SqliteStore) -> None:
    follower = store.reopen()
    got: list[str] = []
    done = threading.Event()
    rv0 = store.current_resource_version()

    def follow() -> None:
        for event in follower.watch(rv0, kinds=[Service], timeout=5):
            got.append(event.object.name)
            if len(got) == 2:
                done.set()
                return

    thread = threading.Thread(target=follow)
    thread.start()
    store.create(Pod(metadata=ObjectMeta(name="ignored", namespace="default")))
    store.create(svc("a"))
    store.create(svc("b"))
    assert done.wait(5)
    thread.join(5)
    assert got == ["a", "b"]
    follower.close()


def test_wait_for_change_returns_at_timeout_without_changes(store: SqliteStore) -> None:
    store.create(svc("a"))
    rv = store.current_resource_version()
    assert store.wait_for_change(rv, 0.05) == rv


def test_wait_for_change_wakes_on_a_write(store: SqliteStore) -> None:
    rv = store.current_resource_version()
    writer = store.reopen()
    timer = threading.Timer(0.2, lambda: writer.create(svc("late")))
    timer.start()
    assert store.wait_for_change(rv, 10) > rv
    timer.join()
    writer.close()


def test_compacted_history_is_gone_sqlite(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "small.db", history=10)
    for i in range(30):
        s.create(svc(f"s{i}"))
    with pytest.raises(Gone, match="too old resource version"):
        s.changes_since(0)
    assert s.changes_since(29)[0].resource_version == 30
    s.close()


def _slice(name: str, endpoints: int) -> EndpointSlice:
    return EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"10.244.1.{j}"], "conditions": {"ready": True}, "nodeName": f"node{j % 3}",
                       "targetRef": {"kind": "Pod", "name": f"web-{j}", "namespace": "default"}}
                      for j in range(endpoints)]})


def _overflow_pages(path: Path) -> int:
    with sqlite3.connect(path) as conn:   # SQLite's dbstat: every page of the table, by type
        return conn.execute("SELECT count(*) FROM dbstat WHERE name='objects' AND pagetype='overflow'").fetchone()[0]


def test_a_stored_object_stays_in_its_page_sqlite(tmp_path: Path) -> None:
    """A new store's pages hold an EndpointSlice of 10 and of 20 endpoints (~1.6 and ~3.1 KB
    of JSON) in the row itself: a bulk read of every slice reads no overflow pages (with
    4 KiB pages, one more page per slice). A store made with smaller pages keeps them."""
    s = SqliteStore(tmp_path / "new.db")
    s.create(_slice("ten", 10))
    s.create(_slice("twenty", 20))
    assert len(s.iter_json(EndpointSlice)[1]) > 3000
    s.close()
    assert _overflow_pages(tmp_path / "new.db") == 0
    with sqlite3.connect(tmp_path / "old.db") as conn:   # as an earlier version made it
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
    old = SqliteStore(tmp_path / "old.db")
    old.create(_slice("ten", 10))
    assert old.get(EndpointSlice, "default", "ten").endpoints[9].addresses == ["10.244.1.9"]
    old.close()
    assert _overflow_pages(tmp_path / "old.db") == 1


def test_data_survives_reopen(store: SqliteStore) -> None:
    store.create(svc("a"))
    store.claim("pool", "v", "owner")
    rv = store.current_resource_version()
    store.close()
    again = store.reopen()
    assert again.get(Service, "default", "a").name == "a"
    assert again.claims("pool") == {"v": "owner"}
    assert again.current_resource_version() == rv
    again.close()


def test_claims(store: SqliteStore) -> None:
    assert store.claim("p", "1", "a")
    assert store.claim("p", "1", "a")           # idempotent for the holder
    assert not store.claim("p", "1", "b")
    store.release("p", "1")
    assert store.claim("p", "1", "b")


def _open(location: str):
    return open_store(url=location) if location.startswith("etcd://") else SqliteStore(location)


def _increment(s) -> None:
    with s.transaction() as tx:  # read-modify-write: SQLite serialises it, etcd retries a lost race
        n = int(tx.get_setting("counter") or 0)
        tx.put_setting("counter", str(n + 1))


def _writer(location: str, prefix: str, count: int) -> None:
    s = _open(location)
    for i in range(count):
        s.create(svc(f"{prefix}-{i}"))
        retry_commit(lambda: _increment(s))
    s.close()


def _location(store) -> str:
    return store.url if isinstance(store, EtcdStore) else store.path


def test_two_processes_writing_at_once(store) -> None:
    rv = store.current_resource_version()
    ctx = multiprocessing.get_context("spawn")
    count = 20 if isinstance(store, EtcdStore) else 50   # etcd: every write is a network round trip
    procs = [ctx.Process(target=_writer, args=(_location(store), p, count)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(store.list(Service)) == 2 * count
    assert store.get_setting("counter") == str(2 * count)
    events = store.changes_since(rv)
    assert len(events) == 2 * count and all(e.type == ADDED for e in events)
    assert [e.resource_version for e in events] == sorted({e.resource_version for e in events})


def test_open_store_reports_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable, match="cannot create state directory"):
        open_store(blocker / "sub")
    assert open_store(tmp_path / "state").path.endswith("state/store.db")


def test_label_and_field_indexes_follow_writes(store: SqliteStore) -> None:
    from controlplane.store.interface import INDEX_DELETION, INDEX_LABELS, INDEX_SELECTOR
    web = svc("web", app="web")
    web.spec.selector = {"app": "web", "tier": "front"}
    store.create(web)
    store.create(svc("db", "other", app="web"))
    assert [(e.namespace, e.name) for e in store.index_entries(Service, INDEX_LABELS, key="app", value="web")] == [
        ("default", "web"), ("other", "db")]
    assert [e.name for e in store.index_entries(Service, INDEX_SELECTOR, "default", "tier", "front")] == ["web"]
    web = store.get(Service, "default", "web")
    web.spec.selector = {"app": "web2"}
    web.metadata.labels = {"app": "db"}
    store.update(web)
    assert [(e.key, e.value) for e in store.index_entries(Service, INDEX_SELECTOR, "default")] == [("app", "web2")]
    assert [s.key for s in store.list(Service, None, Selector.parse("app=web"))] == ["other/db"]
    assert [s.key for s in store.list(Service, None, Selector.parse("app=db,x!=y"))] == ["default/web"]
    store.delete(Service, "default", "web")
    assert store.index_entries(Service, INDEX_SELECTOR) == []
    pod = Pod(metadata=ObjectMeta(name="p", namespace="default"))
    store.create(pod)
    assert store.index_entries(Pod, INDEX_DELETION) == []
    pod = store.get(Pod, "default", "p")
    pod.metadata.deletion_timestamp = "2030-01-01T00:00:00Z"
    store.update(pod)
    assert [(e.name, e.value) for e in store.index_entries(Pod, INDEX_DELETION)] == [("p", "2030-01-01T00:00:00Z")]


def test_events_carry_the_labels_before_the_change(store: SqliteStore) -> None:
    rv0 = store.current_resource_version()
    store.create(svc("a", app="one"))
    a = store.get(Service, "default", "a")
    a.metadata.labels = {"app": "two"}
    store.update(a)
    store.delete(Service, "default", "a")
    assert [(e.type, e.previous_labels) for e in store.changes_since(rv0)] == [
        (ADDED, None), (MODIFIED, {"app": "one"}), (DELETED, {"app": "two"})]


def test_an_older_store_gets_its_index_built_on_open(tmp_path: Path) -> None:
    from controlplane.store.interface import INDEX_LABELS, INDEX_SELECTOR
    first = SqliteStore(tmp_path / "store.db")
    web = svc("web", app="web")
    web.spec.selector = {"app": "web"}
    first.create(web)
    first._conn.execute("DELETE FROM field_index")          # as made before the index existed
    first._conn.execute("DELETE FROM meta WHERE key='field_index'")
    first.close()
    again = SqliteStore(tmp_path / "store.db")
    assert [e.name for e in again.index_entries(Service, INDEX_LABELS, "default", "app", "web")] == ["web"]
    assert [e.name for e in again.index_entries(Service, INDEX_SELECTOR, "default", "app", "web")] == ["web"]
    again.close()


def test_pods_are_indexed_by_owner_uid(tmp_path: Path) -> None:
    from controlplane.api.meta import OwnerReference
    from controlplane.store.interface import INDEX_OWNER
    store = SqliteStore(tmp_path / "store.db")
    ref = OwnerReference(api_version="apps/v1", kind="Deployment", name="d", uid="uid-d", controller=True)
    store.create(Pod(metadata=ObjectMeta(name="p", namespace="default", owner_references=[ref])))
    assert [(e.name, e.value) for e in store.index_entries(Pod, INDEX_OWNER, "default", "", "uid-d")] == [("p", "uid-d")]
    store._conn.execute("DELETE FROM field_index")
    store._conn.execute("DELETE FROM meta WHERE key='field_index'")
    store.close()
    again = SqliteStore(tmp_path / "store.db")
    assert [e.name for e in again.index_entries(Pod, INDEX_OWNER, "default", "", "uid-d")] == ["p"]
    again.close()


def _compacting_writer(path: str, count: int) -> None:
    """Another process: `count` writes with a short history, so it compacts the feed."""
    s = SqliteStore(path, history=10)
    for i in range(count):
        s.create(svc(f"late-{i}"))
    s.close()


def test_a_compaction_between_the_feed_reads_is_gone_not_a_gap(tmp_path: Path) -> None:
    """The feed reads the compaction mark, then the rows. A writer in another process
    compacts right between those two statements (run from SQLite's statement hook of the
    reader's connection, so it happens exactly there): the reader must see either its
    snapshot from before (no gap) or Gone, never rows after a hole."""
    path = str(tmp_path / "feed.db")
    reader = SqliteStore(path, history=10)
    for i in range(8):
        reader.create(svc(f"early-{i}"))
    ctx = multiprocessing.get_context("spawn")
    fired: list[str] = []

    def between_the_reads(statement: str) -> None:
        if "FROM changes" in statement and not fired:
            fired.append(statement)
            writer = ctx.Process(target=_compacting_writer, args=(path, 30))
            writer.start()
            writer.join(60)
            assert writer.exitcode == 0

    reader._conn.set_trace_callback(between_the_reads)
    try:
        events = reader.changes_since(5)
    except Gone:
        events = None
    reader._conn.set_trace_callback(None)
    assert fired, "the compaction did not run between the reads"
    assert reader.current_resource_version() == 38
    if events is not None:   # the snapshot from before the compaction, complete
        assert [e.resource_version for e in events] == [6, 7, 8]
    with pytest.raises(Gone):
        reader.changes_since(8)
    reader.close()


def _one_write_later(path: str, delay_s: float) -> None:
    import time
    time.sleep(delay_s)
    s = SqliteStore(path)
    s.create(svc("from-another-process"))
    s.close()


def _count_reads(store: SqliteStore) -> list[str]:
    reads: list[str] = []
    store._conn.set_trace_callback(lambda sql: reads.append(sql) if "FROM meta" in sql else None)
    return reads


def test_an_idle_wait_reads_the_store_only_at_its_ends_sqlite(tmp_path: Path) -> None:
    """Waiting costs nothing while nothing changes: no polling of the database."""
    store = SqliteStore(tmp_path / "idle.db")
    reads = _count_reads(store)
    assert store.wait_for_change(0, 0.3) == 0
    store._conn.set_trace_callback(None)
    assert len(reads) <= 2, f"{len(reads)} reads of the store during an idle wait"
    store.close()


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_a_wait_wakes_up_on_a_write_from_another_process_sqlite(tmp_path: Path, monkeypatch, inotify: bool) -> None:
    import time

    from controlplane.store import sqlite as sqlite_store
    if not inotify:   # a kernel without inotify (or out of watches): the polling fallback
        monkeypatch.setattr(sqlite_store.FileWatch, "open", classmethod(lambda cls, *a: None))
    path = str(tmp_path / "w.db")
    waiter = SqliteStore(path)
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_one_write_later, args=(path, 0.2))
    writer.start()
    start = time.monotonic()
    assert waiter.wait_for_change(0, 60) == 1
    assert time.monotonic() - start < 30   # woken by the write, not by the timeout
    writer.join(30)
    waiter.close()
