"""Maglev table build, M = 65,537 and N = 1,000 (the Maglev paper's 1.8 ms case).

Run: .venv/bin/python -m pytest bench/bench_maglev.py --benchmark-only
"""
from __future__ import annotations

import warnings
from array import array

import pytest

from controlplane.maglev import MaglevBackend, native
from controlplane.maglev import reference as ref

M = 65537
N = 1000


@pytest.fixture(scope="module")
def backends() -> list[MaglevBackend]:
    return [MaglevBackend((f"10.244.{i // 250}.{i % 250 + 1}", 8080), i + 1) for i in range(N)]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # M < 100·N here, as in the paper
        yield


def test_maglev_build_c(benchmark, backends):
    """What the control plane calls: Python wrapper + C."""
    benchmark.group = "maglev M=65537 N=1000"
    table = benchmark(native.build_table, backends, M)
    assert len(table) == M and 0 not in table


def test_maglev_build_c_core(benchmark, backends):
    """The C function alone, arguments prepared once."""
    ffi, lib = native.ffi, native.lib
    keys = [ffi.from_buffer("uint8_t[]", b.key) for b in backends]
    cb = ffi.new("struct svcxdp_maglev_backend[]", N)
    for c, b, k in zip(cb, backends, keys):
        c.key, c.key_len, c.id, c.weight = k, len(b.key), b.backend_id, b.weight
    table = array("I", bytes(4 * M))
    out = ffi.from_buffer("uint32_t[]", table)
    benchmark.group = "maglev M=65537 N=1000"
    assert benchmark(lib.svcxdp_maglev_build, cb, N, M, native.DEFAULT_MAGLEV_SEED, out) == N


def test_maglev_build_python_reference(benchmark, backends):
    benchmark.group = "maglev M=65537 N=1000"
    table = benchmark.pedantic(ref.build_table, args=(backends, M), rounds=5, iterations=1, warmup_rounds=1)
    assert len(table) == M


def test_flow_hash_c(benchmark):
    benchmark.group = "flow hash"
    benchmark(native.flow_hash_words, 0x0100000A, 0x1234, 0x5000, 6)


def test_flow_hash_python_reference(benchmark):
    benchmark.group = "flow hash"
    benchmark(ref.flow_hash_words, 0x0100000A, 0x1234, 0x5000, 6)
