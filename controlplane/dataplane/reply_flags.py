"""The reply-entry flag of backend entries, kept equal to rev_nat's sharing.

A backend address used by several frontends is "shared" (revnat.py): flows to it
record a reply entry. The datapath reads that from the backend entry's
SVCXDP_BACKEND_F_REPLY_ENTRY, so a new flow needs no rev_nat lookup. The protocol
with revnat.py, in full:
  1. the writer attaches a frontend's addresses to RevNat before its backend entries
     are written, so every backend row is written with the sharing of that moment
     (`MapWriter._backend_rows` asks `RevNat.users`);
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

from typing import Container, Iterable, Sequence

from .installed import Installed, backend_columns
from .model import PROTOCOLS, Backend, Frontend
from .revnat import Address, RevNat


def flag_drift(installed: dict[Frontend, Installed], reply_flag: dict[int, bool], revnat: RevNat) -> set[Address]:
    """Addresses with a backend entry whose flag disagrees with their sharing."""
    if not revnat.shared_count and not any(reply_flag.values()):
        return set()   # no address shared and no flag set: all agree, without a lookup each
    return {(*addr, fe.protocol) for fe, inst in installed.items()
            for addr, bid in inst.backend_ids.items()
            if reply_flag.get(bid, False) != revnat.shared((*addr, fe.protocol))}


def flag_rows(addresses: Iterable[Address], revnat: RevNat, installed: dict[Frontend, Installed],
              skip: Container[int] = ()) -> tuple[list[int], tuple[Sequence[int], ...]]:
    """(ids, columns) rewriting every backend entry of these addresses with the flag
    their sharing has now, but those of the frontends whose id() is in `skip` (the
    objects whose rows were written with it already; an equal object elsewhere is
    rewritten, which is only redundant): the entries' ids and their values as
    backend_columns gives them, packed by the caller in one go. (A sync that adds
    thousands of NodePort services shares every address of each between its ClusterIP
    and NodePort frontends: 40,000 entries at 2,000 services x 10, which packed one
    row at a time took ~0.9 s.)"""
    ids: list[int] = []
    backends: list[Backend] = []
    protocols: list[int] = []
    svc_ids: list[int] = []
    shared: list[bool] = []
    # each frontend's backends by address, made once for all the addresses it uses
    by_address: dict[Frontend, dict[tuple[str, int], Backend]] = {}
    users_of = revnat.users.get
    for addr in addresses:
        users = users_of(addr, ())
        address = addr[:2]
        for fe in users:
            if id(fe) in skip:
                continue
            inst = installed.get(fe)
            bid = inst.backend_ids.get(address) if inst else None
            if bid is None:
                continue
            found = by_address.get(fe)
            if found is None:
                found = by_address[fe] = {(b.ip, b.port): b for b in inst.state.backends}
            ids.append(bid)
            backends.append(found[address])
            protocols.append(PROTOCOLS[fe.protocol])
            svc_ids.append(inst.svc_id)
            shared.append(len(users) > 1)   # RevNat.shared
    return ids, backend_columns(backends, protocols, svc_ids, shared)
