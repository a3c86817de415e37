"""The conntrack tables as flows (`svcctl get flows`), read from the pinned maps.

A flow is the forward entry of `conntrack` (confirmed: it sent a second packet) or
`ct_unconfirmed` (one packet so far; bpf/conntrack.h): client -> frontend, holding
its backend, and for a NodePort flow sent to another node the node address:port it
was source-NATed to. Reply entries (DIR_REPLY, backends shared by several
frontends) and SNAT reverse entries (DIR_SNAT) are lookup aids of those flows and
are only counted.

The tables are read in batches (BPF_MAP_LOOKUP_BATCH, pinned.py; the unconfirmed ones
as their sets' used slots, flowsets.py) and decoded by
struct.iter_unpack; filters are applied to the raw integers before a Flow is built,
so a filtered read of a full million-entry table builds only what it shows.

Timeouts are compiled into the program (config.py), not kept in a map: idle times
are exact, the time left assumes the timeouts given (the defaults unless told).
"""
from __future__ import annotations

import ctypes as ct
import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

from controlplane.gcpause import paused_gc

from .affinity_maps import NSEC, coarse_now_ns
from .config import FLOW_TABLES, UNCONFIRMED_TABLES
from .layout import const
from .model import PROTOCOLS
from .pinned import struct_format

TABLE_LABELS = {"conntrack": "confirmed", **dict.fromkeys(UNCONFIRMED_TABLES, "unconfirmed")}
DIR_FORWARD, DIR_REPLY, DIR_SNAT = const("CT_DIR_FORWARD"), const("CT_DIR_REPLY"), const("CT_DIR_SNAT")
F_CLOSING, F_COUNTED, F_SNAT = const("CT_F_CLOSING"), const("CT_F_COUNTED"), const("CT_F_SNAT")
F_FIN_CLIENT, F_FIN_BACKEND = const("CT_F_FIN_CLIENT"), const("CT_F_FIN_BACKEND")
F_FIN_BOTH = F_FIN_CLIENT | F_FIN_BACKEND
CLOSE_FLAGS = F_CLOSING | F_FIN_BOTH   # what ct_closed() reads of an entry's flags
UNUSED = const("BACKEND_UNUSED")
PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
_KEY_FIELDS = ("src", "dst", "sport", "dport", "proto", "dir")
_VALUE_FIELDS = ("last_seen", "nat_ip", "nat_port", "flags", "backend_id", "svc_id", "peer_ip", "peer_port")


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds, as the program was built with (config.py)."""
    tcp: int = const("DEFAULT_TCP_TIMEOUT_S")
    tcp_close: int = const("DEFAULT_TCP_CLOSE_TIMEOUT_S")
    udp: int = const("DEFAULT_UDP_TIMEOUT_S")
    tcp_half_close: int = const("DEFAULT_TCP_HALF_CLOSE_TIMEOUT_S")

    def of(self, proto: int, flags: int) -> int:
        """bpf/conntrack.h ct_timeout_ns(), in seconds."""
        if proto == PROTOCOLS["TCP"]:
            if half_closed(flags):
                return self.tcp_half_close
            return self.tcp_close if closed(flags) else self.tcp
        return self.udp


def half_closed(flags: int) -> bool:
    """One side's FIN only (bpf/svcxdp.h SVCXDP_CT_F_FIN_CLIENT): the other side may go
    on sending; the flow keeps the half-close timeout and its tuple (conntrack.h)."""
    return flags & F_CLOSING != 0 and flags & F_FIN_BOTH in (F_FIN_CLIENT, F_FIN_BACKEND)


def closed(flags: int) -> bool:
    """bpf/conntrack.h ct_closed(): FIN or RST seen, not half-closed (the close timeout;
    a bare SYN reopens the tuple)."""
    return flags & F_CLOSING != 0 and not half_closed(flags)


_ip_cache: dict[int, str] = {}


def be32_ip(value: int) -> str:
    """A network-order address read as a native u32, dotted (cached: a table holds
    few distinct backends and frontends)."""
    ip = _ip_cache.get(value)
    if ip is None:
        if len(_ip_cache) > 1 << 20:
            _ip_cache.clear()
        ip = _ip_cache[value] = socket.inet_ntoa(struct.pack("=I", value))
    return ip


def ip_be32(ip: str) -> int:
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def be16_port(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


_SWAP16 = [be16_port(v) for v in range(1 << 16)]   # a network-order port read as a native u16


def port_be16(port: int) -> int:
    return be16_port(port)


class Flow(NamedTuple):
    """One flow (a tuple: a million of them are built ~10x faster than dataclasses)."""
    table: str                 # one of FLOW_TABLES
    protocol: str              # "TCP" | "UDP"
    client: tuple[str, int]
    frontend: tuple[str, int]  # what the client addressed
    backend: tuple[str, int]
    snat: tuple[str, int] | None  # the node address:port the flow left with (NodePort to another node)
    svc_id: int
    backend_id: int
    state: str                 # NEW | ESTABLISHED | HALF-CLOSED | CLOSING | STALE | EXPIRED (flow_state)
    idle_s: float
    remaining_s: float         # < 0: expired (the LRU has not reclaimed it yet)
    counted: bool              # holds one of its backend's connection counts (lc family)


def flow_state(table: str, flags: int, remaining_s: float, backend_live: bool) -> str:
    """EXPIRED: idle past its timeout (its next packet starts a new flow); STALE: its
    backend left the service (its next packet is re-picked); HALF-CLOSED: one side's FIN
    (the other may still send); CLOSING: both FINs or a RST; NEW: one packet so far (an
    unconfirmed table); ESTABLISHED: confirmed by a second one."""
    if remaining_s < 0:
        return "EXPIRED"
    if not backend_live:
        return "STALE"
    if flags & F_CLOSING:
        return "HALF-CLOSED" if half_closed(flags) else "CLOSING"
    return "NEW" if table in UNCONFIRMED_TABLES else "ESTABLISHED"


@dataclass(frozen=True)
class FlowFilter:
    """Only flows matching every field given (None: any)."""
    svc_ids: frozenset[int] | None = None
    protocol: str | None = None
    client: str | None = None
    backend: str | None = None          # an address, or address:port
    include_expired: bool = False


@dataclass
class FlowTable:
    flows: list[Flow] = field(default_factory=list)
    # entries by table and kind ("forward", "reply", "snat"), whatever the filter
    entries: dict[str, dict[str, int]] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)


def live_backends(maps) -> dict[int, tuple[int, int, int]]:
    """Backend id -> (svc_id, ip, port) of every used entry of the backends array (raw
    network-order integers, as a flow's nat_ip / nat_port hold them)."""
    out = {}
    for key, b in maps.table("backends").items_lookup_batch():
        if b.state != UNUSED:
            out[int(key.value) if hasattr(key, "value") else int(key)] = (b.svc_id, b.ip, b.port)
    return out


def read_flows(maps, flt: FlowFilter = FlowFilter(), timeouts: Timeouts = Timeouts(),
               now_ns: int | None = None) -> FlowTable:
    """The flows of both conntrack tables (confirmed first), as the datapath would judge
    them at `now_ns` (its clock, CLOCK_MONOTONIC_COARSE). The cyclic collector waits:
    a million flows are millions of containers, none of them garbage (gcpause.py)."""
    out = FlowTable()
    with paused_gc():
        out.flows.extend(iter_flows(maps, out, flt, timeouts, now_ns))
    return out


def iter_flows(maps, out: FlowTable, flt: FlowFilter = FlowFilter(), timeouts: Timeouts = Timeouts(),
               now_ns: int | None = None) -> Iterator[Flow]:
    """The flows read_flows() lists, one at a time as the batches come (a command writes
    each as it comes, and holds no million of them); `out.entries` and `out.capacity`
    are filled as each table is read."""
    now_ns = coarse_now_ns() if now_ns is None else now_ns
    backends = live_backends(maps)
    want_proto = PROTOCOLS[flt.protocol] if flt.protocol else None
    want_client = ip_be32(flt.client) if flt.client else None
    want_backend = want_bport = None
    if flt.backend:
        ip, _, port = flt.backend.partition(":")
        want_backend = ip_be32(ip)
        want_bport = port_be16(int(port)) if port else None
    svc_ids = flt.svc_ids
    ip = _ip_cache          # frontends, backends and node addresses: few, cached
    port = _SWAP16
    ntoa, pack = socket.inet_ntoa, struct.Struct("=I").pack   # clients: many, converted each time
    new = tuple.__new__     # Flow(...) without NamedTuple's Python-level __new__
    timeout_of = {(p, c): timeouts.of(p, c) for p in range(256) for c in range(CLOSE_FLAGS + 1) if c & ~CLOSE_FLAGS == 0}
    # Byte patterns a batch must hold to have a match: a batch without them is skipped
    # without a Python step per entry (a match elsewhere in an entry is only a false hope).
    key_needles = [pack(want_client)] if want_client is not None else None
    value_needles = None
    if svc_ids is not None and len(svc_ids) <= 64:
        value_needles = [pack(i) for i in svc_ids]
    elif want_backend is not None:
        value_needles = [pack(want_backend)]
    for name in FLOW_TABLES:
        table = maps.table(name)
        out.capacity[name] = table.max_entries
        kinds = out.entries[name] = {"forward": 0, "reply": 0, "snat": 0}
        kfmt, vfmt = struct_format(table.Key)[0], struct_format(table.Leaf)[0]
        ksize, dir_at = ct.sizeof(table.Key), table.Key.dir.offset
        ks, kd, ksp, kdp, kp, kdir = _index(table.Key, _KEY_FIELDS)
        vl, vip, vport, vflags, vbid, vsvc, vpeer, vpport = _index(table.Leaf, _VALUE_FIELDS)
        for kraw, vraw in table.raw_batches():
            dirs = kraw[dir_at::ksize]
            forward, reply = dirs.count(DIR_FORWARD), dirs.count(DIR_REPLY)
            kinds["forward"] += forward
            kinds["reply"] += reply
            kinds["snat"] += len(dirs) - forward - reply
            if key_needles is not None and not any(n in kraw for n in key_needles):
                continue
            if value_needles is not None and not any(n in vraw for n in value_needles):
                continue
            for k, v in zip(struct.iter_unpack(kfmt, kraw), struct.iter_unpack(vfmt, vraw)):
                if k[kdir] != DIR_FORWARD:
                    continue
                # filters on the raw integers first: nothing is built for what is not shown
                if svc_ids is not None and v[vsvc] not in svc_ids:
                    continue
                proto = k[kp]
                if want_proto is not None and proto != want_proto:
                    continue
                if want_client is not None and k[ks] != want_client:
                    continue
                if want_backend is not None and (v[vip] != want_backend or
                                                 (want_bport is not None and v[vport] != want_bport)):
                    continue
                flags = v[vflags]
                idle = (now_ns - v[vl]) / NSEC
                remaining = timeout_of[proto, flags & CLOSE_FLAGS] - idle
                if remaining < 0 and not flt.include_expired:
                    continue
                src, dst, nat, peer = k[ks], k[kd], v[vip], v[vpeer]
                yield new(Flow, (
                    name, PROTO_NAMES.get(proto) or str(proto),
                    (ntoa(pack(src)), port[k[ksp]]), (ip.get(dst) or be32_ip(dst), port[k[kdp]]),
                    (ip.get(nat) or be32_ip(nat), port[v[vport]]),
                    (ip.get(peer) or be32_ip(peer), port[v[vpport]]) if flags & F_SNAT else None,
                    v[vsvc], v[vbid],
                    flow_state(name, flags, remaining, backends.get(v[vbid]) == (v[vsvc], nat, v[vport])),
                    idle, remaining, bool(flags & F_COUNTED)))


def _index(ctype: type, names: Iterable[str]) -> tuple[int, ...]:
    """Positions of `names` among the fields pinned.struct_format unpacks."""
    fields = struct_format(ctype)[1]
    return tuple(fields.index(n) for n in names)
