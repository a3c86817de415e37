"""sessionAffinity: ClientIP in the XDP program (bpf/affinity.h), through
BPF_PROG_TEST_RUN: stickiness, expiry on the datapath's clock, the match set
(removed and terminating backends are never chosen through affinity), switching
None <-> ClientIP, timeout changes, UDP, per-frontend entries, every selection
algorithm, and LRU eviction counted."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controlplane.dataplane.affinity_maps import AffinityStats, affinity_stats, coarse_now_ns, live_entries
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.layout import ALGORITHMS
from controlplane.dataplane.libbpf import lib
from controlplane.dataplane.pinned import PinnedMaps
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import MapWriter

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta

VIP2 = "10.96.0.101"


def svc(algorithm: str = "rr", timeout: int = 30, backends=BACKENDS, states=None, vip=VIP,
        protocol: str = "TCP", weights=None) -> ServiceState:
    states = states or {}
    weights = weights or {}
    bs = tuple(Backend(ip, 8080, states.get(ip, "active"), weights.get(ip, 1)) for ip in backends)
    return ServiceState(Frontend(vip, 80, protocol), bs, algorithm, timeout)


def new_flow(xdp: Harness, sport: int, client: str = CLIENT, vip: str = VIP, udp: bool = False) -> str:
    """A new connection's first packet; returns the backend it was sent to."""
    l4 = UDP(sport=sport, dport=80) if udp else TCP(sport=sport, dport=80, flags="S")
    out = xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=client, dst=vip) / l4)
    assert out.verdict == "XDP_PASS", out.verdict
    return out.pkt[IP].dst


def affinity_counts(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in delta(before, after).items() if k.startswith("affinity_")}


@pytest.fixture
def aff(xdp: Harness):
    # The harness's reset empties the affinity map before and after every test (an
    # expired entry left by test_algorithms once made a fresh choice count as "expired").
    yield xdp


def test_one_client_sticks_across_many_source_ports(aff: Harness):
    aff.writer.upsert(svc("random"))
    before = aff.counters()
    seen = {new_flow(aff, 20000 + i) for i in range(60)}
    assert len(seen) == 1
    assert affinity_counts(before, aff.counters()) == {"affinity_new": 1, "affinity_hit": 59}
    # Other clients still spread: stickiness is per client address.
    others = {new_flow(aff, 40000, client=f"10.244.1.{20 + i}") for i in range(40)}
    assert len(others) > 1


def test_without_affinity_the_same_client_spreads(aff: Harness):
    aff.writer.upsert(svc("rr", timeout=0))
    before = aff.counters()
    assert {new_flow(aff, 20000 + i) for i in range(6)} == set(BACKENDS)
    assert affinity_counts(before, aff.counters()) == {}


def test_entry_expires_after_the_timeout_and_selects_afresh(aff: Harness):
    aff.writer.upsert(svc("rr", timeout=1))
    first = new_flow(aff, 20000)
    assert new_flow(aff, 20001) == first
    time.sleep(2.1)
    before = aff.counters()
    second = new_flow(aff, 20002)
    # rr moved on: the fresh selection is the next backend, and it is remembered.
    assert second != first
    assert new_flow(aff, 20003) == second
    assert affinity_counts(before, aff.counters()) == {"affinity_expired": 1, "affinity_hit": 1}


def test_packets_of_an_open_flow_do_not_refresh_the_timer(aff: Harness):
    """kube-proxy's semantics: only new connections refresh the entry."""
    aff.writer.upsert(svc("rr", timeout=1))
    first = new_flow(aff, 20000)
    ack = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=20000, dport=80, flags="A")
    for _ in range(6):
        assert aff.send(ack).pkt[IP].dst == first
        time.sleep(0.35)
    before = aff.counters()
    assert new_flow(aff, 20001) != first
    assert affinity_counts(before, aff.counters()) == {"affinity_expired": 1}


def test_each_new_connection_refreshes_the_timer(aff: Harness):
    aff.writer.upsert(svc("rr", timeout=1))
    first = new_flow(aff, 20000)
    for i in range(4):  # 2.4 s in all, never 1 s idle
        time.sleep(0.6)
        assert new_flow(aff, 20001 + i) == first


def test_timeout_change_applies_to_existing_entries(aff: Harness):
    aff.writer.upsert(svc("rr", timeout=1))
    first = new_flow(aff, 20000)
    gen = aff.writer.affinity_gen(Frontend(VIP, 80))
    aff.writer.upsert(svc("rr", timeout=100))  # longer: the entry outlives the old timeout
    assert aff.writer.affinity_gen(Frontend(VIP, 80)) == gen
    time.sleep(1.5)
    assert new_flow(aff, 20001) == first
    time.sleep(1.2)
    aff.writer.upsert(svc("rr", timeout=1))  # shorter: the same entry is now too old
    before = aff.counters()
    assert new_flow(aff, 20002) != first
    assert affinity_counts(before, aff.counters()) == {"affinity_expired": 1}


def test_removed_backend_is_never_chosen_and_the_client_rebalances(aff: Harness):
    aff.writer.upsert(svc("random"))
    first = new_flow(aff, 20000)
    rest = tuple(b for b in BACKENDS if b != first)
    aff.writer.upsert(svc("random", backends=rest))
    before = aff.counters()
    second = new_flow(aff, 20001)
    assert second in rest
    assert {new_flow(aff, 20002 + i) for i in range(10)} == {second}
    assert affinity_counts(before, aff.counters()) == {"affinity_stale": 1, "affinity_hit": 10}
    # It comes back (a new backend id): the client stays where it was rebalanced.
    aff.writer.upsert(svc("random"))
    assert new_flow(aff, 20100) == second


def test_terminating_backend_is_left_for_new_connections(aff: Harness):
    aff.writer.upsert(svc("random"))
    first = new_flow(aff, 20000)
    aff.writer.upsert(svc("random", states={first: "terminating"}))
    before = aff.counters()
    second = new_flow(aff, 20001)
    assert second != first
    assert {new_flow(aff, 20002 + i) for i in range(10)} == {second}
    assert affinity_counts(before, aff.counters()) == {"affinity_stale": 1, "affinity_hit": 10}


def test_when_only_terminating_backends_remain_affinity_still_holds(aff: Harness):
    """kube-proxy's fallback: nothing ready, so the terminating ones take new flows;
    they are then the match set."""
    aff.writer.upsert(svc("random"))
    first = new_flow(aff, 20000)
    aff.writer.upsert(svc("random", states={b: "terminating" for b in BACKENDS}))
    before = aff.counters()
    assert {new_flow(aff, 20001 + i) for i in range(10)} == {first}
    assert affinity_counts(before, aff.counters()) == {"affinity_hit": 10}


def test_switching_none_and_back_to_client_ip(aff: Harness):
    fe = Frontend(VIP, 80)
    aff.writer.upsert(svc("rr"))
    first = new_flow(aff, 20000)
    assert new_flow(aff, 20001) == first
    assert [s.client for s in live_entries(aff.dp)] == [CLIENT]
    # None: new connections spread at once; the entries are dropped.
    aff.writer.upsert(svc("rr", timeout=0))
    assert aff.writer.affinity_gen(fe) == 0
    assert {new_flow(aff, 20010 + i) for i in range(6)} == set(BACKENDS)
    assert live_entries(aff.dp) == []
    # ClientIP again: a new period, the old entry is not honoured.
    aff.writer.upsert(svc("rr"))
    before = aff.counters()
    again = new_flow(aff, 20100)
    assert {new_flow(aff, 20101 + i) for i in range(5)} == {again}
    assert affinity_counts(before, aff.counters()) == {"affinity_expired": 1, "affinity_hit": 5}


def test_udp_is_sticky_too(aff: Harness):
    aff.writer.upsert(svc("random", protocol="UDP"))
    before = aff.counters()
    assert len({new_flow(aff, 30000 + i, udp=True) for i in range(30)}) == 1
    assert affinity_counts(before, aff.counters()) == {"affinity_new": 1, "affinity_hit": 29}


def test_two_services_do_not_share_entries(aff: Harness):
    aff.writer.upsert(svc("rr"))
    aff.writer.upsert(svc("rr", vip=VIP2))
    before = aff.counters()
    a = new_flow(aff, 20000)
    b = new_flow(aff, 20001, vip=VIP2)
    assert affinity_counts(before, aff.counters()) == {"affinity_new": 2}
    assert {new_flow(aff, 20002 + i) for i in range(5)} == {a}
    assert {new_flow(aff, 20010 + i, vip=VIP2) for i in range(5)} == {b}
    assert sorted(str(s.frontend) for s in live_entries(aff.dp)) == \
        [f"{VIP}:80/TCP", f"{VIP2}:80/TCP"]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_affinity_with_every_algorithm(aff: Harness, algorithm: str):
    weights = {BACKENDS[0]: 3} if algorithm in ("wrr", "wlc", "sed", "nq") else None
    aff.writer.upsert(svc(algorithm, weights=weights))
    before = aff.counters()
    # lc family: each flow is counted on its backend, so without affinity the
    # next flows would go elsewhere; rr/wrr would rotate.
    assert len({new_flow(aff, 20000 + i) for i in range(20)}) == 1
    assert affinity_counts(before, aff.counters()) == {"affinity_new": 1, "affinity_hit": 19}
    spread = {new_flow(aff, 40000, client=f"10.244.3.{10 + i}") for i in range(30)}
    if algorithm != "dh":  # dh hashes the destination: one VIP, one backend
        assert len(spread) > 1


def test_live_entries_show_backend_and_remaining_time(aff: Harness):
    aff.writer.upsert(svc("rr", timeout=30))
    first = new_flow(aff, 20000)
    new_flow(aff, 20000, client="10.244.1.99")
    entries = live_entries(aff.dp)
    assert [e.client for e in entries] == [CLIENT, "10.244.1.99"]
    assert entries[0].backend == (first, 8080)
    assert all(28.5 < e.remaining_s <= 30 for e in entries)
    aff.writer.upsert(svc("rr", timeout=30, backends=tuple(b for b in BACKENDS if b != first)))
    assert live_entries(aff.dp)[0].backend is None  # left: rebalanced on next flow


def test_pinned_maps_read_the_same_entries_as_the_loaded_program(aff: Harness):
    """`svcctl get affinity` reads the pins with types from the maps' BTF (pinned.py),
    never building the program: it must see exactly what bcc's types see."""
    aff.writer.upsert(svc("rr", timeout=30))
    aff.writer.upsert(svc("random", timeout=5, vip=VIP2))
    new_flow(aff, 20000)
    new_flow(aff, 20000, client="10.244.1.99")
    new_flow(aff, 20001, vip=VIP2)
    pins = Path("/sys/fs/bpf/svcxdp") / f"pytest-pinned-{os.getpid()}"
    pins.mkdir(parents=True, exist_ok=True)
    names = ("services", "backends", "affinity")
    try:
        for name in names:
            assert lib().bpf_obj_pin(aff.dp.table(name).map_fd, str(pins / name).encode()) == 0
        maps = PinnedMaps(pins)
        try:
            now = coarse_now_ns()
            assert len(live_entries(aff.dp, now_ns=now)) == 3
            assert live_entries(maps, now_ns=now) == live_entries(aff.dp, now_ns=now)
            for name in names:
                ours, theirs = maps.table(name), aff.dp.table(name)
                got = {bytes(k): bytes(v) for k, v in ours.items()}
                assert got == {bytes(k): bytes(v) for k, v in theirs.items()}, name
        finally:
            maps.close()
    finally:
        for name in names:
            (pins / name).unlink(missing_ok=True)
        pins.rmdir()


def test_adopting_writer_keeps_the_period(aff: Harness):
    aff.writer.upsert(svc("rr"))
    first = new_flow(aff, 20000)
    gen = aff.writer.affinity_gen(Frontend(VIP, 80))
    adopted = MapWriter(aff.dp)
    assert adopted.affinity_gen(Frontend(VIP, 80)) == gen
    adopted.upsert(svc("rr", timeout=60))  # timeout change after a restart: same period
    assert new_flow(aff, 20001) == first
    adopted.upsert(svc("rr", vip=VIP2))  # a new service's period is one never used
    assert adopted.affinity_gen(Frontend(VIP2, 80)) > gen


def test_full_map_evicts_and_the_evictions_are_counted():
    dp = Dataplane.load(DataplaneConfig(instance="pytest-aff", pin=False, ct_size=16384, frag_size=256,
                                        max_services=64, max_backends=256, max_slots=256,
                                        affinity_size=512))
    try:
        h = Harness(dp)
        h.writer.upsert(svc("random"))
        clients = [f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(4000)]
        for i, c in enumerate(clients):
            new_flow(h, 1024 + i % 60000, client=c)
        stats = affinity_stats(dp)
        assert stats.capacity == 512
        assert stats.inserted == 4000
        assert stats.entries <= 512
        assert stats.evicted == 4000 - stats.entries >= 3488
        # The first client's entry is long gone: its next flow inserts anew.
        before = dp.counters()
        new_flow(h, 65000, client=clients[0])
        assert affinity_counts(before, dp.counters()) == {"affinity_new": 1}
    finally:
        dp.close()


def test_evicted_is_inserts_minus_entries():
    assert AffinityStats(capacity=10, entries=10, inserted=25).evicted == 15
    assert AffinityStats(capacity=10, entries=3, inserted=3).evicted == 0
