"""Idle-flow garbage collection of conntrack, ahead of need (bpf/ctgc.h).

conntrack is an LRU map and nothing else deletes a dead flow's entry, so on a busy node it
fills with idle and closed flows, and every new flow then pays an eviction in the
datapath. A sweep walks a slice of the table with BPF_MAP_LOOKUP_BATCH (resuming where
the last sweep stopped), picks the entries idle past their timeout with numpy, and hands
their keys to the svcxdp_ct_gc program through BPF_PROG_TEST_RUN, SVCXDP_CT_GC_BATCH at a
time. The program judges every key again, against the entry as it is by then, and
deletes only dead ones (ctgc.h says what dead means: past the timeout by a grace, and not
needed by a live forward entry): the walk's copy is only a preselection, the kernel's
judgement is the one that deletes, so the timeouts here may be the defaults even when the
program was built with others (a wrong guess costs candidates, never a live flow).
"""
from __future__ import annotations

import ctypes as ct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import flowsets
from .affinity_maps import coarse_now_ns
from .flows import Timeouts
from .layout import const, header_struct
from .libbpf import BatchCursor, lookup_batches_raw
from .model import PROTOCOLS
from .packing import Packer
from .testrun import TestRunner

# (the unconfirmed tables are sets whose new flows take their set's next slot in turn at
# no extra cost, bpf/conntrack.h: nothing to sweep there)
TABLES = {"conntrack": const("CT_GC_CONFIRMED")}
BATCH = const("CT_GC_BATCH")
GRACE_NS = const("CT_GC_GRACE_S") * 1_000_000_000
OP_DELETE, OP_LOCATE = const("CT_GC_OP_DELETE"), const("CT_GC_OP_LOCATE")
# struct ct_gc_request (svcxdp.h), read from the header; the keys follow it.
Request = header_struct("ct_gc_request")
REQUEST_SIZE = ct.sizeof(Request)
TCP = PROTOCOLS["TCP"]
# Entries read per table per sweep. Reading costs ~0.7 us of CPU per entry on this kind
# of machine (BPF_MAP_LOOKUP_BATCH and the numpy preselection), removing ~2 us more per
# entry removed (bench/results/datapath-notes.md, section 6): 65,536 of the table every
# 5 s (the agent's default) is 2-9 % of one core and a whole 1,048,576-entry pass every ~80 s.
DEFAULT_SCAN = 65_536


class CtGcError(RuntimeError):
    pass


@dataclass
class SweepStats:
    """What one sweep did, per table and in all."""
    scanned: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    wrapped: dict[str, bool] = field(default_factory=dict)   # the walk reached the table's end
    seconds: float = 0.0

    @property
    def total_deleted(self) -> int:
        return sum(self.deleted.values())


@dataclass
class _Walk:
    """One table's walk, a slice per sweep: where it stands, and the entries this pass
    has found so far."""
    table: Any                   # the bcc table
    cursor: BatchCursor = field(default_factory=BatchCursor)
    walked: int = 0


class ConntrackGC:
    """Sweeps of the conntrack table of one dataplane (a Dataplane: its ct_gc_prog_fd
    and its tables)."""

    def __init__(self, dp, scan: int = DEFAULT_SCAN) -> None:
        if scan <= 0:
            raise CtGcError(f"scan: must be a positive number of entries, got {scan!r}")
        cfg = dp.config
        self.timeouts = Timeouts(cfg.tcp_timeout_s, cfg.tcp_close_timeout_s, cfg.udp_timeout_s,
                                 cfg.tcp_half_close_timeout_s)
        # a TCP entry's timeout by its flags byte (Timeouts.of: established, half-closed, closed)
        self._tcp_timeout_s = np.array([self.timeouts.of(TCP, flags) for flags in range(256)])
        self.scan = scan
        self._walks = {name: _Walk(dp.table(name)) for name in TABLES}
        conntrack = self._walks["conntrack"].table
        key, leaf = conntrack.Key, conntrack.Leaf
        self.key_size, self.value_size = ct.sizeof(key), ct.sizeof(leaf)
        self.runner = TestRunner(dp.ct_gc_prog_fd, max_frame=REQUEST_SIZE + BATCH * self.key_size)
        self._kdt = Packer(key, ("proto",)).dtype
        self._vdt = Packer(leaf, ("last_seen", "flags")).dtype
        # The walks see every entry once per pass anyway: what each pass found (net of
        # what it removed) is the table's entry count, for /metrics, which otherwise
        # reads a full 1,048,576-entry table on every scrape (~0.4 s of CPU).
        self._counted: dict[str, int] = {}                   # by the last complete pass
        # The unconfirmed tables need no sweep, but each sweep reads a slice of their sets
        # to count them the same way: read whole at every scrape, the external one (24.5
        # MiB at the defaults) cost ~50 ms.
        self._set_walks = {name: _Walk(dp.table(name)) for name in flowsets.TABLES}

    def entry_counts(self) -> dict[str, int]:
        """Entries of each table, the unconfirmed sets' too, as its last complete walk
        found them (tables not yet walked whole are left out). As old as one pass: at the
        defaults, a full 1,048,576-entry table is walked in ~80 s, a table under 65,536
        entries each sweep."""
        return dict(self._counted)

    def _count_sets(self) -> None:
        """One slice of each unconfirmed table's sets (as many slots as a sweep reads of
        conntrack), counted."""
        for name, walk in self._set_walks.items():
            walk.walked += walk.table.count_slice(walk.cursor, max(self.scan // flowsets.WAYS, 1))
            self._count_if_done(name, walk)

    def _count_if_done(self, name: str, walk: _Walk) -> None:
        """At the end of a pass (the walk reached the table's end), what it counted is
        the table's entry count; the next pass counts from 0."""
        if not walk.cursor.started:
            self._counted[name], walk.walked = walk.walked, 0

    def _expired(self, kraw: memoryview, vraw: memoryview, n: int, now: int) -> np.ndarray:
        """Indexes of the entries of a chunk idle past timeout + grace (the preselection)."""
        k = np.frombuffer(kraw, dtype=self._kdt, count=n)
        v = np.frombuffer(vraw, dtype=self._vdt, count=n)
        t = self.timeouts
        timeout_s = np.where(k["proto"] == TCP, self._tcp_timeout_s[v["flags"]], t.udp)
        idle = np.int64(now) - v["last_seen"].view(np.int64)
        return np.flatnonzero(idle > timeout_s.astype(np.int64) * 1_000_000_000 + GRACE_NS)

    def _run(self, table: str, op: int, keys: bytes) -> tuple[int, int, list[bytes]]:
        """Requests of BATCH keys each; (deleted, kept, each reply's key area)."""
        code, ks = TABLES[table], self.key_size
        deleted = kept = 0
        areas = []
        step = BATCH * ks
        for off in range(0, len(keys), step):
            chunk = keys[off:off + step]
            req = Request(table=code, count=len(chunk) // ks, op=op)
            res = self.runner.run(bytes(req) + chunk)
            if res.verdict_name != "XDP_PASS":
                raise CtGcError(f"svcxdp_ct_gc refused its request: {res.verdict_name}")
            out = Request.from_buffer_copy(res.data[:REQUEST_SIZE])
            deleted += out.deleted
            kept += out.kept
            areas.append(res.data[REQUEST_SIZE:REQUEST_SIZE + len(chunk)])
        return deleted, kept, areas

    def delete(self, table: str, keys: bytes, ordered: bool = True) -> tuple[int, int]:
        """Hand packed struct ct_key rows to the kernel to judge and delete; (deleted, kept).
        `ordered`: first ask where the dead entries' elements are and delete them in
        address order (ctgc.h: the free list then hands them out in memory order)."""
        if not ordered:
            d, k, _ = self._run(table, OP_DELETE, keys)
            return d, k
        _, kept, areas = self._run(table, OP_LOCATE, keys)
        ks = self.key_size
        where = np.frombuffer(b"".join(areas), dtype=np.uint64).reshape(-1, ks // 8)[:, 0]
        rows = np.frombuffer(keys, dtype=np.dtype((np.void, ks)))
        dead = np.flatnonzero(where)
        order = dead[np.argsort(where[dead], kind="stable")]
        d, k, _ = self._run(table, OP_DELETE, rows[order].tobytes())
        return d, kept + k

    def sweep(self, tables: tuple[str, ...] | None = None) -> SweepStats:
        """One slice of each table (at most `scan` entries, from where the last sweep
        stopped): its expired entries judged and deleted by the kernel."""
        out = SweepStats()
        t0 = time.perf_counter()
        ks, vs = self.key_size, self.value_size
        for name in tables or tuple(self._walks):
            walk = self._walks[name]
            cursor = walk.cursor
            scanned = cands = deleted = kept = 0
            picked: list[bytes] = []
            now = coarse_now_ns()
            for kraw, vraw, n in lookup_batches_raw(walk.table.map_fd, ks, vs, cursor=cursor):
                scanned += n
                idx = self._expired(kraw, vraw, n, now)
                if idx.size:
                    rows = np.frombuffer(kraw, dtype=np.dtype((np.void, ks)), count=n)[idx]
                    picked.append(rows.tobytes())
                    cands += idx.size
                if scanned >= self.scan:
                    break
            if picked:
                deleted, kept = self.delete(name, b"".join(picked))
            out.scanned[name], out.candidates[name] = scanned, cands
            out.deleted[name], out.kept[name] = deleted, kept
            out.wrapped[name] = not cursor.started
            walk.walked += scanned - deleted
            self._count_if_done(name, walk)
        self._count_sets()
        out.seconds = time.perf_counter() - t0
        return out

    def sweep_all(self) -> SweepStats:
        """Whole tables: sweeps until each walk has reached its table's end once."""
        total = SweepStats()
        t0 = time.perf_counter()
        pending = list(self._walks)
        while pending:
            s = self.sweep(tuple(pending))
            for name in tuple(pending):
                for attr in ("scanned", "candidates", "deleted", "kept"):
                    d = getattr(total, attr)
                    d[name] = d.get(name, 0) + getattr(s, attr)[name]
                if s.wrapped[name]:
                    pending.remove(name)
                    total.wrapped[name] = True
        total.seconds = time.perf_counter() - t0
        return total
