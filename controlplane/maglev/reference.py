"""Pure-Python twin of csrc/flowhash.h and csrc/maglev.c.

It exists so the tests can check the C code against an independent, readable
version; the control plane uses controlplane.maglev.native. Every step mirrors
the C source: change both or neither.
"""
from __future__ import annotations

import ipaddress
from array import array
from collections.abc import Sequence

from .backend import EMPTY, MaglevBackend, active_sorted
from .flow import DEFAULT_FLOW_SEED, addr_word, port_word
from .primes import validate_table_size

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
JHASH_INITVAL = 0xDEADBEEF

K1 = 0x9E3779B97F4A7C15
K2 = 0xC2B2AE3D27D4EB4F
K3 = 0x165667B19E3779F9
SKIP_SEED_XOR = 0x27D4EB2F165667C5
DEFAULT_MAGLEV_SEED = 0x7376637864700001  # SVCXDP_MAGLEV_SEED_DEFAULT


# --- flow hash (csrc/flowhash.h) -------------------------------------------

def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def jhash_3words(a: int, b: int, c: int, seed: int) -> int:
    init = (JHASH_INITVAL + (3 << 2) + seed) & M32
    a = (a + init) & M32
    b = (b + init) & M32
    c = (c + init) & M32
    c ^= b; c = (c - _rol32(b, 14)) & M32  # noqa: E702 - one line per lookup3 step
    a ^= c; a = (a - _rol32(c, 11)) & M32  # noqa: E702
    b ^= a; b = (b - _rol32(a, 25)) & M32  # noqa: E702
    c ^= b; c = (c - _rol32(b, 16)) & M32  # noqa: E702
    a ^= c; a = (a - _rol32(c, 4)) & M32  # noqa: E702
    b ^= a; b = (b - _rol32(a, 14)) & M32  # noqa: E702
    c ^= b; c = (c - _rol32(b, 24)) & M32  # noqa: E702
    return c


def flow_hash_words(saddr: int, sport: int, dport: int, proto: int, seed: int = DEFAULT_FLOW_SEED) -> int:
    """svcxdp_flow_hash(): arguments are packet words (see controlplane.maglev.flow)."""
    ports = ((sport & 0xFFFF) << 16) | (dport & 0xFFFF)
    return jhash_3words(saddr & M32, ports, proto & 0xFF, seed & M32)


def flow_hash_affinity_words(saddr: int, dport: int, proto: int, seed: int = DEFAULT_FLOW_SEED) -> int:
    """svcxdp_flow_hash_affinity(): the source port is hashed as 0."""
    return flow_hash_words(saddr, 0, dport, proto, seed)


def flow_hash(src: str | ipaddress.IPv4Address, sport: int, dport: int, proto: int,
              seed: int = DEFAULT_FLOW_SEED, *, affinity: bool = False) -> int:
    """Hash of a flow given as Python values (dotted address, host-order ports)."""
    return flow_hash_words(addr_word(src), 0 if affinity else port_word(sport), port_word(dport), proto, seed)


def maglev_slot(hash_: int, m: int) -> int:
    return hash_ % m


# --- Maglev (csrc/maglev.c) -------------------------------------------------

def _fmix64(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    x ^= x >> 33
    return x


def key_hash64(data: bytes, seed: int) -> int:
    """svcxdp_key_hash64(): fmix64 chained over 8-byte little-endian words."""
    n = len(data)
    h = (seed ^ (n * K1)) & M64
    for i in range(0, n, 8):
        h = _fmix64(h ^ int.from_bytes(data[i:i + 8], "little") ^ K2)
    return _fmix64(h ^ K3)


def maglev_perm(key: bytes, seed: int, m: int) -> tuple[int, int]:
    """(offset, skip) of a backend's permutation of range(m)."""
    offset = key_hash64(key, seed) % m
    skip = key_hash64(key, seed ^ SKIP_SEED_XOR) % (m - 1) + 1
    return offset, skip


def build_table(backends: Sequence[MaglevBackend], m: int, seed: int = DEFAULT_MAGLEV_SEED) -> array:
    """Maglev table of m backend ids (array('I')); all EMPTY without active backends."""
    active = active_sorted(list(backends))
    validate_table_size(m, len(active))
    if not active:
        return array("I", [EMPTY]) * m

    perms = [maglev_perm(b.key, seed, m) for b in active]
    pos = [p[0] for p in perms]
    skip = [p[1] for p in perms]
    weight = [b.weight for b in active]
    max_w = max(weight)
    cum = [0] * len(active)
    owner = [-1] * m  # index into active; -1 = free
    filled = 0

    # A backend takes a turn each time its accumulated weight reaches max_w.
    while True:
        for i in range(len(active)):
            cum[i] += weight[i]
            if cum[i] < max_w:
                continue
            cum[i] -= max_w
            p, s = pos[i], skip[i]
            while owner[p] >= 0:
                p += s
                if p >= m:
                    p -= m
            owner[p] = i
            p += s
            if p >= m:
                p -= m
            pos[i] = p
            filled += 1
            if filled == m:
                ids = [b.backend_id for b in active]
                return array("I", [ids[o] for o in owner])
