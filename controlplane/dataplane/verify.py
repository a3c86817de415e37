"""The consistency check's dataplane half: do the maps hold what adoption says?

Adoption rebuilds each frontend's state from its service entry and backend entries.
This module compares everything else the datapath reads for that state with what
the writer would write for it:
  - the service entry itself (count, flags, table size, its own key),
  - slots 1..count, and no slot beyond count,
  - the Maglev table, entry by entry (the writer's C build of the same inputs),
  - entries no installed service uses: slots, Maglev tables, backend entries.
A frontend found wrong is marked suspect and rewritten whole by the next upsert;
unused entries are deleted. Round-robin cursors and per-service counters hold no
invariant to compare: any cursor is valid (it is taken modulo the slot count) and
a new service's cursor and counters are zeroed when its id is handed out.

Connection counts of the lc family (backend_conns) drift upwards by design (bpf/lc.h:
flows the LRU evicts never give theirs back); `recount_connections` recounts them
from conntrack.
"""
from __future__ import annotations

import ctypes as ct
from socket import IPPROTO_TCP
from dataclasses import dataclass, field

import numpy as np

from .installed import Installed, maglev_inputs, maglev_table, service_row, slot_ids
from .layout import ALGORITHMS, const
from .libbpf import lookup_batches
from .maglev_maps import MaglevMaps
from .model import Frontend
from .packing import Packer, read_table

CT_FORWARD = const("CT_DIR_FORWARD")
CT_COUNTED = const("CT_F_COUNTED")
SOCK_COUNTED = const("SOCK_F_COUNTED")
COUNTED_ALGORITHMS = {ALGORITHMS[a] for a in ("lc", "wlc", "sed", "nq")}


@dataclass
class Drift:
    suspects: dict[Frontend, str] = field(default_factory=dict)  # frontend -> what differs
    orphan_slots: list[tuple[int, int]] = field(default_factory=list)   # (svc_id, slot)
    orphan_tables: list[int] = field(default_factory=list)              # svc ids
    orphan_backends: list[int] = field(default_factory=list)            # backend ids
    surplus_slots: dict[Frontend, int] = field(default_factory=dict)    # highest slot present

    def __len__(self) -> int:
        return (len(self.suspects) + len(self.orphan_slots) + len(self.orphan_tables) +
                len(self.orphan_backends))


def read_slots(slots_table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole slots map as three columns (svc_id, slot, backend id), sorted by
    service and slot, read in batches."""
    keys, values = read_table(slots_table, Packer(slots_table.Key, ("svc_id", "slot")), Packer(slots_table.Leaf))
    svc, slot, bid = keys["svc_id"], keys["slot"], values[values.dtype.names[0]]
    order = np.lexsort((slot, svc))
    return svc[order], slot[order], bid[order]


def _slots_by_service(svc: np.ndarray, slot: np.ndarray, bid: np.ndarray) -> dict[int, dict[int, int]]:
    out: dict[int, dict[int, int]] = {}
    for s, i, b in zip(svc.tolist(), slot.tolist(), bid.tolist()):
        out.setdefault(s, {})[i] = b
    return out


def find_drift(installed: dict[Frontend, Installed], entries: dict[Frontend, tuple], slots_table,
               maglev: MaglevMaps, orphan_backends: list[int]) -> Drift:
    """Compare the maps with the adopted states (reads only). The slots are compared
    as columns first: the whole map against every state's slots 1..count at once (a
    clean restart: one array comparison); only if they differ is each frontend's
    part looked at to say which and why."""
    drift = Drift(orphan_backends=list(orphan_backends))
    svc, slot, bid = read_slots(slots_table)
    tables = set(maglev.svc_ids())
    by_id = {inst.svc_id: fe for fe, inst in installed.items()}
    wants = {fe: slot_ids(inst.state, inst.backend_ids) for fe, inst in installed.items()}
    want_svc: list[int] = []
    want_slot: list[int] = []
    want_bid: list[int] = []
    for inst, want in sorted(zip(installed.values(), wants.values()), key=lambda p: p[0].svc_id):
        want_svc += [inst.svc_id] * len(want)
        want_slot += range(1, len(want) + 1)
        want_bid += want
    slots_ok = (len(want_svc) == len(svc) and np.array_equal(svc, want_svc) and
                np.array_equal(slot, want_slot) and np.array_equal(bid, want_bid))
    slots = {} if slots_ok else _slots_by_service(svc, slot, bid)
    for fe, inst in installed.items():
        problems = []
        if entries.get(fe) != service_row(inst.state, inst.svc_id, inst.affinity_gen):
            problems.append("service entry")
        if not slots_ok:
            have = slots.get(inst.svc_id, {})
            want = wants[fe]
            if any(have.get(i + 1) != b for i, b in enumerate(want)):
                problems.append("slots")
            beyond = [s for s in have if s > len(want)]
            if beyond:
                problems.append("slots beyond the count")
                drift.surplus_slots[fe] = max(beyond)
        if maglev_inputs(inst.state, inst.backend_ids) is not None:
            table = maglev.read(inst.svc_id)
            if table is None or list(maglev_table(inst.state, inst.backend_ids)) != table:
                problems.append("Maglev table")
        elif inst.svc_id in tables:
            drift.orphan_tables.append(inst.svc_id)
        if problems:
            drift.suspects[fe] = ", ".join(problems)
    for svc_id, have in slots.items():
        if svc_id not in by_id:
            drift.orphan_slots.extend((svc_id, s) for s in sorted(have))
    drift.orphan_tables.extend(sorted(i for i in tables if i not in by_id))
    return drift


def recount_connections(flow_tables, backends, installed: dict[Frontend, Installed],
                        sock_table=None) -> dict[int, int]:
    """backend id -> flows holding one of its counts, for the backends of counted
    (lc-family) services: forward conntrack entries with SVCXDP_CT_F_COUNTED whose
    backend entry still is that backend (as ct_backend_valid). Exactly what the
    datapath will give back: an entry counts until the datapath sees it close,
    expire or lose its backend (then it clears the flag and gives the count back),
    or until the LRU evicts it (then nothing gives it back: the drift this
    corrects). An idle flow still present keeps its count until then. `flow_tables`:
    conntrack and the unconfirmed tables (a flow is counted from its first packet on).
    `sock_table`: sock_revnat, whose SVCXDP_SOCK_F_COUNTED entries are the connections
    the socket hooks counted (given back at the socket's release; left out, every
    recount zeroed them and each close then drove the count below zero)."""
    ids = {bid for inst in installed.values() if ALGORITHMS[inst.state.algorithm] in COUNTED_ALGORITHMS
           for bid in inst.backend_ids.values()}
    if not ids:
        return {}
    owner = {}
    for bid in ids:
        b = backends[backends.Key(bid)]
        owner[bid] = (b.svc_id, b.ip, b.port)
    counts = dict.fromkeys(ids, 0)
    for table in flow_tables:
        _count_table(table, owner, counts)
    if sock_table is not None:
        _count_sockets(sock_table, owner, counts)
    return counts


def _rows(table, key_fields: tuple[str, ...], value_fields: tuple[str, ...]):
    """(key fields, value fields) of every entry of a map, read in batches."""
    key_s, val_s = Packer(table.Key, key_fields).struct, Packer(table.Leaf, value_fields).struct
    for keys, values, n in lookup_batches(table):
        yield from zip(key_s.iter_unpack(bytes(keys)[:n * key_s.size]),
                       val_s.iter_unpack(bytes(values)[:n * val_s.size]))


def _count_sockets(table, owner: dict[int, tuple], counts: dict[int, int]) -> None:
    """The counted connections of sock_revnat (keyed by the backend's address), whose
    backend entry still is that backend (as svcxdp_release gives the count back)."""
    for (ip, port, proto), (flags, svc_id, bid) in _rows(table, ("ip", "port", "proto"),
                                                         ("flags", "svc_id", "backend_id")):
        if flags & SOCK_COUNTED and proto == IPPROTO_TCP and bid in counts and owner[bid] == (svc_id, ip, port):
            counts[bid] += 1


def _count_table(table, owner: dict[int, tuple], counts: dict[int, int]) -> None:
    for (direction,), (ip, port, flags, bid, svc_id) in _rows(table, ("dir",), ("nat_ip", "nat_port", "flags",
                                                                               "backend_id", "svc_id")):
        if direction == CT_FORWARD and flags & CT_COUNTED and bid in counts and owner[bid] == (svc_id, ip, port):
            counts[bid] += 1


def read_connections(conns_table, ids) -> dict[int, int]:
    """backend id -> its count as the datapath reads it (signed, clamped at 0)."""
    return {bid: max(ct.c_int32(conns_table[conns_table.Key(bid)].value).value, 0) for bid in ids}

