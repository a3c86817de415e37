"""Adoption: rebuild the writer's picture of a running dataplane from its maps.

A restarted agent (or a read-only command) reads the services and backends maps,
claims the ids it finds, and continues where the last writer stopped. Reading only:
what is found wrong is reported (verify.py) and written only by the owner
(MapWriter.repair_adopted), so a read-only command never races the agent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .affinity_maps import AffinityGenerations
from .ids import IdAllocator
from .installed import F_AFFINITY, F_LOCAL_DROP, F_REPLY_ENTRY, F_SOURCE_RANGES, SVC_FIELDS, Address, Installed, maglev_inputs
from .layout import ALGORITHMS, const
from .maglev_maps import MaglevMaps
from .model import (BACKEND_STATES, PROTOCOLS, SCOPES, Backend, Frontend, ServiceState,
                    be16_to_port, be32_to_ip)

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
          affinity: AffinityGenerations, ranges: dict) -> Adopted:
    """Read the maps; claim every id in use in the allocators. `ranges`: svc_id ->
    its source ranges, as source_ranges.SourceRanges.adopt() read them."""
    out = Adopted()
    by_svc: dict[int, dict[Address, tuple[int, Backend]]] = {}
    for key, b in backends.items_lookup_batch():
        if b.state == UNUSED:
            continue
        ident = int(key.value) if hasattr(key, "value") else int(key)
        if ident == 0:  # id 0 means none; an entry there was never written by a writer
            continue
        out.reply_flag[ident] = bool(b.flags & F_REPLY_ENTRY)
        backend = Backend(be32_to_ip(b.ip), be16_to_port(b.port), _STATE_NAMES[b.state], b.weight)
        by_svc.setdefault(b.svc_id, {})[backend.address] = (ident, backend)
    seen_svc_ids = set()
    for key, v in services.items():
        fe = frontend_of(key)
        members = by_svc.get(v.svc_id, {})
        algorithm = _ALG_NAMES.get(v.algorithm, "random")
        timeout = v.affinity_timeout if v.flags & F_AFFINITY else 0
        table_ok = True
        extra = dict(source_ranges=ranges.get(v.svc_id, ()) if v.flags & F_SOURCE_RANGES else (),
                     local_drop=bool(v.flags & F_LOCAL_DROP))
        try:
            state = ServiceState(fe, tuple(b for _, b in members.values()), algorithm, timeout,
                                 v.table_size or None, **extra)
        except ValueError:  # a table size this build refuses: rewrite at next sync
            state = ServiceState(fe, tuple(b for _, b in members.values()), algorithm, timeout, **extra)
            table_ok = False
        ids = {addr: i for addr, (i, _) in members.items()}
        if maglev_inputs(state, ids) is not None and not maglev.has(v.svc_id):
            table_ok = False  # the last agent stopped between table and entry
        gen = v.affinity_gen if v.flags & F_AFFINITY else 0
        out.installed[fe] = Installed(v.svc_id, state, ids, v.count, table_ok, gen)
        out.entries[fe] = tuple(getattr(v, f) for f in SVC_FIELDS)
        affinity.claim(v.affinity_gen)
        svc_ids.claim(v.svc_id)
        seen_svc_ids.add(v.svc_id)
        for ident in ids.values():
            backend_ids.claim(ident)
        out.slots_used += v.count
    out.orphan_backends = sorted(i for svc_id, members in by_svc.items() if svc_id not in seen_svc_ids
                                 for i, _ in members.values())
    return out
