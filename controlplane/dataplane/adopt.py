"""Adoption: rebuild the writer's picture of a running dataplane from its maps.

A restarted agent (or a read-only command) reads the services and backends maps,
claims the ids it finds, and continues where the last writer stopped. Reading only:
what is found wrong is reported (verify.py) and written only by the owner
(MapWriter.repair_adopted), so a read-only command never races the agent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .affinity_maps import AffinityGenerations
from .ids import IdAllocator
from .installed import (F_AFFINITY, F_LOCAL_DROP, F_REPLY_ENTRY, F_SOURCE_RANGES, SVC_FIELDS, Address, Installed,
                        BackendIds, backend_ids_of, maglev_inputs)
from .layout import ALGORITHMS, const
from .maglev_maps import MaglevMaps
from .mapped import MappedArray
from .packing import Packer, ips_of_be32, ports_of_be16, read_table
from .model import (BACKEND_STATES, PROTOCOLS, SCOPES, Backend, Frontend, ServiceState,
                    be16_to_port, be32_to_ip, make_backends)

UNUSED = const("BACKEND_UNUSED")
_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
_SCOPE_NAMES = {v: k for k, v in SCOPES.items()}
_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}
_ALG_NAMES = {v: k for k, v in ALGORITHMS.items()}


def frontend_of(key) -> Frontend:
    """The Frontend a services map key stands for."""
    return Frontend(be32_to_ip(key.vip), be16_to_port(key.port), _PROTO_NAMES[key.proto], _SCOPE_NAMES[key.scope])


@dataclass
class Adopted:
    installed: dict[Frontend, Installed] = field(default_factory=dict)
    entries: dict[Frontend, tuple] = field(default_factory=dict)  # services values as read (SVC_FIELDS)
    reply_flag: dict[int, bool] = field(default_factory=dict)     # backend id -> its reply-entry flag
    orphan_backends: list[int] = field(default_factory=list)      # entries of no installed service
    slots_used: int = 0


def adopt(services, backends, maglev: MaglevMaps, svc_ids: IdAllocator, backend_ids: IdAllocator,
          affinity: AffinityGenerations, ranges: dict, backend_rows: MappedArray | None = None) -> Adopted:
    """Read the maps; claim every id in use in the allocators. `ranges`: svc_id ->
    its source ranges, as source_ranges.SourceRanges.adopt() read them; `backend_rows`:
    the backends map's mapping, if it has one (read through it: a copy, not a batch).

    Both maps are read whole with batch lookups into columns (packing.read_table) and
    decoded a column at a time; only the objects the writer keeps (a Backend per
    entry, a ServiceState per frontend) are made one by one."""
    out = Adopted()
    bkeys, bvals = read_table(backends, Packer.whole(backends.Key), Packer.whole(backends.Leaf), backend_rows)
    ident_col = bkeys[bkeys.dtype.names[0]]
    # id 0 means none; an entry there was never written by a writer
    live = (bvals["state"] != UNUSED) & (ident_col != 0)
    bkeys, bvals = bkeys[live], bvals[live]
    by_svc: dict[int, dict[Address, tuple[int, Backend]]] = {}
    if len(bvals):
        states = bvals["state"]
        known = np.isin(states, np.fromiter(_STATE_NAMES, np.uint8))
        if not known.all():
            raise KeyError(int(states[~known][0]))   # as _STATE_NAMES[...] did: not our maps
        idents = bkeys[bkeys.dtype.names[0]].tolist()
        flags = ((bvals["flags"] & F_REPLY_ENTRY) != 0).tolist()
        out.reply_flag = dict(zip(idents, flags))
        ips, ports = ips_of_be32(bvals["ip"]), ports_of_be16(bvals["port"])
        # made a column at a time, checked as Backend() checks each (make_backends)
        made = make_backends(ips, ports, [_STATE_NAMES[s] for s in states.tolist()], bvals["weight"].tolist())
        for ident, svc_id, ip, port, b in zip(idents, bvals["svc_id"].tolist(), ips, ports, made):
            members = by_svc.get(svc_id)
            if members is None:
                by_svc[svc_id] = members = {}
            members[(ip, port)] = (ident, b)
    skeys, svals = read_table(services, Packer.whole(services.Key), Packer.whole(services.Leaf))
    # In id order, which is the order the writer handed ids out in (a full sync: the
    # source's), not the hash map's: each frontend's record is then made beside its
    # backends, which were made in id order too, and beside the next service's.
    by_id = np.argsort(svals["svc_id"], kind="stable")
    skeys, svals = skeys[by_id], svals[by_id]
    fes = [Frontend(ip, port, _PROTO_NAMES[proto], _SCOPE_NAMES[scope]) for ip, port, proto, scope in
           zip(ips_of_be32(skeys["vip"]), ports_of_be16(skeys["port"]), skeys["proto"].tolist(),
               skeys["scope"].tolist())]
    entries = [tuple(row) for row in svals[list(SVC_FIELDS)].tolist()]
    seen_svc_ids: set[int] = set()
    claimed: list[int] = []
    for fe, v in zip(fes, entries):
        svc_id, count, alg, vflags, affinity_timeout, table_size, affinity_gen = v[:7]
        members = by_svc.get(svc_id, {})
        algorithm = _ALG_NAMES.get(alg, "random")
        timeout = affinity_timeout if vflags & F_AFFINITY else 0
        table_ok = True
        extra = dict(source_ranges=ranges.get(svc_id, ()) if vflags & F_SOURCE_RANGES else (),
                     local_drop=bool(vflags & F_LOCAL_DROP))
        in_id_order = tuple(b for _, b in members.values())
        try:
            state = ServiceState(fe, in_id_order, algorithm, timeout, table_size or None, **extra)
        except ValueError:  # a table size this build refuses: rewrite at next sync
            state = ServiceState(fe, in_id_order, algorithm, timeout, **extra)
            table_ok = False
        if state.backends is in_id_order:   # already sorted (ids handed out in address order): as they are
            ids = BackendIds(in_id_order, [i for i, _ in members.values()])
        else:
            ids = backend_ids_of(state.backends, {addr: i for addr, (i, _) in members.items()})
        if maglev_inputs(state, ids) is not None and not maglev.has(svc_id):
            table_ok = False  # the last agent stopped between table and entry
        gen = affinity_gen if vflags & F_AFFINITY else 0
        out.installed[fe] = Installed(svc_id, state, ids, count, table_ok, gen, adopted=True)
        out.entries[fe] = v
        affinity.claim(affinity_gen)
        svc_ids.claim(svc_id)
        seen_svc_ids.add(svc_id)
        claimed.extend(ids.values())
        out.slots_used += count
    backend_ids.claim_many(claimed)
    out.orphan_backends = sorted(i for svc_id, members in by_svc.items() if svc_id not in seen_svc_ids
                                 for i, _ in members.values())
    return out
