"""The agent's Prometheus metrics on kube-proxy's metrics port (10249): `/metrics` and
`/proxyMode`, served with the official prometheus_client.

Two kinds: what the sync loop observes (kube-proxy's own names, so its dashboards and
alerts work), updated as syncs happen; and what the datapath counted (`svcxdp_*`), read
from the maps at scrape time by a custom Collector, per-CPU values summed — nothing is
copied in between, so a scrape shows the maps as they are."""
from __future__ import annotations

import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from controlplane.dataplane import readout
from controlplane.dataplane.model import Frontend

from .health import PROXY_MODE, start_server

METRICS_PORT = 10249
# Maps whose fill is worth watching: they fill with traffic or with services.
FILL_MAPS = ("services", "conntrack", "ct_unconfirmed", "affinity", "fragments")


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


@dataclass(frozen=True)
class Naming:
    """What the ids in the maps stand for, for labels."""
    services: dict[int, tuple[Frontend, str]]     # svc id -> (frontend, "namespace/name:port" or "")
    backends: dict[int, tuple[int, str]]          # backend id -> (svc id, "ip:port")


def naming_of(records: dict, owner: Callable[[Frontend], str] = lambda fe: "") -> Naming:
    """From installed records (dataplane.installed.Installed by frontend)."""
    services: dict[int, tuple[Frontend, str]] = {}
    backends: dict[int, tuple[int, str]] = {}
    for fe, inst in records.items():
        services[inst.svc_id] = (fe, owner(fe))
        for (ip, port), bid in inst.backend_ids.items():
            backends[bid] = (inst.svc_id, f"{ip}:{port}")
    return Naming(services, backends)


class AgentNaming:
    """The agent's own state names the ids (no map is read for it); rebuilt only after
    the agent wrote the maps."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self._key: tuple[int, int] | None = None
        self._naming = Naming({}, {})

    def __call__(self) -> Naming:
        writer = self.agent.writer
        key = (id(writer), writer.writes)
        if key != self._key:
            self._naming = naming_of(dict(writer.records()), self.agent.owner_of)
            self._key = key
        return self._naming


class DataplaneCollector:
    """svcxdp_* read from the maps at each scrape. `maps` is anything with `table(name)`:
    the agent's loaded Dataplane, or PinnedMaps of a pinned instance. `naming` says what
    the ids stand for (the agent's AgentNaming); without it they are read from the maps."""

    def __init__(self, maps, naming: Callable[[], Naming] | None = None) -> None:
        self.maps = maps
        self.naming = naming or (lambda: naming_of(readout.installed(self.maps)))

    def describe(self) -> list:
        return []   # read at scrape time only: no collect() at registration

    def collect(self) -> Iterator:
        counters = readout.counters(self.maps)
        datapath = CounterMetricFamily("svcxdp_datapath_packets", "Packets by datapath outcome (SVCXDP_CNT_*)",
                                       labels=["reason"])
        for name, value in counters.items():
            datapath.add_metric([name], value)
        yield datapath
        naming = self.naming()
        per_frontend = [CounterMetricFamily(f"svcxdp_service_{f}", f"Service frontend {f.replace('_', ' ')}",
                                            labels=["frontend", "protocol", "scope", "service"])
                        for f in readout.STAT_FIELDS]
        stats = readout.all_service_stats(self.maps)
        zero = (0, 0, 0, 0)
        frontend_label: dict[int, str] = {}
        for svc_id, (fe, owner) in sorted(naming.services.items()):
            labels = [f"{fe.vip}:{fe.port}", fe.protocol, fe.scope, owner]
            frontend_label[svc_id] = labels[0]
            for family, value in zip(per_frontend, stats.get(svc_id, zero)):
                family.add_metric(labels, value)
        yield from per_frontend
        per_backend = CounterMetricFamily("svcxdp_backend_new_flows",
                                          "New flows sent to a backend (only backends that had one)",
                                          labels=["service", "frontend", "backend"])
        for bid, new in sorted(readout.backend_new_flows(self.maps).items()):
            named = naming.backends.get(bid)
            if named is None:   # a backend removed since: its id is free (zeroed when reused)
                continue
            svc_id, address = named
            per_backend.add_metric([naming.services.get(svc_id, (None, ""))[1], frontend_label.get(svc_id, ""),
                                    address], new)
        yield per_backend
        entries = GaugeMetricFamily("svcxdp_map_entries", "Entries in a map", labels=["map"])
        capacity = GaugeMetricFamily("svcxdp_map_capacity", "Capacity (max_entries) of a map", labels=["map"])
        for name in FILL_MAPS:
            table = self.maps.table(name)
            n = len(naming.services) if name == "services" else readout.count_entries(table)
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
