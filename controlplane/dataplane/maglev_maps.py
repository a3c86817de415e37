"""Per-service Maglev tables in the `maglev` HASH_OF_MAPS (svc_id -> inner ARRAY).

A table is never edited in place: a new inner map is created, filled, and swapped
in with one update of the outer entry, so a packet sees either the old table or
the new one, whole. The outer map is pinned with the others; inner maps are not
pinned (bpffs pins are files and `svcctl dataplane reset` removes files only):
the outer map keeps them alive, and a restarted agent reaches them through it
(a user-space lookup of the outer entry returns the inner map's id).
"""
from __future__ import annotations

import ctypes as ct
import os
from array import array

from .layout import const
from .libbpf import (delete_batch, lookup_batches_raw, map_fd_by_id, map_info, u32_array_map_create, u32_array_read,
                     u32_array_write)

INNER_FLAGS = const("MAGLEV_INNER_FLAGS")
INNER_NAME = "svcxdp_maglev"


class MaglevMaps:
    def __init__(self, outer) -> None:
        self.outer = outer  # bcc MapInMapHash: Key u32 svc_id, Leaf int (fd in, map id out)

    def install(self, svc_id: int, table: array) -> None:
        """Swap in a new table of len(table) backend ids for svc_id."""
        fd = u32_array_map_create(INNER_NAME, len(table), INNER_FLAGS)
        try:
            u32_array_write(fd, table)
            self.outer[self.outer.Key(svc_id)] = ct.c_int(fd)
        finally:
            os.close(fd)

    def remove(self, svc_id: int) -> bool:
        try:
            del self.outer[self.outer.Key(svc_id)]
            return True
        except KeyError:
            return False

    def remove_many(self, svc_ids: list[int]) -> int:
        """Remove the tables of svc_ids in one batch (ids without a table are skipped);
        returns how many were removed."""
        if not svc_ids:
            return 0
        try:   # the ids that have one, read in a few batches: a missing key costs a syscall
            have: set[int] = set()
            for keys, _, n in lookup_batches_raw(self.outer.map_fd, 4, 4):
                chunk = array("I")
                chunk.frombytes(keys[:n * 4])
                have.update(chunk)
            ids = array("I", [i for i in svc_ids if i in have])
        except OSError:   # no batch lookup of a map of maps on this kernel
            ids = array("I", svc_ids)
        return delete_batch(self.outer.map_fd, ids, 4, len(ids)) if ids else 0

    def has(self, svc_id: int) -> bool:
        return self._inner_id(svc_id) is not None

    def read(self, svc_id: int) -> list[int] | None:
        """The table the datapath uses for svc_id, or None without one."""
        inner = self._inner_id(svc_id)
        if inner is None:
            return None
        fd = map_fd_by_id(inner)
        try:
            return u32_array_read(fd, map_info(fd).max_entries)
        finally:
            os.close(fd)

    def svc_ids(self) -> list[int]:
        return [int(k.value) for k in self.outer.keys()]

    def _inner_id(self, svc_id: int) -> int | None:
        try:
            return int(self.outer[self.outer.Key(svc_id)].value)
        except KeyError:
            return None
