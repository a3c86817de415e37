"""Planning one upsert: the ids and map entries a new state needs, computed before
anything is written (writer.py writes plans in order). Capacity is checked for a
whole batch of plans first, so a full map leaves nothing behind."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from operator import attrgetter, itemgetter
from typing import Protocol, Sequence

import numpy as np

from .affinity_maps import AffinityGenerations
from .ids import CapacityError, IdAllocator
from .installed import (Address, BackendIds, Installed, backend_ids_of, maglev_inputs, service_columns,
                        service_key_columns, service_key_row, service_row, slot_ids)
from .model import BACKEND_STATES, Backend, Frontend, ServiceState
from .packing import be32_column, port_be16


@dataclass
class Plan:
    """What one upsert writes. Rows are left to the writer, which packs the rows of
    a whole batch of plans at once, column by column (packing.py)."""
    state: ServiceState
    old: Installed | None
    svc_id: int
    ids: dict[Address, int]
    fresh: list[int] = field(default_factory=list)           # backend ids handed out now
    # the backend entries to write, as two columns: ids and their backends
    write_ids: list[int] = field(default_factory=list)
    write_backends: Sequence[Backend] = field(default_factory=list)
    # the slots to write, as two columns: slot numbers and backend ids
    slot_numbers: list[int] = field(default_factory=list)
    slot_backend_ids: list[int] = field(default_factory=list)
    slot_count: int = 0
    old_slot_count: int = 0
    install_table: bool = False
    remove_table: bool = False
    affinity_gen: int = 0
    entry_key: tuple = ()   # services map key, as packing.Packer rows
    entry: tuple = ()       # services map value

    @property
    def backend_writes(self) -> list[tuple[int, Backend]]:
        """(id, backend) of each backend entry written."""
        return list(zip(self.write_ids, self.write_backends))

    @property
    def slot_writes(self) -> list[tuple[int, int]]:
        """(slot, backend id) of each slot written."""
        return list(zip(self.slot_numbers, self.slot_backend_ids))

    def installed(self) -> Installed:
        """The record of what the maps hold once the plan is written."""
        return Installed(self.svc_id, self.state, backend_ids_of(self.state.backends, self.ids), self.slot_count,
                         affinity_gen=self.affinity_gen)


class Room(Protocol):
    """A map's room for entries: IdAllocator, SourceRanges."""
    available: int
    what: str


def check_capacity(plans: Sequence[tuple[ServiceState, Installed | None]], svc_ids: IdAllocator,
                   backend_ids: IdAllocator, slots_used: int, max_slots: int, ranges: Room,
                   new: Sequence["NewPlans"] = ()) -> None:
    """Raise CapacityError unless every plan fits; nothing is allocated here.
    `ranges`: the source_ranges map's room (a frontend's ranges are added before its
    old ones go). `new`: NewPlans.of the plans' new states, if made already. When they
    are all of the plans (a sync into empty maps), the totals are known from them; each
    total only grows plan by plan, so when the totals fit every prefix does, and the
    walk below, which names the first plan that does not fit, is needed only when one
    does not."""
    if new and sum(len(b.states) for b in new) == len(plans) and \
            len(plans) <= svc_ids.available and \
            sum(sum(b.counts) for b in new) <= backend_ids.available and \
            slots_used + sum(sum(b.slot_counts) for b in new) <= max_slots and \
            sum(len(r) for b in new for r in b.source_ranges) <= ranges.available:
        return
    services = backends = added_ranges = 0
    slots = slots_used
    for state, old in plans:
        services += old is None
        if services > svc_ids.available:
            raise CapacityError(f"cannot add {state.frontend}: {svc_ids.what} full")
        if old is None:   # a state's addresses are distinct (ServiceState checks)
            backends += len(state.backends)
        else:
            backends += len({b.address for b in state.backends} - set(old.backend_ids))
        if backends > backend_ids.available:
            raise CapacityError(f"cannot add {backends} backends (up to {state.frontend}): "
                                f"{backend_ids.what} has {backend_ids.available} left")
        # Growth only: every frontend's new slots are written (step 2) before any
        # frontend's surplus ones go (step 4), so one shrinking makes no room for another
        # growing in the same batch (netted, a map exactly full failed mid-write, E2BIG).
        slots += max(0, len(state.slot_sequence()) - (old.slot_count if old else 0))
        if slots > max_slots:
            raise CapacityError(f"cannot program {state.frontend}: slots map "
                                f"(max_slots={max_slots}) would need {slots} entries")
        if state.source_ranges:
            # (a suspect record's are all written again: the maps may lack any of them)
            added_ranges += len(set(state.source_ranges) -
                                set(old.state.source_ranges if old and not old.suspect else ()))
            if added_ranges > ranges.available:
                raise CapacityError(f"cannot program {state.frontend}: {ranges.what} has "
                                    f"{ranges.available} entries left, its source ranges "
                                    f"(up to it) need {added_ranges}")


def plan_upsert(state: ServiceState, old: Installed | None, svc_ids: IdAllocator, backend_ids: IdAllocator,
                affinity: AffinityGenerations) -> Plan:
    """Ids and map entries for one frontend. Allocates its new ids; writes nothing.
    Entries equal to what `old` has are left out, unless `old` is suspect (the
    consistency check found the maps differ from it): then everything is written."""
    if old is None:
        return _plan_new(state, svc_ids, backend_ids, affinity)
    svc_id = old.svc_id
    ids = dict(old.backend_ids)
    full = old.suspect
    old_by_addr = {b.address: b for b in old.state.backends} if not full else {}
    plan = Plan(state, old, svc_id, ids)
    for b in state.backends:
        if b.address not in ids:
            ids[b.address] = backend_ids.allocate()
            plan.fresh.append(ids[b.address])
        if old_by_addr.get(b.address) != b:
            plan.write_ids.append(ids[b.address])
            plan.write_backends.append(b)
    new_slots = slot_ids(state, ids)
    plan.old_slot_count = old.slot_count
    old_slots = slot_ids(old.state, old.backend_ids) if not full else []
    for i, bid in enumerate(new_slots):
        if i >= len(old_slots) or old_slots[i] != bid:
            plan.slot_numbers.append(i + 1)
            plan.slot_backend_ids.append(bid)
    plan.slot_count = len(new_slots)
    new_table = maglev_inputs(state, ids)
    old_table = maglev_inputs(old.state, old.backend_ids)
    plan.install_table = new_table is not None and (full or new_table != old_table or not old.table_ok)
    plan.remove_table = new_table is None and (old_table is not None or old.suspect)
    plan.affinity_gen = affinity.for_update(state.affinity_timeout, old.affinity_gen)
    plan.entry_key = service_key_row(state.frontend)
    plan.entry = service_row(state, svc_id, plan.affinity_gen)
    return plan


def _plan_new(state: ServiceState, svc_ids: IdAllocator, backend_ids: IdAllocator,
              affinity: AffinityGenerations) -> Plan:
    """A frontend the maps do not hold, as a Plan: NewPlans of one (the writer plans
    runs of new frontends as NewPlans directly), everything written."""
    batch = NewPlans.of([state])
    batch.allocate(svc_ids, backend_ids, affinity)
    (record,) = batch.installed()
    _, slots, bids = batch.slot_columns()
    plan = Plan(state, None, record.svc_id, dict(record.backend_ids), batch.ids, batch.ids, state.backends)
    plan.slot_numbers, plan.slot_backend_ids = slots.tolist(), bids.tolist()
    plan.slot_count = record.slot_count
    plan.install_table = maglev_inputs(state, plan.ids) is not None
    plan.affinity_gen = record.affinity_gen
    plan.entry_key = service_key_row(state.frontend)
    plan.entry = service_row(state, plan.svc_id, plan.affinity_gen, plan.entry_key)
    return plan


_ip, _port, _state, _weight = attrgetter("ip"), attrgetter("port"), attrgetter("state"), attrgetter("weight")
_state_weight = attrgetter("state", "weight")
_frontend, _backends, _algorithm = attrgetter("frontend"), attrgetter("backends"), attrgetter("algorithm")
_timeout, _table_size = attrgetter("affinity_timeout"), attrgetter("maglev_table_size")
_ranges, _local_drop = attrgetter("source_ranges"), attrgetter("local_drop")
_ACTIVE = BACKEND_STATES["active"]
# a ServiceState's _columns (model.py): (ips, ports, state or states, weight or weights)
_columns = attrgetter("_columns")
_col_ips, _col_ports, _col_scalars = itemgetter(0), itemgetter(1), itemgetter(2, 3)


def _scalar_pairs(columns: list[tuple], counts: list[int]) -> set[tuple[str, int]] | None:
    """The distinct (state, weight) of the backends of states with these _columns, when
    each state gave one state and one weight for all its backends (the usual); else None."""
    try:
        given = set(map(_col_scalars, columns))
    except TypeError:   # a column that is a list
        return None
    if not all(st.__class__ is str and w.__class__ is int for st, w in given):
        return None
    if len(given) == 1 and 0 not in counts:
        return given
    return {pair for pair, n in zip(map(_col_scalars, columns), counts) if n}


@dataclass
class NewPlans:
    """Plans of frontends the maps do not hold (the bulk of a full sync: 10,000
    services, 100,000 backends), kept as columns over all their backends, state by
    state, so the writer packs every map's rows with numpy, not per backend. What is
    made per backend is only what the records keep: each state's ids (BackendIds).

    Made in two steps, because rev_nat is attached between them (writer.py: an
    address is attached before its backend entry is written): `NewPlans.of(states)`
    reads the states' columns and their slots, writing and allocating nothing (the
    writer checks capacity with them); `allocate` hands out the ids."""
    states: list[ServiceState]
    counts: list[int]                  # backends of each state
    backends: list[Backend]            # every state's backends, state by state
    ips: list[str]
    ports: list[int]
    ip_be32: np.ndarray
    port_be16: np.ndarray
    # the other columns the writer packs, read once here (one value: the same for all)
    frontends: list[Frontend] = field(default_factory=list)
    key_columns: tuple = ()    # of the services map: service_key_columns(frontends)
    algorithms: list[str] = field(default_factory=list)
    source_ranges: list[tuple[str, ...]] = field(default_factory=list)
    state_codes: list[int] | int = _ACTIVE          # BACKEND_STATES of each backend
    weights: list[int] | int = 1                    # weight of each backend
    # each state's slots, from planning (slot_sequence) without ids: their count, the
    # index in `backends` of slot 1..n's backend (None: every backend in order, in
    # every state), and whether they are terminating backends only (the entry's flag)
    slot_counts: list[int] = field(default_factory=list)
    slot_pos: np.ndarray | None = None
    terminating_only: list[bool] | bool = False
    svc_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)           # backend id of each backend
    id_col: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))   # `ids` as u32
    id_maps: list[BackendIds] = field(default_factory=list)   # each state's ids by address
    slot_bids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))  # slots 1..n of each state
    affinity_gens: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, states: Sequence[ServiceState]) -> "NewPlans":
        states = list(states)
        per_state = list(map(_backends, states))
        counts = list(map(len, per_state))
        backends = list(chain.from_iterable(per_state))
        columns = list(map(_columns, states))
        pairs: set[tuple[str, int]] | None = None
        if None not in columns:   # every state kept the columns its backends were made of
            ips = list(chain.from_iterable(map(_col_ips, columns)))
            ports = list(chain.from_iterable(map(_col_ports, columns)))
            pairs = _scalar_pairs(columns, counts)
        else:
            ips, ports = list(map(_ip, backends)), list(map(_port, backends))
        frontends = list(map(_frontend, states))
        batch = cls(states, counts, backends, ips, ports, be32_column(ips), port_be16(ports), frontends,
                    service_key_columns(frontends), list(map(_algorithm, states)), list(map(_ranges, states)))
        batch._read_slots(pairs)
        return batch

    def _read_slots(self, pairs: set[tuple[str, int]] | None = None) -> None:
        """Each state's slots and the backends' state and weight columns, read in C
        over the whole batch. When every backend is active with a weight (the usual
        sync), slot_backends() of a state is all its backends in order (or none), so
        its slot_sequence() is too unless it is wrr: only wrr states are then asked.
        Otherwise every state is asked, as plan_upsert does. `pairs`: the backends'
        distinct (state, weight) pairs, if the caller knows them already."""
        # One pass for the usual sync, where every backend has the same state and
        # weight: the distinct (state, weight) pairs, in C (a set of one). Only when
        # there are several are the two columns read, one value per backend.
        if pairs is None:
            pairs = set(map(_state_weight, self.backends))
        if len(pairs) <= 1:
            state, weight = pairs.pop() if pairs else ("active", 1)
            all_active = state == "active"
            usual = all_active and weight > 0
            self.state_codes = _ACTIVE if all_active else BACKEND_STATES[state]
            self.weights = weight
        else:
            backend_states = list(map(_state, self.backends))
            weights = list(map(_weight, self.backends))
            all_active = backend_states.count("active") == len(backend_states)
            usual = all_active and min(weights) > 0
            if all_active:
                self.state_codes = _ACTIVE
            else:
                self.state_codes = list(map(BACKEND_STATES.__getitem__, backend_states))
            self.weights = weights if min(weights) != max(weights) else weights[0]
        if usual and "wrr" not in self.algorithms:
            self.slot_counts, self.slot_pos, self.terminating_only = list(self.counts), None, False
            return
        slot_counts: list[int] = []
        parts: list[Sequence[int]] = []
        terminating: list[bool] = []
        start = 0
        for s, n, algorithm in zip(self.states, self.counts, self.algorithms):
            end = start + n
            if usual and algorithm != "wrr":   # every backend, active (see above)
                parts.append(range(start, end))
                slot_counts.append(n)
                terminating.append(False)
            else:
                seq = s.slot_sequence()
                if seq == s.backends:
                    parts.append(range(start, end))
                else:
                    at = dict(zip(zip(self.ips[start:end], self.ports[start:end]), range(start, end)))
                    parts.append([at[(b.ip, b.port)] for b in seq])
                slot_counts.append(len(seq))
                members = s.slot_backends()   # service_row's flag, exactly
                terminating.append(bool(members) and members[0].state == "terminating")
            start = end
        self.slot_counts, self.terminating_only = slot_counts, terminating
        self.slot_pos = np.fromiter(chain.from_iterable(parts), np.int64, sum(slot_counts))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(zip(self.ips, self.ports))

    def allocate(self, svc_ids: IdAllocator, backend_ids: IdAllocator, affinity: AffinityGenerations) -> None:
        """The ids plan_upsert would hand out for each state in turn (allocate_many
        gives the ids that many allocate() calls would), and each state's slots."""
        self.svc_ids = svc_ids.allocate_many(len(self.states))
        self.ids = ids = backend_ids.allocate_many(len(self.backends))
        self.id_col = np.array(ids, np.uint32)
        self.slot_bids = self.id_col if self.slot_pos is None else self.id_col[self.slot_pos]
        # each state's ids, its slice of the column (its backends are its slice of `backends`)
        id_iter = iter(ids)
        self.id_maps = list(map(BackendIds, map(_backends, self.states), map(islice, repeat(id_iter), self.counts)))
        timeouts = list(map(_timeout, self.states))
        if any(timeouts):
            self.affinity_gens = [affinity.for_update(t, 0) for t in timeouts]
        else:   # for_update(0, 0) is 0 and takes no generation
            self.affinity_gens = [0] * len(timeouts)

    def slot_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(svc_id, slot, backend id) of every slot."""
        counts = np.asarray(self.slot_counts, np.int64)
        svc = np.repeat(np.asarray(self.svc_ids, np.uint32), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        slot = np.arange(len(svc), dtype=np.int64) - starts + 1
        return svc, slot, self.slot_bids

    def entry_columns(self) -> tuple[tuple, tuple]:
        """The services map's keys and values of these states, as columns
        (installed.service_columns: what service_key_row and service_row give)."""
        keys = self.key_columns
        return keys, service_columns(self.states, self.svc_ids, self.slot_counts, self.terminating_only,
                                     self.affinity_gens, keys, self.algorithms, self.source_ranges)

    def installed(self) -> list[Installed]:
        """The records of what the maps hold once these are written."""
        return list(map(Installed, self.svc_ids, self.states, self.id_maps, self.slot_counts,
                        repeat(True), self.affinity_gens))
