"""What the writer believes one frontend has in the maps, and the entries it writes
for a state: the service entry, the backend entries, the Maglev table.

Planning (plan.py) writes these, adoption (adopt.py) reads them back and the
consistency check (verify.py) compares the maps with them, so each is computed in
exactly one place.
"""
from __future__ import annotations

import warnings
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from operator import attrgetter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from controlplane.maglev import MaglevBackend, MaglevSizeWarning, build_table

from .layout import ALGORITHMS, const
from .packing import be32_column, port_be16
from .model import BACKEND_STATES, PROTOCOLS, SCOPES, Backend, Frontend, ServiceState, ip_to_be32, port_to_be16

F_AFFINITY = const("SVC_F_AFFINITY")
F_TERMINATING_ONLY = const("SVC_F_TERMINATING_ONLY")
F_SOURCE_RANGES = const("SVC_F_SOURCE_RANGES")
F_LOCAL_DROP = const("SVC_F_LOCAL_DROP")
F_REPLY_ENTRY = const("BACKEND_F_REPLY_ENTRY")

Address = tuple[str, int]
_state, _weight = attrgetter("state"), attrgetter("weight")
_vip, _port, _protocol, _scope = attrgetter("vip"), attrgetter("port"), attrgetter("protocol"), attrgetter("scope")
_algorithm, _ranges, _local_drop = attrgetter("algorithm"), attrgetter("source_ranges"), attrgetter("local_drop")
_timeout, _table_size = attrgetter("affinity_timeout"), attrgetter("maglev_table_size")

# Field order of the rows below (packing.Packer takes them in offset order).
SVC_KEY_FIELDS = ("vip", "port", "proto", "scope")
SVC_FIELDS = ("svc_id", "count", "algorithm", "flags", "affinity_timeout", "table_size", "affinity_gen",
              "key_vip", "key_port", "key_proto", "key_scope")
BACKEND_FIELDS = ("ip", "port", "state", "proto", "svc_id", "weight", "flags")


_address = attrgetter("ip", "port")


def _same_addresses(a: Sequence[Backend], b: Sequence[Backend]) -> bool:
    """The same addresses in the same order (compared in C)."""
    return list(map(_address, a)) == list(map(_address, b))


class BackendIds(Mapping[Address, int]):
    """A record's backend ids by address, kept as the ids alone, in the order of the
    state's backends (which are sorted by address and distinct: ServiceState), and
    looked up by bisection over them. A dict per record kept, at 10,000 x 10, an
    (ip, port) tuple and an int object per backend besides its own table: ~13 MiB of
    the agent's resident memory, for lookups only changes and readers make."""
    __slots__ = ("_backends", "_ids")

    def __init__(self, backends: Sequence[Backend], ids: Iterable[int]) -> None:
        self._backends = backends
        self._ids = array("I", ids)   # (map keys are u32)
        if len(self._ids) != len(backends):
            raise ValueError(f"BackendIds: {len(self._ids)} ids for {len(backends)} backends")

    def __getitem__(self, address: Address) -> int:
        backends = self._backends
        try:
            i = bisect_left(backends, address, key=_address)
        except TypeError:   # not an (ip, port) of a str and an int: as a dict, no such key
            raise KeyError(address) from None
        if i < len(backends) and _address(backends[i]) == address:
            return self._ids[i]
        raise KeyError(address)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BackendIds):   # (without a lookup per address)
            return self._ids == other._ids and _same_addresses(self._backends, other._backends)
        return Mapping.__eq__(self, other)

    __hash__ = None   # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BackendIds({dict(self.items())!r})"

    def __iter__(self) -> Iterator[Address]:
        return map(_address, self._backends)

    def __len__(self) -> int:
        return len(self._ids)

    def values(self) -> list[int]:   # type: ignore[override]
        return self._ids.tolist()

    def items(self) -> list[tuple[Address, int]]:   # type: ignore[override]
        """(address, id) pairs, in the backends' order (not a view: made when asked)."""
        return list(zip(map(_address, self._backends), self._ids))


def ids_over(backends: Sequence[Backend], ids: Mapping[Address, int]) -> BackendIds | None:
    """`ids` as a BackendIds over `backends`, or None when it does not list exactly
    their addresses."""
    if len(ids) != len(backends):
        return None
    if isinstance(ids, BackendIds):
        if ids._backends is backends:
            return ids
        if _same_addresses(ids._backends, backends):
            return BackendIds(backends, ids._ids)
    try:
        return BackendIds(backends, map(ids.__getitem__, map(_address, backends)))
    except KeyError:
        return None


def backend_ids_of(backends: Sequence[Backend], ids: Mapping[Address, int]) -> Mapping[Address, int]:
    """`ids` held as a BackendIds over `backends` when it lists exactly their addresses
    (always, for a record the writer made: its plan's ids are those of its state's
    backends), else as it is."""
    over = ids_over(backends, ids)
    return ids if over is None else over


@dataclass
class Installed:
    svc_id: int
    state: ServiceState
    backend_ids: Mapping[Address, int]   # a BackendIds over state.backends (ids_over)
    slot_count: int          # slots 1..slot_count are written (more if suspect: see verify.py)
    table_ok: bool = True    # False: adopted Maglev service whose table is missing
    affinity_gen: int = 0    # its ClientIP period (affinity_maps.py); 0 with affinity off
    suspect: bool = False    # the maps may differ from `state` (verify.py): rewrite all of it
    adopted: bool = False    # made from the maps (adopt.py), until MapWriter.settle takes the agent's objects


def service_key_row(fe: Frontend) -> tuple:
    return (ip_to_be32(fe.vip), port_to_be16(fe.port), PROTOCOLS[fe.protocol], SCOPES[fe.scope])


def service_row(state: ServiceState, svc_id: int, affinity_gen: int, key: tuple | None = None) -> tuple:
    """The services map value for `state`, in SVC_FIELDS order; it carries its own
    key (the datapath checks it, bpf/svcxdp.c svc_read): `key`, service_key_row of
    its frontend, if the caller has it."""
    members = state.slot_backends()
    flags = ((F_AFFINITY if state.affinity_timeout else 0) |
             (F_TERMINATING_ONLY if members and members[0].state == "terminating" else 0) |
             (F_SOURCE_RANGES if state.source_ranges else 0) |
             (F_LOCAL_DROP if state.local_drop else 0))
    return (svc_id, len(state.slot_sequence()), ALGORITHMS[state.algorithm], flags,
            state.affinity_timeout, state.maglev_table_size, affinity_gen,
            *(key or service_key_row(state.frontend)))


def service_key_columns(frontends: Sequence[Frontend]) -> tuple[Sequence[int], ...]:
    """service_key_row of each frontend, as one column per field (SVC_KEY_FIELDS)."""
    return (be32_column(list(map(_vip, frontends))), port_be16(list(map(_port, frontends))),
            list(map(PROTOCOLS.__getitem__, map(_protocol, frontends))),
            list(map(SCOPES.__getitem__, map(_scope, frontends))))


def service_columns(states: Sequence[ServiceState], svc_ids: Sequence[int], slot_counts: Sequence[int],
                    terminating_only: Sequence[bool] | bool, affinity_gens: Sequence[int],
                    keys: tuple[Sequence[int], ...], algorithms: Sequence[str] | None = None,
                    source_ranges: Sequence[tuple[str, ...]] | None = None) -> tuple[Sequence[int], ...]:
    """service_row of each state, as one column per field (SVC_FIELDS), for a
    whole sync's entries at once. What service_row derives from the state's slots
    is given: `slot_counts`, len(slot_sequence()) of each; `terminating_only`, its
    slot_backends() are terminating ones (one bool: the same for all); `keys`:
    service_key_columns of their frontends; `algorithms`, `source_ranges`: those
    fields of each state, if the caller read them already."""
    n = len(states)
    if algorithms is None:
        algorithms = list(map(_algorithm, states))
    if source_ranges is None:
        source_ranges = list(map(_ranges, states))
    timeouts = list(map(_timeout, states))
    flags = np.zeros(n, np.uint32)
    if any(timeouts):
        flags |= np.where(np.asarray(timeouts, bool), F_AFFINITY, 0).astype(np.uint32)
    if terminating_only is True or (not isinstance(terminating_only, bool) and any(terminating_only)):
        flags |= np.where(np.asarray(terminating_only, bool), F_TERMINATING_ONLY, 0).astype(np.uint32)
    if any(source_ranges):
        flags |= np.where(np.fromiter(map(bool, source_ranges), bool, n), F_SOURCE_RANGES, 0).astype(np.uint32)
    local_drop = list(map(_local_drop, states))
    if any(local_drop):
        flags |= np.where(np.asarray(local_drop, bool), F_LOCAL_DROP, 0).astype(np.uint32)
    return (svc_ids, slot_counts, list(map(ALGORITHMS.__getitem__, algorithms)), flags, timeouts,
            list(map(_table_size, states)), affinity_gens, *keys)


def backend_columns(backends: Sequence[Backend], protos: Sequence[int], svc_ids: Sequence[int],
                    shared: Sequence[bool] | np.ndarray | bool, ip_be32: Sequence[int] | None = None,
                    port_be16_col: Sequence[int] | None = None, state_codes: Sequence[int] | int | None = None,
                    weights: Sequence[int] | int | None = None) -> tuple[Sequence[int], ...]:
    """Backends map values, one column per field in BACKEND_FIELDS order (the writer
    packs a whole sync's backends at once); `protos`: PROTOCOLS of each one's
    frontend; `shared`: its address serves several frontends, so flows to it record
    a reply entry (revnat.py), or one bool for all; `ip_be32`, `port_be16_col`: the
    backends' addresses packed already (be32_column, port_be16), `state_codes`
    (BACKEND_STATES of each) and `weights`, or one value for all, if the caller has them."""
    if ip_be32 is None:
        ip_be32 = be32_column([b.ip for b in backends])
    if port_be16_col is None:
        port_be16_col = port_be16([b.port for b in backends])
    if isinstance(shared, bool):
        flags: Sequence[int] | int = F_REPLY_ENTRY if shared else 0
    elif isinstance(shared, np.ndarray):
        flags = np.where(shared, F_REPLY_ENTRY, 0)
    else:
        flags = [F_REPLY_ENTRY if s else 0 for s in shared]
    if state_codes is None:
        state_codes = list(map(BACKEND_STATES.__getitem__, map(_state, backends)))
    if weights is None:
        weights = list(map(_weight, backends))
    return (ip_be32, port_be16_col, state_codes, protos, svc_ids, weights, flags)


def backend_row(fe: Frontend, b: Backend, svc_id: int, shared: bool) -> tuple:
    """One backends map value, in BACKEND_FIELDS order (see backend_columns)."""
    return tuple(int(col[0]) for col in backend_columns([b], [PROTOCOLS[fe.protocol]], [svc_id], [shared]))


def slot_ids(state: ServiceState, ids: Mapping[Address, int]) -> list[int]:
    """Backend ids of slots 1..n."""
    return [ids[(b.ip, b.port)] for b in state.slot_sequence()]


def maglev_inputs(state: ServiceState, ids: Mapping[Address, int]) -> tuple | None:
    """Everything a service's Maglev table depends on; None when it has no table."""
    if state.algorithm != "maglev":
        return None
    members = state.slot_backends()
    if not members:
        return None
    return (state.maglev_table_size, tuple((b.address, ids[b.address], b.weight) for b in members))


def maglev_table(state: ServiceState, ids: Mapping[Address, int]) -> array | None:
    """The table the writer installs for `state` (ids: address -> backend id); None
    when the service has no table. Backends are keyed by (ip, port), so every node
    orders and places them alike whatever its local ids."""
    inputs = maglev_inputs(state, ids)
    if inputs is None:
        return None
    m, members = inputs
    with warnings.catch_warnings():
        # M < 100·N is the operator's choice (annotation); the agent reports it.
        warnings.simplefilter("ignore", MaglevSizeWarning)
        return build_table([MaglevBackend(addr, bid, w) for addr, bid, w in members], m)
