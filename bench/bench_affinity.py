"""Per-packet cost of a new flow of a ClientIP-affinity service, with 1,000,000
affinity entries present, beside the floor, in one run (BPF_PROG_TEST_RUN,
repeat=1 per packet, kernel duration summed; helpers from bench_datapath.py).

Cases, each a SYN of a tuple never seen before (so conntrack always inserts):
  none  the same service shape without affinity (random over 3 backends): the
        plain new flow, for the difference
  hit   a client with a live entry: affinity lookup, match-set check, refresh;
        no selection. Clients are spread over the 1,000,000 entries, so the
        lookups are not cache-hot
  hit_hot  the same, but from 64 clients only (entries cache-hot): what the hit
        costs in instructions rather than in cache misses
  miss  a client with no entry: lookup, selection, insert into the LRU map
Rounds interleave the floor, the cold-line ruler and the cases, rotating their
order (interleaved.py), so every ratio pairs measurements taken side by side. The dataplane has production sizes
except affinity_size = 1,048,576 (the default 262,144 cannot hold a million).

Run:
  .venv/bin/python -m pytest bench/bench_affinity.py --benchmark-only -s \
      --benchmark-json=bench/results/affinity.json
Quick (< 1 min): SVCXDP_BENCH_QUICK=1.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_datapath import (BACKEND_PORT, BACKENDS, CLIENT_MAC, NODE_MAC,  # noqa: E402
                            NewFlowFrames, _root_and_bcc, batch_fill)
from interleaved import BenchDataplane, InterleavedRounds, bench_dataplane  # noqa: E402

QUICK = os.environ.get("SVCXDP_BENCH_QUICK", "") not in ("", "0")
ENTRIES = 1_000_000
AFFINITY_SIZE = 1_048_576
PACKETS = 500 if QUICK else 1_000   # new flows per round and case
ROUNDS = 6 if QUICK else 20
WARMUP = 1
NEW_FLOW_TARGET = 4.0                # the dataplane's new-flow target, × floor
SUITE = "affinity"
VIP_NONE, VIP_AFF = "10.96.8.1", "10.96.8.2"
FILLED_BASE = 172 << 24 | 16 << 16   # clients with entries: 172.16.0.0/12
FRESH_BASE = 10 << 24 | 128 << 16    # clients never seen: 10.128.0.0/9
CASES = ("none", "hit", "hit_hot", "miss")
HOT = 64


def syn_template(vip: str) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src="1.1.1.1", dst=vip, ttl=64, id=1)
                 / TCP(sport=2000, dport=80, flags="S", seq=1000))


def filled_client(i: int) -> tuple[int, int]:
    """Strides over the million filled clients (7919 is prime to 10^6)."""
    return FILLED_BASE + (i * 7919) % ENTRIES, 2000 + i // ENTRIES


def hot_client(i: int) -> tuple[int, int]:
    return FILLED_BASE + i % HOT, 10000 + i // HOT


def fresh_client(i: int) -> tuple[int, int]:
    return FRESH_BASE + i, 2000


def fill_affinity(table, svc_id: int, backend_id: int, gen: int, now_ns: int) -> None:
    """ENTRIES live entries (one backend), written by BPF_MAP_UPDATE_BATCH; rows packed
    with the map's own Key/Leaf types (packing.Packer, from bpf/svcxdp.h via bcc)."""
    from controlplane.dataplane.packing import Packer
    keys = Packer(table.Key, ("svc_id", "client")).array(
        (svc_id, int.from_bytes((FILLED_BASE + i).to_bytes(4, "big"), "little")) for i in range(ENTRIES))
    values = Packer(table.Leaf, ("last_used", "backend_id", "gen")).array(
        (now_ns, backend_id, gen) for _ in range(ENTRIES))
    batch_fill(table, keys, values)


@dataclass
class Env:
    bench: BenchDataplane
    frames: dict[str, NewFlowFrames]   # per case, and "floor": tuples for the floor and the ruler
    present: int                       # affinity entries when the run starts


@pytest.fixture(scope="module")
def env():
    reason = _root_and_bcc()
    if reason:
        pytest.skip(reason)
    from controlplane.dataplane.affinity_maps import coarse_now_ns, count_entries
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.model import Backend, Frontend, ServiceState

    with bench_dataplane(DataplaneConfig(instance="bench-aff", pin=False, affinity_size=AFFINITY_SIZE)) as bench:
        dp, writer = bench.dp, bench.writer
        # Backends of its own for each service: an address two frontends share makes
        # every new flow write a reply entry as well (bpf/conntrack.h).
        writer.upsert(ServiceState(Frontend(VIP_NONE, 80),
                                   tuple(Backend(f"10.201.0.{i}", BACKEND_PORT) for i in (1, 2, 3)),
                                   "random", 0))
        bs = tuple(Backend(ip, BACKEND_PORT) for ip in BACKENDS)
        aff = ServiceState(Frontend(VIP_AFF, 80), bs, "random", 10800)
        svc_id = writer.upsert(aff)
        fill_affinity(dp.table("affinity"), svc_id, writer.backend_id(aff.frontend, BACKENDS[0], BACKEND_PORT),
                      writer.affinity_gen(aff.frontend), coarse_now_ns())
        present = count_entries(dp.table("affinity"))
        assert present >= ENTRIES, f"affinity map holds {present} < {ENTRIES}"
        frames = {"floor": NewFlowFrames(syn_template(VIP_NONE), fresh_client),
                  "none": NewFlowFrames(syn_template(VIP_NONE), fresh_client),
                  "hit": NewFlowFrames(syn_template(VIP_AFF), filled_client),
                  "hit_hot": NewFlowFrames(syn_template(VIP_AFF), hot_client),
                  "miss": NewFlowFrames(syn_template(VIP_AFF), fresh_client)}
        # floor/none share fresh clients with miss but another VIP: distinct tuples.
        frames["miss"].next = 4_000_000
        yield Env(bench, frames, present)


@pytest.mark.benchmark(disable_gc=True)
def test_new_flow_with_affinity(benchmark, env):
    benchmark.group = "new flow with ClientIP affinity, 1,000,000 entries"
    cases = {c: env.frames[c] for c in CASES}
    rounds = InterleavedRounds.of(env.bench, cases, env.frames["floor"], PACKETS)
    dp = env.bench.dp
    before = dp.counters()
    benchmark.pedantic(rounds.one_round, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    after = dp.counters()
    n = PACKETS * (ROUNDS + WARMUP)
    assert after["ct_new"] - before["ct_new"] == len(CASES) * n, "not every packet was a new flow"
    assert after["affinity_hit"] - before["affinity_hit"] == 2 * n, "not every hit-case packet hit"
    assert after["affinity_new"] - before["affinity_new"] == n, "not every miss-case packet inserted"
    for other in ("affinity_expired", "affinity_stale", "slot_miss", "reject", "drop_malformed"):
        assert after[other] == before[other], f"unexpected {other}"

    info, lines = rounds.summary(WARMUP, "none", NEW_FLOW_TARGET, width=7)
    benchmark.extra_info.update({
        "suite": SUITE, **info, "affinity_entries": env.present, "affinity_size": AFFINITY_SIZE,
        "rounds": ROUNDS, "cpu": env.bench.cpu, "quick": QUICK, "load_avg_1m": os.getloadavg()[0],
    })
    print(f"\nfloor (empty XDP): {info['floor_ns_median']:.1f} ns/pkt; affinity entries present at "
          f"start: {env.present}\n" + "\n".join(lines))
