"""svcxdp_agent_gc_pause_seconds (agent/metrics.GcPauses): every run of the cyclic
collector, by generation, as a Prometheus histogram in the agent's registry."""
from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.agent.metrics import GC_PAUSE_BUCKETS, GcPauses


def _histogram(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == "svcxdp_agent_gc_pause_seconds":
            for s in family.samples:
                out[(s.name, s.labels["generation"], s.labels.get("le", ""))] = s.value
    return out


def test_each_collection_is_counted_in_its_generation_with_its_time():
    registry = CollectorRegistry()
    pauses = GcPauses()
    registry.register(pauses)
    try:
        gc.collect(2)
        gc.collect(2)
        gc.collect(0)
        got = _histogram(registry)
    finally:
        pauses.close()
    count = "svcxdp_agent_gc_pause_seconds_count"
    # (a collection the allocations above set off may add to generation 0 or 1)
    assert got[(count, "2", "")] == 2 and got[(count, "0", "")] >= 1
    assert got[("svcxdp_agent_gc_pause_seconds_sum", "2", "")] > 0
    buckets = [got[("svcxdp_agent_gc_pause_seconds_bucket", "2", str(le))] for le in GC_PAUSE_BUCKETS]
    assert buckets == sorted(buckets) and got[("svcxdp_agent_gc_pause_seconds_bucket", "2", "+Inf")] == 2


def test_closed_it_counts_no_more():
    pauses = GcPauses()
    pauses.close()
    gc.collect(2)
    assert pauses.counts[2] == [0] * (len(GC_PAUSE_BUCKETS) + 1)
