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
from controlplane.agent.metrics import AgentNaming, DataplaneCollector, SyncMetrics, naming_of, serve
from controlplane.dataplane import readout
from controlplane.dataplane.config import FLOW_TABLES
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
        labels = (("frontend", f"{fe.vip}:80"), ("protocol", "TCP"), ("scope", "cluster"), ("service", ""))
        stats = xdp.dp.service_stats(xdp.writer.svc_id(fe))
        for field in ("packets", "bytes", "new_flows", "rejects"):
            assert got[(f"svcxdp_service_{field}_total", labels)] == stats[field], (fe, field)
        assert (got[("svcxdp_service_new_flows_total", labels)], got[("svcxdp_service_rejects_total", labels)]) \
            == (new, rejects)
    assert got[("svcxdp_map_entries", (("map", "services"),))] == 2
    assert got[("svcxdp_map_capacity", (("map", "conntrack"),))] == xdp.dp.config.ct_size
    assert sum(got[("svcxdp_map_entries", (("map", name),))] for name in FLOW_TABLES) >= 4


def test_new_flows_per_backend_show_the_spread(xdp: Harness):
    """rr over 3 backends, 7 new flows: 3, 2, 2 — from the backend_stats rows (a row per CPU) the
    datapath counts (bpf lb_count_new), labelled with the agent's names for the ids."""
    fe = Frontend(VIP, 80, "TCP")
    xdp.writer.upsert(ServiceState(fe, tuple(Backend(ip, 8080) for ip in BACKENDS), "rr"))
    sent: dict[str, int] = {}
    for sport in range(22000, 22007):
        out = xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S"))
        sent[out.pkt[IP].dst] = sent.get(out.pkt[IP].dst, 0) + 1
    assert sorted(sent.values()) == [2, 2, 3]
    by_id = readout.backend_new_flows(xdp.dp)
    assert {bid: n for bid, n in by_id.items()} == {xdp.writer.backend_id(fe, ip, 8080): n for ip, n in sent.items()}
    registry = CollectorRegistry()
    registry.register(DataplaneCollector(xdp.dp, lambda: naming_of(xdp.writer.records(), lambda f: "default/web:http")))
    got = samples(registry)
    for ip, n in sent.items():
        labels = (("backend", f"{ip}:8080"), ("frontend", f"{VIP}:80"), ("protocol", "TCP"), ("scope", "cluster"),
                  ("service", "default/web:http"))
        assert got[("svcxdp_backend_new_flows_total", labels)] == n, ip
    assert got[("svcxdp_service_new_flows_total", (("frontend", f"{VIP}:80"), ("protocol", "TCP"),
                                                    ("scope", "cluster"), ("service", "default/web:http")))] == 7
    # removed backends are not exported; an id handed to a new backend starts from zero
    # (every id not in use is given stale counts first, so whichever id it gets had some)
    in_use = set(by_id)
    stale_ids = [i for i in range(xdp.dp.config.max_backends) if i not in in_use]
    readout.backend_rows(xdp.dp).grid()[:, stale_ids] = 5   # every CPU's
    xdp.writer.upsert(ServiceState(fe, (Backend("10.244.2.99", 8080),), "rr"))
    new_id = xdp.writer.backend_id(fe, "10.244.2.99", 8080)
    assert new_id in stale_ids and new_id not in readout.backend_new_flows(xdp.dp)
    got = samples(registry)
    assert not [k for k in got if k[0] == "svcxdp_backend_new_flows_total"]


def test_served_text_is_the_collectors_samples_and_naming_follows_changes(xdp: Harness):
    """/metrics writes the dataplane's samples itself (DataplaneCollector.text); they must be
    exactly what prometheus_client's exposition of collect() gives. AgentNaming names ids
    incrementally from the writer's records: after adds, changes and removals it equals a
    naming built from scratch."""
    class Owner:                       # the agent's side of AgentNaming
        writer = xdp.writer
        owners_version = 0

        @staticmethod
        def owner_of(fe: Frontend) -> str:
            return f'default/"svc"-{fe.vip}:http'      # a quote, escaped in both paths

    naming = AgentNaming(Owner())
    fes = [Frontend(f"10.96.1.{i}", 80, "TCP") for i in range(1, 6)]
    for i, fe in enumerate(fes):
        xdp.writer.upsert(ServiceState(fe, tuple(Backend(f"10.244.3.{i * 10 + j}", 8080) for j in range(3)), "rr"))
    naming()
    xdp.writer.upsert(ServiceState(fes[0], (Backend("10.244.4.1", 8080),), "rr"))     # changed
    xdp.writer.delete(fes[1])                                                          # removed
    xdp.writer.upsert(ServiceState(Frontend("10.96.1.9", 53, "UDP"), (Backend("10.244.4.2", 53),), "random"))
    for sport in range(23000, 23006):
        xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst="10.96.1.3") / TCP(sport=sport, dport=80, flags="S"))
    got = naming()
    want = naming_of(xdp.writer.records(), Owner.owner_of)
    assert (got.services, got.backends) == (want.services, want.backends)
    collector = DataplaneCollector(xdp.dp, naming)
    registry = CollectorRegistry()
    registry.register(collector)

    def served() -> dict:
        parsed = {}
        for family in text_string_to_metric_families(collector.text().decode()):
            for sample in family.samples:
                parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return parsed

    def backend_flows(parsed: dict) -> int:
        return sum(v for (name, _), v in parsed.items() if name == "svcxdp_backend_new_flows_total")

    parsed = served()
    assert parsed == samples(registry)
    assert backend_flows(parsed) == 6
    # The same backends with more flows: the joined lines are reused, the values are new
    for sport in range(23006, 23009):
        xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst="10.96.1.3") / TCP(sport=sport, dport=80, flags="S"))
    parsed = served()
    assert parsed == samples(registry) and backend_flows(parsed) == 9
    # A backend first counted, then the names changed: other lines
    xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst="10.96.1.1") / TCP(sport=23010, dport=80, flags="S"))
    parsed = served()
    assert parsed == samples(registry) and backend_flows(parsed) == 10
    assert ('default/"svc"-10.96.1.1:http', "10.244.4.1:8080") in {
        (dict(labels)["service"], dict(labels)["backend"]) for name, labels in parsed
        if name == "svcxdp_backend_new_flows_total"}
    xdp.writer.upsert(ServiceState(fes[2], tuple(Backend(f"10.244.3.{20 + j}", 8080) for j in range(2)), "rr"))
    parsed = served()
    assert parsed == samples(registry)
    assert not [labels for name, labels in parsed if name == "svcxdp_backend_new_flows_total"
                and dict(labels)["backend"] == "10.244.3.22:8080"]   # removed from the service


def test_sync_metrics_use_kube_proxys_names_and_are_served_with_proxy_mode(xdp: Harness):
    registry = CollectorRegistry()
    sync = SyncMetrics(registry)
    sync.synced(SyncReport(added=["a", "b"], changed=["default/c: endpoints 1 -> 2"], took_ms=3.0))
    sync.synced(SyncReport(removed=["a"], failed=["d"], took_ms=20.0, programming_s=[0.003, 0.7]))
    sync.sync_failed()
    got = samples(registry)
    assert got[("kubeproxy_sync_proxy_rules_duration_seconds_count", ())] == 2
    assert got[("kubeproxy_sync_proxy_rules_duration_seconds_bucket", (("le", "0.004"),))] == 1
    assert got[("kubeproxy_sync_proxy_rules_service_changes_total", ())] == 4
    assert got[("kubeproxy_sync_proxy_rules_endpoint_changes_total", ())] == 1
    assert got[("kubeproxy_sync_proxy_rules_last_timestamp_seconds", ())] > 0
    assert got[("svcxdp_sync_failed_services", ())] == 1
    assert got[("svcxdp_sync_errors_total", ())] == 2          # the frontend that did not fit, the failed sync
    assert got[("kubeproxy_network_programming_duration_seconds_count", ())] == 2
    assert got[("kubeproxy_network_programming_duration_seconds_bucket", (("le", "0.004"),))] == 1
    assert got[("kubeproxy_network_programming_duration_seconds_bucket", (("le", "1.0"),))] == 2
    server = serve(registry, host="127.0.0.1", port=0, dataplane=DataplaneCollector(xdp.dp))
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
