"""EtcdStore on a real etcd: the Kubernetes key layout, resourceVersion = mod_revision, commit
races, transactions larger than etcd's limits, compaction -> Gone, a watch that survives an
etcd restart, allocations from two processes at once, and a watch opened on a frozen member
(bounded, failing over) whose stream, once open, has no timeout."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest

from controlplane.api import Conflict, Gone, ObjectMeta, Service
from controlplane.api.namespace import Namespace
from controlplane.controllers.allocators import POOL_NODE_PORTS, POOL_SERVICE_IPS
from controlplane.controllers.config import ClusterConfig
from controlplane.controllers.registry import Manifest, Registry
from controlplane.store.etcd import EtcdStore
from controlplane.store.etcd_client import EtcdClient, EtcdUnavailable, b64, parse_endpoints, unb64
from controlplane.store.interface import CommitConflict
from controlplane.store.paths import open_store
from tests.etcd_server import EtcdServer, free_port


def svc(name: str, ns: str = "default") -> Service:
    return Service(metadata=ObjectMeta(name=name, namespace=ns))


@pytest.fixture
def store(etcd_server: EtcdServer) -> EtcdStore:
    etcd_server.wipe()
    return etcd_server.store()


def test_objects_live_under_registry_with_mod_revision_as_version(store: EtcdStore) -> None:
    created = store.create(svc("web"))
    resp = store.client.range("/registry/services/default/web")
    kv = resp["kvs"][0]
    assert int(kv["mod_revision"]) == created.resource_version
    assert "resourceVersion" not in unb64(kv["value"])           # the revision is the version
    store.create(Namespace(metadata=ObjectMeta(name="team")))           # cluster-scoped: no namespace part
    assert store.client.range("/registry/namespaces/team")["kvs"]
    store.claim("serviceips", "10.96.0.10", "default/web")
    assert unb64(store.client.range("/registry/ranges/serviceips/10.96.0.10")["kvs"][0]["value"]) == "default/web"


def test_a_lost_commit_race_writes_nothing_and_names_the_object(store: EtcdStore) -> None:
    store.create(svc("a"))
    other = store.reopen()
    with pytest.raises(CommitConflict, match='services "a"'):
        with store.transaction() as tx:
            mine = tx.get(Service, "default", "a")
            theirs = other.get(Service, "default", "a")
            theirs.spec.selector = {"who": "them"}
            other.update(theirs)                      # commits first
            mine.spec.selector = {"who": "me"}
            tx.update(mine)
            tx.create(svc("b"))
    assert store.get(Service, "default", "a").spec.selector == {"who": "them"}
    assert store.try_get(Service, "default", "b") is None
    assert issubclass(CommitConflict, Conflict)


def test_a_transaction_over_etcds_limits_commits_in_chunks(store: EtcdStore) -> None:
    rv = store.current_resource_version()
    with store.transaction() as tx:                   # 300 objects: over --max-txn-ops (128)
        for i in range(300):
            tx.create(svc(f"s{i:03d}"))
    assert len(store.list(Service)) == 300
    assert len(store.changes_since(rv, kinds=[Service])) == 300


def test_a_split_commit_gives_each_object_its_own_revision(store: EtcdStore) -> None:
    """Each chunk is its own etcd revision: an object carries the one it was written at,
    so an update or a conditional delete with it is not a false conflict."""
    with store.transaction() as tx:
        made = [tx.create(svc(f"s{i:03d}")) for i in range(300)]
    assert len({m.resource_version for m in made}) > 1           # more than one chunk
    for m in (made[0], made[-1]):
        assert m.resource_version == store.get(Service, "default", m.name).resource_version
    made[0].spec.selector = {"app": "x"}
    store.update(made[0])
    store.delete(Service, "default", "s001", resource_version=int(made[1].resource_version))


def test_a_deletion_at_the_compacted_revision_is_gone_not_lost(store: EtcdStore) -> None:
    """etcd watches from the compacted revision itself, but an event there comes without
    the state before it: a deletion then cannot be told, so the reader must relist."""
    store.create(svc("web"))
    rv = store.current_resource_version()
    store.delete(Service, "default", "web")
    store.compact()                                          # to the deletion's revision
    with pytest.raises(Gone):
        store.reopen().changes_since(rv, [Service])
    with pytest.raises(Gone):
        next(store.watch(rv, timeout=5))


def test_a_split_commit_that_fails_late_is_rolled_back(store: EtcdStore) -> None:
    other = store.reopen()
    with pytest.raises(CommitConflict):
        with store.transaction() as tx:
            for i in range(300):
                tx.create(svc(f"s{i:03d}"))
            other.create(svc("s299"))                # taken meanwhile: the last chunk's compare fails
    assert [s.name for s in store.list(Service)] == ["s299"]


def test_a_split_commit_checks_every_key_it_read(store: EtcdStore) -> None:
    """A transaction over etcd's limits compared only as many of the keys it read but did
    not write as fitted its first chunk: one changed meanwhile past those was overwritten
    on a stale read, with no conflict."""
    for i in range(200):
        store.create(svc(f"r{i:03d}"))
    other = store.reopen()
    with pytest.raises(CommitConflict):
        with store.transaction() as tx:
            for i in range(200):
                tx.get(Service, "default", f"r{i:03d}")
            theirs = other.get(Service, "default", "r150")
            theirs.spec.selector = {"who": "them"}
            other.update(theirs)
            for i in range(150):                     # written in two chunks
                tx.create(svc(f"w{i:03d}"))
    assert not [s for s in store.list(Service) if s.name.startswith("w")]


def test_a_fenced_split_commit_stays_within_etcds_compare_limit(store: EtcdStore) -> None:
    """The leader's fence is one compare more in every txn: a split commit that also read a
    key it did not write asked for 129 compares in its first chunk, which etcd refuses
    (the leading controller manager then failed every reconcile after a large apply)."""
    store.create(svc("read-only"))
    key = "/svcxdp-test/leader"
    store.client.txn([], [{"request_put": {"key": b64(key), "value": b64("me")}}])
    store.fence(key, int(store.client.range(key)["kvs"][0]["create_revision"]))
    with store.transaction() as tx:
        tx.get(Service, "default", "read-only")
        for i in range(300):
            tx.create(svc(f"s{i:03d}"))
    assert len(store.list(Service)) == 301


def test_compacted_history_is_gone(store: EtcdStore) -> None:
    rv = store.current_resource_version()
    for i in range(3):
        store.create(svc(f"s{i}"))
    store.compact()
    with pytest.raises(Gone, match="too old resource version"):
        store.changes_since(rv)
    with pytest.raises(Gone):
        next(store.watch(rv, timeout=5))
    listed = store.list_with_version(Service)          # relist, then follow from its version
    store.create(svc("after"))
    assert [e.object.name for e in store.changes_since(listed.resource_version)] == ["after"]


def test_a_follower_reads_changes_from_its_long_lived_watch(store: EtcdStore) -> None:
    """After wait_for_change, changes come from the process's one watch (etcd pushes every
    commit to it): served even after etcd compacted them away, which a replay of etcd's
    history (one watch per call, as before) could not do."""
    follower = store.reopen()
    rv = follower.current_resource_version()
    assert follower.wait_for_change(rv, 0.1) == rv            # starts the feed; nothing new
    writer = store.reopen()
    waited: list[int] = []
    thread = threading.Thread(target=lambda: waited.append(follower.wait_for_change(rv, 10)))
    thread.start()
    created = writer.create(svc("pushed"))
    thread.join(10)
    assert waited == [created.resource_version]
    writer.create(svc("second"))
    writer.compact()
    events = follower.changes_since(rv, [Service])
    assert [(e.type, e.object.name) for e in events] == [("ADDED", "pushed"), ("ADDED", "second")]
    assert follower.changes_since(rv, [Service], limit=1)[0].object.name == "pushed"
    with pytest.raises(Gone):                                 # a process without the feed replays history
        writer.changes_since(rv, [Service])
    follower.close()


def test_a_feed_resuming_into_compacted_history_makes_the_follower_relist(store: EtcdStore) -> None:
    """A feed whose resume point was compacted (it was away) holds nothing older: asked for
    it, the store answers Gone and the agent relists."""
    from controlplane.store.etcd import PREFIX, REVISION_KEY
    from controlplane.store.etcd_client import prefix_end
    from controlplane.store.etcd_feed import EtcdFeed
    rv = store.current_resource_version()
    start = int(store.client.range("/")["header"]["revision"])
    store.create(svc("missed"))
    store.create(svc("missed-too"))
    store.compact()                                           # history before "missed-too" is gone
    follower = store.reopen()
    follower._feed = EtcdFeed(store.client, PREFIX, prefix_end(PREFIX), REVISION_KEY, start, rv)
    now = follower.wait_for_change(rv, 10)                    # the feed learnt the present
    assert now > rv
    with pytest.raises(Gone):
        follower.changes_since(rv, [Service])
    follower.create(svc("later"))
    assert [e.object.name for e in follower.changes_since(now, [Service])] == ["later"]
    follower.close()


def test_watch_resumes_after_etcd_restarts(tmp_path: Path) -> None:
    server = EtcdServer.start(tmp_path)
    try:
        store = server.store()
        rv = store.current_resource_version()
        got: list[str] = []
        done = threading.Event()

        def follow() -> None:
            for event in server.store().watch(rv, kinds=[Service], timeout=30):
                got.append(event.object.name)
                if len(got) == 2:
                    done.set()
                    return

        thread = threading.Thread(target=follow)
        thread.start()
        store.create(svc("before"))
        server.stop()                                 # the member goes away under the watcher
        server.launch()                               # same ports, same data
        store.create(svc("after"))
        assert done.wait(30)
        thread.join(5)
        assert got == ["before", "after"]
    finally:
        server.stop()


def _apply_many(url: str, prefix: str, count: int) -> None:
    registry = Registry(open_store(url=url))
    for i in range(count):
        registry.apply([Manifest({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": f"{prefix}-{i}", "namespace": "default"},
                                  "spec": {"type": "NodePort", "ports": [{"port": 80}]}})])


def test_two_processes_allocating_at_once_never_share_an_ip_or_port(store: EtcdStore,
                                                                     etcd_server: EtcdServer) -> None:
    # Ranges just big enough: without the commit's compares the two would collide at once.
    Registry(store, ClusterConfig(service_cidr="10.96.0.0/26", node_port_range="30000-30029"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_apply_many, args=(etcd_server.url, p, 15)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    services = [s for s in store.list(Service) if s.name != "kubernetes"]
    assert len(services) == 30
    ips = [s.spec.cluster_ip for s in services]
    ports = [p.node_port for s in services for p in s.spec.ports]
    assert len(set(ips)) == 30 and len(set(ports)) == 30
    ip_claims = store.claims(POOL_SERVICE_IPS)
    assert {ip_claims[ip] for ip in ips} == {s.key for s in services}
    assert set(store.claims(POOL_NODE_PORTS)) == {str(p) for p in ports}


def test_a_request_tries_every_member_even_past_its_deadline(etcd_server: EtcdServer) -> None:
    """A dead member first and no time left (a process paused mid-request comes back past
    its deadline): the request still fails over to the live member, and the watch too;
    with every member dead it gives up after trying each."""
    dead = f"127.0.0.1:{free_port()}"             # nothing listens there: refused at once
    live = etcd_server.url.removeprefix("etcd://")
    client = EtcdClient(parse_endpoints(f"etcd://{dead},{live}"), retry_for=0.0)
    assert "header" in client.range("/registry/")
    client = EtcdClient(parse_endpoints(f"etcd://{dead},{live}"), retry_for=0.0)
    with client.watch("/registry/", "/registry0", start_revision=0):
        pass
    with pytest.raises(EtcdUnavailable):
        EtcdClient(parse_endpoints(f"etcd://{dead},127.0.0.1:{free_port()}"), retry_for=0.0).range("/registry/")


def test_a_watch_on_a_frozen_member_gives_up_and_fails_over(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """A member stopped with SIGSTOP still completes TCP handshakes (the kernel does) but
    never answers: opening a watch on it ends after the client's timeout — on the next
    member when there is one, with EtcdUnavailable when there is not — never hangs."""
    frozen = EtcdServer.start(tmp_path)
    assert frozen.proc is not None
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        here = f"127.0.0.1:{frozen.client_port}"
        live = etcd_server.url.removeprefix("etcd://")
        outcome: list[object] = []

        def open_watch(url: str) -> None:
            client = EtcdClient(parse_endpoints(url), timeout=0.5, retry_for=0.0)
            try:
                with client.watch("/registry/", "/registry0", start_revision=0) as stream:
                    outcome.append(stream.next(5))
            except EtcdUnavailable as exc:
                outcome.append(exc)

        for url in (f"etcd://{here},{live}", f"etcd://{here}"):
            outcome.clear()
            thread = threading.Thread(target=open_watch, args=(url,), daemon=True)
            thread.start()
            thread.join(10)
            assert not thread.is_alive(), f"a watch through {url} still waits on the frozen member"
            if "," in url:
                assert isinstance(outcome[0], dict) and outcome[0].get("created")
            else:
                assert isinstance(outcome[0], EtcdUnavailable)
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
        frozen.stop()


def test_a_quiet_watch_stream_outlives_the_request_timeout(store: EtcdStore, etcd_server: EtcdServer) -> None:
    """The timeout that bounds opening a watch does not cut the stream: nothing happens for
    several timeouts, then a write still arrives on the same stream."""
    client = EtcdClient(parse_endpoints(etcd_server.url), timeout=0.3)
    with client.watch("/registry/", "/registry0", start_revision=0) as stream:
        assert stream.next(5)["created"]
        assert stream.next(1.5) is None                    # five timeouts of silence
        store.create(svc("late"))
        events = stream.next(5)["events"]
        assert unb64(events[0]["kv"]["key"]) == "/registry/services/default/late"
