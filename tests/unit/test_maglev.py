"""Maglev table population: C (csrc/maglev.c via cffi) against the Python
reference, and the properties the dataplane relies on."""
from __future__ import annotations

import random
import warnings
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.maglev import EMPTY, MaglevBackend, MaglevSizeWarning, native, primes
from controlplane.maglev import reference as ref
from controlplane.maglev.backend import addr_key

pytestmark = pytest.mark.filterwarnings("ignore::controlplane.maglev.primes.MaglevSizeWarning")


def backends(n: int, seed: int = 0, weights=None) -> list[MaglevBackend]:
    rnd = random.Random(seed)
    keys: set[bytes] = set()
    while len(keys) < n:
        keys.add(addr_key(f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
                          rnd.choice([80, 443, 8080])))
    return [MaglevBackend(k, i + 1, 1 if weights is None else weights[i]) for i, k in enumerate(sorted(keys))]


def moved(a, b) -> int:
    return sum(1 for x, y in zip(a, b) if x != y)


# --- C == reference ------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(1, 7), (3, 13), (5, 251), (10, 1021), (37, 4093), (100, 16381), (1000, 65537)])
def test_table_c_equals_reference_unweighted(n, m):
    bs = backends(n, seed=n)
    assert native.build_table(bs, m) == ref.build_table(bs, m)


@pytest.mark.parametrize("weights", [[2, 1, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1000, 1, 1], [5, 0, 3, 0, 1]])
@pytest.mark.parametrize("m", [251, 16381])
def test_table_c_equals_reference_weighted(weights, m):
    bs = backends(len(weights), seed=len(weights), weights=weights)
    assert native.build_table(bs, m) == ref.build_table(bs, m)


backend_sets = st.lists(
    st.tuples(st.binary(min_size=0, max_size=20), st.integers(0, 6)), min_size=0, max_size=12,
    unique_by=lambda t: t[0])


@settings(max_examples=300, deadline=None)
@given(spec=backend_sets, m=st.sampled_from([2, 3, 7, 13, 251, 1021]), seed=st.integers(0, 2**64 - 1))
def test_table_c_equals_reference_random(spec, m, seed):
    bs = [MaglevBackend(key, i + 1, w) for i, (key, w) in enumerate(spec)]
    assert native.build_table(bs, m, seed) == ref.build_table(bs, m, seed)


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=40), seed=st.integers(0, 2**64 - 1),
       m=st.sampled_from([2, 251, 16381, 65537, 16777213]))
def test_key_hash_and_permutation_c_equals_reference(data, seed, m):
    assert native.key_hash64(data, seed) == ref.key_hash64(data, seed)
    offset, skip = native.maglev_perm(data, seed, m)
    assert (offset, skip) == ref.maglev_perm(data, seed, m)
    assert 0 <= offset < m and 1 <= skip < m


def test_default_seed_agrees_with_header():
    assert native.DEFAULT_MAGLEV_SEED == ref.DEFAULT_MAGLEV_SEED


def test_golden_table():
    # Pinned: a change here changes every node's table (all agents must move together).
    bs = [MaglevBackend(("10.244.1.2", 80), 1), MaglevBackend(("10.244.2.2", 80), 2),
          MaglevBackend(("10.244.3.2", 80), 3, weight=2)]
    assert list(native.build_table(bs, 13)) == GOLDEN_13


GOLDEN_13 = [1, 2, 2, 1, 3, 3, 3, 2, 3, 3, 3, 1, 3]


# --- balance -------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(1, 251), (2, 251), (3, 307), (10, 1021), (100, 16381), (163, 16381), (655, 65537)])
def test_unweighted_balance_floor_ceil(n, m):
    assert m >= 100 * n
    counts = Counter(native.build_table(backends(n, seed=n), m))
    assert len(counts) == n and EMPTY not in counts
    assert set(counts.values()) <= {m // n, -(-m // n)}


@pytest.mark.parametrize("weights", [[2, 1, 1], list(range(1, 11)), [1, 1, 1, 5], [100, 3, 7, 50], [7] * 4 + [1] * 8])
@pytest.mark.parametrize("m", [16381, 65537])
def test_weighted_proportions_within_one_percent(weights, m):
    table = native.build_table(backends(len(weights), seed=7, weights=weights), m)
    counts = Counter(table)
    total = sum(weights)
    for i, w in enumerate(weights):
        expected = m * w / total
        assert abs(counts[i + 1] - expected) <= 0.01 * expected, (i, w, counts[i + 1], expected)


def test_scaling_all_weights_changes_nothing():
    bs = backends(20, seed=3)
    scaled = [MaglevBackend(b.key, b.backend_id, 9) for b in bs]
    assert native.build_table(bs, 4093) == native.build_table(scaled, 4093)


def test_more_backends_than_slots_fills_every_slot():
    table = native.build_table(backends(20, seed=1), 13)
    assert len(set(table)) == 13 and EMPTY not in table


# --- disruption ------------------------------------------------------------------
# The bound (1 % of M beyond the unavoidable) holds for M = 65,537
# (the paper's and Katran's size); for smaller tables Maglev moves more
# (measured up to ~2 % at M=16,381/N=160 and ~4.5 % at M=4,093/N=10), which
# the second test pins as a known limit rather than hiding.

@pytest.mark.parametrize("n", [20, 50, 300, 655])
@pytest.mark.parametrize("trial", range(3))
def test_disruption_remove_one(n, trial):
    m = 65537
    bs = backends(n, seed=1000 * n + trial)
    victim = bs[random.Random(trial).randrange(n)]
    before = native.build_table(bs, m)
    after = native.build_table([b for b in bs if b is not victim], m)
    others = sum(1 for x, y in zip(before, after) if x != y and x != victim.backend_id)
    assert victim.backend_id not in after
    assert others <= 0.01 * m


@pytest.mark.parametrize("n", [20, 50, 300, 655])
@pytest.mark.parametrize("trial", range(3))
def test_disruption_add_one(n, trial):
    m = 65537
    bs = backends(n + 1, seed=2000 * n + trial)
    newcomer = bs.pop(random.Random(trial).randrange(n + 1))
    before = native.build_table(bs, m)
    after = native.build_table(bs + [newcomer], m)
    assert moved(before, after) <= -(-m // (n + 1)) + 0.01 * m


@pytest.mark.parametrize("n,m", [(10, 1021), (10, 4093), (40, 4093), (100, 16381), (160, 16381)])
def test_disruption_small_tables_known_limit(n, m):
    bs = backends(n + 1, seed=n + m)
    newcomer = bs.pop()
    base = native.build_table(bs, m)
    removed = native.build_table(bs[1:], m)
    added = native.build_table(bs + [newcomer], m)
    others = sum(1 for x, y in zip(base, removed) if x != y and x != bs[0].backend_id)
    assert others <= 0.05 * m
    assert moved(base, added) <= -(-m // (n + 1)) + 0.05 * m


# --- determinism and edge cases ------------------------------------------------

def test_input_order_does_not_matter():
    bs = backends(50, seed=5, weights=[1 + i % 4 for i in range(50)])
    table = native.build_table(bs, 16381)
    for s in range(5):
        shuffled = bs[:]
        random.Random(s).shuffle(shuffled)
        assert native.build_table(shuffled, 16381) == table
        assert ref.build_table(shuffled, 16381) == table


def test_ids_only_label_the_slots():
    # Node-local ids may differ between nodes; the same endpoint still gets the same slots.
    bs = backends(30, seed=9)
    relabel = {b.backend_id: 1000 + 7 * b.backend_id for b in bs}
    other = [MaglevBackend(b.key, relabel[b.backend_id]) for b in bs]
    assert list(native.build_table(other, 4093)) == [relabel[x] for x in native.build_table(bs, 4093)]


@pytest.mark.parametrize("impl", [native, ref])
def test_no_backends_gives_an_empty_table(impl):
    assert list(impl.build_table([], 251)) == [EMPTY] * 251
    assert list(impl.build_table([MaglevBackend(b"a", 1, 0), MaglevBackend(b"b", 2, 0)], 251)) == [EMPTY] * 251


@pytest.mark.parametrize("impl", [native, ref])
def test_weight_zero_is_left_out(impl):
    bs = backends(6, seed=6)
    drained = bs[:3] + [MaglevBackend(bs[3].key, bs[3].backend_id, 0)] + bs[4:]
    table = impl.build_table(drained, 1021)
    assert bs[3].backend_id not in table
    assert table == impl.build_table(bs[:3] + bs[4:], 1021)


@pytest.mark.parametrize("impl", [native, ref])
@pytest.mark.parametrize("m", [0, 1, 4, 9, 65536, 16381 * 3, 2**24 + 1, 2**31 - 1])
def test_invalid_table_size_raises(impl, m):
    with pytest.raises(ValueError, match="table size"):
        impl.build_table(backends(2), m)


@pytest.mark.parametrize("m", [16381.0, "16381", True, None])
def test_non_integer_table_size_raises(m):
    with pytest.raises(ValueError, match="table size"):
        primes.validate_table_size(m)


def test_c_rejects_bad_size_by_itself():
    table = native.ffi.new("uint32_t[]", 9)
    assert native.lib.svcxdp_maglev_build(native.ffi.NULL, 0, 9, 0, table) == native.lib.SVCXDP_MAGLEV_EINVAL_M


def test_small_table_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaglevSizeWarning)
        native.build_table(backends(10), 1021)  # 1021 >= 100 * 10: no warning
        with pytest.raises(MaglevSizeWarning, match="below 100"):
            native.build_table(backends(11), 1021)
    assert primes.size_warning(16381, 200) is not None
    assert primes.size_warning(16381, 163) is None


def test_recommended_size():
    assert primes.recommended_size(10) == 1021
    assert primes.recommended_size(160) == 16381
    assert primes.recommended_size(2000) == 200003
    assert all(primes.is_prime(m) for m in primes.RECOMMENDED_SIZES)
    assert primes.DEFAULT_TABLE_SIZE in primes.RECOMMENDED_SIZES


@pytest.mark.parametrize("impl", [native, ref])
def test_duplicate_key_raises(impl):
    with pytest.raises(ValueError, match="duplicate backend key"):
        impl.build_table([MaglevBackend(("10.0.0.1", 80), 1), MaglevBackend(("10.0.0.1", 80), 2)], 251)


def test_backend_validation():
    with pytest.raises(ValueError, match="reserved"):
        MaglevBackend(b"k", 0)
    with pytest.raises(ValueError):
        MaglevBackend(b"k", 1, -1)
    with pytest.raises(TypeError):
        MaglevBackend("10.0.0.1:80", 1)  # type: ignore[arg-type]
    assert MaglevBackend(("10.0.0.1", 80), 1).key == bytes([10, 0, 0, 1, 0, 80])


def test_predict_backend_uses_the_flow_hash_slot():
    table = native.build_table(backends(5), 251)
    h = native.flow_hash("192.0.2.1", 40000, 80, 6)
    assert native.predict_backend(table, "192.0.2.1", 40000, 80, 6) == table[h % 251]
