"""The DNS server's store feed (controlplane/dns/feed.py) on a real SqliteStore: its thread
follows the change feed, and a feed compacted past it relists. No root, no sockets."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from controlplane.api import Gone, Namespace, Service
from controlplane.dns.feed import ClusterObjects, StoreFeed
from controlplane.dns.records import A, SRV
from controlplane.dns.zone import NOERROR, NXDOMAIN, Zones
from controlplane.store import SqliteStore

ZONE = "cluster.local"


def service(name: str, ip: str) -> Service:
    return Service.from_dict({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})


def answer(zones: Zones, name: str) -> tuple[int, list[str]]:
    got = zones.lookup(f"{name}.default.svc.{ZONE}.", A)
    assert got is not None
    return got.rcode, [r.value for r in got.answer if r.rdtype == A]


def until(loop: asyncio.AbstractEventLoop, check, timeout: float = 10.0) -> None:
    """Run the loop (the feed posts its batches to it) until check() holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the feed did not get there"
        loop.run_until_complete(asyncio.sleep(0.05))


def test_a_relist_that_fails_halfway_is_tried_again(tmp_path: Path) -> None:
    """After Gone the feed relists; when the relist's last read fails, it must relist again,
    not go on from the list's version as if the list had been applied (the deleted service
    would keep answering and the new one be NXDOMAIN until a restart)."""
    store = SqliteStore(tmp_path / "store.db", history=10)
    store.create(service("old", "10.96.0.20"))
    zones = Zones(ZONE, ttl=5)
    loop = asyncio.new_event_loop()
    feed = StoreFeed(store, ClusterObjects(zones), loop, lambda: None)
    feed.load()
    assert answer(zones, "old") == (NOERROR, ["10.96.0.20"])

    real = store.changes_since
    state = {"gone": False, "failed": 0}

    def changes_since(*args, **kwargs):
        # the store's own answers, except one transient failure: the first read after a Gone
        if state["gone"] and not state["failed"]:
            state["failed"] += 1
            raise sqlite3.OperationalError("database is locked")
        try:
            return real(*args, **kwargs)
        except Gone:
            state["gone"] = True
            raise
    store.changes_since = changes_since   # type: ignore[method-assign]

    store.delete(Service, "default", "old")
    store.create(service("new", "10.96.0.21"))
    for i in range(30):                   # past the 10 changes the store keeps: Gone
        store.create(service(f"pad{i}", f"10.96.1.{i}"))
    feed.start()
    try:
        until(loop, lambda: state["failed"] == 1)
        store.create(service("later", "10.96.0.22"))
        until(loop, lambda: answer(zones, "later")[0] == NOERROR)
        assert answer(zones, "new") == (NOERROR, ["10.96.0.21"])
        assert answer(zones, "old") == (NXDOMAIN, [])
    finally:
        feed.stop.set()
        feed.thread.join(5)
        loop.close()
        store.close()


def test_namespaces_are_followed(tmp_path: Path) -> None:
    """An existing namespace's names answer NODATA (CoreDNS), also with nothing in it, and
    NXDOMAIN once it is deleted: the feed lists and watches Namespaces."""
    store = SqliteStore(tmp_path / "store.db")
    store.create(Namespace.from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "one"}}))
    zones = Zones(ZONE, ttl=5)
    loop = asyncio.new_event_loop()
    feed = StoreFeed(store, ClusterObjects(zones), loop, lambda: None)
    feed.load()

    def rcode(name: str) -> int:
        got = zones.lookup(f"{name}.{ZONE}.", SRV)
        assert got is not None and not got.answer
        return got.rcode

    assert (rcode("one.svc"), rcode("one.pod"), rcode("two.svc")) == (NOERROR, NOERROR, NXDOMAIN)
    feed.start()
    try:
        store.create(Namespace.from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "two"}}))
        store.delete(Namespace, "", "one")
        until(loop, lambda: rcode("two.svc") == NOERROR and rcode("one.svc") == NXDOMAIN)
        assert rcode("one.pod") == NXDOMAIN
    finally:
        feed.stop.set()
        feed.thread.join(5)
        loop.close()
        store.close()
