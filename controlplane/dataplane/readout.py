"""What a node's dataplane holds and has counted, read from its pinned maps (pinned.py).

Read-only commands (`svcctl dataplane stats|services`) and the agent's metrics use this:
no program is built (no LLVM), so a read costs milliseconds and a few MiB, and never
writes a map the agent owns. Per-CPU counters are summed here."""
from __future__ import annotations

import ctypes as ct
from array import array
from dataclasses import dataclass
from operator import add

import numpy as np

from .adopt import adopt, frontend_of
from .affinity_maps import AffinityGenerations, AffinityStats, count_entries  # noqa: F401 (count_entries: for metrics)
from .config import svc_id_slots
from .ids import IdAllocator
from .layout import COUNTER_NAMES
from .libbpf import BPF_MAP_TYPE_PERCPU_ARRAY, lookup_batches_raw, map_info
from .mapped import CpuRows
from .pinned import cpu_id_limit, percpu_value_size, possible_cpus
from .model import Frontend, ServiceState

STAT_FIELDS = ("packets", "bytes", "new_flows", "rejects")


def counters(maps) -> dict[str, int]:
    """Datapath counters by name (SVCXDP_CNT_*), summed over CPUs. A counter the pinned
    map has no entry for (a program built before it was added still runs) reads 0."""
    table = maps.table("counters")
    # bcc's tables give per-CPU integers as ints, pinned.py's as ctypes values
    return {name: sum(int(getattr(v, "value", v)) for v in table[table.Key(idx)])
            if idx < table.max_entries else 0
            for idx, name in COUNTER_NAMES.items()}


def service_stats(maps, svc_id: int) -> dict[str, int]:
    table = maps.table("svc_stats")
    per_cpu = table[table.Key(svc_id)]
    return {f: sum(int(getattr(v, f)) for v in per_cpu) for f in STAT_FIELDS}


def affinity(maps, inserted: int, entries: int | None = None) -> AffinityStats:
    """The affinity table's fill and evictions; `entries` when the caller counted them
    already (a full table is ~0.4 s to read)."""
    table = maps.table("affinity")
    return AffinityStats(table.max_entries, count_entries(table) if entries is None else entries, inserted)


class _AnyMaglev:
    """adopt() asks whether a Maglev table exists only to flag a rewrite; a reader
    writes nothing, so it need not open the map-in-map."""

    def has(self, svc_id: int) -> bool:
        return True


@dataclass(frozen=True)
class Service:
    svc_id: int
    state: ServiceState


def services(maps) -> dict[Frontend, Service]:
    """Every installed frontend with its id and state, as an adopting writer sees it
    (source ranges are not read: nothing here shows them)."""
    return {fe: Service(inst.svc_id, inst.state) for fe, inst in installed(maps).items()}


def installed(maps) -> dict:
    """Every installed frontend's record (dataplane.installed.Installed: its id and its
    backends' ids), as an adopting writer reads them. The ids are claimed in allocators
    limited as the writer's are, by the maps' own sizes (services: max_services,
    backends: max_backends), so an id the maps cannot hold is an error naming the map."""
    svc_map, backends = maps.table("services"), maps.table("backends")
    svc_ids = IdAllocator(svc_id_slots(svc_map.max_entries), f"services map (max_services={svc_map.max_entries})")
    backend_ids = IdAllocator(backends.max_entries, f"backends map (max_backends={backends.max_entries})")
    return adopt(svc_map, backends, _AnyMaglev(), svc_ids, backend_ids, AffinityGenerations(), {}).installed


def frontends(maps) -> dict[Frontend, int]:
    """Installed frontends and their ids, from the services map alone (what metrics need:
    a tenth of the cost of services(), which also reads every backend)."""
    return {frontend_of(key): int(value.svc_id) for key, value in maps.table("services").items()}


def percpu_sums(table, fields: int, limit: int | None = None) -> tuple[array, list[list[int]]]:
    """The entries of a per-CPU array of `fields` u64s (the first `limit` ones: ids below
    it), read in batches and summed over CPUs: (ids, sums[field][i]); for an array the
    ids are 0, 1, 2... so sums[field][id] is that id's. The sums are taken a field and a CPU at a time over
    strided slices (C loops), not per entry in Python: 10,000 services cost milliseconds."""
    cpus = possible_cpus()
    leaf = getattr(table, "sLeaf", table.Leaf)   # bcc's per-CPU tables make Leaf an array over CPUs
    per_key = percpu_value_size(ct.sizeof(leaf))
    stride = per_key // 8
    ids = array("I")
    sums: list[list[int]] = [[] for _ in range(fields)]
    for keys, values, _n in lookup_batches_raw(table.map_fd, 4, per_key, limit=limit):
        ids.frombytes(keys)
        words = array("Q")
        words.frombytes(values)
        for f in range(fields):
            total = words[f::stride]
            for c in range(1, cpus):
                total = map(add, total, words[c * stride // cpus + f::stride])
            sums[f].extend(total)
    return ids, sums


def all_service_stats(maps) -> dict[int, tuple[int, int, int, int]]:
    """(packets, bytes, new_flows, rejects) of every service id, summed over CPUs, read
    in one batched pass over svc_stats."""
    ids, sums = percpu_sums(maps.table("svc_stats"), len(STAT_FIELDS))
    return dict(zip(ids, zip(*sums)))


def backend_rows(maps) -> CpuRows | None:
    """backend_stats mapped into this process, a row of counters per CPU (bpf/maps.h);
    None where a build before that layout pinned it (a per-CPU array: a reader newer
    than the running agent). An array of this layout that cannot be mapped is an error:
    read as a per-CPU array, its neighbouring ids' counts would be summed together."""
    mapped = maps.mapped("backend_stats")
    if mapped is not None:
        return CpuRows(mapped, cpu_id_limit())
    fd = maps.raw_table("backend_stats").map_fd
    if map_info(fd).type != BPF_MAP_TYPE_PERCPU_ARRAY:
        raise OSError(f"backend_stats (map fd {fd}) could not be mapped into this process")
    return None


def backend_new_flows(maps) -> dict[int, int]:
    """New flows sent to each backend id (bpf lb_count_new), summed over CPUs; ids that
    never had one are left out."""
    ids, sums = backend_new_flow_arrays(maps)
    return dict(zip(ids.tolist(), sums.tolist()))


def backend_new_flow_arrays(maps, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """backend_new_flows as two arrays, (ids, new flows) in id order, for the ids below
    `limit`: the mapped rows summed by numpy (110,000 ids on two CPUs: ~1 ms, where the
    kernel's copy of a per-CPU array took ~50)."""
    rows = backend_rows(maps)
    if rows is None:
        return percpu_nonzero_arrays(maps.table("backend_stats"), limit)
    sums = rows.sums(limit)
    ids = np.flatnonzero(sums)
    return ids, sums[ids]


def percpu_nonzero_arrays(table, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values summed over CPUs) in id order, for the ids of a per-CPU array of one
    u64 whose value is not 0 (the first `limit` ids): summed and filtered by numpy over
    each raw batch, so 100,000 ids cost the copy, not a Python step per slot."""
    cpus = possible_cpus()
    per_key = percpu_value_size(8)
    ids: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    base = 0
    for _keys, values, n in lookup_batches_raw(table.map_fd, 4, per_key, limit=limit):
        total = np.frombuffer(values, dtype=np.uint64, count=n * cpus).reshape(n, cpus).sum(axis=1, dtype=np.uint64)
        hit = np.flatnonzero(total)
        ids.append(hit + base)
        sums.append(total[hit])
        base += n
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate(ids), np.concatenate(sums)
