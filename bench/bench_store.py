"""Control-plane store benchmarks (issue 3 targets, checked here rather than in tests):

- apply 10,000 Services with 100,000 endpoints (10,000 EndpointSlices of 10) in <= 5 s;
- `svcctl get svc` over 10,000 Services in <= 1 s;
- one endpoint change visible on the change feed in <= 5 ms (median).

Run: .venv/bin/python -m pytest bench/bench_store.py --benchmark-only
(add --benchmark-timer=time.process_time to see CPU time when the machine is shared).

Measured on the 2-vCPU build VM (medians):
- quiet machine (load ~1): apply 10k Services + 100k endpoints + reconcile 4.2 s,
  get svc over 10k 0.32 s, endpoint change on the feed 0.55 ms;
- busy machine (load 3-4 from other test suites): wall clock apply 5.5-9.3 s, get 0.4-0.9 s,
  feed 0.3-0.4 ms; CPU time apply 4.3 s, get 0.36 s.
"""
from __future__ import annotations

import contextlib
import io
import threading

import pytest

from controlplane.api.endpoints import EndpointSlice
from controlplane.cli import main as svcctl
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.store import SqliteStore

SERVICES = 10_000
ENDPOINTS_PER_SERVICE = 10


def service_manifest(i: int, node_port: bool = False) -> dict:
    spec: dict = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if node_port:   # (a nodePort allocated by the registry)
        spec["type"] = "NodePort"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i}", "labels": {"app": f"app-{i % 100}"}}, "spec": spec}


def slice_manifest(i: int) -> dict:
    base = 10 << 24 | 244 << 16
    endpoints = []
    for j in range(ENDPOINTS_PER_SERVICE):
        n = base + i * ENDPOINTS_PER_SERVICE + j
        ip = f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        endpoints.append({"addresses": [ip], "conditions": {"ready": True}, "nodeName": f"node{j % 3 + 1}"})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-abcde", "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def manifests() -> list[Manifest]:
    out = [Manifest(service_manifest(i), "bench") for i in range(SERVICES)]
    out += [Manifest(slice_manifest(i), "bench") for i in range(SERVICES)]
    return out


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> str:
    state = tmp_path_factory.mktemp("populated")
    store = SqliteStore(state / "store.db")
    Registry(store).apply(manifests(), "default", MODE_CREATE)
    reconcile(store)
    store.close()
    return str(state)


def test_apply_10k_services_100k_endpoints(benchmark, tmp_path) -> None:
    docs = manifests()
    counter = iter(range(1000))

    def setup():
        store = SqliteStore(tmp_path / f"store-{next(counter)}.db")
        return (Registry(store),), {}

    def apply(registry: Registry) -> None:
        registry.apply(docs, "default", MODE_CREATE)
        reconcile(registry.store)

    benchmark.pedantic(apply, setup=setup, rounds=3, iterations=1)


def test_get_svc_10k(benchmark, populated: str) -> None:
    def get() -> int:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = svcctl(["get", "svc", "--state-dir", populated])
        assert out.getvalue().count("\n") == SERVICES + 2  # header + kubernetes + 10,000
        return code

    assert benchmark.pedantic(get, rounds=5, iterations=1) == 0


def test_endpoint_change_on_feed(benchmark, populated: str) -> None:
    writer = SqliteStore(f"{populated}/store.db")
    watcher = writer.reopen()
    es = writer.get(EndpointSlice, "default", "svc-42-abcde")
    start_rv = writer.current_resource_version()
    stop = threading.Event()
    # The follower may see a change before update() returns its resourceVersion, so it
    # records the newest version seen and flip() waits for that to reach its own.
    newest = {"rv": 0}
    moved = threading.Condition()

    def follow() -> None:
        for event in watcher.watch(start_rv, kinds=[EndpointSlice], stop=stop.is_set, timeout=None):
            with moved:
                newest["rv"] = max(newest["rv"], event.resource_version)
                moved.notify_all()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()

    def flip() -> None:
        endpoint = es.endpoints[0]
        endpoint.conditions.ready = not endpoint.conditions.ready
        stored = writer.update(es)
        with moved:
            assert moved.wait_for(lambda: newest["rv"] >= stored.resource_version, 2.0), \
                "change not seen on the feed"

    benchmark.pedantic(flip, rounds=200, iterations=1, warmup_rounds=5)
    stop.set()
    thread.join(2)
    writer.close()
