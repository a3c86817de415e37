"""Deleting many services in one sync: MapWriter.delete_many, batched per map
(BPF_MAP_DELETE_BATCH). It must leave the maps and the writer's bookkeeping exactly
as deleting the same services one by one with delete() does, and the maps exactly
empty of the deleted services."""
from __future__ import annotations

import os
from array import array

import pytest

from controlplane.dataplane import readout
from controlplane.dataplane.libbpf import delete_batch, u32_array_map_create
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.packing import Packer, read_table
from controlplane.dataplane.writer import MapWriter

from .harness import Harness

N = 300


def states() -> list[ServiceState]:
    """N services: plain, Maglev, with source ranges, some sharing an address with
    the keepers (every 10th is kept)."""
    out = []
    for i in range(N):
        fe = Frontend(f"10.96.{70 + i // 200}.{1 + i % 200}", 80 + i % 3, "UDP" if i % 7 == 0 else "TCP")
        bs = tuple(Backend(f"10.245.{i // 50}.{j + (i % 50) * 4}", 8080) for j in range(1, 4))
        if i % 5 == 1:   # shares its first address with service i-1
            bs = (Backend(f"10.245.{(i - 1) // 50}.{1 + ((i - 1) % 50) * 4}", 8080),) + bs[1:]
        algo, size, ranges = "random", None, ()
        if i % 4 == 2:
            algo, size = "maglev", 251
        if i % 6 == 3:
            ranges = ("192.168.7.0/24", "10.1.0.0/16")
        out.append(ServiceState(fe, bs, algo, 0, size, source_ranges=ranges))
    return out


def snapshot(xdp: Harness, w: MapWriter) -> dict:
    dp = xdp.dp

    def entries(name: str) -> set:
        t = dp.table(name)
        keys, values = read_table(t, Packer.whole(t.Key), Packer.whole(t.Leaf))
        return {(k.tobytes(), v.tobytes()) for k, v in zip(keys, values)}

    backends = dp.table("backends")
    _, rows = read_table(backends, Packer.whole(backends.Key), Packer.whole(backends.Leaf))
    live = {i: r.tobytes() for i, r in enumerate(rows) if any(r.tobytes())}
    ranges = {(int(k.svc_id), int(k.prefixlen), int(k.addr)) for k in dp.table("source_ranges").keys()}
    return {
        "services": entries("services"), "slots": entries("slots"), "rev_nat": entries("rev_nat"),
        "backends": live, "maglev": sorted(w.maglev.svc_ids()), "ranges": ranges,
        "installed": {fe: (r.svc_id, dict(r.backend_ids), r.slot_count) for fe, r in w.records().items()},
        "users": dict(w.revnat.users), "shared": w.revnat.shared_count, "writes": w.writes,
        "slots_used": w._slots_used, "svc_free": w._svc_ids.available, "backend_free": w._backend_ids.available,
    }


def run(xdp: Harness, batched: bool) -> tuple[dict, list[int]]:
    xdp.writer.sync([])
    w = MapWriter(xdp.dp)
    all_states = states()
    w.sync(all_states)
    keep = all_states[::10]
    gone = [s.frontend for s in all_states if s not in keep]
    if batched:
        assert w.sync(keep).removed == len(gone)
    else:
        for fe in gone:
            assert w.delete(fe)
    snap = snapshot(xdp, w)
    # ids handed out next: freed ones are reused in the same order
    nxt = ServiceState(Frontend("10.96.99.1", 80), tuple(Backend(f"10.245.99.{j}", 80) for j in range(1, 30)))
    svc_id = w.upsert(nxt)
    after = [svc_id] + sorted(w.records()[nxt.frontend].backend_ids.values())
    w.sync([])
    return snap, after


def test_batched_delete_matches_one_by_one(xdp: Harness):
    one_by_one, ids_a = run(xdp, batched=False)
    batched, ids_b = run(xdp, batched=True)
    # writes: one by one, the flag of an address still shared with a service deleted
    # later is rewritten in between; the batch rewrites only the survivors' flags
    assert batched.pop("writes") <= one_by_one.pop("writes")
    for what in one_by_one:
        assert batched[what] == one_by_one[what], what
    assert ids_b == ids_a


def test_batched_delete_leaves_maps_empty_of_them(xdp: Harness):
    w = xdp.writer
    all_states = states()
    w.upsert_many(all_states)
    assert len(w.maglev.svc_ids()) == N // 4 + (N % 4 > 2)
    assert w.sync([]).removed == N
    dp = xdp.dp
    for name in ("services", "slots", "rev_nat", "source_ranges", "maglev"):
        assert list(dp.table(name).keys()) == [], name
    backends = dp.table("backends")
    _, rows = read_table(backends, Packer.whole(backends.Key), Packer.whole(backends.Leaf))
    assert not rows.view("u1").any()
    assert w.records() == {} and w.revnat.users == {} and w._slots_used == 0
    # and a fresh writer adopting the maps finds nothing to repair
    assert MapWriter(dp).adoption_drift == 0


def test_delete_batch_skips_missing_keys(xdp: Harness):
    """A key not present stops the kernel's batch: it is skipped and the rest deleted
    (map of maps and LPM trie; this kernel batches both, so the one-by-one fallback
    for a kernel that refuses is not exercised here)."""
    w = xdp.writer
    ms = [ServiceState(Frontend(f"10.96.80.{i}", 80), (Backend("10.245.80.1", 80), Backend("10.245.80.2", 80)),
                       "maglev", 0, 251, source_ranges=(f"192.168.{i}.0/24",)) for i in range(1, 7)]
    w.upsert_many(ms)
    ids = sorted(w.maglev.svc_ids())
    assert len(ids) == 6
    keys = array("I", [4000, ids[0], 4001, 4002, ids[2], ids[3], 4003])
    assert delete_batch(xdp.dp.table("maglev").map_fd, keys, 4, len(keys)) == 3
    assert sorted(w.maglev.svc_ids()) == [ids[1], ids[4], ids[5]]
    ranges = xdp.dp.table("source_ranges")
    have = [bytes(k) for k in ranges.keys()]
    assert len(have) == 6
    missing = bytearray(have[0])
    missing[4:8] = (4000).to_bytes(4, "little")   # the svc_id after prefixlen: no such entry
    buf = have[1] + bytes(missing) + have[3] + have[4]
    assert delete_batch(ranges.map_fd, buf, len(have[0]), 4) == 3
    assert sorted(bytes(k) for k in ranges.keys()) == sorted([have[0], have[2], have[5]])


def test_delete_batch_falls_back_where_the_kernel_has_no_batch():
    """A map type without a batch delete (an array: the kernel answers ENOTSUPP before
    any key, leaving the count as asked) goes to one delete per key; an array refuses
    those too, so the error names the single-key call, not a batch that "deleted" all."""
    fd = u32_array_map_create("svcxdp_nobatch", 4)
    try:
        with pytest.raises(OSError, match=r"bpf_map_delete_elem\(key 0 of 3\)"):
            delete_batch(fd, array("I", [0, 1, 2]), 4, 3)
    finally:
        os.close(fd)


class Stop(Exception):
    pass


def interrupted(xdp: Harness, monkeypatch, where: str) -> tuple[MapWriter, list[ServiceState], list[ServiceState]]:
    """A writer holding states(), whose delete pass of all but every 10th stopped at
    `where`: after a step (after_phase), or in rev_nat's write."""
    xdp.writer.sync([])
    w = MapWriter(xdp.dp)
    all_states = states()
    w.sync(all_states)
    keep = all_states[::10]
    gone = [s for s in all_states if s not in keep]

    def stop(*_args) -> None:
        raise Stop(where)

    if where == "rev_nat":
        monkeypatch.setattr(w.revnat, "_write_entries", stop)
    else:
        w.after_phase = lambda phase: stop() if phase == where else None
    with pytest.raises(Stop):
        w.delete_many([s.frontend for s in gone])
    w.after_phase = None
    monkeypatch.undo()
    return w, keep, gone


@pytest.mark.parametrize("where", ["entries", "slots", "rev_nat", "backends"])
def test_interrupted_delete_keeps_records_and_is_retried(xdp: Harness, monkeypatch, where: str):
    """A delete pass that stops part-way keeps the records (ids still claimed,
    marked suspect: the maps may hold any part of them); the next sync deletes
    them for good, leaving exactly what an uninterrupted pass leaves."""
    w, keep, gone = interrupted(xdp, monkeypatch, where)
    records = w.records()
    assert all(s.frontend in records and records[s.frontend].suspect for s in gone)
    assert all(w._svc_ids.in_use(records[s.frontend].svc_id) for s in gone)
    assert all(w._backend_ids.in_use(b) for s in gone for b in records[s.frontend].backend_ids.values())
    assert w.sync(keep).removed == len(gone)
    retried = snapshot(xdp, w)
    clean, _ = run(xdp, batched=True)
    for what in ("services", "slots", "rev_nat", "backends", "maglev", "ranges", "installed", "users", "shared",
                 "slots_used", "svc_free", "backend_free"):
        assert retried[what] == clean[what], what


@pytest.mark.parametrize("where", ["entries", "rev_nat"])
def test_interrupted_delete_then_kept_is_rewritten_whole(xdp: Harness, monkeypatch, where: str):
    """... and if the next sync wants them again, each is written again in full
    (suspect), so a fresh writer adopting the maps finds nothing to repair."""
    w, keep, gone = interrupted(xdp, monkeypatch, where)
    res = w.sync(states())
    assert (res.updated, res.added, res.removed) == (len(gone), 0, 0)
    assert not any(r.suspect for r in w.records().values())
    adopted = MapWriter(xdp.dp)
    assert adopted.adoption_drift == 0, adopted.drift_report()
    assert adopted.installed() == w.installed()
    w.sync([])


def test_reused_ids_start_with_zero_counts(xdp: Harness):
    """A service or backend id handed out again starts with zeroed per-CPU counters
    and connection count (the bulk path zeroes them in batches, the backends' mapped
    rows in stores): counts are left in the maps as if the last user of the ids had
    traffic, then a writer adopting the emptied maps hands the same ids to other
    services."""
    w = xdp.writer
    w.sync([])
    first = states()[:40]
    w.sync(first)
    svc_ids = [w.svc_id(s.frontend) for s in first]
    bids = [b for s in first for b in w.records()[s.frontend].backend_ids.values()]
    dp = xdp.dp
    stats, conns = dp.table("svc_stats"), dp.table("backend_conns")
    bstats = readout.backend_rows(dp).grid()
    for i in svc_ids:
        leaf = stats.Leaf()
        for v in leaf:
            v.packets, v.bytes, v.new_flows, v.rejects = 7, 700, 3, 1
        stats[stats.Key(i)] = leaf
    bstats[:, bids] = 5   # every CPU's row
    for i in bids:
        conns[conns.Key(i)] = conns.Leaf(9)
    w.sync([])
    again = MapWriter(dp)
    others = [ServiceState(Frontend(f"10.96.90.{i + 1}", 443), s.backends) for i, s in enumerate(first)]
    again.sync(others)
    assert sorted(again.svc_id(s.frontend) for s in others) == sorted(svc_ids)
    assert sorted(b for r in again.records().values() for b in r.backend_ids.values()) == sorted(bids)
    assert all(dp.service_stats(i) == dict(packets=0, bytes=0, new_flows=0, rejects=0) for i in svc_ids)
    assert not bstats[:, bids].any()
    assert all(conns[conns.Key(i)].value == 0 for i in bids)
    again.sync([])
