"""plan.py and installed.py: what one upsert writes, computed without the maps."""
from __future__ import annotations

import pytest

from controlplane.dataplane.affinity_maps import AffinityGenerations
from controlplane.dataplane.ids import CapacityError, IdAllocator
from controlplane.dataplane.installed import (F_AFFINITY, F_TERMINATING_ONLY, maglev_table,
                                              service_key_row, service_row, slot_ids)
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.plan import check_capacity, plan_upsert

FE = Frontend("10.96.0.1", 80)


def st(*ips, alg="random", state="active", affinity=0, m=None) -> ServiceState:
    return ServiceState(FE, tuple(Backend(ip, 8080, state) for ip in ips), alg, affinity, m)


class Ids:
    def __init__(self, services=10, backends=20):
        self.svc = IdAllocator(services, "services map")
        self.backend = IdAllocator(backends, "backends map")
        self.affinity = AffinityGenerations()

    def plan(self, state, old=None):
        return plan_upsert(state, old, self.svc, self.backend, self.affinity)


def test_a_new_service_writes_everything_and_its_entry_names_its_key():
    ids = Ids()
    p = ids.plan(st("10.0.0.1", "10.0.0.2"))
    assert p.svc_id == 1 and p.fresh == [1, 2]
    assert p.backend_writes == [(1, Backend("10.0.0.1", 8080)), (2, Backend("10.0.0.2", 8080))]
    assert p.slot_writes == [(1, 1), (2, 2)]
    assert p.entry == service_row(p.state, 1, 0)
    assert p.entry[-4:] == service_key_row(FE)        # the key the datapath checks
    assert p.entry[1] == 2 and not p.install_table


def test_an_update_writes_only_what_changed():
    ids = Ids()
    old = ids.plan(st("10.0.0.1", "10.0.0.2")).installed()
    p = ids.plan(st("10.0.0.1", "10.0.0.2", "10.0.0.3"), old)
    assert p.svc_id == old.svc_id and p.fresh == [3]
    assert p.backend_writes == [(3, Backend("10.0.0.3", 8080))]
    assert p.slot_writes == [(3, 3)]
    assert p.old_slot_count == 2 and p.slot_count == 3


def test_a_suspect_service_is_written_whole():
    """The consistency check found its maps differ: no entry is assumed right."""
    ids = Ids()
    old = ids.plan(st("10.0.0.1", "10.0.0.2", alg="maglev", m=251)).installed()
    old.suspect = True
    p = ids.plan(old.state, old)
    assert len(p.backend_writes) == 2 and len(p.slot_writes) == 2 and p.install_table


def test_maglev_tables_are_installed_on_change_and_removed_when_unused():
    ids = Ids()
    old = ids.plan(st("10.0.0.1", "10.0.0.2", alg="maglev", m=251)).installed()
    assert not ids.plan(old.state, old).install_table
    grown = ids.plan(st("10.0.0.1", "10.0.0.2", "10.0.0.3", alg="maglev", m=251), old)
    assert grown.install_table and not grown.remove_table
    to_rr = ids.plan(st("10.0.0.1", "10.0.0.2", alg="rr"), old)
    assert to_rr.remove_table and not to_rr.install_table
    empty = ids.plan(st(alg="maglev", m=251), old)
    assert empty.remove_table


def test_maglev_table_holds_only_member_ids():
    table = maglev_table(st("10.0.0.1", "10.0.0.2", alg="maglev", m=251),
                         {("10.0.0.1", 8080): 7, ("10.0.0.2", 8080): 9})
    assert len(table) == 251 and set(table) == {7, 9}


def test_entry_flags():
    assert service_row(st("10.0.0.1", affinity=30), 1, 5)[3] == F_AFFINITY
    assert service_row(st("10.0.0.1", state="terminating"), 1, 0)[3] == F_TERMINATING_ONLY
    assert service_row(st(), 1, 0)[1] == 0   # no backends: count 0, the datapath rejects


def test_capacity_is_checked_exactly_before_anything_is_allocated():
    ids = Ids(services=3, backends=4)    # 2 services, 3 backends
    a = st("10.0.0.1", "10.0.0.2")
    b = ServiceState(Frontend("10.96.0.2", 80), (Backend("10.0.0.3", 8080),))
    check_capacity([(a, None), (b, None)], ids.svc, ids.backend, 0, 3)
    c = ServiceState(Frontend("10.96.0.3", 80), (Backend("10.0.0.4", 8080),))
    with pytest.raises(CapacityError, match="services map"):
        check_capacity([(a, None), (b, None), (c, None)], ids.svc, ids.backend, 0, 10)
    with pytest.raises(CapacityError, match="backends map"):
        check_capacity([(st("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"), None)], ids.svc, ids.backend, 0, 10)
    with pytest.raises(CapacityError, match="max_slots=2"):
        check_capacity([(a, None), (b, None)], ids.svc, ids.backend, 0, 2)
    assert ids.svc.available == 2 and ids.backend.available == 3   # nothing taken


def test_new_plans_in_bulk_equal_planning_one_by_one():
    """NewPlans (a full sync's new frontends, as columns) hands out the ids, slots
    and records that plan_upsert gives state by state, for every slot layout: all
    backends, some left out (not ready, weight 0), terminating only, wrr, Maglev,
    ClientIP; with ids reused from the free list as well as fresh ones."""
    from controlplane.dataplane.plan import NewPlans

    def mk(i: int) -> ServiceState:
        fe = Frontend(f"10.96.1.{i + 1}", 80 + i % 2, "UDP" if i % 5 == 0 else "TCP")
        bs = [Backend(f"10.1.{i}.{j}", 8080, "terminating" if (i % 4 == 1 and j == 2) or i % 7 == 3 else "active",
                      0 if i % 6 == 2 and j == 1 else 1 + j % 3) for j in range(1, 2 + i % 4)]
        alg = ("random", "wrr", "maglev", "rr")[i % 4]
        return ServiceState(fe, tuple(bs), alg, 60 if i % 3 == 0 else 0, 251 if alg == "maglev" else None)

    states = [mk(i) for i in range(24)]

    def allocators() -> Ids:
        ids = Ids(services=40, backends=120)
        for _ in range(30):   # some freed ids: reused oldest first
            ids.backend.allocate()
        for i in (7, 3, 19, 11):
            ids.backend.release(i)
        ids.svc.allocate(), ids.svc.allocate()
        ids.svc.release(2)
        return ids

    one = allocators()
    plans = [one.plan(s) for s in states]
    bulk = allocators()
    batch = NewPlans.of(states)
    batch.allocate(bulk.svc, bulk.backend, bulk.affinity)
    assert batch.svc_ids == [p.svc_id for p in plans]
    assert batch.ids == [i for p in plans for i in p.fresh]
    assert [r.backend_ids for r in batch.installed()] == [p.ids for p in plans]
    assert [p.installed() for p in plans] == batch.installed()
    svc, slot, bid = batch.slot_columns()
    assert list(zip(svc.tolist(), slot.tolist(), bid.tolist())) == [
        (p.svc_id, n, b) for p in plans for n, b in p.slot_writes]
    assert batch.affinity_gens == [p.affinity_gen for p in plans]
    assert batch.backends == [b for p in plans for b in p.write_backends]
    # the slots, against installed.slot_ids (what the diff path, adoption and the
    # consistency check expect the maps to hold), not only against planning one by one
    assert bid.tolist() == [i for r in batch.installed() for i in slot_ids(r.state, r.backend_ids)]
