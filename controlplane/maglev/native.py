"""Typed wrappers over the C in csrc/ (cffi module controlplane._csrc).

These are what the control plane calls: the same flow hash the XDP program
computes, and the Maglev table every node builds identically.
"""
from __future__ import annotations

import ipaddress
from array import array
from collections.abc import Sequence
from itertools import accumulate

from controlplane._csrc import ffi, lib

from .backend import EMPTY, MaglevBackend, active_sorted
from .flow import addr_word, port_word
from .primes import validate_table_size

DEFAULT_FLOW_SEED: int = lib.SVCXDP_FLOW_HASH_SEED_DEFAULT
DEFAULT_MAGLEV_SEED: int = lib.SVCXDP_MAGLEV_SEED_DEFAULT
assert EMPTY == lib.SVCXDP_MAGLEV_EMPTY

_ERRORS = {
    lib.SVCXDP_MAGLEV_EINVAL_M: "table size must be a prime in 2..2^24",
    lib.SVCXDP_MAGLEV_EINVAL_ID: "backend id 0 is reserved for empty slots",
    lib.SVCXDP_MAGLEV_EDUP_KEY: "two backends share a key",
    lib.SVCXDP_MAGLEV_ENOMEM: "out of memory",
    lib.SVCXDP_MAGLEV_EINVAL_ARG: "invalid argument",
}


# --- flow hash ---------------------------------------------------------------

def flow_hash_words(saddr: int, sport: int, dport: int, proto: int, seed: int = DEFAULT_FLOW_SEED) -> int:
    """svcxdp_flow_hash() on packet words (see controlplane.maglev.flow)."""
    return lib.svcxdp_ffi_flow_hash(saddr, sport, dport, proto, seed)


def flow_hash_affinity_words(saddr: int, dport: int, proto: int, seed: int = DEFAULT_FLOW_SEED) -> int:
    """svcxdp_flow_hash_affinity(): ClientIP affinity, source port left out."""
    return lib.svcxdp_ffi_flow_hash_affinity(saddr, dport, proto, seed)


def flow_hash(src: str | ipaddress.IPv4Address, sport: int, dport: int, proto: int,
              seed: int = DEFAULT_FLOW_SEED, *, affinity: bool = False) -> int:
    """Hash of a flow given as Python values (dotted address, host-order ports)."""
    if affinity:
        return flow_hash_affinity_words(addr_word(src), port_word(dport), proto, seed)
    return flow_hash_words(addr_word(src), port_word(sport), port_word(dport), proto, seed)


def maglev_slot(hash_: int, m: int) -> int:
    return lib.svcxdp_ffi_maglev_slot(hash_, m)


def predict_backend(table: Sequence[int], src: str | ipaddress.IPv4Address, sport: int, dport: int,
                    proto: int, seed: int = DEFAULT_FLOW_SEED, *, affinity: bool = False) -> int:
    """The backend id the datapath picks for a new flow from this table (EMPTY = drop)."""
    return table[maglev_slot(flow_hash(src, sport, dport, proto, seed, affinity=affinity), len(table))]


# --- Maglev ------------------------------------------------------------------

def key_hash64(data: bytes, seed: int) -> int:
    return lib.svcxdp_key_hash64(data, len(data), seed)


def maglev_perm(key: bytes, seed: int, m: int) -> tuple[int, int]:
    off = ffi.new("uint32_t *")
    skip = ffi.new("uint32_t *")
    lib.svcxdp_maglev_perm(key, len(key), seed, m, off, skip)
    return off[0], skip[0]


def build_table(backends: Sequence[MaglevBackend], m: int, seed: int = DEFAULT_MAGLEV_SEED) -> array:
    """Maglev table of m backend ids (array('I')); all EMPTY without active backends.

    Raises ValueError for an invalid m or a duplicate key; warns
    (MaglevSizeWarning) when m < 100·N.
    """
    active = [b for b in backends if b.weight > 0]  # C sorts; no Python sort on the hot path
    validate_table_size(m, len(active))
    offsets = array("I", [0])
    offsets.extend(accumulate(len(b.key) for b in active))
    blob = b"".join(b.key for b in active) + b"\0"  # never empty, so never a NULL buffer
    ids = array("I", [b.backend_id for b in active])
    weights = array("I", [b.weight for b in active])
    table = array("I", bytes(4 * m))
    rc = lib.svcxdp_maglev_build_flat(
        ffi.from_buffer("uint8_t[]", blob), _u32(offsets), _u32(ids), _u32(weights),
        len(active), m, seed, _u32(table))
    if rc == lib.SVCXDP_MAGLEV_EDUP_KEY:
        active_sorted(active)  # raises with the keys and ids named
    if rc < 0:
        raise ValueError(f"maglev build failed: {_ERRORS.get(rc, rc)}")
    return table


def _u32(a: array):
    return ffi.from_buffer("uint32_t[]", a)
