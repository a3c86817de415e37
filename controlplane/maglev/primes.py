"""Maglev table size (M): validation and recommendations."""
from __future__ import annotations

import warnings

DEFAULT_TABLE_SIZE = 16381  # Cilium's default; 65537 is Katran's and the Maglev paper's
MAX_TABLE_SIZE = 1 << 24  # same bound as SVCXDP_MAGLEV_MAX_M in csrc/maglev.h
# Sizes we suggest (Cilium's list plus Katran's 65537); any prime up to MAX_TABLE_SIZE works.
RECOMMENDED_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071)
# M >= 100·N keeps every backend's share within 1 % of the ideal (Maglev paper).
SIZE_PER_BACKEND = 100


class MaglevSizeWarning(UserWarning):
    """M is a valid size but too small for the number of backends to balance well."""


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def size_warning(m: int, n_backends: int) -> str | None:
    """The warning text when M < 100·N, else None."""
    if n_backends and m < SIZE_PER_BACKEND * n_backends:
        return (f"Maglev table size {m} is below {SIZE_PER_BACKEND}×{n_backends} backends = "
                f"{SIZE_PER_BACKEND * n_backends}; shares may be uneven by more than 1 % "
                f"(suggest {recommended_size(n_backends)})")
    return None


def validate_table_size(m: int, n_backends: int = 0, *, stacklevel: int = 2) -> int:
    """Return m if it is a usable table size, else raise ValueError.

    Warns (MaglevSizeWarning) when m < 100·n_backends.
    """
    if isinstance(m, bool) or not isinstance(m, int):
        raise ValueError(f"Maglev table size must be an integer, not {type(m).__name__}")
    if not 2 <= m <= MAX_TABLE_SIZE:
        raise ValueError(f"Maglev table size {m} out of range 2..{MAX_TABLE_SIZE}")
    if not is_prime(m):
        raise ValueError(f"Maglev table size {m} is not prime (e.g. {', '.join(map(str, RECOMMENDED_SIZES[5:9]))})")
    text = size_warning(m, n_backends)
    if text:
        warnings.warn(text, MaglevSizeWarning, stacklevel=stacklevel + 1)
    return m


def recommended_size(n_backends: int) -> int:
    """Smallest recommended size with M >= 100·N, else the next prime above 100·N."""
    need = SIZE_PER_BACKEND * max(n_backends, 1)
    for m in RECOMMENDED_SIZES:
        if m >= need:
            return m
    m = need | 1
    while not is_prime(m):
        m += 2
    if m > MAX_TABLE_SIZE:
        raise ValueError(f"{n_backends} backends need a table larger than {MAX_TABLE_SIZE}")
    return m
