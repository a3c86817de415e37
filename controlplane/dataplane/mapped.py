"""Array maps written and read through a shared mapping of their values.

An array map created with BPF_F_MMAPABLE (bpf/maps.h) can be mmap()ed: its values
lie end to end, each `value_size` rounded up to 8 bytes, from offset 0. Writing a
row there is a plain store into the same memory the datapath reads, so 100,000
backends are written by one numpy assignment (~1 ms) instead of a BPF_MAP_UPDATE_BATCH
that copies them in one at a time (~40 ms), and adoption reads the whole array as
one copy. A store through the mapping is what the kernel's own array update does
(a memcpy with no lock), so a packet sees a row no more torn than before, and the
writer's order still holds: the syscall that follows (the slots or the service
entry) is made after the stores, by the same thread.

A map pinned by a build before the flag cannot be mapped: `open_mapped` then gives
None and the writer keeps using batch updates (packing.write_packed) for `backends`
and `backend_conns`; `backend_stats` (statistics, CpuRows) is replaced by a new map at
load instead (program.py _set_aside_stale_statistics), so it is always mapped.
"""
from __future__ import annotations

import mmap

import numpy as np

from .libbpf import BPF_F_MMAPABLE, BPF_MAP_TYPE_ARRAY, map_info


class MappedArray:
    """The values of one array map, as raw rows of bytes (`stride` each)."""

    def __init__(self, fd: int, max_entries: int, value_size: int) -> None:
        self.max_entries = max_entries
        self.value_size = value_size
        self.stride = (value_size + 7) & ~7
        length = -(-self.stride * max_entries // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mm: mmap.mmap | None = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # one row per index; only its first value_size bytes are the value
        self._rows: np.ndarray | None = np.ndarray((max_entries, self.stride), np.uint8, self._mm)

    def write(self, ids: np.ndarray, values: np.ndarray) -> int:
        """Store packed `values` (a structured array of the value's size) at `ids`
        (u32, each below max_entries: the id allocators hand out no other)."""
        if len(ids) != len(values):
            raise ValueError(f"{len(ids)} ids for {len(values)} values")
        if values.dtype.itemsize != self.value_size:
            raise ValueError(f"values of {values.dtype.itemsize} bytes for a map of {self.value_size}")
        if len(ids):
            raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), self.value_size)
            self._live()[ids, :self.value_size] = raw
        return len(ids)

    def read(self, dtype: np.dtype) -> np.ndarray:
        """Every index's value, copied out, as an array of `dtype` (the value's size)."""
        if dtype.itemsize != self.value_size:
            raise ValueError(f"a {dtype.itemsize}-byte dtype for a map of {self.value_size}")
        rows = self._live()[:, :self.value_size].copy()   # a copy: never a view into the mapping
        return rows.view(dtype).reshape(len(rows))

    def u64s(self) -> np.ndarray:
        """The values themselves as u64 words (a row per index): a view into the
        mapping, for a caller that uses it at once and keeps nothing of it."""
        return self._live().view(np.uint64)

    def _live(self) -> np.ndarray:
        if self._rows is None:
            raise ValueError("mapping closed")
        return self._rows

    def close(self) -> None:
        """Unmap (until then the mapping keeps the map alive, even after its fd is closed)."""
        self._rows = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def open_mapped(fd: int) -> MappedArray | None:
    """A mapping of the array map `fd`, or None if it was not created mmapable or the
    kernel refuses to map it (then batch updates write it, as any other map)."""
    info = map_info(fd)
    if info.type != BPF_MAP_TYPE_ARRAY or not info.flags & BPF_F_MMAPABLE:
        return None
    try:
        return MappedArray(fd, info.max_entries, info.value_size)
    except OSError:
        return None


class CpuRows:
    """An array map of one u64 counter per (CPU, id), a row of `per_cpu` ids per CPU, each
    CPU adding to its own row only (bpf/maps.h backend_stats): what a per-CPU array holds,
    laid out where user space can map it. A reader sums the rows itself, without the
    kernel copying every CPU's value out."""

    def __init__(self, mapped: MappedArray, cpus: int) -> None:
        if mapped.value_size != 8 or mapped.max_entries % cpus:
            raise ValueError(f"an array of {mapped.max_entries} values of {mapped.value_size} bytes "
                             f"is no row of u64 counters per CPU for {cpus} CPUs")
        self.mapped = mapped
        self.cpus = cpus
        self.per_cpu = mapped.max_entries // cpus

    def grid(self) -> np.ndarray:
        """The counters as [cpu, id]: a view into the mapping, to use at once."""
        return self.mapped.u64s().reshape(self.cpus, self.per_cpu)

    def sums(self, limit: int | None = None) -> np.ndarray:
        """Each id's counter summed over CPUs, for the ids below `limit` (all: None)."""
        return self.grid()[:, :limit].sum(axis=0, dtype=np.uint64)

    def zero(self, ids: np.ndarray) -> None:
        """Every CPU's counter of each of `ids` set to 0 (an id handed to a new owner)."""
        self.grid()[:, ids] = 0
