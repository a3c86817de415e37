"""plan.py and installed.py: what one upsert writes, computed without the maps."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.dataplane.affinity_maps import AffinityGenerations
from controlplane.dataplane.ids import CapacityError, IdAllocator
from controlplane.dataplane.installed import (F_AFFINITY, F_TERMINATING_ONLY, BackendIds, backend_ids_of, ids_over,
                                              maglev_table, service_key_row, service_row, slot_ids)
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.plan import NewPlans, check_capacity, plan_upsert

FE = Frontend("10.96.0.1", 80)


def st(*ips, alg="random", state="active", affinity=0, m=None) -> ServiceState:
    return ServiceState(FE, tuple(Backend(ip, 8080, state) for ip in ips), alg, affinity, m)


@dataclass
class RangesRoom:
    """The source_ranges map's room, as SourceRanges reports it."""
    available: int
    what: str = "source_ranges map"


class Ids:
    def __init__(self, services=10, backends=20):
        self.svc = IdAllocator(services, "services map")
        self.backend = IdAllocator(backends, "backends map")
        self.affinity = AffinityGenerations()
        self.ranges = RangesRoom(8)

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
    check_capacity([(a, None), (b, None)], ids.svc, ids.backend, 0, 3, ids.ranges)
    c = ServiceState(Frontend("10.96.0.3", 80), (Backend("10.0.0.4", 8080),))
    with pytest.raises(CapacityError, match="services map"):
        check_capacity([(a, None), (b, None), (c, None)], ids.svc, ids.backend, 0, 10, ids.ranges)
    with pytest.raises(CapacityError, match="backends map"):
        check_capacity([(st("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"), None)], ids.svc, ids.backend, 0, 10, ids.ranges)
    with pytest.raises(CapacityError, match="max_slots=2"):
        check_capacity([(a, None), (b, None)], ids.svc, ids.backend, 0, 2, ids.ranges)
    assert ids.svc.available == 2 and ids.backend.available == 3   # nothing taken


def test_source_ranges_are_counted_against_their_map_new_ones_only_on_an_update():
    from controlplane.dataplane.installed import Installed
    from controlplane.dataplane.plan import NewPlans
    ids = Ids()
    lb = [ServiceState(Frontend(f"192.168.1.{i}", 80, "TCP", "external"), (Backend("10.0.0.1", 8080),),
                       source_ranges=(f"10.{i}.0.0/16", f"10.{i}.1.0/24", "192.0.2.0/24")) for i in range(1, 4)]
    todo = [(s, None) for s in lb]
    room = RangesRoom(8)   # three frontends of three ranges need 9
    for new in ([], [NewPlans.of(lb)]):
        with pytest.raises(CapacityError, match=r"cannot program 192\.168\.1\.3:80/TCP.*8 entries left.*need 9"):
            check_capacity(todo, ids.svc, ids.backend, 0, 100, room, new)
        check_capacity(todo, ids.svc, ids.backend, 0, 100, RangesRoom(9), new)
    # an update adds its new ranges before its old ones go: only those count
    old = Installed(1, lb[0], {("10.0.0.1", 8080): 1}, 1)
    wider = ServiceState(lb[0].frontend, lb[0].backends, source_ranges=lb[0].source_ranges + ("198.51.100.0/24",))
    check_capacity([(wider, old)], ids.svc, ids.backend, 0, 100, RangesRoom(1))
    with pytest.raises(CapacityError, match="0 entries left"):
        check_capacity([(wider, old)], ids.svc, ids.backend, 0, 100, RangesRoom(0))


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


def _batch_states(kind: str) -> list[ServiceState]:
    """States of one sync batch. "usual": every backend active with a weight (the
    columns' fast path: slots are all backends, asked of wrr states only); "wrr":
    the same with wrr states among them; "mixed": some backends terminating or of
    weight 0, so every state is asked for its slots; "same", "terminating",
    "weight0": every backend of the batch with one (state, weight) pair (active
    and 1, the usual sync; terminating and 2; active and 0), read as one value."""
    one = {"same": ("active", 1), "terminating": ("terminating", 2), "weight0": ("active", 0)}.get(kind)
    out = []
    for i in range(18):
        fe = Frontend(f"10.96.2.{i + 1}", 80 + i % 3, "UDP" if i % 5 == 0 else "TCP",
                      "external" if i % 4 == 3 else "cluster")
        n = i % 4   # 0..3 backends (none: count 0, no flag)
        bs = []
        for j in range(n):
            state, weight = "active", 1 + (i + j) % 3
            if kind == "mixed" and (i % 3 == 1 or (i % 5 == 2 and j == 0)):
                state = "terminating"
            if kind == "mixed" and i % 6 == 4 and j == 1:
                weight = 0
            if one:
                state, weight = one
            bs.append(Backend(f"10.2.{i}.{j + 1}", 8080 + j, state, weight))
        algs = ("random", "maglev", "rr", "wrr") if kind not in ("usual", "same") else ("random", "maglev", "rr", "lc")
        alg = algs[i % 4]
        out.append(ServiceState(fe, tuple(bs), alg, 30 if i % 3 == 0 else 0, 251 if alg == "maglev" else None,
                                ("192.0.2.0/24",) if i % 7 == 5 else (), n == 0 and i % 2 == 0))
    return out


@pytest.mark.parametrize("kind", ["usual", "wrr", "mixed", "same", "terminating", "weight0"])
def test_new_plans_columns_equal_the_rows_of_each_state(kind):
    """The columns a sync's new frontends are packed from (services entries, backend
    entries, slots, capacity totals) hold exactly what the per-state functions give:
    service_row / service_key_row, backend_columns of each backend, slot_ids; for
    every slot layout the fast path tells apart."""
    from controlplane.dataplane.installed import backend_columns, service_key_row
    from controlplane.dataplane.plan import NewPlans

    states = _batch_states(kind)
    ids = Ids(services=40, backends=200)
    batch = NewPlans.of(states)
    assert batch.slot_counts == [len(s.slot_sequence()) for s in states]
    assert (batch.slot_pos is None) == (kind in ("usual", "same"))
    batch.allocate(ids.svc, ids.backend, ids.affinity)
    keys, values = batch.entry_columns()

    def rows(cols, n):
        return [tuple(int(c[k]) if hasattr(c, "__len__") else int(c) for c in cols) for k in range(n)]

    assert rows(keys, len(states)) == [service_key_row(s.frontend) for s in states]
    assert rows(values, len(states)) == [service_row(s, i, g) for s, i, g in
                                         zip(states, batch.svc_ids, batch.affinity_gens)]
    assert batch.slot_bids.tolist() == [i for r in batch.installed() for i in slot_ids(r.state, r.backend_ids)]
    cols = backend_columns(batch.backends, [0] * len(batch.backends), [0] * len(batch.backends), False)
    fast = backend_columns(batch.backends, [0] * len(batch.backends), [0] * len(batch.backends), False,
                           batch.ip_be32, batch.port_be16, batch.state_codes, batch.weights)
    n = len(batch.backends)
    assert rows(fast, n) == rows(cols, n)


def _unchecked_twins(states: list[ServiceState], skip: int | None = None) -> list[ServiceState]:
    """The same states made as a full sync makes them (UncheckedModel, which keeps each
    state's backends as the columns given: one state or weight for all of a state's
    backends where they share it, else one per backend; no call at all for a state
    without backends, as desired.py makes none). `skip`: the index of a state left as
    it is (checked constructor, no columns)."""
    from controlplane.dataplane.model import UncheckedModel
    make = UncheckedModel()
    pending = []
    for s in states:
        bs = s.backends
        if not bs:
            idx = ()
        else:
            st = [b.state for b in bs]
            w = [b.weight for b in bs]
            idx = make.backends(tuple(b.ip for b in bs), tuple(b.port for b in bs),
                                st[0] if len(set(st)) == 1 else tuple(st), w[0] if len(set(w)) == 1 else tuple(w))
        pending.append(make.state(s.frontend, idx, s.algorithm, s.affinity_timeout,
                                  s.maglev_table_size if s.algorithm == "maglev" else None,
                                  s.source_ranges, s.local_drop))
    made = list(make.states(pending))
    assert made == states
    if skip is not None:
        made[skip] = states[skip]
    return made


@pytest.mark.parametrize("skip", [None, 5])
@pytest.mark.parametrize("kind", ["usual", "wrr", "mixed", "same", "terminating", "weight0"])
def test_new_plans_from_kept_columns_equal_those_read_from_the_backends(kind, skip, monkeypatch):
    """NewPlans.of reads the addresses, and the (state, weight) pairs, from the columns
    UncheckedModel kept (ServiceState._columns) when every state has them, not from each
    Backend: the batch is the one read from each Backend; with one state without them, it
    reads them all."""
    from controlplane.dataplane import plan
    from controlplane.dataplane.plan import NewPlans

    states = _batch_states(kind)
    twins = _unchecked_twins(states, skip)
    assert all(t._columns is not None for i, t in enumerate(twins) if i != skip)
    want = NewPlans.of(states)
    if skip is None:   # every state has its columns: no Backend's address is read
        def unread(b):
            raise AssertionError("a Backend's address read")
        monkeypatch.setattr(plan, "_ip", unread)
        monkeypatch.setattr(plan, "_port", unread)
    got = NewPlans.of(twins)
    for name in ("counts", "backends", "ips", "ports", "state_codes", "weights", "slot_counts",
                 "terminating_only"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("ip_be32", "port_be16"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
    assert (None if got.slot_pos is None else got.slot_pos.tolist()) == \
        (None if want.slot_pos is None else want.slot_pos.tolist())


@pytest.mark.parametrize("kind", ["usual", "wrr", "mixed", "same", "terminating", "weight0"])
def test_capacity_from_new_plans_agrees_with_the_walk(kind):
    """check_capacity given the batch's NewPlans (totals only) raises exactly when
    the walk over the states does, with the same message, at each limit's edge."""
    from controlplane.dataplane.plan import NewPlans

    states = _batch_states(kind)
    todo = [(s, None) for s in states]
    services = len(states)
    backends = sum(len(s.backends) for s in states)
    slots = sum(len(s.slot_sequence()) for s in states)
    for svc_limit, backend_limit, slot_limit in [
            (services + 1, backends + 1, slots), (services, backends + 1, slots),
            (services + 1, backends, slots), (services + 1, backends + 1, slots - 1)]:
        outcomes = []
        for new in ([], [NewPlans.of(states)]):
            ids = Ids(services=svc_limit, backends=backend_limit)
            try:
                check_capacity(todo, ids.svc, ids.backend, 3, slot_limit + 3, ids.ranges, new)
                outcomes.append(None)
            except CapacityError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]
        assert (outcomes[0] is None) == (svc_limit > services and backend_limit > backends and slot_limit >= slots)


def test_backend_ids_are_a_mapping_by_address_in_the_backends_order():
    """A record's ids (BackendIds): the ids alone, in the order of the state's backends
    (sorted by address: "10.0.0.10" before "10.0.0.9"), looked up by bisection."""
    s = st("10.0.0.9", "10.0.0.10", "10.0.0.2")
    ids = {("10.0.0.9", 8080): 7, ("10.0.0.10", 8080): 3, ("10.0.0.2", 8080): 5}
    compact = ids_over(s.backends, ids)
    assert isinstance(compact, BackendIds) and compact == ids and ids == compact
    assert list(compact) == [b.address for b in s.backends] == [("10.0.0.10", 8080), ("10.0.0.2", 8080),
                                                                ("10.0.0.9", 8080)]
    assert compact.items() == [(("10.0.0.10", 8080), 3), (("10.0.0.2", 8080), 5), (("10.0.0.9", 8080), 7)]
    assert compact.values() == [3, 5, 7] and len(compact) == 3
    assert compact[("10.0.0.2", 8080)] == 5 and compact.get(("10.0.0.2", 8081)) is None
    assert ("10.0.0.1", 8080) not in compact and ("10.0.0.9", 8080) in compact
    with pytest.raises(KeyError):
        compact[("10.0.0.99", 8080)]
    assert compact.get(("10.0.0.2", "8080")) is None and 7 not in compact   # (as a dict: no such key)
    assert repr(compact) == ("BackendIds({('10.0.0.10', 8080): 3, ('10.0.0.2', 8080): 5, "
                             "('10.0.0.9', 8080): 7})")
    assert compact != ids_over(s.backends, {**ids, ("10.0.0.2", 8080): 6})
    # over equal backends (a restart's adopted record and the agent's state): the same ids
    again = st("10.0.0.2", "10.0.0.10", "10.0.0.9")
    assert ids_over(again.backends, compact) == ids and ids_over(again.backends, compact)._backends is again.backends
    # ids of other addresses, or of more or fewer: none
    assert ids_over(st("10.0.0.9", "10.0.0.10", "10.0.0.3").backends, compact) is None
    assert ids_over(st("10.0.0.9", "10.0.0.10").backends, ids) is None
    assert backend_ids_of(st("10.0.0.9").backends, ids) is ids
    # no backends: an empty one over them (the empty tuple is one object: still a match)
    assert ids_over((), {}) == {} and ids_over((), ids_over((), {})) is not None
    with pytest.raises(ValueError):
        BackendIds(s.backends, [1, 2])


def test_a_record_holds_its_ids_over_its_states_backends():
    """What the writer keeps: plan_upsert's and NewPlans' records hold BackendIds."""
    ids = Ids()
    new = ids.plan(st("10.0.0.1", "10.0.0.2"))
    rec = new.installed()
    assert isinstance(rec.backend_ids, BackendIds) and rec.backend_ids == new.ids
    changed = ids.plan(st("10.0.0.2", "10.0.0.3"), rec)
    assert isinstance(changed.ids, dict)   # a plan's own, which the writer shrinks
    changed.ids.pop(("10.0.0.1", 8080))
    after = changed.installed()
    assert isinstance(after.backend_ids, BackendIds) and dict(after.backend_ids) == changed.ids
    batch = NewPlans.of([st("10.0.0.4"), st()])
    batch.allocate(ids.svc, ids.backend, ids.affinity)
    assert all(isinstance(r.backend_ids, BackendIds) for r in batch.installed())
