"""The agent's Prometheus metrics on kube-proxy's metrics port (10249): `/metrics` and
`/proxyMode`, served with the official prometheus_client.

Two kinds: what the sync loop observes (kube-proxy's own names, so its dashboards and
alerts work), updated as syncs happen; and what the datapath counted (`svcxdp_*`), read
from the maps at scrape time by a custom Collector, per-CPU values summed — nothing is
copied in between, so a scrape shows the maps as they are."""
from __future__ import annotations

import time
from http.server import ThreadingHTTPServer
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from controlplane.dataplane import readout

from .health import PROXY_MODE, start_server

METRICS_PORT = 10249
# Maps whose fill is worth watching: they fill with traffic or with services.
FILL_MAPS = ("services", "conntrack", "ct_unconfirmed", "affinity", "fragments")


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

    def synced(self, report) -> None:
        """One sync (an agent.SyncReport): its duration and what it changed."""
        self.duration.observe(report.took_ms / 1000.0)
        self.last.set(time.time())
        self.service_changes.inc(len(report.added) + len(report.removed) + len(report.changed))
        self.endpoint_changes.inc(sum(1 for line in report.changed if ": endpoints " in line))
        self.failed.set(len(report.failed))


class DataplaneCollector:
    """svcxdp_* read from the maps at each scrape. `maps` is anything with `table(name)`:
    the agent's loaded Dataplane, or PinnedMaps of a pinned instance."""

    def __init__(self, maps) -> None:
        self.maps = maps

    def describe(self) -> list:
        return []   # read at scrape time only: no collect() at registration

    def collect(self) -> Iterator:
        counters = readout.counters(self.maps)
        datapath = CounterMetricFamily("svcxdp_datapath_packets", "Packets by datapath outcome (SVCXDP_CNT_*)",
                                       labels=["reason"])
        for name, value in counters.items():
            datapath.add_metric([name], value)
        yield datapath
        per_frontend = {f: CounterMetricFamily(f"svcxdp_service_{f}", f"Service frontend {f.replace('_', ' ')}",
                                               labels=["frontend", "protocol", "scope"])
                        for f in readout.STAT_FIELDS}
        services = readout.frontends(self.maps)
        for fe, svc_id in sorted(services.items()):
            stats = readout.service_stats(self.maps, svc_id)
            labels = [f"{fe.vip}:{fe.port}", fe.protocol, fe.scope]
            for f, family in per_frontend.items():
                family.add_metric(labels, stats[f])
        yield from per_frontend.values()
        entries = GaugeMetricFamily("svcxdp_map_entries", "Entries in a map", labels=["map"])
        capacity = GaugeMetricFamily("svcxdp_map_capacity", "Capacity (max_entries) of a map", labels=["map"])
        for name in FILL_MAPS:
            table = self.maps.table(name)
            n = len(services) if name == "services" else readout.count_entries(table)
            entries.add_metric([name], n)
            capacity.add_metric([name], table.max_entries)
        yield entries
        yield capacity
        aff = readout.affinity(self.maps, counters["affinity_new"])
        yield CounterMetricFamily("svcxdp_affinity_evictions", "Affinity entries the LRU reclaimed",
                                  value=aff.evicted)


def serve(registry: CollectorRegistry, host: str = "0.0.0.0", port: int = METRICS_PORT) -> ThreadingHTTPServer:
    """/metrics from `registry`, /proxyMode as on the health port."""
    base = MetricsHandler.factory(registry)

    class Handler(base):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.split("?")[0] == "/proxyMode":
                payload = PROXY_MODE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            elif self.path.split("?")[0] == "/metrics":
                super().do_GET()
            else:
                self.send_error(404)

        def log_message(self, fmt: str, *args) -> None:
            pass

    return start_server(Handler, host, port, "metrics")
