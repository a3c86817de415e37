"""Typed, ordered writes of services and backends into the dataplane maps.

Update order (DESIGN.md) so that no packet ever sees a half-written service:
  1. backends a service will use are written first,
  2. then its slots and per-service state,
  3. then the service entry (the only thing the datapath finds it by),
  4. and only after the entry's count has shrunk are surplus slots deleted and
     removed backends retired.
Capacity is checked before the first write, so a full map leaves nothing behind.
A Maglev service's table is built (csrc/maglev.c) and swapped in at step 2; it is
removed after the entry when the service stops using Maglev or loses all backends.
Identifiers are allocated here and rebuilt from the maps when a writer adopts a
running dataplane, so a restarted agent continues where the last one stopped.
"""
from __future__ import annotations

import ctypes as ct
import warnings
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from controlplane.gcpause import paused_gc
from controlplane.maglev import MaglevBackend, MaglevSizeWarning, build_table

from .layout import ALGORITHMS, const
from .affinity_maps import AffinityGenerations
from .ids import CapacityError, IdAllocator
from .maglev_maps import MaglevMaps
from .model import (BACKEND_STATES, PROTOCOLS, SCOPES, Backend, Frontend, ServiceState,
                    be16_to_port, be32_to_ip, ip_to_be32, port_to_be16)
from .program import Dataplane
from .packing import Packer, batch_write
from .revnat import RevNat
from .source_ranges import SourceRanges

UNUSED = const("BACKEND_UNUSED")
F_AFFINITY = const("SVC_F_AFFINITY")
F_TERMINATING_ONLY = const("SVC_F_TERMINATING_ONLY")
F_SOURCE_RANGES = const("SVC_F_SOURCE_RANGES")
F_LOCAL_DROP = const("SVC_F_LOCAL_DROP")
F_REPLY_ENTRY = const("BACKEND_F_REPLY_ENTRY")
_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
_SCOPE_NAMES = {v: k for k, v in SCOPES.items()}
_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}
_ALG_NAMES = {v: k for k, v in ALGORITHMS.items()}


@dataclass
class _Installed:
    svc_id: int
    state: ServiceState
    backend_ids: dict[tuple[str, int], int]
    slot_count: int
    table_ok: bool = True  # False: adopted Maglev service whose table is missing
    affinity_gen: int = 0  # its ClientIP period (affinity_maps.py); 0 with affinity off


@dataclass
class _Plan:
    """What one upsert writes, computed before anything is written."""
    state: ServiceState
    old: _Installed | None
    svc_id: int
    ids: dict[tuple[str, int], int]
    fresh: list[int] = field(default_factory=list)
    backend_writes: list = field(default_factory=list)
    slot_writes: list = field(default_factory=list)
    slot_count: int = 0
    old_slot_count: int = 0
    install_table: bool = False
    remove_table: bool = False
    affinity_gen: int = 0
    entry_key: tuple = ()   # services map key, as packing.Packer rows
    entry: tuple = ()       # services map value


def _maglev_inputs(state: ServiceState, ids: dict[tuple[str, int], int]) -> tuple | None:
    """Everything a service's Maglev table depends on; None when it has no table."""
    if state.algorithm != "maglev":
        return None
    members = state.slot_backends()
    if not members:
        return None
    return (state.maglev_table_size, tuple((b.address, ids[b.address], b.weight) for b in members))


def maglev_table(state: ServiceState, ids: dict[tuple[str, int], int]) -> array | None:
    """The table the writer installs for `state` (ids: address -> backend id); None
    when the service has no table. Backends are keyed by (ip, port), so every node
    orders and places them alike whatever its local ids."""
    inputs = _maglev_inputs(state, ids)
    if inputs is None:
        return None
    m, members = inputs
    with warnings.catch_warnings():
        # M < 100·N is the operator's choice (annotation); the agent reports it.
        warnings.simplefilter("ignore", MaglevSizeWarning)
        return build_table([MaglevBackend(addr, bid, w) for addr, bid, w in members], m)


@dataclass(frozen=True)
class SyncResult:
    added: int
    updated: int
    removed: int
    unchanged: int


def _batch_update(table, items: Sequence[tuple[object, object]]) -> None:
    if not items:
        return
    n = len(items)
    keys = (table.Key * n)(*[k for k, _ in items])
    values = (table.Leaf * n)(*[v for _, v in items])
    table.items_update_batch(keys, values)


class MapWriter:
    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp
        cfg = dp.config
        self.services = dp.table("services")
        self.slots = dp.table("slots")
        self.backends = dp.table("backends")
        self.rr_state = dp.table("rr_state")
        self.svc_stats = dp.table("svc_stats")
        self.conns = dp.table("backend_conns")
        self.maglev = MaglevMaps(dp.table("maglev"))
        self.affinity = AffinityGenerations()
        self.revnat = RevNat(dp.table("rev_nat"))
        self.ranges = SourceRanges(dp.table("source_ranges"))
        # Row packers for the batch writes (layouts from bcc's types, see packing.py).
        self._pk = {
            "id": Packer(self.backends.Key),
            "backend": Packer(self.backends.Leaf, ("ip", "port", "state", "proto", "svc_id", "weight",
                                                   "flags")),
            "slot_key": Packer(self.slots.Key, ("svc_id", "slot")),
            "slot": Packer(self.slots.Leaf),
            "conns": Packer(self.conns.Leaf),
            "rr": Packer(self.rr_state.Leaf, ("next",)),
            "svc_key": Packer(self.services.Key, ("vip", "port", "proto", "scope")),
            "svc": Packer(self.services.Leaf, ("svc_id", "count", "algorithm", "flags",
                                               "affinity_timeout", "table_size", "affinity_gen",
                                               "key_vip", "key_port", "key_proto", "key_scope")),
        }
        self.max_slots = cfg.max_slots
        self._svc_ids = IdAllocator(cfg.svc_id_slots, f"services map (max_services={cfg.max_services})")
        self._backend_ids = IdAllocator(cfg.max_backends, f"backends map (max_backends={cfg.max_backends})")
        self._installed: dict[Frontend, _Installed] = {}
        self._slots_used = 0
        self._writes = 0
        self._adopt()

    @property
    def writes(self) -> int:
        """Map entries written or deleted by this writer, for logs and benches."""
        return self._writes + self.revnat.writes + self.ranges.writes

    @writes.setter
    def writes(self, total: int) -> None:
        self._writes = total - self.revnat.writes - self.ranges.writes

    # ---- reading what the maps hold ---------------------------------------------
    def _adopt(self) -> None:
        by_svc: dict[int, dict[tuple[str, int], tuple[int, Backend]]] = {}
        reply_flag: dict[int, bool] = {}
        ranges = self.ranges.adopt()
        for key, b in self.backends.items_lookup_batch():
            if b.state == UNUSED:
                continue
            ident = int(key.value) if hasattr(key, "value") else int(key)
            if ident == 0:  # id 0 means none; an entry there was never written by a writer
                continue
            reply_flag[ident] = bool(b.flags & F_REPLY_ENTRY)
            backend = Backend(be32_to_ip(b.ip), be16_to_port(b.port), _STATE_NAMES[b.state], b.weight)
            by_svc.setdefault(b.svc_id, {})[backend.address] = (ident, backend)
        for key, v in self.services.items():
            fe = Frontend(be32_to_ip(key.vip), be16_to_port(key.port), _PROTO_NAMES[key.proto],
                          _SCOPE_NAMES[key.scope])
            members = by_svc.get(v.svc_id, {})
            algorithm = _ALG_NAMES.get(v.algorithm, "random")
            table_ok = True
            m = v.table_size or None
            extra = dict(source_ranges=ranges.get(v.svc_id, ()) if v.flags & F_SOURCE_RANGES else (),
                         local_drop=bool(v.flags & F_LOCAL_DROP))
            try:
                state = ServiceState(fe, tuple(b for _, b in members.values()), algorithm,
                                     v.affinity_timeout if v.flags & F_AFFINITY else 0, m, **extra)
            except ValueError:  # a table size this build refuses: rewrite at next sync
                state = ServiceState(fe, tuple(b for _, b in members.values()), algorithm,
                                     v.affinity_timeout if v.flags & F_AFFINITY else 0, **extra)
                table_ok = False
            ids = {addr: i for addr, (i, _) in members.items()}
            if _maglev_inputs(state, ids) is not None and not self.maglev.has(v.svc_id):
                table_ok = False  # the last agent stopped between table and entry
            self._installed[fe] = _Installed(v.svc_id, state, ids, v.count, table_ok,
                                             v.affinity_gen if v.flags & F_AFFINITY else 0)
            self.affinity.claim(v.affinity_gen)
            self._svc_ids.claim(v.svc_id)
            for ident, _ in members.values():
                self._backend_ids.claim(ident)
            self._slots_used += v.count
        self.revnat.adopt({fe: list(inst.backend_ids) for fe, inst in self._installed.items()})
        self.revnat.take_sharing_changes()
        self._flag_drift = {
            (*addr, fe.protocol) for fe, inst in self._installed.items()
            for addr, bid in inst.backend_ids.items()
            if reply_flag[bid] != self.revnat.shared((*addr, fe.protocol))}

    @property
    def adoption_drift(self) -> int:
        """Entries adoption found wrong and has not written: rev_nat entries missing,
        stale or unused, and addresses whose backend entries' reply-entry flag
        disagrees with their sharing (see repair_adopted)."""
        return self.revnat.pending + len(self._flag_drift)

    def repair_adopted(self) -> int:
        """Write what adoption found wrong (an agent stopped between two steps of an
        update, or maps edited by hand). Adopting alone never writes, so a read-only
        command cannot race the agent; only the writer that owns the maps calls this.
        Returns the number of repairs."""
        n = self.adoption_drift
        drift, self._flag_drift = self._flag_drift, set()
        self.revnat.flush()
        self._rewrite_reply_flags(drift)
        return n

    def installed(self) -> dict[Frontend, ServiceState]:
        return {fe: inst.state for fe, inst in self._installed.items()}

    def installed_state(self, frontend: Frontend) -> ServiceState | None:
        """One frontend's state, without copying the whole table (the agent asks per
        service on every change)."""
        inst = self._installed.get(frontend)
        return inst.state if inst else None

    def svc_id(self, frontend: Frontend) -> int | None:
        inst = self._installed.get(frontend)
        return inst.svc_id if inst else None

    def backend_id(self, frontend: Frontend, ip: str, port: int) -> int | None:
        inst = self._installed.get(frontend)
        return inst.backend_ids.get((ip, port)) if inst else None

    def affinity_gen(self, frontend: Frontend) -> int:
        """The frontend's current ClientIP period (0: affinity off or not installed)."""
        inst = self._installed.get(frontend)
        return inst.affinity_gen if inst else 0

    def maglev_table(self, frontend: Frontend) -> list[int] | None:
        """The Maglev table the datapath holds for a frontend (None without one)."""
        inst = self._installed.get(frontend)
        return self.maglev.read(inst.svc_id) if inst else None

    def active_connections(self, frontend: Frontend) -> dict[tuple[str, int], int]:
        """The datapath's active-connection count of each backend (lc family)."""
        inst = self._installed.get(frontend)
        if inst is None:
            return {}
        out = {}
        for addr, bid in inst.backend_ids.items():
            n = ct.c_int32(self.conns[self.conns.Key(bid)].value).value
            out[addr] = max(n, 0)
        return out

    # ---- writing --------------------------------------------------------------------
    def _svc_key(self, fe: Frontend):
        k = self.services.Key()
        k.vip = ip_to_be32(fe.vip)
        k.port = port_to_be16(fe.port)
        k.proto = PROTOCOLS[fe.protocol]
        k.scope = SCOPES[fe.scope]
        return k

    def _backend_row(self, fe: Frontend, b: Backend, svc_id: int) -> tuple:
        """A backend entry as packed by self._pk["backend"]."""
        shared = self.revnat.shared((b.ip, b.port, fe.protocol))
        return (ip_to_be32(b.ip), port_to_be16(b.port), BACKEND_STATES[b.state], PROTOCOLS[fe.protocol],
                svc_id, b.weight, F_REPLY_ENTRY if shared else 0)

    def _rewrite_reply_flags(self, addresses: Iterable[tuple[str, int, str]]) -> None:
        """Give every backend entry of these addresses the flag that matches whether
        the address is shared now. Safe at any time after rev_nat is written: a flow
        made from a stale entry either records an unneeded reply entry or is matched
        through its forward entry (bpf/conntrack.h, ct_needs_reply_entry)."""
        keys, rows = [], []
        for addr in addresses:
            for fe in self.revnat.users.get(addr, ()):
                inst = self._installed.get(fe)
                bid = inst.backend_ids.get(addr[:2]) if inst else None
                if bid is None:
                    continue
                b = next(b for b in inst.state.backends if b.address == addr[:2])
                keys.append((bid,))
                rows.append(self._backend_row(fe, b, inst.svc_id))
        self.writes += batch_write(self.backends, self._pk["id"], self._pk["backend"], keys, rows)

    def upsert(self, state: ServiceState) -> int:
        """Install or update one frontend; returns its service id."""
        return self.upsert_many([state])[0]

    def upsert_many(self, states: Sequence[ServiceState]) -> list[int]:
        """Install or update frontends in one ordered pass: the backends and slots of
        all of them before any service entry, shrinking after. Batched per map, so a
        full sync of thousands of services costs a few syscalls per map, not per
        service. Capacity is checked for all before the first write."""
        if len({s.frontend for s in states}) != len(states):
            raise ValueError("upsert_many: a frontend appears twice")
        with paused_gc():
            return self._upsert_many(states)

    def _upsert_many(self, states: Sequence[ServiceState]) -> list[int]:
        plans = []
        ids_out = []
        for state in states:
            old = self._installed.get(state.frontend)
            if old is not None and old.state == state and old.table_ok:
                ids_out.append(old.svc_id)
                continue
            plans.append((state, old))
            ids_out.append(None)
        self._check_capacity_all(plans)
        made = [self._plan(state, old) for state, old in plans]

        # 1. reverse NAT for new addresses, then backends (a fresh id starts with no
        #    connections: a reused one may hold a stale count)
        pk = self._pk
        self.revnat.flush()
        fresh = [(i,) for p in made for i in p.fresh]
        n = batch_write(self.conns, pk["id"], pk["conns"], fresh, [(0,)] * len(fresh))
        n += batch_write(self.backends, pk["id"], pk["backend"],
                         [k for p in made for k, _ in p.backend_writes],
                         [v for p in made for _, v in p.backend_writes])
        # 2. slots, then per-service state of new services, then Maglev tables
        n += batch_write(self.slots, pk["slot_key"], pk["slot"],
                         [k for p in made for k, _ in p.slot_writes],
                         [v for p in made for _, v in p.slot_writes])
        new_ids = [(p.svc_id,) for p in made if p.old is None]
        n += batch_write(self.rr_state, pk["id"], pk["rr"], new_ids, [(0,)] * len(new_ids))
        for (i,) in new_ids:  # per-CPU values: one write each
            self.svc_stats[self.svc_stats.Key(i)] = self.svc_stats.Leaf()
        n += len(new_ids)
        for p in made:
            if p.install_table:
                self.maglev.install(p.svc_id, maglev_table(p.state, p.ids))
                n += 1
        for p in made:  # source ranges the entry will point at
            self.ranges.add(p.svc_id, set(p.state.source_ranges) -
                            set(p.old.state.source_ranges if p.old else ()))
        # 3. the service entries: from here on packets use the new states
        n += batch_write(self.services, pk["svc_key"], pk["svc"],
                         [p.entry_key for p in made], [p.entry for p in made])
        self.writes += n
        # 4. shrink: tables no longer used, surplus slots, backends that left
        for p in made:
            self._shrink(p)
            if p.old:
                self.ranges.remove(p.svc_id, set(p.old.state.source_ranges) -
                                   set(p.state.source_ranges))
        self.revnat.flush()

        for p in made:
            self._slots_used += p.slot_count - (p.old.slot_count if p.old else 0)
            self._installed[p.state.frontend] = _Installed(p.svc_id, p.state, p.ids, p.slot_count,
                                                           affinity_gen=p.affinity_gen)
        # 5. addresses that became shared (or stopped being): their other entries
        self._rewrite_reply_flags(self.revnat.take_sharing_changes())
        it = iter(made)
        return [i if i is not None else next(it).svc_id for i in ids_out]

    def _check_capacity_all(self, plans: list[tuple[ServiceState, "_Installed | None"]]) -> None:
        services = backends = 0
        slots = self._slots_used
        for state, old in plans:
            services += old is None
            if services > self._svc_ids.available:
                raise CapacityError(f"cannot add {state.frontend}: {self._svc_ids.what} full")
            backends += len({b.address for b in state.backends} - set(old.backend_ids if old else ()))
            if backends > self._backend_ids.available:
                raise CapacityError(f"cannot add {backends} backends (up to {state.frontend}): "
                                    f"{self._backend_ids.what} has {self._backend_ids.available} left")
            slots += len(state.slot_sequence()) - (old.slot_count if old else 0)
            if slots > self.max_slots:
                raise CapacityError(f"cannot program {state.frontend}: slots map "
                                    f"(max_slots={self.max_slots}) would need {slots} entries")

    def _plan(self, state: ServiceState, old: "_Installed | None") -> "_Plan":
        """Ids and map entries for one frontend; nothing is written here except the
        queued reverse-NAT entries of its new addresses."""
        fe = state.frontend
        proto = PROTOCOLS[fe.protocol]
        svc_id = old.svc_id if old else self._svc_ids.allocate()
        self.revnat.attach(fe, [b.address for b in state.backends], flush=False)
        ids = dict(old.backend_ids) if old else {}
        old_by_addr = {b.address: b for b in old.state.backends} if old else {}
        plan = _Plan(state, old, svc_id, ids)
        for b in state.backends:
            if b.address not in ids:
                ids[b.address] = self._backend_ids.allocate()
                plan.fresh.append(ids[b.address])
            if old_by_addr.get(b.address) != b:
                plan.backend_writes.append(((ids[b.address],), self._backend_row(fe, b, svc_id)))
        slot_ids = [ids[b.address] for b in state.slot_sequence()]
        plan.old_slot_count = old.slot_count if old else 0
        old_slot_ids = ([old.backend_ids[b.address] for b in old.state.slot_sequence()]
                        if old else [])
        for i, bid in enumerate(slot_ids):
            if i >= len(old_slot_ids) or old_slot_ids[i] != bid:
                plan.slot_writes.append(((svc_id, i + 1), (bid,)))
        plan.slot_count = len(slot_ids)
        new_table = _maglev_inputs(state, ids)
        old_table = _maglev_inputs(old.state, old.backend_ids) if old else None
        plan.install_table = new_table is not None and (new_table != old_table or not old.table_ok)
        plan.remove_table = new_table is None and old is not None and old_table is not None

        members = state.slot_backends()
        flags = ((F_AFFINITY if state.affinity_timeout else 0) |
                 (F_TERMINATING_ONLY if members and members[0].state == "terminating" else 0) |
                 (F_SOURCE_RANGES if state.source_ranges else 0) |
                 (F_LOCAL_DROP if state.local_drop else 0))
        plan.affinity_gen = self.affinity.for_update(state.affinity_timeout,
                                                     old.affinity_gen if old else 0)
        plan.entry_key = (ip_to_be32(fe.vip), port_to_be16(fe.port), proto, SCOPES[fe.scope])
        plan.entry = (svc_id, len(slot_ids), ALGORITHMS[state.algorithm], flags,
                      state.affinity_timeout, state.maglev_table_size, plan.affinity_gen,
                      *plan.entry_key)
        return plan

    def _shrink(self, p: "_Plan") -> None:
        if p.remove_table:
            self.writes += self.maglev.remove(p.svc_id)
        for slot in range(p.slot_count + 1, p.old_slot_count + 1):
            k = self.slots.Key()
            k.svc_id = p.svc_id
            k.slot = slot
            try:
                del self.slots[k]
                self.writes += 1
            except KeyError:
                pass
        keep = {b.address for b in p.state.backends}
        gone = [a for a in p.ids if a not in keep]
        for addr in gone:
            self.backends[self.backends.Key(p.ids[addr])] = self.backends.Leaf()
            self.writes += 1
            self._backend_ids.release(p.ids.pop(addr))
        self.revnat.detach(p.state.frontend, gone, flush=False)

    def delete(self, frontend: Frontend) -> bool:
        inst = self._installed.pop(frontend, None)
        if inst is None:
            return False
        try:
            del self.services[self._svc_key(frontend)]
        except KeyError:
            pass
        self.writes += 1 + inst.slot_count + len(inst.backend_ids)
        self.writes += self.maglev.remove(inst.svc_id)
        self.ranges.remove(inst.svc_id, inst.state.source_ranges)
        for slot in range(1, inst.slot_count + 1):
            k = self.slots.Key()
            k.svc_id = inst.svc_id
            k.slot = slot
            try:
                del self.slots[k]
            except KeyError:
                pass
        for bid in inst.backend_ids.values():
            self.backends[self.backends.Key(bid)] = self.backends.Leaf()
            self._backend_ids.release(bid)
        self.revnat.detach(frontend, list(inst.backend_ids))
        self._rewrite_reply_flags(self.revnat.take_sharing_changes())
        self._svc_ids.release(inst.svc_id)
        self._slots_used -= inst.slot_count
        return True

    def sync(self, states: Iterable[ServiceState]) -> SyncResult:
        """Make the maps hold exactly `states`: the diff, applied in order."""
        with paused_gc():
            return self._sync(states)

    def _sync(self, states: Iterable[ServiceState]) -> SyncResult:
        self.repair_adopted()
        desired = {s.frontend: s for s in states}
        removed = 0
        for fe in [fe for fe in self._installed if fe not in desired]:
            removed += self.delete(fe)
        added = updated = unchanged = 0
        changed = []
        for fe, state in desired.items():
            old = self._installed.get(fe)
            if old is None:
                added += 1
            elif old.state == state and old.table_ok:
                unchanged += 1
                continue
            else:
                updated += 1
            changed.append(state)
        self.upsert_many(changed)
        return SyncResult(added, updated, removed, unchanged)
