"""Issue 4: time from an apply (the store write) to the first connection a new
endpoint serves through the ClusterIP, across the real agent of a lab node, with 1
and with 10,000 services in the store.

Each round: the service `lat` has no endpoints (connections are refused by the XDP
program at once); the bench writes an Endpoints object pointing at a running pod,
then a client in a pod connects to the ClusterIP every millisecond until one
succeeds. The time is store write -> first successful connect: change feed, agent
sync, map writes, packet. Not asserted anywhere; reported in extra_info and the README.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import pytest

from controlplane.api import Service
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import Manifest, Registry
from controlplane.lab import hooks, netns
from controlplane.lab.topology import Lab
from controlplane.store.paths import open_store

QUICK = os.environ.get("SVCXDP_BENCH_QUICK") == "1"
SIZES = [1, 1000] if QUICK else [1, 10_000]
ROUNDS = 10 if QUICK else 40
PREFIX = "svcxdp-bench-lat"


def _service(name: str) -> dict:
    spec = {"ports": [{"port": 80, "protocol": "TCP"}]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def _endpoints(ip: str | None) -> dict:
    subsets = [{"addresses": [{"ip": ip}], "ports": [{"port": 80, "protocol": "TCP"}]}] if ip else []
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "lat", "namespace": "default"},
            "subsets": subsets}


def _connects(vip: str) -> bool:
    s = socket.socket()
    s.settimeout(0.2)
    try:
        return s.connect_ex((vip, 80)) == 0
    finally:
        s.close()


def _wait(ns: str, vip: str, want: bool, timeout: float = 30.0) -> float:
    """In the client pod's namespace: poll until connecting succeeds (or is refused)."""
    def loop() -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _connects(vip) == want:
                return time.perf_counter()
            time.sleep(0.001)
        raise TimeoutError(f"{vip}: connect {'never succeeded' if want else 'still succeeds'}")
    return netns.call_in(ns, loop)


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}-services")
def lab_with_services(request):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    count = request.param
    state_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    lab = Lab(state_dir, prefix=PREFIX)
    try:
        lab.down(on_down=hooks.on_lab_down, force=True)  # a stale run of ours (its state dir is gone)
        lab = Lab(state_dir, prefix=PREFIX)
        store = open_store(state_dir)
        registry = Registry(store)
        start = time.perf_counter()
        docs = [Manifest(_service(f"filler-{i}")) for i in range(count - 1)]
        for i in range(0, len(docs), 2000):
            registry.apply(docs[i:i + 2000])
        registry.apply([Manifest(_service("lat")), Manifest(_endpoints(None))])
        reconcile(store)
        filled = time.perf_counter() - start
        lab.up(nodes=1, node_processes=hooks.node_processes)
        backend = lab.add_pod("lat-backend", "node1", "nginx", [80])
        client = lab.add_pod("lat-client", "node1", "busybox")
        vip = store.get(Service, "default", "lat").spec.cluster_ip
        _wait(client.netns, vip, want=False, timeout=120)  # the agent has programmed `lat` (refused)
        yield {"count": count, "store": store, "registry": registry, "vip": vip,
               "backend_ip": backend.ip, "client_ns": client.netns, "fill_s": filled}
    finally:
        lab.down(on_down=hooks.on_lab_down)
        shutil.rmtree(state_dir, ignore_errors=True)


def test_apply_to_first_served_packet(benchmark, lab_with_services):
    env = lab_with_services
    latencies: list[float] = []
    store_ms: list[float] = []

    def reset():
        env["registry"].apply([Manifest(_endpoints(None))])
        reconcile(env["store"])
        _wait(env["client_ns"], env["vip"], want=False)
        return (), {}

    def one_change():
        t0 = time.perf_counter()
        env["registry"].apply([Manifest(_endpoints(env["backend_ip"]))])
        reconcile(env["store"])
        written = time.perf_counter()
        t1 = _wait(env["client_ns"], env["vip"], want=True)
        latencies.append((t1 - t0) * 1000)
        store_ms.append((written - t0) * 1000)

    # Two warm-up rounds: the agent attaches to the new pods' interfaces right after they start.
    benchmark.pedantic(one_change, setup=reset, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    del latencies[:2], store_ms[:2]  # the warm-up rounds
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    benchmark.extra_info.update({
        "services_in_store": env["count"], "rounds": len(lat),
        "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(p99, 2), "max_ms": round(lat[-1], 2),
        "store_fill_s": round(env["fill_s"], 2),
        "store_write_p50_ms": round(statistics.median(store_ms), 2),
        "all_ms": [round(x, 1) for x in latencies],
        "what": "store write (Endpoints apply + reconcile) -> first TCP connect through the ClusterIP",
    })
    print(f"\n[agent latency] {env['count']} services: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms over {len(lat)} changes; of which the store write "
          f"(apply + reconcile) p50 {statistics.median(store_ms):.1f} ms; all: {[round(x) for x in latencies]}")
