"""MapWriter: typed, ordered writes of services and backends into the dataplane maps.

The jobs are in modules of their own; this one puts them in order:
  ids.py          service and backend ids
  adopt.py        rebuilding the picture of a running dataplane from its maps
  verify.py       comparing the maps with that picture; lc connection recount
  plan.py         the ids and entries one upsert needs, and the capacity check
  installed.py    what one frontend has in the maps; the entries written for a state
  reply_flags.py  the backend entries' reply-entry flag, kept equal to rev_nat's sharing
  revnat.py       the rev_nat map
  beside.py       a write made on a second thread beside another (big syncs)

Update order (DESIGN.md) so that no packet ever sees a half-written service
(delete_many, removing many at once, has its own: entries first, then what they
pointed at, then backends and rev_nat, then flags):
  1. rev_nat entries of new addresses and the backends a service will use (two
     threads in a big sync: neither can be reached before the slots; when every
     frontend is new, rev_nat's thread runs on through step 2, as nothing reaches a
     new frontend's backends before its entry, so after_phase's "backends" and
     "slots" may come before rev_nat is whole),
  2. then its slots, per-service state and Maglev table (swapped whole),
  3. then the service entry (the only thing the datapath finds it by),
  4. and only after the entry's count has shrunk are surplus slots deleted,
     unused tables removed and removed backends retired;
  5. last, the reply-entry flag of addresses whose sharing changed.
Capacity is checked before the first write, so a full map leaves nothing behind.
`after_phase`, if set, is called after each step with its name (tests inject
packets there: tests/packet/test_write_order.py).
"""
from __future__ import annotations

import ctypes as ct
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import groupby, repeat
from operator import attrgetter, itemgetter
from typing import Callable, Container, Iterable, Sequence

import numpy as np

from controlplane.gcpause import paused_gc

from .adopt import adopt
from .affinity_maps import AffinityGenerations
from .beside import BESIDE_MIN, Beside
from .config import FLOW_TABLES
from .ids import CapacityError, IdAllocator
from .installed import (BACKEND_FIELDS, SVC_FIELDS, SVC_KEY_FIELDS, Installed, backend_columns, ids_over,
                        maglev_table, service_key_row)
from .libbpf import zero_entries
from .maglev_maps import MaglevMaps
from .model import PROTOCOLS, SCOPES, Backend, Frontend, ServiceState, ip_to_be32, port_to_be16
from .packing import Packer, batch_write, concat, delete_packed, write_packed
from .pinned import percpu_value_size
from .readout import backend_rows
from .plan import NewPlans, Plan, check_capacity, plan_upsert
from .program import Dataplane
from .reply_flags import flag_drift, flag_rows
from .revnat import RevNat, address_keys
from .source_ranges import SourceRanges
from .verify import Drift, find_drift, read_connections, recount_connections

__all__ = ["CapacityError", "MapWriter", "SyncResult", "maglev_table"]

log = logging.getLogger("svcxdp.dataplane")


@dataclass(frozen=True)
class SyncResult:
    added: int
    updated: int
    removed: int
    unchanged: int


_old = itemgetter(1)   # of a (state, its record) pair
_frontend, _backends, _protocol = attrgetter("frontend"), attrgetter("backends"), attrgetter("protocol")
_address = attrgetter("ip", "port")   # of a Backend: its address, made in C


def _id_column(ids: list[int], columns: Sequence[np.ndarray]) -> np.ndarray:
    """`ids` and then `columns` (u32 ids), as one u32 column."""
    if not ids and len(columns) == 1:
        return columns[0]
    return np.concatenate([np.asarray(ids, np.uint32), *columns]) if columns or ids else np.zeros(0, np.uint32)


def _holds(old: Installed | None, state: ServiceState) -> bool:
    """The maps hold exactly `state` by the record `old`."""
    return old is not None and old.state == state and old.table_ok and not old.suspect


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
        # the two arrays of 100,000 rows a full sync writes, stored through mappings
        # where the maps have them (mapped.py; None: batch updates)
        self._backends_mapped = dp.mapped("backends")
        self._conns_mapped = dp.mapped("backend_conns")
        self._backend_stats = backend_rows(dp)
        if self._backend_stats is None:   # (load() replaces a backend_stats of another layout)
            raise ValueError("backend_stats is not mapped into this process")
        self._svc_stats_size = percpu_value_size(ct.sizeof(self.svc_stats.sLeaf))
        self.maglev = MaglevMaps(dp.table("maglev"))
        self.affinity = AffinityGenerations()
        # Raised while entries the datapath looks up are replaced (replacing.py); taken
        # now, so a flag an earlier agent left set is cleared from the start
        self._replacing = dp.replacing_flag
        self.revnat = RevNat(dp.table("rev_nat"), self._replacing)
        self.ranges = SourceRanges(dp.table("source_ranges"))
        # Row packers for the batch writes (layouts from bcc's types, see packing.py).
        self._pk = {
            "id": Packer(self.backends.Key),
            "backend": Packer(self.backends.Leaf, BACKEND_FIELDS),
            "slot_key": Packer(self.slots.Key, ("svc_id", "slot")),
            "slot": Packer(self.slots.Leaf),
            "conns": Packer(self.conns.Leaf),
            "rr": Packer(self.rr_state.Leaf, ("next",)),
            "svc_key": Packer(self.services.Key, SVC_KEY_FIELDS),
            "svc": Packer(self.services.Leaf, SVC_FIELDS),
        }
        self.max_slots = cfg.max_slots
        self._svc_ids = IdAllocator(cfg.svc_id_slots, f"services map (max_services={cfg.max_services})")
        self._backend_ids = IdAllocator(cfg.max_backends, f"backends map (max_backends={cfg.max_backends})")
        self._writes = 0
        self._settles = 0
        self.after_phase: Callable[[str], None] | None = None
        self.beside_min = BESIDE_MIN   # entries from which a write is made beside another
        self.bulk_shared_min = 4096    # backends from which a batch's sharing is found in numpy
        with paused_gc():   # adoption makes an object per backend: bulk work
            self._adopt()

    def _adopt(self) -> None:
        found = adopt(self.services, self.backends, self.maglev, self._svc_ids, self._backend_ids,
                      self.affinity, self.ranges.adopt(), self._backends_mapped)
        self._installed: dict[Frontend, Installed] = found.installed
        self._unsettled = len(found.installed)   # records still adopted (see settle)
        self._slots_used = found.slots_used
        self._entries = found.entries
        self._orphan_backends = found.orphan_backends
        self._drift: Drift | None = None   # computed when first asked (verify.py)
        self.revnat.adopt({fe: list(inst.backend_ids) for fe, inst in self._installed.items()})
        self.revnat.take_sharing_changes()
        self._flag_drift = flag_drift(self._installed, found.reply_flag, self.revnat)

    @property
    def writes(self) -> int:
        """Map entries written or deleted by this writer, for logs and benches."""
        return self._writes + self.revnat.writes + self.ranges.writes

    @writes.setter
    def writes(self, total: int) -> None:
        self._writes = total - self.revnat.writes - self.ranges.writes

    def _phase(self, name: str) -> None:
        if self.after_phase is not None:
            self.after_phase(name)

    # ---- what the maps hold ------------------------------------------------------
    @property
    def drift(self) -> Drift:
        """What the consistency check found in the maps besides rev_nat and flags
        (verify.py); computed once per adoption."""
        if self._drift is None:
            self._drift = find_drift(self._installed, self._entries, self.slots, self.maglev,
                                     self._orphan_backends)
        return self._drift

    @property
    def adoption_drift(self) -> int:
        """Entries adoption found wrong and has not written: rev_nat entries missing,
        stale or unused; addresses whose backend entries' reply-entry flag disagrees
        with their sharing; frontends whose service entry, slots or Maglev table
        differ from their state; slots, tables and backend entries of no service."""
        return self.revnat.pending + len(self._flag_drift) + len(self.drift)

    def drift_report(self) -> list[str]:
        """One line per problem adoption_drift counts, for logs."""
        d = self.drift
        out = [f"{fe}: {what}" for fe, what in d.suspects.items()]
        if d.orphan_slots:
            out.append(f"{len(d.orphan_slots)} slots of no service")
        if d.orphan_tables:
            out.append(f"Maglev tables of no service: svc ids {d.orphan_tables}")
        if d.orphan_backends:
            out.append(f"{len(d.orphan_backends)} backend entries of no service")
        if self.revnat.pending:
            out.append(f"{self.revnat.pending} rev_nat entries to rewrite")
        if self._flag_drift:
            out.append(f"{len(self._flag_drift)} addresses with a wrong reply-entry flag")
        return out

    def repair_adopted(self) -> int:
        """Write what adoption found wrong (an agent stopped between two steps of an
        update, or maps edited by hand). Adopting alone never writes, so a read-only
        command cannot race the agent; only the writer that owns the maps calls this.
        Returns the number of repairs."""
        n = self.adoption_drift
        drift, self._drift = self.drift, Drift()
        self._entries = {}   # the service entries as adoption read them: compared, done
        flags, self._flag_drift = self._flag_drift, set()
        self.revnat.flush()
        self._rewrite_reply_flags(flags)
        for svc_id, slot in drift.orphan_slots:
            self._delete_slot(svc_id, slot)
        for svc_id in drift.orphan_tables:
            self.writes += self.maglev.remove(svc_id)
        for bid in drift.orphan_backends:
            self.backends[self.backends.Key(bid)] = self.backends.Leaf()
            self.writes += 1
        suspects = []
        for fe in drift.suspects:
            inst = self._installed[fe]
            inst.suspect = True
            inst.slot_count = max(inst.slot_count, drift.surplus_slots.get(fe, 0))
            suspects.append(inst.state)
        try:
            self.upsert_many(suspects)
        except CapacityError:
            # One by one: a suspect that does not fit as it was adopted (it may hold
            # more backends than slots) stays suspect, for the sync to write as it
            # wants it (holds() is False for it), rather than failing every sync.
            for state in suspects:
                try:
                    self.upsert(state)
                except CapacityError as exc:
                    log.warning("adopted %s could not be repaired as it was: %s", state.frontend, exc)
        return n

    def recount_connections(self) -> int:
        """Set the lc family's connection counts to a recount from conntrack and the
        socket hooks' sock_revnat (verify.py); returns how many counts were wrong. The
        datapath keeps counting meanwhile, so a flow opened or closed during the scan
        may leave its count off by one until the next recount."""
        flows = [self.dp.table(name) for name in FLOW_TABLES]
        counts = recount_connections(flows, self.backends, self._installed, self.dp.table("sock_revnat"))
        have = read_connections(self.conns, counts)
        wrong = [(bid,) for bid, n in counts.items() if have[bid] != n]
        self.writes += batch_write(self.conns, self._pk["id"], self._pk["conns"], wrong,
                                   [(counts[bid],) for (bid,) in wrong])
        return len(wrong)

    def installed(self) -> dict[Frontend, ServiceState]:
        return {fe: inst.state for fe, inst in self._installed.items()}

    def records(self) -> dict[Frontend, Installed]:
        """Every installed frontend's record (ids included), not to be changed: for
        readers such as the agent's metrics."""
        return self._installed

    def holds(self, state: ServiceState) -> bool:
        """The maps hold exactly `state` (not a suspect record of it: repair_adopted
        leaves one it could not write)."""
        return _holds(self._installed.get(state.frontend), state)

    def installed_state(self, frontend: Frontend) -> ServiceState | None:
        """One frontend's state, without copying the whole table (the agent asks per
        service on every change)."""
        inst = self._installed.get(frontend)
        return inst.state if inst else None

    @property
    def revision(self) -> int:
        """Moves whenever records() may have changed: every write, and every settle
        (which replaces records writing nothing); readers cache by it (AgentNaming)."""
        return self._writes + self._settles

    @property
    def unsettled(self) -> int:
        """Records adoption made that `settle` has not taken over (nor a write)."""
        return self._unsettled

    def settle(self, states: Iterable[ServiceState]) -> int:
        """The caller found the maps hold these states already: each equal (==) to
        its record's, which it must have compared. Records adoption made hold copies
        of what the caller holds too (the state, its backends, a string per backend
        address, the rev_nat keys); let them refer to the caller's objects instead, so
        a restarted agent keeps one picture, as one that wrote the maps itself does
        (at 10,000 x 10 the copies kept ~10 MiB more and left the heap fragmented:
        bench_memory's restart). Nothing is written. Returns the records settled."""
        if not self._unsettled:
            return 0
        # adopted record (by id: quicker than hashing frontends again) -> the caller's
        # frontend and a new record of the caller's objects
        swaps: dict[int, tuple[Frontend, Installed]] = {}
        rev_keys: list[tuple[str, int, str]] = []   # each settled record's addresses, in order
        counts: list[int] = []
        with paused_gc():
            for state in states:
                fe = state.frontend
                rec = self._installed.get(fe)
                if rec is None or not rec.adopted:
                    continue
                # equal states list equal backends, so these are the record's addresses
                backends = state.backends
                ids = ids_over(backends, rec.backend_ids)
                if ids is None:   # not equal after all: keep the record as adopted
                    continue
                swaps[id(rec)] = (fe, Installed(rec.svc_id, state, ids, rec.slot_count, rec.table_ok,
                                                rec.affinity_gen, rec.suspect))
                proto = fe.protocol
                rev_keys += [(ip, port, proto) for ip, port in map(_address, backends)]
                counts.append(len(ids))
            if swaps:
                installed: dict[Frontend, Installed] = {}
                frontends: dict[int, Frontend] = {}   # id of an adopted frontend -> the caller's
                for fe, rec in self._installed.items():
                    sw = swaps.get(id(rec))
                    if sw is None:
                        installed[fe] = rec
                    else:
                        installed[sw[0]] = sw[1]
                        frontends[id(fe)] = sw[0]
                # (while the old records, and so adoption's frontends, are alive: ids stay theirs)
                self.revnat.share_keys(rev_keys, [sw[0] for sw in swaps.values()], counts, frontends)
                self._installed = installed
        # (records rewritten or deleted since adoption are adopted no longer either)
        self._unsettled = sum(rec.adopted for rec in self._installed.values())
        self._settles += bool(swaps)
        return len(swaps)

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
        have = read_connections(self.conns, inst.backend_ids.values())
        return {addr: have[bid] for addr, bid in inst.backend_ids.items()}

    # ---- writing --------------------------------------------------------------------
    def _svc_key(self, fe: Frontend):
        k = self.services.Key()
        k.vip = ip_to_be32(fe.vip)
        k.port = port_to_be16(fe.port)
        k.proto = PROTOCOLS[fe.protocol]
        k.scope = SCOPES[fe.scope]
        return k

    def _rewrite_reply_flags(self, addresses, skip: Container[int] = ()) -> None:
        ids, columns = flag_rows(addresses, self.revnat, self._installed, skip)
        if ids:
            pk = self._pk
            self.writes += write_packed(self.backends, pk["id"].columns(len(ids), [ids]),
                                        pk["backend"].columns(len(ids), columns), self._backends_mapped)

    def _delete_slot(self, svc_id: int, slot: int) -> None:
        k = self.slots.Key()
        k.svc_id = svc_id
        k.slot = slot
        try:
            del self.slots[k]
            self.writes += 1
        except KeyError:
            pass

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

    def _current(self, state: ServiceState) -> Installed | None:
        """The installed record, if the maps already hold exactly `state`."""
        old = self._installed.get(state.frontend)
        return old if _holds(old, state) else None

    def _upsert_many(self, states: Sequence[ServiceState],
                     todo: list[tuple[ServiceState, Installed | None]] | None = None) -> list[int]:
        """`todo`: (state, its record) of the states to write, if the caller (sync)
        has them already; then nothing is returned."""
        if todo is None:
            todo = [(s, self._installed.get(s.frontend)) for s in states if self._current(s) is None]
        # In the order given (ids are handed out in it), a run of new frontends at once.
        if any(map(_old, todo)):
            runs = [(is_new, list(run)) for is_new, run in groupby(todo, key=lambda t: t[1] is None)]
        else:   # all new (a sync into empty maps)
            runs = [(True, todo)] if todo else []
        # New frontends' columns and slots first: they write and allocate nothing, and
        # the capacity check takes their slot counts from them.
        batches = [NewPlans.of([state for state, _ in run]) if is_new else None for is_new, run in runs]
        check_capacity(todo, self._svc_ids, self._backend_ids, self._slots_used, self.max_slots, self.ranges,
                       [b for b in batches if b is not None])
        made: list[Plan] = []       # frontends the maps hold: planned one by one, as diffs
        new: list[NewPlans] = []    # frontends they do not: planned in bulk, as columns
        attach, revnat = self.revnat.attach, self.revnat
        # Every address attached first, in the order given (the first frontend to attach
        # an address owns its entry), before any backend row is packed: the rows written
        # in step 1 then carry the sharing the whole batch causes, so a flow can never meet
        # its backend without the flag. (Rows written before, and the rows a changed
        # frontend keeps as they are: step 5.)
        for (is_new, run), batch in zip(runs, batches):
            if batch is not None:
                revnat.attach_many(batch.frontends, batch.counts, batch.ips, batch.ports,
                                   batch.ip_be32, batch.port_be16, *batch.key_columns[:2])
            else:
                for state, _ in run:
                    attach(state.frontend, [(b.ip, b.port) for b in state.backends], flush=False)
        # Addresses whose sharing the attaching changed: the backend rows of the new
        # frontends below are written with it (all their rows, packed after every attach),
        # so only the other frontends' rows of them are rewritten (step 5).
        attached_changes = revnat.take_sharing_changes()
        # 1. reverse NAT for new addresses, written beside the planning and the backends
        #    below (no entry points at those yet: only the slots and entries, after).
        #    When every frontend is new (a full sync into empty maps), beside step 2 too:
        #    only their entries, step 3, lead packets to their backends.
        with ExitStack() as step1:
            step1.enter_context(Beside(revnat.pending >= self.beside_min, revnat.flush))
            for (is_new, run), batch in zip(runs, batches):
                if batch is not None:
                    batch.allocate(self._svc_ids, self._backend_ids, self.affinity)
                    new.append(batch)
                    continue
                for state, old in run:
                    made.append(plan_upsert(state, old, self._svc_ids, self._backend_ids, self.affinity))
            self._write_backends(made, new)
            if made:   # slots of frontends packets reach already: only after rev_nat
                step1.close()
            self._phase("backends")
            # 2. slots, Maglev tables and source ranges; 3. the service entries: from here
            #    on packets use the new states. Of frontends the maps hold, both replace
            #    entries the datapath looks up: the flag that makes a lookup missing one
            #    look again is up meanwhile (replacing.py)
            with self._replacing.raised(when=bool(made)):
                self._write_selection(made, new)
                self._phase("slots")
                step1.close()
                self.writes += write_packed(self.services, *self._entry_rows(made, new))
        self._phase("entries")
        # 4. shrink: tables no longer used, surplus slots, backends that left
        for p in made:
            self._shrink(p)
            self.ranges.remove(p.svc_id, set(p.old.state.source_ranges) - set(p.state.source_ranges))
        self.revnat.flush()
        installed = self._installed
        for p in made:
            self._slots_used += p.slot_count - p.old_slot_count
            installed[p.state.frontend] = p.installed()
        for batch in new:
            self._slots_used += sum(batch.slot_counts)
            installed.update(zip(batch.frontends, batch.installed()))
        self._phase("shrink")
        # 5. addresses that became shared (or stopped being): their other entries
        if attached_changes:
            self._rewrite_reply_flags(attached_changes, {id(fe) for batch in new for fe in batch.frontends})
        self._rewrite_reply_flags(self.revnat.take_sharing_changes())
        self._phase("flags")
        return [installed[s.frontend].svc_id for s in states]   # (empty: sync's call)

    def _write_selection(self, made: Sequence[Plan], new: Sequence[NewPlans]) -> None:
        """Step 2: slots, then per-service state of new services, then Maglev tables and
        the source ranges the entries will point at."""
        pk = self._pk
        keys, values = self._slot_rows(made, new)   # each key once: its halves in any order
        half = len(keys) // 2
        with Beside(half >= self.beside_min, write_packed, self.slots, keys[half:], values[half:]):
            n = write_packed(self.slots, keys[:half], values[:half])
        n += len(keys) - half
        new_ids = [svc_id for batch in new for svc_id in batch.svc_ids]
        n += write_packed(self.rr_state, pk["id"].columns(len(new_ids), [new_ids]),
                          pk["rr"].columns(len(new_ids), [0]))
        n += zero_entries(self.svc_stats.map_fd, new_ids, self._svc_stats_size)
        for p in made:
            if p.install_table:
                self.maglev.install(p.svc_id, maglev_table(p.state, p.ids))
                n += 1
        for batch in new:
            if "maglev" not in batch.algorithms:
                continue
            for st, svc_id, ids in zip(batch.states, batch.svc_ids, batch.id_maps):
                if st.algorithm == "maglev" and (table := maglev_table(st, ids)) is not None:
                    self.maglev.install(svc_id, table)
                    n += 1
        for p in made:  # source ranges the entry will point at
            if p.state.source_ranges:
                self.ranges.add(p.svc_id, set(p.state.source_ranges) -
                                set(p.old.state.source_ranges if not p.old.suspect else ()))
        for batch in new:
            if any(batch.source_ranges):
                for ranges, svc_id in zip(batch.source_ranges, batch.svc_ids):
                    if ranges:
                        self.ranges.add(svc_id, set(ranges))
        self.writes += n

    def _write_backends(self, made: Sequence[Plan], new: Sequence[NewPlans]) -> None:
        """Step 1's backend entries of the plans, and the counters of their fresh ids."""
        pk = self._pk
        # a fresh id starts with no connections (a reused one may hold a stale count) ...
        fresh = _id_column([i for p in made for i in p.fresh], [batch.id_col for batch in new])
        # ... and no new flows of its own yet (bpf lb_count_new counts them): stores into
        # the mapped rows, before the slots that name the id
        self._backend_stats.zero(fresh)
        n = write_packed(self.conns, pk["id"].columns(len(fresh), [fresh]),
                         pk["conns"].columns(len(fresh), [0]), self._conns_mapped)
        n += write_packed(self.backends, *self._backend_rows(made, new), self._backends_mapped)
        self.writes += n

    def _entry_rows(self, made: Sequence[Plan], new: Sequence[NewPlans]) -> tuple[np.ndarray, np.ndarray]:
        """Every plan's service entry, packed: (keys, values)."""
        pk = self._pk
        keys = [pk["svc_key"].rows([p.entry_key for p in made])]
        values = [pk["svc"].rows([p.entry for p in made])]
        for batch in new:
            key_cols, value_cols = batch.entry_columns()
            keys.append(pk["svc_key"].columns(len(batch.states), key_cols))
            values.append(pk["svc"].columns(len(batch.states), value_cols))
        return concat(keys, pk["svc_key"].dtype), concat(values, pk["svc"].dtype)

    def _backend_rows(self, made: Sequence[Plan], new: Sequence[NewPlans]) -> tuple[np.ndarray, np.ndarray]:
        """Every plan's backend entries, packed as columns: (keys, values)."""
        ids: list[int] = []
        backends: list[Backend] = []
        protos: list[int] = []
        svc_ids: list[int] = []
        for p in made:
            bs = p.write_backends
            if not bs:
                continue
            ids += p.write_ids
            backends += bs
            protos += [PROTOCOLS[p.state.frontend.protocol]] * len(bs)
            svc_ids += [p.svc_id] * len(bs)
        pk = self._pk
        shared = self._shared((p.state.frontend.protocol, p.write_backends) for p in made)
        parts = [pk["backend"].columns(len(ids), backend_columns(backends, protos, svc_ids, shared))]
        # A big batch's shared addresses are found in numpy, among all the shared ones (listed
        # once: RevNat.shared_keys walks every address); a small one's one by one (RevNat.shared).
        shared_keys = None
        if self.revnat.shared_count and any(len(batch.ips) >= self.bulk_shared_min for batch in new):
            shared_keys = self.revnat.shared_keys()
        for batch in new:
            counts = np.asarray(batch.counts, np.int64)
            protocols = list(map(_protocol, batch.frontends))
            codes = list(map(PROTOCOLS.__getitem__, protocols))
            protos_col = codes[0] if len(set(codes)) == 1 else np.repeat(codes, counts)
            svc_col = np.repeat(np.asarray(batch.svc_ids, np.uint32), counts)
            if shared_keys is not None and len(batch.ips) >= self.bulk_shared_min:
                shared = np.isin(address_keys(batch.ip_be32, batch.port_be16, protos_col), shared_keys)
            else:
                shared = self._shared(zip(protocols, map(_backends, batch.states)))
            parts.append(pk["backend"].columns(len(batch.ids), backend_columns(
                batch.backends, protos_col, svc_col, shared, batch.ip_be32, batch.port_be16,
                batch.state_codes, batch.weights)))
        id_col = _id_column(ids, [batch.id_col for batch in new])
        return pk["id"].columns(len(id_col), [id_col]), concat(parts, pk["backend"].dtype)

    def _shared(self, groups: Iterable[tuple[str, Sequence[Backend]]]) -> list[bool] | bool:
        """Each backend's reply-entry flag (RevNat.shared), for (protocol, backends)
        groups in turn; one False for all when no address is shared."""
        if not self.revnat.shared_count:   # no address serves two frontends (the usual case): no lookups
            return False
        users = self.revnat.users.get   # RevNat.shared, inline: it runs for every backend
        out: list[bool] = []
        for proto, bs in groups:
            out += [len(users((b.ip, b.port, proto), ())) > 1 for b in bs]
        return out

    def _slot_rows(self, made: Sequence[Plan], new: Sequence[NewPlans]) -> tuple[np.ndarray, np.ndarray]:
        """Every plan's slots to write, packed: (keys, values)."""
        svc_ids: list[int] = []
        slots: list[int] = []
        bids: list[int] = []
        for p in made:
            if p.slot_numbers:
                svc_ids += [p.svc_id] * len(p.slot_numbers)
                slots += p.slot_numbers
                bids += p.slot_backend_ids
        pk = self._pk
        keys = [pk["slot_key"].columns(len(slots), [svc_ids, slots])]
        values = [pk["slot"].columns(len(slots), [bids])]
        for batch in new:
            svc, slot, bid = batch.slot_columns()
            keys.append(pk["slot_key"].columns(len(svc), [svc, slot]))
            values.append(pk["slot"].columns(len(svc), [bid]))
        return concat(keys, pk["slot_key"].dtype), concat(values, pk["slot"].dtype)

    def _shrink(self, p: Plan) -> None:
        if p.remove_table:
            self.writes += self.maglev.remove(p.svc_id)
        for slot in range(p.slot_count + 1, p.old_slot_count + 1):
            self._delete_slot(p.svc_id, slot)
        keep = {b.address for b in p.state.backends}
        gone = [a for a in p.ids if a not in keep]
        for addr in gone:
            self.backends[self.backends.Key(p.ids[addr])] = self.backends.Leaf()
            self.writes += 1
            self._backend_ids.release(p.ids.pop(addr))
        self.revnat.detach(p.state.frontend, gone, flush=False)

    def delete(self, frontend: Frontend) -> bool:
        """Remove one frontend (delete_many of one); False if it was not installed."""
        return self.delete_many([frontend]) == 1

    def delete_many(self, frontends: Iterable[Frontend]) -> int:
        """Remove frontends in one ordered pass, batched per map (BPF_MAP_DELETE_BATCH;
        libbpf.delete_batch falls back to one delete per key where the kernel has no
        batch for a map): every service entry first, so from then on no packet finds
        them; then their Maglev tables, source ranges and slots; then their backends
        are retired and rev_nat entries no longer used deleted; last the reply-entry
        flags of addresses whose sharing changed. The same writes and bookkeeping as
        delete() per frontend, in a few syscalls per map. Returns how many were
        installed."""
        gone = [(fe, inst) for fe in dict.fromkeys(frontends)
                if (inst := self._installed.get(fe)) is not None]
        if not gone:
            return 0
        try:
            with paused_gc():
                self._delete_many(gone)
        except BaseException:
            # Stopped part-way (a failed syscall): the maps may hold any part of these
            # services. Their records stay, ids still claimed, marked suspect: a later
            # upsert rewrites all of one, a later delete goes through it all again
            # (deleting what is gone already is skipped).
            for _, inst in gone:
                inst.suspect = True
            raise
        return len(gone)

    def _delete_many(self, gone: list[tuple[Frontend, Installed]]) -> None:
        pk = self._pk
        # 1. the service entries: from here on packets do not find these services
        delete_packed(self.services, pk["svc_key"].rows([service_key_row(fe) for fe, _ in gone]))
        self.writes += sum(1 + len(inst.backend_ids) for _, inst in gone)
        self._phase("entries")
        # 2. what the entries pointed at: Maglev tables, source ranges, slots
        svc_ids = [inst.svc_id for _, inst in gone]
        self.writes += self.maglev.remove_many(svc_ids)
        for _, inst in gone:
            self.ranges.remove(inst.svc_id, inst.state.source_ranges)
        slot_svc = [i for _, inst in gone for i in [inst.svc_id] * inst.slot_count]
        slot_nos = [s for _, inst in gone for s in range(1, inst.slot_count + 1)]
        self.writes += delete_packed(self.slots, pk["slot_key"].columns(len(slot_nos), [slot_svc, slot_nos]))
        self._phase("slots")
        # 3. backends retired (an array: their entries zeroed), ids and rev_nat released
        bids = [bid for _, inst in gone for bid in inst.backend_ids.values()]
        write_packed(self.backends, pk["id"].columns(len(bids), [bids]),
                     np.zeros(len(bids), pk["backend"].dtype), self._backends_mapped)
        for fe, inst in gone:
            self.revnat.detach(fe, list(inst.backend_ids), flush=False)
        self.revnat.flush()
        self._phase("backends")
        # 4. addresses whose sharing ended: the reply-entry flag of their other entries
        #    (rows of frontends that stay: these are still in _installed until now, but
        #    no longer rev_nat users, so flag_rows passes them by)
        self._rewrite_reply_flags(self.revnat.take_sharing_changes())
        # Every write done: only now the records go and the ids are free for reuse
        # (a pass that fails before here leaves them claimed, see delete_many).
        release = self._backend_ids.release
        for bid in bids:
            release(bid)
        for fe, inst in gone:
            del self._installed[fe]
            self._svc_ids.release(inst.svc_id)
            self._slots_used -= inst.slot_count
        self._phase("flags")

    def sync(self, states: Iterable[ServiceState]) -> SyncResult:
        """Make the maps hold exactly `states`: the diff, applied in order."""
        with paused_gc():
            return self._sync(states)

    def _sync(self, states: Iterable[ServiceState]) -> SyncResult:
        self.repair_adopted()
        states = tuple(states)
        # (the last state of a frontend given twice wins, in the first one's place)
        desired = dict(zip(map(_frontend, states), states))
        removed = self.delete_many([fe for fe in self._installed if fe not in desired])
        if not self._installed:   # the maps hold none (a first sync): all new, nothing to look up
            self._upsert_many((), list(zip(desired.values(), repeat(None))))
            return SyncResult(len(desired), 0, removed, 0)
        added = updated = unchanged = 0
        todo: list[tuple[ServiceState, Installed | None]] = []
        installed = self._installed.get
        for fe, state in desired.items():
            old = installed(fe)
            if old is None:
                added += 1
            elif _holds(old, state):
                unchanged += 1
                continue
            else:
                updated += 1
            todo.append((state, old))
        self._upsert_many((), todo)
        return SyncResult(added, updated, removed, unchanged)

