"""Issue 16: what one Prometheus scrape of the agent's /metrics costs at 1, 1,000 and
10,000 services (10 endpoints each, every backend with new flows counted, so every
per-backend series is there: the worst case). A scrape = the registry's exposition text
(`generate_latest`: kube-proxy's sync metrics and the svcxdp_* Collector reading the
maps), timed in-process, with the flow tables' fill as the agent gives it (the idle-flow
GC's counts from its last whole walk: one walk is made before). Reference measured beside it: the collector as it was before
(frontends read from the services map, one per-CPU lookup per service). Not asserted;
medians and p99 in extra_info (target: milliseconds at 10,000 services).

    SVCXDP_BENCH_QUICK=1 .venv/bin/python -m pytest -q bench/bench_scrape.py -s
"""
from __future__ import annotations

import os
import statistics
import time
from array import array

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

from controlplane.agent.metrics import DataplaneCollector, SyncMetrics, naming_of
from controlplane.dataplane import readout
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.ctgc import ConntrackGC
from controlplane.dataplane.libbpf import ffi, lib
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.pinned import possible_cpus
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import MapWriter

QUICK = os.environ.get("SVCXDP_BENCH_QUICK") == "1"
SIZES = (1, 1_000) if QUICK else (1, 1_000, 10_000)
ENDPOINTS = 10
ROUNDS = {1: 200, 1_000: 50, 10_000: 20} if not QUICK else {1: 30, 1_000: 10}


@pytest.fixture(scope="module")
def dataplane():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    dp = Dataplane.load(DataplaneConfig(instance="svcxdp-bench-scrape", pin=False, ct_size=65536,
                                        max_services=max(SIZES) + 16, max_backends=max(SIZES) * ENDPOINTS + 64,
                                        max_slots=max(SIZES) * ENDPOINTS * 4 + 64))
    yield dp
    dp.close()


def states(n: int) -> list[ServiceState]:
    return [ServiceState(Frontend(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}", 80, "TCP"),
                         tuple(Backend(f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}", 8000 + j)
                               for j in range(ENDPOINTS)), "random")
            for i in range(n)]


def _fill_counts(fd: int, ids: list[int], words: int) -> None:
    """Non-zero per-CPU counters for `ids` (as traffic would leave them)."""
    per_key = possible_cpus() * words * 8
    values = bytearray(len(ids) * per_key)
    for i in range(0, len(values), 8):
        values[i] = 7
    key_buf = array("I", ids)
    count = ffi.new("uint32_t *", len(ids))
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    assert lib().bpf_map_update_batch(fd, ffi.from_buffer("uint32_t[]", key_buf),
                                      ffi.from_buffer("uint8_t[]", values), count, opts) == 0


class BeforeCollector:
    """The reference: svcxdp_service_* as the collector read them before this change."""

    def __init__(self, maps) -> None:
        self.maps = maps

    def describe(self) -> list:
        return []

    def collect(self):
        families = {f: CounterMetricFamily(f"svcxdp_service_{f}", f, labels=["frontend", "protocol", "scope"])
                    for f in readout.STAT_FIELDS}
        for fe, svc_id in sorted(readout.frontends(self.maps).items()):
            stats = readout.service_stats(self.maps, svc_id)
            for f, family in families.items():
                family.add_metric([f"{fe.vip}:{fe.port}", fe.protocol, fe.scope], stats[f])
        yield from families.values()


def timed(scrape, rounds: int) -> tuple[list[float], int]:
    size = 0
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        body = scrape()   # bytes, or the pieces /metrics writes
        size = len(body) if isinstance(body, bytes) else sum(map(len, body))
        out.append((time.perf_counter() - t0) * 1000)
    return out, size


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            "min_ms": round(ms[0], 2), "rounds": len(ms)}


CASES = [(n, True) for n in SIZES] + [(max(SIZES), False)]


@pytest.mark.parametrize("services,backend_traffic", CASES)
def test_scrape_cost(benchmark, dataplane, services, backend_traffic):
    """backend_traffic: every backend has new flows (a per-backend series each), else none
    has (the per-backend family is empty: what the per-frontend families cost alone)."""
    writer = MapWriter(dataplane)
    writer.sync(states(services))
    records = writer.records()
    _fill_counts(dataplane.table("svc_stats").map_fd, [r.svc_id for r in records.values()], 4)
    if backend_traffic:
        readout.backend_rows(dataplane).grid()[:, [b for r in records.values()
                                                   for b in r.backend_ids.values()]] = 7
    owner = lambda fe: f"default/svc-{fe.vip}:http"  # noqa: E731
    naming = naming_of(records, owner)
    registry = CollectorRegistry()
    SyncMetrics(registry)
    gc = ConntrackGC(dataplane)   # as the agent runs it (--ct-gc-interval, on by default)
    gc.sweep_all()
    collector = DataplaneCollector(dataplane, lambda: naming, gc.entry_counts)

    def scrape() -> list[bytes]:   # what the agent's /metrics writes (agent/metrics.py serve)
        return [generate_latest(registry), *collector.pieces()]

    before = CollectorRegistry()
    before.register(BeforeCollector(dataplane))
    rounds = ROUNDS[services]
    now_ms, now_bytes, ref_ms = [], 0, []
    for _ in range(3):     # interleaved: both see the same machine load
        got, now_bytes = timed(scrape, rounds // 3 + 1)
        now_ms += got
        ref_ms += timed(lambda: generate_latest(before), max(1, rounds // 9))[0]
    benchmark.pedantic(scrape, rounds=3, iterations=1)
    t0 = time.perf_counter()
    naming_of(writer.records(), owner)
    rebuild_ms = (time.perf_counter() - t0) * 1000
    result = {"suite": "scrape", "services": services, "endpoints": ENDPOINTS, "backend_traffic": backend_traffic,
              "scrape": summary(now_ms),
              "bytes": now_bytes, "before_service_families": summary(ref_ms), "naming_rebuild_ms": round(rebuild_ms, 1),
              "what": "generate_latest() of the agent's registry: sync metrics + svcxdp_* read from the maps; "
                      "every service and backend with counts (all series present)"}
    benchmark.extra_info.update(result)
    print(f"\n[scrape] {services:,} services{'' if backend_traffic else ' (no backend traffic)'}: "
          f"{result['scrape']['median_ms']} ms median, "
          f"{result['scrape']['p99_ms']} ms p99, {now_bytes:,} bytes; before (service families only): "
          f"{result['before_service_families']['median_ms']} ms; naming rebuild {rebuild_ms:.1f} ms")
    writer.sync([])


FULL_CT = 1_048_576   # the default conntrack size


def test_scrape_with_a_full_conntrack(benchmark):
    """The fill gauges with the conntrack full (1,048,576 live entries, written from user
    space), 1 service: the agent's way (the idle-flow GC's count from its last whole walk,
    ConntrackGC.entry_counts) against reading the table at each scrape (as without the GC,
    and as every scrape did before), interleaved."""
    import numpy as np

    from controlplane.dataplane.affinity_maps import coarse_now_ns
    from controlplane.dataplane.libbpf import update_batch
    from controlplane.dataplane.packing import Packer
    if os.geteuid() != 0:
        pytest.skip("needs root")
    dp = Dataplane.load(DataplaneConfig(instance="svcxdp-bench-scrape-ct", pin=False, ct_size=FULL_CT))
    try:
        writer = MapWriter(dp)
        writer.sync(states(1))
        table = dp.table("conntrack")
        rng = np.random.default_rng(1)
        for start in range(0, FULL_CT, 65536):   # live entries: the GC removes none
            keys = np.zeros(65536, dtype=Packer(table.Key, ()).dtype)
            keys.view(np.uint8)[:] = rng.integers(0, 256, size=keys.nbytes, dtype=np.uint8)
            values = np.zeros(65536, dtype=Packer(table.Leaf, ("last_seen",)).dtype)
            values["last_seen"] = coarse_now_ns()
            update_batch(table.map_fd, keys, values, len(keys))
        gc = ConntrackGC(dp)
        t0 = time.perf_counter()
        walk = gc.sweep_all()
        walk_s = time.perf_counter() - t0
        counted = gc.entry_counts()["conntrack"]
        naming = naming_of(writer.records())
        with_gc = DataplaneCollector(dp, lambda: naming, gc.entry_counts)
        reading = DataplaneCollector(dp, lambda: naming)
        gc_ms: list[float] = []
        read_ms: list[float] = []
        for _ in range(5):
            gc_ms += timed(with_gc.text, 4)[0]
            read_ms += timed(reading.text, 2)[0]
        benchmark.pedantic(with_gc.text, rounds=3, iterations=1)
        result = {"suite": "scrape", "case": "full_conntrack", "services": 1, "conntrack_entries": counted,
                  "scrape_gc_count": summary(gc_ms), "scrape_reading_tables": summary(read_ms),
                  "gc_whole_walk_s": round(walk_s, 2), "gc_deleted": walk.total_deleted,
                  "what": "DataplaneCollector.text() with the conntrack full: the GC's count vs reading the table"}
        benchmark.extra_info.update(result)
        print(f"\n[scrape] full conntrack ({counted:,} entries): {result['scrape_gc_count']['median_ms']} ms with "
              f"the GC's count, {result['scrape_reading_tables']['median_ms']} ms reading the tables "
              f"(the GC's whole walk {walk_s:.2f} s)")
        writer.sync([])
    finally:
        dp.close()
