"""Which backend the datapath picks for a new flow, computed in user space.

Defined for the hashing algorithms (sh, dh, maglev): the same C flow hash as the
XDP program (csrc/flowhash.h via cffi) and the same reduction onto slots
(bpf/select.h). Used by tests and by tools that explain a flow's backend.
"""
from __future__ import annotations

from typing import Sequence

from controlplane.maglev import flow_hash, maglev_slot

from .model import Backend, ServiceState

PREDICTABLE = ("sh", "dh", "maglev")


def scale_to(x: int, n: int) -> int:
    """bpf/select.h scale_to(): multiply-shift of a u32 onto [0, n)."""
    return (x * n) >> 32


def hash_slot(state: ServiceState, src: str, sport: int, dst: str, dport: int, proto: int) -> int:
    """Index into state.slot_sequence() for sh/dh (and Maglev's fallback)."""
    n = len(state.slot_sequence())
    if state.algorithm == "sh":
        return scale_to(flow_hash(src, 0, dport, proto, affinity=True), n)
    if state.algorithm == "dh":
        return scale_to(flow_hash(dst, 0, dport, proto, affinity=True), n)
    return scale_to(maglev_flow_hash(state, src, sport, dport, proto), n)


def maglev_flow_hash(state: ServiceState, src: str, sport: int, dport: int, proto: int) -> int:
    return flow_hash(src, sport, dport, proto, affinity=state.affinity_timeout > 0)


def predict(state: ServiceState, src: str, sport: int, dst: str, dport: int, proto: int,
            table: Sequence[int] | None = None,
            ids: dict[tuple[str, int], int] | None = None) -> Backend | None:
    """The backend of a new flow src:sport -> dst:dport (dst, dport: the frontend as
    the client addressed it). Maglev needs the service's table and the backend ids
    it holds (MapWriter.maglev_table / backend_id). None: no backend (reject)."""
    if state.algorithm not in PREDICTABLE:
        raise ValueError(f"no prediction for algorithm {state.algorithm!r}")
    seq = state.slot_sequence()
    if not seq:
        return None
    if state.algorithm == "maglev":
        if table is None or ids is None:
            raise ValueError("maglev prediction needs the table and the backend ids")
        bid = table[maglev_slot(maglev_flow_hash(state, src, sport, dport, proto), len(table))]
        by_id = {i: addr for addr, i in ids.items()}
        addr = by_id.get(bid)
        return next((b for b in state.backends if b.address == addr), None)
    return seq[hash_slot(state, src, sport, dst, dport, proto)]
