"""Service and backend ids: small integers that index the dataplane's arrays.

Ids run 1..limit-1 (0 means none). Fresh ids come first and freed ids are reused
oldest-first, so an id is reused as late as possible (a flow whose backend left
then finds the id unused, or owned by another service, not a look-alike).

A writer that adopts running maps claims the ids it finds there, in whatever order
the maps list them. Every id below the largest claimed one that was not claimed is
free; an id claimed after it was put on the free list is taken off again, so the
free list never holds a live id and `available` is exact.
"""
from __future__ import annotations

from collections import OrderedDict


class CapacityError(RuntimeError):
    """A map is full; raised before anything was written."""


class IdAllocator:
    def __init__(self, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError(f"{what}: limit {limit} < 1")
        self.limit = limit
        self.what = what
        self._next = 1                              # ids >= this were never handed out
        self._free: OrderedDict[int, None] = OrderedDict()   # oldest first
        # one byte per id (a set of 100,000 ints held ~7 MB), grown as ids are taken,
        # so a large map's limit costs nothing until its ids are used
        self._used = bytearray(min(limit, 1 << 16))
        self._count = 0

    @property
    def available(self) -> int:
        return self.limit - 1 - self._count

    def in_use(self, ident: int) -> bool:
        return 0 <= ident < len(self._used) and bool(self._used[ident])

    def _reach(self, end: int) -> None:
        """Make ids below `end` addressable in the bitmap."""
        if end > len(self._used):
            self._used.extend(bytes(min(max(end, 2 * len(self._used)), self.limit) - len(self._used)))

    def _take(self, ident: int) -> None:
        self._reach(ident + 1)
        if not self._used[ident]:
            self._used[ident] = 1
            self._count += 1

    def claim(self, ident: int) -> None:
        """Mark an id found in the maps as taken (adoption); claims may come in
        any order."""
        if not 0 < ident < self.limit:
            raise ValueError(f"{self.what}: id {ident} outside 1..{self.limit - 1}")
        self._take(ident)
        if ident >= self._next:
            self._free.update((i, None) for i in range(self._next, ident))
            self._next = ident + 1
        else:
            self._free.pop(ident, None)

    def claim_many(self, idents) -> None:
        """claim() of each id, in one pass over the bitmap (adoption claims 100,000)."""
        ids = sorted(set(idents))
        if not ids:
            return
        if not 0 < ids[0] <= ids[-1] < self.limit:
            bad = ids[0] if not 0 < ids[0] < self.limit else ids[-1]
            raise ValueError(f"{self.what}: id {bad} outside 1..{self.limit - 1}")
        self._reach(ids[-1] + 1)
        used = self._used
        for ident in ids:
            if ident < self._next:
                self._free.pop(ident, None)
            if not used[ident]:
                used[ident] = 1
                self._count += 1
        if ids[-1] >= self._next:
            taken = set(ids)
            self._free.update((i, None) for i in range(self._next, ids[-1]) if i not in taken)
            self._next = ids[-1] + 1

    def allocate(self) -> int:
        if self._next < self.limit:
            ident = self._next
            self._next += 1
        elif self._free:
            ident, _ = self._free.popitem(last=False)
        else:
            raise CapacityError(f"{self.what} full")
        self._take(ident)
        return ident

    def allocate_many(self, n: int) -> list[int]:
        """n ids, the same ones n calls of allocate() would hand out."""
        if n <= self.limit - self._next:   # all fresh: one range
            out = list(range(self._next, self._next + n))
            self._reach(self._next + n)
            self._used[self._next:self._next + n] = b"\x01" * n   # never handed out: none taken
            self._count += n
            self._next += n
            return out
        return [self.allocate() for _ in range(n)]

    def release(self, ident: int) -> None:
        if self.in_use(ident):
            self._used[ident] = 0
            self._count -= 1
            self._free[ident] = None
