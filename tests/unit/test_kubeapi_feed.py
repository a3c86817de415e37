"""KubeFeed (the Kubernetes API as the agent's source) against the protocol-faithful test
server, without BPF: a watch the server ends (timeoutSeconds) is resumed, not relisted;
reads before the first list raise StoreUnavailable; an agent further behind than the
feed's history gets Gone; a bad kubeconfig or conflicting flags fail the command before
anything is loaded."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.api import EndpointSlice, Gone, Service
from controlplane.kubeapi.connect import KubeConfigError, api_client
from controlplane.kubeapi.feed import KubeFeed
from controlplane.store.interface import StoreUnavailable
from tests.kube_api_server import ENDPOINTSLICES, SERVICES, KubeApiServer


def svc(name: str, ip: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}}


@pytest.fixture
def api():
    server = KubeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(api, tmp_path) -> str:
    """A kubeconfig file for `api`, as `svcctl agent --kubeconfig` takes."""
    path = tmp_path / "kubeconfig"
    path.write_text(api.kubeconfig())
    return str(path)


@pytest.fixture
def feed_of(kubeconfig):
    feeds: list[KubeFeed] = []

    def make(**kw) -> KubeFeed:
        feeds.append(KubeFeed(api_client(kubeconfig), **kw))
        return feeds[-1]

    yield make
    for f in feeds:
        f.close()


def wait_until(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_a_watch_ended_by_timeout_seconds_is_resumed_not_relisted(api, feed_of):
    api.put(SERVICES, svc("a", "10.96.0.10"))
    feed = feed_of(watch_timeout_s=1).start()
    assert feed.wait_synced(10)
    assert wait_until(lambda: len(api.watches(SERVICES)) >= 3, 6)   # the server ended two of them
    first, *later = api.watches(SERVICES)
    assert first.query["timeoutSeconds"] == "1"
    assert {w.query["resourceVersion"] for w in later} == {first.query["resourceVersion"]}
    assert api.lists(SERVICES) == 1
    rv = feed.current_resource_version()
    api.put(SERVICES, svc("b", "10.96.0.11"))
    assert feed.wait_for_change(rv, timeout=5) > rv
    assert [s.name for s in feed.list(Service)] == ["a", "b"]


def test_reads_before_the_first_list_raise_store_unavailable(api, feed_of):
    api.hold()                               # the API does not answer yet
    feed = feed_of()
    feed.start()
    with pytest.raises(StoreUnavailable, match="not been listed yet: endpointslices, services"):
        feed.current_resource_version()
    assert not feed.wait_synced(0.3)
    api.release()
    assert feed.wait_synced(10)
    assert feed.list(Service) == [] and list(feed.iter_documents(EndpointSlice)) == []


def test_an_agent_behind_the_feeds_history_gets_gone(api, feed_of):
    feed = feed_of(history=3).start()
    assert feed.wait_synced(10)
    start = feed.current_resource_version()
    for i in range(2):
        api.put(SERVICES, svc(f"s{i}", f"10.96.0.{20 + i}"))
    assert wait_until(lambda: feed.current_resource_version() == start + 2)
    assert [ev.object.name for ev in feed.changes_since(start)] == ["s0", "s1"]
    for i in range(2, 5):
        api.put(SERVICES, svc(f"s{i}", f"10.96.0.{20 + i}"))
    assert wait_until(lambda: feed.current_resource_version() == start + 5)
    with pytest.raises(Gone):
        feed.changes_since(start)
    assert [ev.object.name for ev in feed.changes_since(start + 2)] == ["s2", "s3", "s4"]


def test_endpoint_slices_are_kept_as_the_api_sent_them(api, feed_of):
    doc = {"metadata": {"name": "a-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "a"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["10.244.1.1"], "nodeName": "node1",
                          "conditions": {"ready": False, "serving": True, "terminating": True}}]}
    api.put(ENDPOINTSLICES, doc)
    feed = feed_of().start()
    assert feed.wait_synced(10)
    (got,) = feed.iter_documents(EndpointSlice)
    assert got["endpoints"] == doc["endpoints"] and got["metadata"]["resourceVersion"] == "2"


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(KubeConfigError, match="no such file"):
        api_client(str(tmp_path / "nope"))
    # no file and not in a pod: the in-cluster config is what failed, and it says so
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match=r"in-cluster config \(no --kubeconfig given\)"):
        api_client(None)


@pytest.mark.parametrize("argv, message", [
    (["--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig /nonexistent/kubeconfig: no such file"),
    (["--source", "kubernetes", "--store", "etcd://127.0.0.1:2379"], "--store and --source kubernetes"),
])
def test_the_agent_command_refuses_a_bad_source_before_loading_anything(argv, message):
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "agent", "--node", "n1",
                          "--healthz-port", "0", "--metrics-bind-address", "127.0.0.1:0", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert message in out.stderr
    assert "dataplane loaded" not in out.stderr


def test_close_ends_the_watch_threads(api, feed_of):
    feed = feed_of().start()
    assert feed.wait_synced(10)
    assert wait_until(lambda: api.watchers() == 2)
    feed.close()
    assert not any(t.is_alive() for t in feed._threads)
    assert wait_until(lambda: api.watchers() == 0)


def test_the_daemonset_grants_exactly_what_the_agent_asks_the_api(api, feed_of, kubeconfig):
    """deploy/svcxdp-agent-kube-proxy.yaml's ClusterRole covers every request the agent
    makes (the feed's, and the read of its Node's zone), and no more; its DaemonSet runs
    the agent on the Kubernetes source."""
    import yaml

    from controlplane.kubeapi.node import node_zone
    from tests.kube_api_server import API_GROUPS
    feed = feed_of().start()
    assert feed.wait_synced(10) and wait_until(lambda: api.watchers() == 2)
    api.put_node({"metadata": {"name": "node1"}})
    assert node_zone(api_client(kubeconfig), "node1") == ""
    asked = {(API_GROUPS[r.resource], r.resource, r.verb) for r in api.requests}
    docs = list(yaml.safe_load_all((Path(__file__).parents[2] / "deploy/svcxdp-agent-kube-proxy.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == asked
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert pod["serviceAccountName"] == binding["subjects"][0]["name"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--source") + 1] == "kubernetes"


@pytest.mark.parametrize("source", ["kubernetes", None])   # None: implied by --kubeconfig
def test_the_agent_command_opens_a_kube_feed(api, kubeconfig, source):
    import argparse

    from controlplane.agent.commands import _open_source
    api.put(SERVICES, svc("a", "10.96.0.10"))
    src, feed, client = _open_source(argparse.Namespace(source=source, kubeconfig=kubeconfig, store=None))
    try:
        assert src is feed and isinstance(feed, KubeFeed)
        assert feed.wait_synced(10)
        assert [s.name for s in src.list(Service)] == ["a"]
    finally:
        feed.close()


def test_the_agent_command_takes_the_zone_from_the_flag_or_the_node(api, kubeconfig):
    """--node-zone, else its Node's label, found beside the start (before the agent is
    made or after: NodeZone hands it on either way); none on the store."""
    import argparse
    import threading

    from controlplane.agent.commands import NodeZone, _node_zone
    log, stop = logging.getLogger("test"), threading.Event()
    client = api_client(kubeconfig)

    class Told:   # what Agent.set_zone was told
        def __init__(self) -> None:
            self.zones: list[str] = []

        def set_zone(self, zone: str) -> None:
            self.zones.append(zone)
    try:
        assert _node_zone(argparse.Namespace(node="node1", node_zone="zone-b"), client, stop, log).zone == "zone-b"
        assert _node_zone(argparse.Namespace(node="node1", node_zone=None), None, stop, log).zone == ""
        api.put_node({"metadata": {"name": "node1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
        early = _node_zone(argparse.Namespace(node="node1", node_zone=None), client, stop, log)
        assert wait_until(lambda: early.zone == "zone-a")   # before the agent is made
        early.tell(agent := Told())
        assert agent.zones == ["zone-a"]
        late = NodeZone("", log)   # after
        late.tell(agent := Told())
        late.found("zone-c")
        assert agent.zones == ["", "zone-c"]
    finally:
        stop.set()


def test_the_node_zone_is_read_from_the_node(api, kubeconfig):
    """node_zone: the label, "" without it, and a missing Node as an error naming it."""
    from controlplane.kubeapi.node import NodeReadError, node_zone
    client = api_client(kubeconfig)
    api.put_node({"metadata": {"name": "node1", "labels": {"topology.kubernetes.io/zone": "eu-west-1b"}}})
    api.put_node({"metadata": {"name": "node2", "labels": {"kubernetes.io/hostname": "node2"}}})
    assert node_zone(client, "node1") == "eu-west-1b"
    assert node_zone(client, "node2") == ""
    with pytest.raises(NodeReadError, match="node node9: the API answered 404"):
        node_zone(client, "node9")


def test_a_node_is_read_again_until_it_has_a_zone(api, kubeconfig):
    """follow_node_zone: a Node not there yet, then without the label, is read again (at
    growing intervals) until it has one; then the zone is told once and reading ends."""
    import threading

    from controlplane.kubeapi.node import follow_node_zone
    told: list[str] = []
    stop = threading.Event()
    thread = follow_node_zone(api_client(kubeconfig), "node1", told.append, stop, again_s=0.02, max_s=0.05)
    try:
        assert wait_until(lambda: api.lists("nodes") >= 2)   # 404s
        api.put_node({"metadata": {"name": "node1"}})
        reads = api.lists("nodes")
        assert wait_until(lambda: api.lists("nodes") >= reads + 2)
        assert told == []
        api.put_node({"metadata": {"name": "node1", "labels": {"topology.kubernetes.io/zone": "zone-c"}}})
        thread.join(5)
        assert told == ["zone-c"] and not thread.is_alive()
    finally:
        stop.set()


def test_a_server_that_expires_every_watch_is_not_hammered(api, feed_of):
    """Each watch refused with 410 right after a list: the reflector lists again, but
    after the second time in a row it backs off (0.2, 0.4, 0.8 s...) instead of spinning."""
    feed = feed_of().start()
    assert feed.wait_synced(10)
    assert wait_until(lambda: api.watchers() == 2)
    api.fail_next_watch_with_http_410(times=10_000)
    api.expire_watches()
    time.sleep(1.5)
    assert 2 <= api.lists(SERVICES) <= 8
    api.fail_next_watch_with_http_410(times=0)


@pytest.mark.parametrize("expire_between_pages", [False, True])
def test_a_large_list_is_read_in_pages_of_one_snapshot(api, feed_of, expire_between_pages):
    """limit=500 and continue tokens, as client-go's pager; a snapshot compacted between
    two pages (410 Expired on the continue) means the whole list again, not a gap."""
    for i in range(1200):
        api.put(SERVICES, svc(f"s{i:04d}", f"10.96.{i // 250}.{i % 250 + 1}"))
    api.compact_after_page = expire_between_pages
    feed = feed_of().start()
    assert feed.wait_synced(30)
    assert [s.name for s in feed.list(Service)] == [f"s{i:04d}" for i in range(1200)]
    pages = [r.query for r in api.requests if r.resource == SERVICES and not r.watch]
    assert all(q["limit"] == "500" for q in pages)
    assert [bool(q.get("continue")) for q in pages] == \
        ([False, True] if expire_between_pages else []) + [False, True, True]
    assert feed.reflectors[SERVICES].lists == 1


def test_garbage_from_the_api_is_logged_and_the_watch_goes_on(api, feed_of, caplog):
    """An object the codec cannot read is skipped with its name and field in the log; an
    event that is not even an object ends that watch, and the reflector lists again."""
    feed = feed_of().start()
    for r in feed.reflectors.values():
        r.backoff_first_s = 0.05
    assert feed.wait_synced(10) and wait_until(lambda: api.watchers() == 2)
    bad = svc("bad", "10.96.0.9")
    bad["spec"]["ports"] = "80"
    api.put(SERVICES, bad)
    api.send_raw(SERVICES, {"type": "ADDED", "object": "not an object"})
    api.put(SERVICES, svc("good", "10.96.0.10"))
    assert wait_until(lambda: [s.name for s in feed.list(Service)] == ["good"])
    assert "services default/bad ignored: json: cannot unmarshal string into Go struct field" in caplog.text
    assert "spec.ports" in caplog.text
    assert api.lists(SERVICES) == 2 and feed.reflectors[SERVICES].lists == 2


def test_an_update_the_codec_cannot_read_ends_the_object_as_a_relist_would(api, feed_of, caplog):
    """Its last readable version must not go on serving: the watch path now agrees with a
    relist, which leaves out what it cannot read."""
    feed = feed_of().start()
    assert feed.wait_synced(10) and wait_until(lambda: api.watchers() == 2)
    api.put(SERVICES, svc("web", "10.96.0.20"))
    assert wait_until(lambda: [s.name for s in feed.list(Service)] == ["web"])
    rv = feed.current_resource_version()
    bad = svc("web", "10.96.0.20")
    bad["spec"]["ports"] = "80"
    api.put(SERVICES, bad)
    assert wait_until(lambda: feed.list(Service) == [])
    assert [(e.type, e.object.name) for e in feed.changes_since(rv)] == [("DELETED", "web")]
    assert "services default/web ignored" in caplog.text
    api.put(SERVICES, svc("web", "10.96.0.20"))                 # readable again: back
    assert wait_until(lambda: [s.name for s in feed.list(Service)] == ["web"])
