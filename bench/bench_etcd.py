"""etcd store vs SQLite store: convergence of N services x 10 endpoints to three followers,
and one endpoint change to every follower (p50/p99), in the same run.

    .venv/bin/python bench/bench_etcd.py --quick         # 300 x 10, 20 changes (smoke)
    .venv/bin/python bench/bench_etcd.py                 # 10,000 x 10, 200 changes

What it measures, and what it does not: the store and its change feed. etcd runs as three
members on 127.0.0.1 (started here, temp dir, stopped by pid); SQLite is one file. The three
followers are processes that do what a node agent does up to its maps (ServiceCache.load,
then wait_for_change + changes_since + apply); they do not write BPF maps, so the numbers
are the store's share of issue 15's targets (10,000 x 10 on 3 nodes <= 10 s; one change p99
<= 50 ms), not an end-to-end lab measurement (the lab does not run on etcd yet).

Objects are written as the controllers write them (store transactions of 100 services +
their slices), not through `svcctl apply`, whose per-object reads on etcd are measured
separately by `apply_s` on a smaller batch.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_store import ENDPOINTS_PER_SERVICE, service_manifest, slice_manifest  # noqa: E402
from controlplane.api.endpoints import EndpointSlice  # noqa: E402
from controlplane.api.kinds import object_from_dict  # noqa: E402
from controlplane.store.paths import open_store  # noqa: E402
from tests.etcd_server import ETCD, free_port  # noqa: E402

FOLLOWERS = 3


def start_etcd_cluster(root: Path, members: int = 3) -> tuple[str, list[subprocess.Popen]]:
    ports = [(free_port(), free_port()) for _ in range(members)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    procs = []
    for i, (client, peer) in enumerate(ports):
        log = open(root / f"m{i}.log", "wb")
        procs.append(subprocess.Popen(
            [ETCD, "--name", f"m{i}", "--data-dir", str(root / f"m{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new", "--log-level", "error",
             "--max-txn-ops", "10000", "--max-request-bytes", str(32 << 20), "--quota-backend-bytes", str(4 << 30)],
            stdout=log, stderr=log, start_new_session=True))
    url = "etcd://" + ",".join(f"127.0.0.1:{c}" for c, _ in ports)
    deadline = time.monotonic() + 60
    while True:
        try:
            open_store(url=url).current_resource_version()
            return url, procs
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def follower(location: str, services: int, changes: mp.Queue, ready: mp.Event, out: mp.Queue) -> None:
    """A node agent up to its maps: load, then follow; report when all services have their
    endpoints, then the time each marked change arrived."""
    from controlplane.agent.cache import WATCHED_KINDS, ServiceCache
    store = open_store(url=location) if location.startswith("etcd://") else open_store(location)
    cache = ServiceCache.load(store)
    ready.set()
    converged = False
    while True:
        rv = store.wait_for_change(cache.resource_version, 0.5)
        if rv == cache.resource_version:
            continue
        events = store.changes_since(cache.resource_version, WATCHED_KINDS)
        now = time.time()
        cache.apply(events)
        if not converged and len(cache.services) >= services and all(
                sum(len(b) for b in cache.slices.get(k, {}).values()) >= ENDPOINTS_PER_SERVICE
                for k in cache.services):
            converged = True
            out.put(("converged", now))
        for ev in events:
            mark = (ev.object.metadata.annotations or {}).get("bench/mark") if isinstance(ev.object, EndpointSlice) else None
            if mark == "stop":
                return
            if mark:
                out.put(("change", int(mark), now))


def write_batch(store, start: int, stop: int) -> None:
    with store.transaction() as tx:
        for i in range(start, stop):
            svc = object_from_dict(service_manifest(i))
            svc.metadata.namespace = "default"
            tx.create(svc)
            es = object_from_dict(slice_manifest(i))
            es.metadata.namespace = "default"
            tx.create(es)


def run(kind: str, location: str, services: int, changes: int) -> dict:
    store = open_store(url=location) if kind == "etcd" else open_store(location)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    readies = [ctx.Event() for _ in range(FOLLOWERS)]
    procs = [ctx.Process(target=follower, args=(location, services, None, r, out)) for r in readies]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(120)
    t0 = time.time()
    for start in range(0, services, 100):
        write_batch(store, start, min(services, start + 100))
    written = time.time() - t0
    arrivals = [out.get(timeout=600) for _ in range(FOLLOWERS)]
    converge = max(a[1] for a in arrivals) - t0
    latencies = []
    for n in range(1, changes + 1):
        es = store.get(EndpointSlice, "default", f"svc-{n % services}-abcde")
        es.metadata.annotations = {"bench/mark": str(n)}
        es.endpoints[0].conditions.ready = not es.endpoints[0].conditions.ready
        sent = time.time()
        store.update(es)
        got = [out.get(timeout=60) for _ in range(FOLLOWERS)]
        latencies.append((max(g[2] for g in got) - sent) * 1000)
    es = store.get(EndpointSlice, "default", "svc-0-abcde")
    es.metadata.annotations = {"bench/mark": "stop"}
    store.update(es)
    for p in procs:
        p.join(60)
    latencies.sort()
    return {"store": kind, "services": services, "endpoints_per_service": ENDPOINTS_PER_SERVICE,
            "followers": FOLLOWERS, "write_s": round(written, 2), "converge_s": round(converge, 2),
            "change_p50_ms": round(statistics.median(latencies), 2),
            "change_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
            "changes": changes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 x 10 and 20 changes (smoke)")
    args = parser.parse_args()
    services, changes = (300, 20) if args.quick else (10_000, 200)
    results = []
    with tempfile.TemporaryDirectory(prefix="svcxdp-bench-etcd-") as tmp:
        root = Path(tmp)
        url, members = start_etcd_cluster(root)
        try:
            results.append(run("etcd", url, services, changes))
        finally:
            for proc in members:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(30)
        results.append(run("sqlite", str(root / "sqlite"), services, changes))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
