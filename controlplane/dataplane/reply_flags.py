"""The reply-entry flag of backend entries, kept equal to rev_nat's sharing.

A backend address used by several frontends is "shared" (revnat.py): flows to it
record a reply entry. The datapath reads that from the backend entry's
SVCXDP_BACKEND_F_REPLY_ENTRY, so a new flow needs no rev_nat lookup. The protocol
with revnat.py, in full:
  1. the writer attaches a frontend's addresses to RevNat before its backend entries
     are written, so every backend row is written with the sharing of that moment
     (`MapWriter._backend_row` asks `RevNat.shared`);
  2. attaching or detaching may make another frontend's address shared or not:
     RevNat remembers those addresses, and after the service entries are written
     the writer takes them (`RevNat.take_sharing_changes`) and rewrites the flag of
     every backend entry of those addresses (`flag_rows`);
  3. adoption compares each backend entry's flag with the sharing it rebuilt
     (`flag_drift`); the owner rewrites the ones that differ.
A flow made from an entry whose flag is momentarily stale is still answered
(bpf/conntrack.h, ct_needs_reply_entry).
"""
from __future__ import annotations

from typing import Callable, Iterable

from .installed import Installed
from .model import Backend, Frontend
from .revnat import Address, RevNat


def flag_drift(installed: dict[Frontend, Installed], reply_flag: dict[int, bool], revnat: RevNat) -> set[Address]:
    """Addresses with a backend entry whose flag disagrees with their sharing."""
    if not revnat.shared_count and not any(reply_flag.values()):
        return set()   # no address shared and no flag set: all agree, without a lookup each
    return {(*addr, fe.protocol) for fe, inst in installed.items()
            for addr, bid in inst.backend_ids.items()
            if reply_flag.get(bid, False) != revnat.shared((*addr, fe.protocol))}


def flag_rows(addresses: Iterable[Address], revnat: RevNat, installed: dict[Frontend, Installed],
              backend_row: Callable[[Frontend, Backend, int], tuple]) -> tuple[list, list]:
    """(keys, rows) rewriting every backend entry of these addresses with the flag
    their sharing has now."""
    keys, rows = [], []
    for addr in addresses:
        for fe in revnat.users.get(addr, ()):
            inst = installed.get(fe)
            bid = inst.backend_ids.get(addr[:2]) if inst else None
            if bid is None:
                continue
            b = next(b for b in inst.state.backends if b.address == addr[:2])
            keys.append((bid,))
            rows.append(backend_row(fe, b, inst.svc_id))
    return keys, rows
