"""Give the C heap's free pages back to the kernel after bulk work.

A full sync reads every Service and EndpointSlice as JSON text (tens of MB at
10,000 services) and drops it again; glibc keeps the freed pages in the process
(they count in its RSS) until `malloc_trim` returns them. Measured at 10,000
services x 10 endpoints: the agent's RSS after its start sync 348 -> 313 MiB.
The call walks the heap once (milliseconds), so it follows full syncs only, not
the per-change ones.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):   # not glibc: nothing to do
        return None


def release_free_memory() -> None:
    trim = _trim()
    if trim is not None:
        trim(0)
