"""The flow hash of csrc/flowhash.h: C (through cffi) against the Python reference."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.maglev import flow, native
from controlplane.maglev import reference as ref

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
u8 = st.integers(0, 0xFF)


@settings(max_examples=3000, deadline=None)
@given(a=u32, b=u32, c=u32, seed=u32)
def test_jhash_3words_c_equals_reference(a, b, c, seed):
    assert native.lib.svcxdp_ffi_jhash_3words(a, b, c, seed) == ref.jhash_3words(a, b, c, seed)


@settings(max_examples=5000, deadline=None)
@given(saddr=u32, sport=u16, dport=u16, proto=u8, seed=u32)
def test_flow_hash_c_equals_reference(saddr, sport, dport, proto, seed):
    assert native.flow_hash_words(saddr, sport, dport, proto, seed) == \
        ref.flow_hash_words(saddr, sport, dport, proto, seed)
    assert native.flow_hash_affinity_words(saddr, dport, proto, seed) == \
        ref.flow_hash_affinity_words(saddr, dport, proto, seed)


@settings(max_examples=2000, deadline=None)
@given(src=st.ip_addresses(v=4), sport=u16, dport=u16, proto=st.sampled_from([6, 17, 132]),
       affinity=st.booleans(), m=st.sampled_from([251, 16381, 65537]))
def test_friendly_api_c_equals_reference(src, sport, dport, proto, affinity, m):
    h = native.flow_hash(src, sport, dport, proto, affinity=affinity)
    assert h == ref.flow_hash(src, sport, dport, proto, affinity=affinity)
    assert native.maglev_slot(h, m) == ref.maglev_slot(h, m) == h % m


@given(saddr=u32, sport=u16, dport=u16, proto=u8)
def test_affinity_is_the_hash_with_source_port_zero(saddr, sport, dport, proto):
    assert native.flow_hash_affinity_words(saddr, dport, proto) == native.flow_hash_words(saddr, 0, dport, proto)


def test_affinity_ignores_source_port():
    hashes = {native.flow_hash("10.244.1.7", sport, 80, 6, affinity=True) for sport in range(30000, 30100)}
    assert len(hashes) == 1


def test_hash_uses_every_field():
    base = native.flow_hash("10.244.1.7", 40000, 80, 6)
    assert native.flow_hash("10.244.1.8", 40000, 80, 6) != base
    assert native.flow_hash("10.244.1.7", 40001, 80, 6) != base
    assert native.flow_hash("10.244.1.7", 40000, 81, 6) != base
    assert native.flow_hash("10.244.1.7", 40000, 80, 17) != base
    assert native.flow_hash("10.244.1.7", 40000, 80, 6, seed=1) != base


def test_sport_and_dport_are_not_interchangeable():
    assert native.flow_hash("10.0.0.1", 80, 443, 6) != native.flow_hash("10.0.0.1", 443, 80, 6)


def test_packet_words_are_the_native_load_of_network_bytes():
    # What the BPF program gets from `ip->saddr` / `tcp->source`: no byte swap.
    assert flow.addr_word("10.1.2.3") == struct.unpack("=I", ipaddress.IPv4Address("10.1.2.3").packed)[0]
    assert flow.port_word(8080) == struct.unpack("=H", (8080).to_bytes(2, "big"))[0]
    ip, sp, dp = "192.0.2.9", 51515, 8080
    assert native.flow_hash(ip, sp, dp, 6) == native.flow_hash_words(
        flow.addr_word(ip), flow.port_word(sp), flow.port_word(dp), 6)


def test_default_seed_agrees_with_header():
    assert native.DEFAULT_FLOW_SEED == flow.DEFAULT_FLOW_SEED == ref.DEFAULT_FLOW_SEED


def test_golden_values():
    # Pinned: every node and the datapath must agree, so a change here is a
    # wire-format change (all agents and BPF programs must move together).
    assert ref.jhash_3words(0, 0, 0, 0) == native.lib.svcxdp_ffi_jhash_3words(0, 0, 0, 0) == GOLDEN_JHASH_ZERO
    assert native.flow_hash_words(0x0100000A, 0x1234, 0x5000, 6, 0) == GOLDEN_FLOW
    assert native.flow_hash_words(0x0100000A, 0, 0x5000, 6, 0) == GOLDEN_FLOW_AFFINITY


def test_hash_spreads_over_a_maglev_table():
    # 20,000 clients of one service over M = 251 slots: every slot is used and
    # none is more than twice as popular as the mean (a sanity check, not a test
    # of randomness).
    m = 251
    counts = [0] * m
    for i in range(20000):
        counts[native.flow_hash_words(0x0A000000 + i, 40000 + i % 1000, 0x5000, 6) % m] += 1
    assert min(counts) > 0
    assert max(counts) < 2 * 20000 / m


GOLDEN_JHASH_ZERO = 459859287
GOLDEN_FLOW = 1568341216
GOLDEN_FLOW_AFFINITY = 1860301137
