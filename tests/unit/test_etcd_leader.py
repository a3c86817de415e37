"""A member that has lost its leader (cut off from the others, or the others gone) keeps
answering a plain watch with progress notifications, as if the cluster were idle: a
store following it missed every change and reported healthy. Watches require a leader
(as kube-apiserver's do, clientv3.WithRequireLeader): such a member refuses them, the
client moves to the next member, and with none left the store is unavailable. Real
etcd: a cluster of two members on 127.0.0.1, one of them stopped."""
from __future__ import annotations

import time

import pytest

from controlplane.store.etcd_client import EtcdClient, EtcdUnavailable, parse_endpoints
from tests.etcd_server import EtcdServer


@pytest.fixture
def members(tmp_path):
    members = EtcdServer.start_cluster(tmp_path, 2)
    try:
        yield members
    finally:
        for m in members:
            m.stop()


def test_a_watch_on_a_member_without_a_leader_is_refused(members):
    members[1].stop()   # a quorum of two is gone: no leader
    client = EtcdClient(parse_endpoints(members[0].url), retry_for=1.0)
    deadline = time.monotonic() + 20   # (a leader steps down within an election timeout or so)
    with pytest.raises(EtcdUnavailable, match="no leader"):
        while time.monotonic() < deadline:
            client.watch("/registry/", "/registry0").close()
            time.sleep(0.2)


def test_a_store_following_a_member_that_loses_its_leader_becomes_unavailable(members):
    from controlplane.store.paths import open_etcd_store
    store = open_etcd_store(members[0].url)
    rv = store.wait_for_change(0, 0.1)      # following the member's watch
    members[1].stop()
    deadline = time.monotonic() + 40
    with pytest.raises(EtcdUnavailable):
        while time.monotonic() < deadline:   # the bug: quiet waits, "no change", for good
            rv = store.wait_for_change(rv, 1.0)
