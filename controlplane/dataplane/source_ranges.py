"""loadBalancerSourceRanges in the `source_ranges` LPM trie: (svc_id, CIDR) entries,
looked up by (svc_id, client) in bpf/ranges.h. A frontend's ranges are added before
its service entry carries SVCXDP_SVC_F_SOURCE_RANGES and removed after it no longer
lists them, so no packet meets a half-written set. The entries held are known here,
so the capacity check (plan.py) can refuse a frontend whose ranges do not fit before
anything of it is written: a full trie fails an update part-way through a sync."""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Iterable

from .model import ip_to_be32

_SVC_ID_BITS = 32


class SourceRanges:
    def __init__(self, table) -> None:
        self.table = table
        self.writes = 0
        self.limit = table.max_entries
        self.what = f"source_ranges map (source_ranges_size={self.limit})"
        self._held: set[tuple[int, str]] = set()   # (svc_id, CIDR) entries the trie holds

    @property
    def available(self) -> int:
        """Entries that can still be added (with IdAllocator's `available` and `what`,
        what check_capacity reads of a map's room)."""
        return self.limit - len(self._held)

    def _key(self, svc_id: int, cidr: str):
        net = ipaddress.IPv4Network(cidr)
        k = self.table.Key()
        k.prefixlen = _SVC_ID_BITS + net.prefixlen
        k.svc_id = svc_id
        k.addr = ip_to_be32(str(net.network_address))
        return k

    def add(self, svc_id: int, cidrs: Iterable[str]) -> None:
        for cidr in cidrs:
            self.table[self._key(svc_id, cidr)] = self.table.Leaf(1)
            self._held.add((svc_id, cidr))
            self.writes += 1

    def remove(self, svc_id: int, cidrs: Iterable[str]) -> None:
        for cidr in cidrs:
            self._held.discard((svc_id, cidr))
            try:
                del self.table[self._key(svc_id, cidr)]
                self.writes += 1
            except KeyError:
                pass

    def adopt(self) -> dict[int, tuple[str, ...]]:
        """What the map holds: svc_id -> its CIDRs (a restarted agent's view)."""
        out: dict[int, list[str]] = defaultdict(list)
        for k in self.table.keys():
            addr = ipaddress.IPv4Address(int(k.addr).to_bytes(4, "little"))
            out[int(k.svc_id)].append(f"{addr}/{int(k.prefixlen) - _SVC_ID_BITS}")
        self._held = {(svc_id, cidr) for svc_id, cidrs in out.items() for cidr in cidrs}
        return {i: tuple(sorted(v)) for i, v in out.items()}
