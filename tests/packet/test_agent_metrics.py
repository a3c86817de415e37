"""The agent's Prometheus metrics (agent/metrics.py): kube-proxy's sync metrics and the
svcxdp_* families read from the maps at scrape time, checked against what the loaded
program counted for known traffic, and served over HTTP with /proxyMode beside them."""
from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.agent.agent import SyncReport
from controlplane.agent.metrics import DataplaneCollector, SyncMetrics, serve
from controlplane.dataplane.model import Backend, Frontend, ServiceState

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness

VIP2 = "10.96.0.103"


def samples(registry: CollectorRegistry) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_datapath_and_service_metrics_are_the_maps_contents(xdp: Harness):
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"), tuple(Backend(ip, 8080) for ip in BACKENDS), "rr"))
    xdp.writer.upsert(ServiceState(Frontend(VIP2, 80, "TCP"), (), "random"))
    for sport in range(21000, 21004):
        xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S"))
    xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP2) / TCP(sport=21000, dport=80, flags="S"))
    registry = CollectorRegistry()
    registry.register(DataplaneCollector(xdp.dp))
    got = samples(registry)
    for name, value in xdp.dp.counters().items():
        assert got[("svcxdp_datapath_packets_total", (("reason", name),))] == value, name
    for fe, (new, rejects) in ((Frontend(VIP, 80, "TCP"), (4, 0)), (Frontend(VIP2, 80, "TCP"), (0, 1))):
        labels = (("frontend", f"{fe.vip}:80"), ("protocol", "TCP"), ("scope", "cluster"))
        stats = xdp.dp.service_stats(xdp.writer.svc_id(fe))
        for field in ("packets", "bytes", "new_flows", "rejects"):
            assert got[(f"svcxdp_service_{field}_total", labels)] == stats[field], (fe, field)
        assert (got[("svcxdp_service_new_flows_total", labels)], got[("svcxdp_service_rejects_total", labels)]) \
            == (new, rejects)
    assert got[("svcxdp_map_entries", (("map", "services"),))] == 2
    assert got[("svcxdp_map_capacity", (("map", "conntrack"),))] == xdp.dp.config.ct_size
    assert got[("svcxdp_map_entries", (("map", "ct_unconfirmed"),))] \
        + got[("svcxdp_map_entries", (("map", "conntrack"),))] >= 4


def test_sync_metrics_use_kube_proxys_names_and_are_served_with_proxy_mode(xdp: Harness):
    registry = CollectorRegistry()
    sync = SyncMetrics(registry)
    sync.synced(SyncReport(added=["a", "b"], changed=["default/c: endpoints 1 -> 2"], took_ms=3.0))
    sync.synced(SyncReport(removed=["a"], failed=["d"], took_ms=20.0))
    got = samples(registry)
    assert got[("kubeproxy_sync_proxy_rules_duration_seconds_count", ())] == 2
    assert got[("kubeproxy_sync_proxy_rules_duration_seconds_bucket", (("le", "0.004"),))] == 1
    assert got[("kubeproxy_sync_proxy_rules_service_changes_total", ())] == 4
    assert got[("kubeproxy_sync_proxy_rules_endpoint_changes_total", ())] == 1
    assert got[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", ())] > 0
    assert got[("svcxdp_sync_failed_services", ())] == 1
    registry.register(DataplaneCollector(xdp.dp))
    server = serve(registry, host="127.0.0.1", port=0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{base}/proxyMode", timeout=5) as r:
            assert r.read() == b"xdp"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "kubeproxy_sync_proxy_rules_duration_seconds_bucket" in text
        assert 'svcxdp_datapath_packets_total{reason="ct_new"}' in text
    finally:
        server.shutdown()
        server.server_close()
