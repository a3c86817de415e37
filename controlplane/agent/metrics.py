"""The agent's Prometheus metrics on kube-proxy's metrics port (10249): `/metrics` and
`/proxyMode`, served with the official prometheus_client.

Two kinds: what the sync loop observes (kube-proxy's own names, so its dashboards and
alerts work), updated as syncs happen; and what the datapath counted (`svcxdp_*`), read
from the maps at scrape time by a custom Collector, per-CPU values summed — nothing is
copied in between, so a scrape shows the maps as they are."""
from __future__ import annotations

import gc
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Callable, Iterator

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from controlplane.dataplane import readout
from controlplane.dataplane.config import FLOW_TABLES

from .health import PROXY_MODE
from .http_endpoint import EndpointHandler, start_server
from .metric_names import (BACKEND_FAMILY, BACKEND_LABELS, CAPACITY, DATAPATH, ENTRIES, EVICTIONS,  # noqa: F401
                           SERVICE_FAMILIES, SERVICE_LABELS, AgentNaming, Naming, naming_of)

METRICS_PORT = 10249
# Maps whose fill is worth watching: they fill with traffic or with services.
FILL_MAPS = ("services", *FLOW_TABLES, "affinity", "fragments")


# kube-proxy's buckets (0.25 s .. 5 min) below ms-scale ones: our changes land in milliseconds.
PROGRAMMING_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.25, 0.5, 1, 2, 5, 10, 30, 60,
                       120, 300)


class SyncMetrics:
    """kube-proxy's sync metrics, fed from the agent's SyncReports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            buckets=(0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
                     2.048, 4.096, 8.192, 16.384), registry=registry)
        self.last = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                          "The last time proxy rules were successfully synced", registry=registry)
        self.endpoint_changes = Counter("kubeproxy_sync_proxy_rules_endpoint_changes",
                                        "Cumulative proxy rules Endpoint changes", registry=registry)
        self.service_changes = Counter("kubeproxy_sync_proxy_rules_service_changes",
                                       "Cumulative proxy rules Service changes", registry=registry)
        self.failed = Gauge("svcxdp_sync_failed_services",
                            "Services the last sync could not program (they do not fit the maps)",
                            registry=registry)
        self.errors = Counter("svcxdp_sync_errors", "Syncs that failed (the store could not be read, a map "
                              "write failed) and frontends that did not fit the maps", registry=registry)
        self.programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds: from an endpoint change's trigger time "
            "(the EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time) to the maps written",
            buckets=PROGRAMMING_BUCKETS, registry=registry)
        self.check_seconds = Gauge("svcxdp_consistency_check_duration_seconds",
                                   "How long the last consistency check of the maps against the store took",
                                   registry=registry)
        self.check_interval = Gauge("svcxdp_consistency_check_interval_seconds",
                                    "Time from the last consistency check to the next (--check-interval, "
                                    "stretched so that checking takes at most --check-max-share of the time)",
                                    registry=registry)

    def checked(self, seconds: float, next_in: float) -> None:
        """A consistency check: its time, and the wait until the next."""
        self.check_seconds.set(seconds)
        self.check_interval.set(next_in)

    def scheduled(self, next_in: float) -> None:
        """The next check moved without one (a full sync): the wait until it."""
        self.check_interval.set(next_in)

    def synced(self, report) -> None:
        """One sync (an agent.SyncReport): its duration and what it changed."""
        self.duration.observe(report.took_ms / 1000.0)
        self.last.set(time.time())
        self.service_changes.inc(len(report.added) + len(report.removed) + len(report.changed))
        self.endpoint_changes.inc(sum(1 for line in report.changed if ": endpoints " in line))
        self.failed.set(len(report.failed))
        if report.failed:
            self.errors.inc(len(report.failed))
        for seconds in report.programming_s:
            self.programming.observe(max(seconds, 0.0))

    def sync_failed(self) -> None:
        """A sync raised (the agent retries it as a full resync)."""
        self.errors.inc()


GC_PAUSE_BUCKETS = (0.001, 0.004, 0.016, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048)


class GcPauses:
    """svcxdp_agent_gc_pause_seconds: each run of Python's cyclic collector, by
    generation. The agent stands still while it runs (it holds the GIL), and a full
    collection walks every object: at 10,000 x 10, 0.2-0.6 s before the agent held its
    long-lived heap frozen (gcpause.hold_long_lived). Kept in plain lists by a gc
    callback and read at scrape time: a callback runs inside whatever allocation set
    the collection off, perhaps under a lock of prometheus_client's own, so it takes none."""

    def __init__(self, buckets: tuple[float, ...] = GC_PAUSE_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [[0] * (len(buckets) + 1) for _ in range(3)]   # per generation; the last: +Inf
        self.sums = [0.0, 0.0, 0.0]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        took = time.perf_counter() - self._start
        gen = info["generation"]
        self.counts[gen][bisect_left(self.buckets, took)] += 1
        self.sums[gen] += took

    def close(self) -> None:
        gc.callbacks.remove(self._callback)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("svcxdp_agent_gc_pause_seconds",
                                       "Time the agent stood still in Python's cyclic garbage collector, "
                                       "per collection", labels=["generation"])
        for gen, counts in enumerate(self.counts):
            total, cumulative = 0, []
            for le, n in zip((*map(str, self.buckets), "+Inf"), counts):
                total += n
                cumulative.append((le, total))
            family.add_metric([str(gen)], cumulative, self.sums[gen])
        yield family


@dataclass
class Reading:
    """One scrape's read of the maps."""
    counters: dict[str, int]
    naming: Naming
    service_sums: list[list[int]]      # [field][svc id] (svc_stats is an array: ids index it)
    backend_ids: np.ndarray            # backends with new flows, in id order (ids with none left out)
    backend_new: np.ndarray            # ... and their new flows
    entries: list[tuple[str, int, int]]   # (map, entries, capacity)
    affinity_evictions: int


class DataplaneCollector:
    """svcxdp_* read from the maps at each scrape. `maps` is anything with `table(name)`
    and `mapped(name)`: the agent's loaded Dataplane, or PinnedMaps of a pinned instance.
    `naming` says what the ids stand for (the agent's AgentNaming); without it they are
    read from the maps.

    `collect()` yields prometheus_client metric families (for a registry); `text()` writes
    the same samples straight in the text exposition format (bytes; `pieces()` unjoined),
    which the agent's /metrics serves: at 10,000 services prometheus_client's per-sample
    formatting alone took hundreds of milliseconds, while the labels here are formatted
    once per id (Naming) and the values written in by C (samples.py)."""

    def __init__(self, maps, naming: Callable[[], Naming] | None = None,
                 entry_counts: Callable[[], dict[str, int]] | None = None) -> None:
        self.maps = maps
        self.naming = naming or (lambda: naming_of(readout.installed(self.maps)))
        # maps whose entries something else counts as it walks them (the agent's
        # conntrack GC: ConntrackGC.entry_counts); the others are read at each scrape
        self.entry_counts = entry_counts or dict
        # one scrape at a time: the naming is updated and its lines cached as it is read
        # (ThreadingHTTPServer answers scrapes in threads of their own)
        self._lock = threading.Lock()

    def describe(self) -> list:
        return []   # read at scrape time only: no collect() at registration

    def read(self) -> Reading:
        counters = readout.counters(self.maps)
        naming = self.naming()
        # ids are handed out low first: read the arrays only up to the highest id named
        top_service, top_backend = naming.tops()
        _, sums = readout.percpu_sums(self.maps.table("svc_stats"), len(readout.STAT_FIELDS), limit=top_service + 1)
        new_ids, new = readout.backend_new_flow_arrays(self.maps, limit=top_backend + 1)
        entries = []
        counted = self.entry_counts()
        for name in FILL_MAPS:
            table = self.maps.table(name)
            n = len(naming.services) if name == "services" else counted.get(name)
            entries.append((name, readout.count_entries(table) if n is None else n, table.max_entries))
        aff = readout.affinity(self.maps, counters["affinity_new"],
                               entries=next(n for name, n, _ in entries if name == "affinity"))
        return Reading(counters, naming, sums, new_ids, new, entries, aff.evicted)

    def collect(self) -> Iterator:
        with self._lock:
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator:
        r = self.read()
        datapath = CounterMetricFamily(*DATAPATH, labels=["reason"])
        for name, value in r.counters.items():
            datapath.add_metric([name], value)
        yield datapath
        for i, (name, help_text) in enumerate(SERVICE_FAMILIES):
            family = CounterMetricFamily(name, help_text, labels=list(SERVICE_LABELS))
            for svc_id, values in sorted(r.naming.services.items()):
                family.add_metric(list(values), r.service_sums[i][svc_id])
            yield family
        per_backend = CounterMetricFamily(*BACKEND_FAMILY, labels=list(BACKEND_LABELS))
        for bid, new in zip(r.backend_ids.tolist(), r.backend_new.tolist()):
            if bid in r.naming.backends:
                per_backend.add_metric(list(r.naming.backends[bid]), new)
        yield per_backend
        entries = GaugeMetricFamily(*ENTRIES, labels=["map"])
        capacity = GaugeMetricFamily(*CAPACITY, labels=["map"])
        for name, n, cap in r.entries:
            entries.add_metric([name], n)
            capacity.add_metric([name], cap)
        yield entries
        yield capacity
        yield CounterMetricFamily(*EVICTIONS, value=r.affinity_evictions)

    def text(self) -> bytes:
        return b"".join(self.pieces())

    def pieces(self) -> list[bytes | memoryview]:
        """text() in the pieces it is made of, not joined (the agent's /metrics writes
        them one after the other)."""
        with self._lock:
            return self._pieces()

    def _pieces(self) -> list[bytes | memoryview]:
        r = self.read()
        out: list[bytes | memoryview] = []

        def head(name: str, help_text: str, kind: str) -> None:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode())

        head(DATAPATH[0] + "_total", DATAPATH[1], "counter")
        out.append("".join(f'{DATAPATH[0]}_total{{reason="{k}"}} {v}\n' for k, v in r.counters.items()).encode())
        # the lines' names and labels made once per change (Naming), the values written in
        # by C (samples.py): the per-sample work is no Python step
        svc_ids, families = r.naming.service_lines()
        every = np.arange(len(svc_ids), dtype=np.uint32)
        for (name, help_text), lines, column in zip(SERVICE_FAMILIES, families, r.service_sums):
            head(name + "_total", help_text, "counter")
            out.append(lines.fill(every, np.asarray(column, np.uint64)[svc_ids]))
        head(BACKEND_FAMILY[0] + "_total", BACKEND_FAMILY[1], "counter")
        # only the ids with new flows (in id order), and of those only the named ones
        lines, line_of = r.naming.backend_lines()
        ids = r.backend_ids
        known = ids < len(line_of)
        line = line_of[ids[known]]
        named = line >= 0
        out.append(lines.fill(line[named], r.backend_new[known][named]))
        head(ENTRIES[0], ENTRIES[1], "gauge")
        out.append("".join(f'{ENTRIES[0]}{{map="{m}"}} {n}\n' for m, n, _ in r.entries).encode())
        head(CAPACITY[0], CAPACITY[1], "gauge")
        out.append("".join(f'{CAPACITY[0]}{{map="{m}"}} {c}\n' for m, _, c in r.entries).encode())
        head(EVICTIONS[0] + "_total", EVICTIONS[1], "counter")
        out.append(f"{EVICTIONS[0]}_total {r.affinity_evictions}\n".encode())
        return out


def serve(registry: CollectorRegistry, host: str = "0.0.0.0", port: int = METRICS_PORT,
          dataplane: DataplaneCollector | None = None) -> ThreadingHTTPServer:
    """/metrics: `registry` (prometheus_client's exposition) followed by `dataplane`'s
    samples in the same text format (0.0.4, which every Prometheus accepts);
    /proxyMode as on the health port."""

    class Handler(EndpointHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.route == "/proxyMode":
                self.send_body(200, PROXY_MODE.encode(), "text/plain")
            elif self.route == "/metrics":
                try:
                    # in pieces: 20 MB of samples joined, and then joined again to the
                    # registry's, cost a scrape two copies and their page faults
                    body = [generate_latest(registry), *(dataplane.pieces() if dataplane is not None else ())]
                except Exception as exc:   # a map that cannot be read: say so, keep serving
                    self.send_error(500, f"reading the metrics failed: {exc}")
                    return
                self.send_body(200, body, CONTENT_TYPE_LATEST)
            else:
                self.send_error(404)

    return start_server(Handler, host, port, "metrics")
