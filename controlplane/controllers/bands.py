"""The allocation order Kubernetes uses for ClusterIPs (KEP-3070) and NodePorts (KEP-3668).

A range of `size` offsets is split into a lower "static" band [0, offset) and an upper
"dynamic" band [offset, size). Dynamic allocation starts at a random offset in the upper band
and scans forward with wrap-around; only when the upper band is full does it scan the lower
band the same way. Users who pick values by hand pick from the lower band and rarely collide.
"""
from __future__ import annotations

import random
from typing import Callable


def static_band_size(size: int, divisor: int, cap: int) -> int:
    """min(max(16, size/divisor), cap): divisor 16 / cap 256 for IPs, 32 / 128 for ports."""
    return min(max(16, size // divisor), cap)


def _scan(lo: int, hi: int, taken: Callable[[int], bool], rng: random.Random) -> int | None:
    if hi <= lo:
        return None
    start = rng.randrange(lo, hi)
    for i in range(hi - lo):
        candidate = lo + (start - lo + i) % (hi - lo)
        if not taken(candidate):
            return candidate
    return None


def pick_free(size: int, static_size: int, taken: Callable[[int], bool], rng: random.Random) -> int | None:
    """A free offset in [0, size), upper band first; None when everything is taken."""
    found = _scan(static_size, size, taken, rng)
    if found is not None:
        return found
    return _scan(0, min(static_size, size), taken, rng)
