"""ClientIP session affinity from user space: the `affinity` map (bpf/affinity.h).

The datapath writes and refreshes the entries; the control plane never writes one.
What it owns is each service's ClientIP *period* (`svc_value.affinity_gen`): a
service switched to ClientIP gets a generation never used before, and the datapath
ignores entries of another generation. So switching to None drops a service's
entries at once, in one write of its service entry, without scanning a map that may
hold a million clients; the dropped entries are overwritten by that client's next
new flow or reclaimed by the LRU first (they are the least recently used).
Generations come from one counter for all services, so a service id reused by a
new service never meets its predecessor's entries either.

Reading: entries come out in batches (bpf_map_lookup_batch), and their age is
computed on the datapath's clock: bpf_ktime_get_coarse_ns() is
CLOCK_MONOTONIC_COARSE.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .layout import const
from .libbpf import lookup_batches as _batches
from .model import PROTOCOLS, SCOPES, Frontend, be16_to_port, be32_to_ip

F_AFFINITY = const("SVC_F_AFFINITY")
F_TERMINATING_ONLY = const("SVC_F_TERMINATING_ONLY")
ACTIVE = const("BACKEND_ACTIVE")
TERMINATING = const("BACKEND_TERMINATING")
PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
SCOPE_NAMES = {v: k for k, v in SCOPES.items()}

CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)  # Linux's number
NSEC = 1_000_000_000


def coarse_now_ns() -> int:
    """Now, on the clock the datapath stamps affinity and conntrack entries with."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


class AffinityGenerations:
    """Hands out ClientIP periods; continues after the largest one found in the maps."""

    def __init__(self) -> None:
        self._next = 1

    def claim(self, gen: int) -> None:
        self._next = max(self._next, gen + 1)

    def for_update(self, timeout: int, old_gen: int) -> int:
        """The generation a service entry gets: 0 with affinity off; the old one
        while affinity stays on (a changed timeout keeps the entries); a new one
        when affinity is switched on."""
        if not timeout:
            return 0
        if old_gen:
            return old_gen
        gen = self._next
        self._next = gen + 1 if gen < 0xFFFFFFFF else 1
        return gen


@dataclass(frozen=True)
class AffinityEntry:
    svc_id: int
    client: str
    backend_id: int
    last_used_ns: int
    gen: int


def read_entries(table) -> list[AffinityEntry]:
    """Every entry of the affinity map (a snapshot; the datapath keeps writing)."""
    out = []
    for keys, values, n in _batches(table):
        for i in range(n):
            k, v = keys[i], values[i]
            out.append(AffinityEntry(k.svc_id, be32_to_ip(k.client), v.backend_id, v.last_used, v.gen))
    return out


def count_entries(table) -> int:
    return sum(n for _, _, n in _batches(table))


@dataclass(frozen=True)
class AffinityStats:
    capacity: int
    entries: int     # present in the map, live or not
    inserted: int    # new keys the datapath inserted (SVCXDP_CNT_AFFINITY_NEW)

    @property
    def evicted(self) -> int:
        """Entries the LRU reclaimed: nothing else removes one, so every insert not
        present any more was evicted. (Two CPUs inserting one key at once count
        twice; that over-counts by one per such race.)"""
        return max(self.inserted - self.entries, 0)


def affinity_stats(dp) -> AffinityStats:
    table = dp.table("affinity")
    return AffinityStats(dp.config.affinity_size, count_entries(table),
                         dp.counters()["affinity_new"])


@dataclass(frozen=True)
class Sticky:
    """One client's live stickiness to a backend of a frontend."""
    frontend: Frontend
    client: str
    backend: tuple[str, int] | None  # None: it left the match set (the next flow rebalances)
    remaining_s: float


def _member(b, svc) -> bool:
    """bpf/affinity.h's affinity_member(): would the datapath honour this backend?"""
    if b.svc_id != svc.svc_id or b.weight == 0:
        return False
    return b.state == ACTIVE or (b.state == TERMINATING and bool(svc.flags & F_TERMINATING_ONLY))


def live_entries(dp, frontends: set[Frontend] | None = None, now_ns: int | None = None) -> list[Sticky]:
    """Entries the datapath would still honour (current period, not timed out), with
    their backend address and remaining time, sorted by frontend and client. Reads
    the maps only (never writes), so it is safe beside a running agent."""
    now_ns = coarse_now_ns() if now_ns is None else now_ns
    services, backends = dp.table("services"), dp.table("backends")
    by_id = {}
    for k, v in services.items():
        if not v.flags & F_AFFINITY:
            continue
        fe = Frontend(be32_to_ip(k.vip), be16_to_port(k.port), PROTO_NAMES.get(k.proto, "TCP"),
                      SCOPE_NAMES.get(k.scope, "cluster"))
        if frontends is None or fe in frontends:
            by_id[v.svc_id] = (fe, v)
    out = []
    for e in read_entries(dp.table("affinity")) if by_id else ():
        found = by_id.get(e.svc_id)
        if found is None or e.gen != found[1].affinity_gen:
            continue
        fe, svc = found
        remaining = svc.affinity_timeout - (now_ns - e.last_used_ns) / NSEC
        if remaining < 0:
            continue
        b = backends[backends.Key(e.backend_id)]
        addr = (be32_to_ip(b.ip), be16_to_port(b.port)) if _member(b, svc) else None
        out.append(Sticky(fe, e.client, addr, remaining))
    out.sort(key=lambda s: (s.frontend, tuple(int(x) for x in s.client.split("."))))
    return out
