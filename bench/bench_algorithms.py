"""Per-packet cost of a new flow for each backend-selection algorithm, beside the
floor, in one run (BPF_PROG_TEST_RUN, repeat=1 per packet, kernel duration summed;
method and helpers from bench_datapath.py).

Every algorithm has its own service (own VIP, 3 backends of its own, as
bench_datapath's measured service; backends shared between services would make
every new flow write a reply entry as well) in one freshly loaded dataplane of
production sizes, plus `lc-32` (32 backends: the longest least-connections scan)
and `maglev-65537`.
Each measured packet is a SYN of a tuple never seen before, so each one runs the
algorithm, creates one conntrack entry and DNATs. Rounds interleave the floor, the
cold-line ruler and the cases (interleaved.py), so every ratio pairs measurements
taken side by side.

Run:
  .venv/bin/python -m pytest bench/bench_algorithms.py --benchmark-only \
      --benchmark-json=bench/results/algorithms.json
Quick (< 1 min): SVCXDP_BENCH_QUICK=1.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_datapath import BACKEND_PORT, CLIENT_MAC, NODE_MAC, NewFlowFrames, _root_and_bcc  # noqa: E402
from interleaved import BenchDataplane, InterleavedRounds, bench_dataplane  # noqa: E402

QUICK = os.environ.get("SVCXDP_BENCH_QUICK", "") not in ("", "0")
PACKETS = 500 if QUICK else 1_000   # new flows per round and side
ROUNDS = 6 if QUICK else 20
WARMUP = 1
NEW_FLOW_TARGET = 4.0                # the dataplane's new-flow target, × floor
SUITE = "algorithms"
# (case, algorithm, backends, Maglev M)
CASES = [
    ("random", "random", 3, None), ("rr", "rr", 3, None), ("wrr", "wrr", 3, None),
    ("sh", "sh", 3, None), ("dh", "dh", 3, None), ("maglev", "maglev", 3, None),
    ("maglev-65537", "maglev", 3, 65537), ("lc", "lc", 3, None), ("wlc", "wlc", 3, None),
    ("sed", "sed", 3, None), ("nq", "nq", 3, None), ("lc-32", "lc", 32, None),
]


@dataclass
class Env:
    bench: BenchDataplane
    spare: NewFlowFrames                  # tuples for the floor and the ruler
    frames: dict[str, NewFlowFrames] = field(default_factory=dict)


def _states():
    from controlplane.dataplane.model import Backend, Frontend, ServiceState
    out = []
    for i, (case, alg, n, m) in enumerate(CASES):
        # Every service has backends of its own: an address two frontends share
        # makes each new flow write a reply entry too (bpf/conntrack.h).
        ips = tuple(f"10.{200 + i}.{j // 250}.{1 + j % 250}" for j in range(n))
        weights = (3, 2, 1) + (1,) * (n - 3)
        bs = tuple(Backend(ip, BACKEND_PORT, "active", w) for ip, w in zip(ips, weights))
        out.append((case, ServiceState(Frontend(f"10.96.7.{i + 1}", 80, "TCP"), bs, alg, 0, m)))
    return out


def _template(vip: str) -> bytes:
    """bench_datapath's new-flow template towards this case's VIP: its tuples are
    new in every case, since the destination is part of the conntrack key."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src="10.244.128.0", dst=vip, ttl=64, id=1)
                 / TCP(sport=2000, dport=80, flags="S", seq=1000))


@pytest.fixture(scope="module")
def env():
    reason = _root_and_bcc()
    if reason:
        pytest.skip(reason)
    from controlplane.dataplane.config import DataplaneConfig

    with bench_dataplane(DataplaneConfig(instance="bench-alg", pin=False)) as bench:
        e = Env(bench, spare=NewFlowFrames(_template("10.96.6.1")))
        for case, st in _states():
            bench.writer.upsert(st)
            e.frames[case] = NewFlowFrames(_template(st.frontend.vip))
        yield e


@pytest.mark.benchmark(disable_gc=True)
def test_new_flow_per_algorithm(benchmark, env):
    benchmark.group = "new flow per algorithm"
    rounds = InterleavedRounds.of(env.bench, env.frames, env.spare, PACKETS)
    dp = env.bench.dp
    before = dp.counters()
    benchmark.pedantic(rounds.one_round, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    after = dp.counters()
    want = PACKETS * (ROUNDS + WARMUP) * len(CASES)   # the floor's frames never reach the dataplane
    assert after["ct_new"] - before["ct_new"] == want, "not every packet was a new flow"
    for other in ("slot_miss", "maglev_fallback", "reject", "drop_malformed"):
        assert after[other] == before[other], f"unexpected {other}"

    info, lines = rounds.summary(WARMUP, "random", NEW_FLOW_TARGET, width=13)
    benchmark.extra_info.update({"suite": SUITE, **info, "rounds": ROUNDS, "cpu": env.bench.cpu, "quick": QUICK})
    print(f"\nfloor (empty XDP): {info['floor_ns_median']:.1f} ns/pkt\n" + "\n".join(lines))
