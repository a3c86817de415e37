"""Planning one upsert: the ids and map entries a new state needs, computed before
anything is written (writer.py writes plans in order). Capacity is checked for a
whole batch of plans first, so a full map leaves nothing behind."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Sequence

import numpy as np

from .affinity_maps import AffinityGenerations
from .ids import CapacityError, IdAllocator
from .installed import Address, Installed, maglev_inputs, service_key_row, service_row, slot_ids
from .model import Backend, ServiceState
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
        return Installed(self.svc_id, self.state, self.ids, self.slot_count, affinity_gen=self.affinity_gen)


def check_capacity(plans: Sequence[tuple[ServiceState, Installed | None]], svc_ids: IdAllocator,
                   backend_ids: IdAllocator, slots_used: int, max_slots: int) -> None:
    """Raise CapacityError unless every plan fits; nothing is allocated here."""
    services = backends = 0
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
        slots += len(state.slot_sequence()) - (old.slot_count if old else 0)
        if slots > max_slots:
            raise CapacityError(f"cannot program {state.frontend}: slots map "
                                f"(max_slots={max_slots}) would need {slots} entries")


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
    plan = Plan(state, None, record.svc_id, record.backend_ids, batch.ids, batch.ids, state.backends)
    plan.slot_numbers, plan.slot_backend_ids = slots.tolist(), bids.tolist()
    plan.slot_count = record.slot_count
    plan.install_table = maglev_inputs(state, plan.ids) is not None
    plan.affinity_gen = record.affinity_gen
    plan.entry_key = service_key_row(state.frontend)
    plan.entry = service_row(state, plan.svc_id, plan.affinity_gen, plan.entry_key)
    return plan


_ip, _port = attrgetter("ip"), attrgetter("port")


@dataclass
class NewPlans:
    """Plans of frontends the maps do not hold (the bulk of a full sync: 10,000
    services, 100,000 backends), kept as columns over all their backends, state by
    state, so the writer packs every map's rows with numpy, not per backend. What is
    made per backend is only what the records keep: each state's address -> id map.

    Made in two steps, because rev_nat is attached between them (writer.py: an
    address is attached before its backend entry is written): `NewPlans.of(states)`
    reads the backends' columns; `allocate` hands out the ids."""
    states: list[ServiceState]
    counts: list[int]                  # backends of each state
    backends: list[Backend]            # every state's backends, state by state
    ips: list[str]
    ports: list[int]
    ip_be32: np.ndarray
    port_be16: np.ndarray
    shared: list[bool] | None = None   # per backend; None: no address of these is shared
    svc_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)           # backend id of each backend
    id_maps: list[dict[Address, int]] = field(default_factory=list)
    slot_counts: list[int] = field(default_factory=list)
    slot_bids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))  # slots 1..n of each state
    affinity_gens: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, states: Sequence[ServiceState]) -> "NewPlans":
        states = list(states)
        backends = list(chain.from_iterable(s.backends for s in states))
        ips, ports = list(map(_ip, backends)), list(map(_port, backends))
        return cls(states, [len(s.backends) for s in states], backends, ips, ports,
                   be32_column(ips), port_be16(ports))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(zip(self.ips, self.ports))

    def allocate(self, svc_ids: IdAllocator, backend_ids: IdAllocator, affinity: AffinityGenerations) -> None:
        """The ids plan_upsert would hand out for each state in turn (allocate_many
        gives the ids that many allocate() calls would), and each state's slots."""
        states = self.states
        self.svc_ids = svc_ids.allocate_many(len(states))
        self.ids = ids = backend_ids.allocate_many(len(self.backends))
        addrs = self.addresses
        id_maps: list[dict[Address, int]] = []
        slot_counts: list[int] = []
        slot_parts: list[Sequence[int]] = []
        gens: list[int] = []
        start = 0
        for s, n in zip(states, self.counts):
            end = start + n
            id_map = dict(zip(addrs[start:end], ids[start:end]))
            id_maps.append(id_map)
            seq = s.slot_sequence()
            if seq == s.backends:   # every backend, in order (no wrr, none left out): ids as they are
                slot_parts.append(ids[start:end])
            else:
                slot_parts.append([id_map[(b.ip, b.port)] for b in seq])
            slot_counts.append(len(seq))
            gens.append(affinity.for_update(s.affinity_timeout, 0))
            start = end
        self.id_maps, self.slot_counts, self.affinity_gens = id_maps, slot_counts, gens
        self.slot_bids = np.fromiter(chain.from_iterable(slot_parts), np.uint32, sum(slot_counts))

    def slot_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(svc_id, slot, backend id) of every slot."""
        counts = np.asarray(self.slot_counts, np.int64)
        svc = np.repeat(np.asarray(self.svc_ids, np.uint32), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        slot = np.arange(len(svc), dtype=np.int64) - starts + 1
        return svc, slot, self.slot_bids

    def installed(self) -> list[Installed]:
        """The records of what the maps hold once these are written."""
        return [Installed(i, s, m, n, affinity_gen=g) for s, i, m, n, g in
                zip(self.states, self.svc_ids, self.id_maps, self.slot_counts, self.affinity_gens)]
