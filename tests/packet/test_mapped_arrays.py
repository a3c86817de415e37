"""The backends and backend_conns arrays are written and read through a mapping of
their values (dataplane/mapped.py), not by batch syscalls. What the writer stores
there must be exactly what the kernel's own lookups and the datapath see; adoption
through the mapping must find what adoption by batch lookups finds; and a map pinned
by a build from before the flag (no mapping) must still be written, by batch updates,
to the same contents."""
from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane.libbpf import u32_array_map_create
from controlplane.dataplane.mapped import open_mapped
from controlplane.dataplane.model import be16_to_port, be32_to_ip
from controlplane.dataplane.packing import Packer, read_table
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import MapWriter

from .harness import CLIENT, CLIENT_MAC, NODE_MAC, Harness
from .test_bulk_delete import states

MAPPED = ("backends", "backend_conns")


def kernel_rows(dp: Dataplane, name: str):
    """Every index's value as BPF_MAP_LOOKUP_BATCH reads it: the kernel's view."""
    t = dp.table(name)
    return read_table(t, Packer.whole(t.Key), Packer.whole(t.Leaf))[1]


def test_the_two_arrays_are_mapped_and_no_other(loaded_dataplane: Dataplane):
    for name in MAPPED:
        assert loaded_dataplane.mapped(name) is not None, f"{name} was not created mmapable (bpf/maps.h)"
    assert loaded_dataplane.mapped("services") is None     # a hash: never mappable
    assert loaded_dataplane.mapped("rr_state") is None     # holds a spin lock: not made mmapable


def test_a_map_without_the_flag_has_no_mapping():
    """As a map pinned by an older build: open_mapped declines it (the writer then
    writes it by batch updates, below)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    fd = u32_array_map_create("svcxdp_nommap", 64)
    try:
        assert open_mapped(fd) is None
    finally:
        os.close(fd)


def test_what_the_writer_stores_is_what_the_kernel_and_the_datapath_read(xdp: Harness):
    dp, w = xdp.dp, xdp.writer
    some = states()[:60]
    w.sync(some)
    backends = dp.table("backends")
    rows = kernel_rows(dp, "backends")
    assert rows.tobytes() == dp.mapped("backends").read(rows.dtype).tobytes()
    n = 0
    for fe, rec in w.records().items():
        for (ip, port), bid in rec.backend_ids.items():
            leaf = backends[backends.Key(bid)]
            assert (be32_to_ip(leaf.ip), be16_to_port(leaf.port)) == (ip, port)
            n += 1
    assert n == sum(len(s.backends) for s in some)
    # the datapath picks a backend through these rows: every TCP service's SYN goes to one of its own
    for s in some:
        if s.frontend.protocol != "TCP" or s.source_ranges:
            continue
        syn = (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=s.frontend.vip)
               / TCP(sport=40000, dport=s.frontend.port, flags="S"))
        out = xdp.send(syn)
        assert out.verdict == "XDP_PASS", (s.frontend, out.verdict)   # DNATed, to the stack
        assert (out.pkt[IP].dst, out.pkt[TCP].dport) in {(b.ip, b.port) for b in s.backends}


def _unmapped(mapped):
    """Dataplane.mapped as over pins from before BPF_F_MMAPABLE: the state maps have no
    mapping (backend_stats, statistics, is always made anew in its mapped layout)."""
    return lambda self, name: mapped(self, name) if name == "backend_stats" else None


def test_maps_without_mappings_get_the_same_contents_by_batch_updates(xdp: Harness, monkeypatch):
    dp = xdp.dp
    some = states()[:120]

    def written() -> dict[str, bytes]:
        xdp.writer.sync([])
        w = MapWriter(dp)
        w.sync(some[:100])
        w.sync(some[20:])                   # updates, deletes and a second round of new ids
        got = {name: kernel_rows(dp, name).tobytes() for name in MAPPED}
        w.sync([])
        return got

    mapped = written()
    monkeypatch.setattr(Dataplane, "mapped", _unmapped(Dataplane.mapped))
    assert written() == mapped


def test_adoption_through_the_mapping_finds_what_batch_lookups_find(xdp: Harness, monkeypatch):
    dp, w = xdp.dp, xdp.writer
    w.sync(states()[:150])
    through_mapping = MapWriter(dp)
    monkeypatch.setattr(Dataplane, "mapped", _unmapped(Dataplane.mapped))
    by_lookups = MapWriter(dp)
    assert through_mapping.adoption_drift == 0 == by_lookups.adoption_drift
    assert through_mapping.installed() == by_lookups.installed() == w.installed()
    assert {fe: r.backend_ids for fe, r in through_mapping.records().items()} == \
        {fe: r.backend_ids for fe, r in w.records().items()}


def test_writes_made_beside_leave_the_maps_as_inline_ones(xdp: Harness):
    """From BESIDE_MIN entries on the writer flushes rev_nat and writes half the slots
    on a second thread (dataplane/beside.py); here every write that can is made so, and the
    maps and the writer's own records must come out as when all is made in turn."""
    from .test_bulk_delete import snapshot
    some = states()

    def written(beside_min: int) -> dict:
        xdp.writer.sync([])
        w = MapWriter(xdp.dp)
        w.beside_min = beside_min
        w.sync(some[:200])
        w.sync(some[100:])   # updates of made services, deletes, new ids
        snap = snapshot(xdp, w)
        w.sync([])
        return snap

    assert written(1) == written(10 ** 9)


def test_a_read_is_a_copy_and_the_mapping_closes_under_it(xdp: Harness):
    """read() hands out a copy, never a view into the mapping (the backends map's rows
    are exactly 16 bytes, so the slice read is contiguous already): what it read stays
    while the map changes, and close() is not refused for it. A mapping of its own of
    the test dataplane's backends map, closed here."""
    import numpy as np
    backends = xdp.dp.table("backends")
    m = open_mapped(backends.map_fd)
    assert m is not None and m.stride == m.value_size == 16
    dtype = Packer.whole(backends.Leaf).dtype
    row = np.zeros(1, dtype)
    row["ip"], row["state"] = 0x0100000A, 1
    m.write(np.array([5], np.uint32), row)
    got = m.read(dtype)
    assert got[5].tobytes() == row.tobytes()
    m.write(np.array([5], np.uint32), np.zeros(1, dtype))
    assert got[5].tobytes() == row.tobytes() and not m.read(dtype)[5].tobytes().strip(b"\0")
    m.close()
    assert got[5].tobytes() == row.tobytes()


def test_a_newer_reader_sums_an_old_per_cpu_backend_stats():
    """A reader (svcctl dataplane stats, /metrics of a newer build) of a dataplane pinned
    by a build from before backend_stats became mapped rows: a per-CPU array, with BTF as
    bcc pins it. readout reads it the per-CPU way, each id summed over the CPUs."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    import ctypes as ct

    from bcc import BPF

    from controlplane.dataplane import readout
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.libbpf import lib
    from controlplane.dataplane.pinned import PinnedMaps, possible_cpus
    from controlplane.dataplane.program import reset
    cfg = DataplaneConfig(instance="pytest-old-stats", pin=True)
    reset(cfg)
    os.makedirs(cfg.pin_dir)
    cpus = possible_cpus()
    try:
        old = BPF(text=b"BPF_PERCPU_ARRAY(backend_stats, u64, 64);\nint nothing(void *ctx) { return 0; }\n")
        try:
            table = old[b"backend_stats"]
            table[ct.c_uint(3)] = table.Leaf(*[ct.c_ulonglong(5 + c) for c in range(cpus)])
            table[ct.c_uint(9)] = table.Leaf(*[ct.c_ulonglong(1)] * cpus)
            assert lib().bpf_obj_pin(table.map_fd, str(cfg.pin_dir / "backend_stats").encode()) == 0
        finally:
            old.cleanup()
        maps = PinnedMaps(cfg.pin_dir)
        try:
            assert readout.backend_rows(maps) is None    # not the mapped layout
            assert readout.backend_new_flows(maps) == {3: sum(5 + c for c in range(cpus)), 9: cpus}
        finally:
            maps.close()
    finally:
        reset(cfg)
