"""Which backend the datapath picks for a new flow, computed in user space.

The one prediction model of the project: tests, `svcctl trace` (trace.py) and
tools that explain a flow's backend use it. Each function mirrors one step of
bpf/select.h or bpf/lc.h over values the caller read (from a ServiceState as the
writer installs it, or from the maps themselves):

- sh, dh, maglev: the same C flow hash as the XDP program (csrc/flowhash.h via
  cffi) and the same reduction onto slots (scale_to) or onto the Maglev table;
- rr, wrr: the service's shared cursor (rr_state) picks slot `next % count + 1`;
- lc, wlc, sed, nq: the lowest (conns + k) / weight over the slots, ties to the
  earlier slot (exact for services of up to SVCXDP_LC_MAX_SCAN slots; larger ones
  are sampled from a random window);
- random: any slot, uniformly (bpf_get_prandom_u32): not predictable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from controlplane.maglev import flow_hash, maglev_slot

from .layout import const
from .model import Backend, ServiceState

PREDICTABLE = ("sh", "dh", "maglev")
HASHED = ("sh", "dh", "maglev")
ROUND_ROBIN = ("rr", "wrr")
COUNTED = ("lc", "wlc", "sed", "nq")
LC_MAX_SCAN = const("LC_MAX_SCAN")


def scale_to(x: int, n: int) -> int:
    """bpf/select.h scale_to(): multiply-shift of a u32 onto [0, n)."""
    return (x * n) >> 32


def flow_key_hash(algorithm: str, affinity: bool, src: str, sport: int, dst: str, dport: int,
                  proto: int) -> int:
    """The hash a hashed algorithm reduces: sh the client address, dh the address the
    client addressed (bpf/select.h addr_hash), maglev the flow (without the source port
    with ClientIP affinity: bpf/maglev.h maglev_flow_hash)."""
    if algorithm == "sh":
        return flow_hash(src, 0, dport, proto, affinity=True)
    if algorithm == "dh":
        return flow_hash(dst, 0, dport, proto, affinity=True)
    return flow_hash(src, sport, dport, proto, affinity=affinity)


def hashed_slot(algorithm: str, affinity: bool, count: int, src: str, sport: int, dst: str,
                dport: int, proto: int) -> int:
    """Slot 1..count that sh/dh choose (and Maglev falls back to without a table)."""
    return scale_to(flow_key_hash(algorithm, affinity, src, sport, dst, dport, proto), count) + 1


def maglev_index(affinity: bool, table_size: int, src: str, sport: int, dport: int, proto: int) -> int:
    """The index into a Maglev table of table_size entries for this flow."""
    return maglev_slot(flow_key_hash("maglev", affinity, src, sport, "", dport, proto), table_size)


def rr_slot(cursor: int, count: int) -> int:
    """bpf/select.h rr_next(): the slot of the next new flow, from the cursor's value."""
    return cursor % count + 1


@dataclass(frozen=True)
class Candidate:
    """A slot's backend as lc_select() sees it."""
    slot: int
    backend_id: int
    conns: int      # backend_conns[id], read as signed (negative: clamped to 0)
    weight: int


def lc_pick(algorithm: str, candidates: Sequence[Candidate]) -> Candidate | None:
    """bpf/lc.h lc_select() over the scanned slots in slot order: the lowest
    (conns + k) / w, compared cross-multiplied, ties to the earlier slot."""
    use_w = algorithm != "lc"
    best_c, best_w, best = 1 << 32, 1, None
    for cand in candidates:
        c = max(cand.conns, 0)
        c += (1 if algorithm == "sed" else 0) + (1 if algorithm == "nq" and c else 0)
        w = cand.weight if use_w else 1
        if c * best_w < best_c * w:
            best_c, best_w, best = c, w, cand
    return best


def hash_slot(state: ServiceState, src: str, sport: int, dst: str, dport: int, proto: int) -> int:
    """Index into state.slot_sequence() for sh/dh (and Maglev's fallback)."""
    return hashed_slot(state.algorithm, state.affinity_timeout > 0, len(state.slot_sequence()),
                       src, sport, dst, dport, proto) - 1


def maglev_flow_hash(state: ServiceState, src: str, sport: int, dport: int, proto: int) -> int:
    return flow_key_hash("maglev", state.affinity_timeout > 0, src, sport, "", dport, proto)


def predict(state: ServiceState, src: str, sport: int, dst: str, dport: int, proto: int,
            table: Sequence[int] | None = None,
            ids: dict[tuple[str, int], int] | None = None) -> Backend | None:
    """The backend of a new flow src:sport -> dst:dport (dst, dport: the frontend as
    the client addressed it) of a hashed service, from its desired state. Maglev needs
    the service's table and the backend ids it holds (MapWriter.maglev_table /
    backend_id). None: no backend (reject)."""
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
