"""What the datapath does with one packet, and why, read from a node's pinned maps.

`trace(maps, packet)` walks bpf/svcxdp.c's decisions for a packet of the given tuple
over the maps' current contents, reading only (nothing is written): the frontend
its destination matches (scope external first on the external entry point, then
ClusterIPs), the flow's conntrack entry and whether it still holds, ClientIP
affinity, the algorithm's choice (predict.py: the same flow hash and slot
arithmetic), and the rewrite. A packet that is no frontend's may be a backend's
reply, turned back into its frontend (bpf/conntrack.h ct_match_reply,
bpf/nodeport.h np_snat_reply).

The third entry, "socket", is not a packet's: it is what the node's socket hooks
(bpf/sock.h sock4_xlate) do when a socket of the node connects or sends to DST:PORT —
the service entry in the cluster scope (a NodePort on loopback read as the one on the
node's address), a LoadBalancer IP's source ranges, the choice; the socket is then
connected to the backend, and no packet is translated.

What cannot be known from the maps is said so: `random` (and lc over more than
SVCXDP_LC_MAX_SCAN slots, which samples a random window) has a set of possible
backends; a new external flow's source NAT depends on the route to its backend,
looked up by the program at the way out (nodeport.h).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import frames, predict, udprecent
from .affinity_maps import NSEC, coarse_now_ns
from .flows import F_CLOSING, F_SNAT, Timeouts, be16_port, be32_ip, closed, flow_state, ip_be32, port_be16
from .layout import ALGORITHMS, const
from .libbpf import ffi, lib, map_fd_by_id
from .model import PROTOCOLS, Frontend

ENTRIES = ("pod", "external", "socket")
SCOPE_CLUSTER, SCOPE_EXTERNAL = const("SCOPE_CLUSTER"), const("SCOPE_EXTERNAL")
DIR_FORWARD, DIR_REPLY, DIR_SNAT = const("CT_DIR_FORWARD"), const("CT_DIR_REPLY"), const("CT_DIR_SNAT")
F_AFFINITY = const("SVC_F_AFFINITY")
F_TERMINATING_ONLY = const("SVC_F_TERMINATING_ONLY")
F_SOURCE_RANGES = const("SVC_F_SOURCE_RANGES")
F_LOCAL_DROP = const("SVC_F_LOCAL_DROP")
F_REVNAT_SHARED = const("REVNAT_F_SHARED")
ACTIVE, TERMINATING, UNUSED = const("BACKEND_ACTIVE"), const("BACKEND_TERMINATING"), const("BACKEND_UNUSED")
HAIRPIN_IP = be32_ip(int.from_bytes(const("HAIRPIN_IP").to_bytes(4, "big"), "little"))
SNAT_PORT_MIN, SNAT_PORT_COUNT = const("SNAT_PORT_MIN"), const("SNAT_PORT_COUNT")
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
ALG_NAMES = {v: k for k, v in ALGORITHMS.items()}

Address = tuple[str, int]


# A translated frame leaves by the stack, or straight to its egress device when the FIB
# finds a route and that device is a redirect target (bpf/fib.h): only the program knows.
# (A frame with DF larger than its route's MTU is answered "fragmentation needed" with
# XDP_TX instead, bpf/reject.h: a traced packet has no size.)
FORWARDED = "XDP_PASS|XDP_REDIRECT"

@dataclass(frozen=True)
class Packet:
    src: str
    sport: int
    dst: str
    dport: int
    protocol: str = "TCP"
    tcp_flags: int | None = None   # None: a SYN for a new flow, an ACK for a known one

    @property
    def proto(self) -> int:
        return PROTOCOLS[self.protocol]


@dataclass(frozen=True)
class ServiceEntry:
    """The services map entry the packet matched."""
    frontend: Frontend
    svc_id: int
    algorithm: str
    count: int                 # slots 1..count hold the backends new flows go to
    affinity_timeout: int      # seconds; 0: no ClientIP affinity
    table_size: int            # Maglev's M
    terminating_only: bool
    source_ranges: bool
    local_drop: bool


@dataclass(frozen=True)
class CtEntry:
    """The flow's forward conntrack entry, and how the datapath judges it now."""
    table: str                 # "conntrack" (confirmed) | "ct_unconfirmed" | "ct_unconfirmed_pod"
    backend: Address
    backend_id: int
    svc_id: int
    snat: Address | None
    closing: bool
    idle_s: float
    remaining_s: float
    state: str                 # flows.flow_state()
    verdict: str               # "kept" | "expired" | "reopened" | "stale"


@dataclass(frozen=True)
class StickyEntry:
    """The client's ClientIP affinity entry for this frontend."""
    backend_id: int
    backend: Address | None    # None: no such backend any more
    idle_s: float
    remaining_s: float
    verdict: str               # "hit" | "expired" | "other period" | "left the service"


@dataclass(frozen=True)
class Choice:
    by: str                    # "conntrack" | "affinity" | the algorithm
    backend: Address | None    # exact choice, when it is
    backend_id: int = 0
    slot: int | None = None
    candidates: tuple[Address, ...] = ()   # the possible backends when not exact
    detail: str = ""

    @property
    def exact(self) -> bool:
        return self.backend is not None


@dataclass(frozen=True)
class Rewrite:
    src: Address               # the packet's addresses after the program
    dst: Address | None        # None: one of the choice's candidates
    snat: str = ""             # what is decided at the way out (external new flows)


@dataclass
class Trace:
    packet: Packet
    entry: str                            # "pod" | "external" | "socket"
    frontend: ServiceEntry | None = None
    conntrack: CtEntry | None = None
    affinity: StickyEntry | None = None
    choice: Choice | None = None
    verdict: str = "XDP_PASS"             # predicted; "XDP_PASS|XDP_REDIRECT": decided by a route
                                          # (and whether its device is a redirect target, fib.h);
                                          # a socket's: SOCK_ALLOW, or the error the call fails with
    reason: str = "pass_non_service"      # the datapath counter it bumps ("" none)
    rewrite: Rewrite | None = None
    reply_of: Address | None = None       # a reply: the frontend it is turned back into
    tcp_flags: int = 0                    # the flags traced (TCP): given, or SYN / ACK
    notes: list[str] = field(default_factory=list)


# ---- map reads --------------------------------------------------------------------------
def _lookup(maps, name: str, **fields):
    table = maps.table(name)
    key = table.Key(**fields)
    try:
        return table[key]
    except KeyError:
        return None


def _service(maps, dst: str, dport: int, proto: int, scope: int):
    v = _lookup(maps, "services", vip=ip_be32(dst), port=port_be16(dport), proto=proto, scope=scope)
    if v is None:
        return None
    if (v.key_vip, v.key_port, v.key_proto, v.key_scope) != (ip_be32(dst), port_be16(dport), proto, scope):
        return None   # read while the writer replaced it: the datapath drops (slot_miss)
    return v


def _backend(maps, backend_id: int):
    table = maps.table("backends")
    if not 0 < backend_id < table.max_entries:
        return None
    b = table[table.Key(backend_id)]
    return None if b.state == UNUSED else b


def _addr(b) -> Address:
    return (be32_ip(b.ip), be16_port(b.port))


def _slot_id(maps, svc_id: int, slot: int) -> int:
    v = _lookup(maps, "slots", svc_id=svc_id, slot=slot)
    return int(getattr(v, "value", v)) if v is not None else 0


def _conns(maps, backend_id: int) -> int:
    table = maps.table("backend_conns")
    if not 0 <= backend_id < table.max_entries:
        return 0
    raw = int(getattr(table[table.Key(backend_id)], "value", 0))
    return raw - (1 << 32) if raw >= 1 << 31 else raw


def _rr_cursor(maps, svc_id: int) -> int | None:
    table = maps.table("rr_state")
    if not 0 <= svc_id < table.max_entries:
        return None
    return int(table[table.Key(svc_id)].next)


def _maglev_entry(maps, svc_id: int, index: int) -> int:
    """The Maglev table's backend id at `index`; 0 when the service has no table or the
    index lies beyond it (bpf/maglev.h maglev_lookup)."""
    outer = maps.fd("maglev")
    key = ffi.new("uint32_t *", svc_id)
    inner_id = ffi.new("uint32_t *")
    if lib().bpf_map_lookup_elem(outer, key, inner_id) != 0:
        return 0
    fd = map_fd_by_id(inner_id[0])
    try:
        key[0] = index
        value = ffi.new("uint32_t *")
        return value[0] if lib().bpf_map_lookup_elem(fd, key, value) == 0 else 0
    finally:
        os.close(fd)


def _single_host(ip: str) -> bool:
    """bpf/reject.h reject_answerable()'s source test: not 0/8, 127/8 or 224/3."""
    first = int(ip.split(".", 1)[0])
    return first not in (0, 127) and first < 224


def _in_ranges(maps, svc_id: int, client: str) -> bool:
    """bpf/ranges.h source_allowed(): a longest-prefix lookup of the client."""
    return _lookup(maps, "source_ranges", prefixlen=64, svc_id=svc_id, addr=ip_be32(client)) is not None


def _sock_node_ip(maps) -> str | None:
    """sock_config.client_ip: the node's address the hooks stand an unbound socket's
    source for (None: not told, or a dataplane without the hooks' settings)."""
    if not maps.has("sock_config"):
        return None
    table = maps.table("sock_config")
    ip = table[table.Key(0)].client_ip
    return be32_ip(ip) if ip else None


def _refused_by_ranges(maps, t: Trace) -> bool:
    """A new flow of a frontend with loadBalancerSourceRanges from a client outside them:
    the trace says it is dropped, before a backend is chosen (bpf/svcxdp.c
    handle_service), at either entry point."""
    fe = t.frontend
    if fe is None or not fe.source_ranges or _in_ranges(maps, fe.svc_id, t.packet.src):
        return False
    t.verdict, t.reason = "XDP_DROP", "drop_source_range"
    t.notes.append("the client is outside loadBalancerSourceRanges: dropped")
    return True


# The unconfirmed tables in bpf/conntrack.h ctu_lookup_any()'s order, and each entry
# point's own (ctu_lookup()).
ANY_UNCONFIRMED = ("ct_unconfirmed_pod", "ct_unconfirmed")
ENTRY_UNCONFIRMED = {"pod": "ct_unconfirmed_pod", "external": "ct_unconfirmed"}


def _unconfirmed(maps, tables: tuple[str, ...] = ANY_UNCONFIRMED,
                 **key) -> tuple[str, object] | tuple[None, None]:
    """The first of the unconfirmed `tables` holding the key, and its entry."""
    for table in tables:
        u = _lookup(maps, table, **key)
        if u is not None:
            return table, u
    return None, None


def _ct_lookup(maps, now_ns: int | None = None, timeouts: Timeouts | None = None,
               unconfirmed: tuple[str, ...] = ANY_UNCONFIRMED, **key) -> tuple[str, object] | tuple[None, None]:
    """conntrack, then the `unconfirmed` tables. With `now_ns` as bpf/conntrack.h
    ct_lookup(): a confirmed entry that is not current (expired or closed) yields to an
    unconfirmed one, a newer connection on the tuple (a bare SYN does not look in
    conntrack)."""
    c = _lookup(maps, "conntrack", **key)
    if c is not None and (now_ns is None or (_alive(c, key["proto"], now_ns, timeouts or Timeouts())
                                             and not closed(c.flags))):
        return "conntrack", c
    table, u = _unconfirmed(maps, unconfirmed, **key)
    if u is not None:
        return table, u
    return ("conntrack", c) if c is not None else (None, None)


# ---- the walk ---------------------------------------------------------------------------
def trace(maps, packet: Packet, entry: str | None = None, timeouts: Timeouts = Timeouts(),
          now_ns: int | None = None) -> Trace:
    """What the program at `entry` ("pod": svcxdp_main on pod interfaces, "external":
    svcxdp_external on the node's external interface; None: external when the
    destination is an external frontend, else pod) does with `packet` now. The maps
    cannot tell a pod's packet to a NodePort, or a remote backend's reply, by its
    destination: a caller that knows the source passes the entry (svcctl trace does,
    from the store's pods: controlplane.kubectl.trace.source_entry)."""
    now_ns = coarse_now_ns() if now_ns is None else now_ns
    proto = packet.proto
    if entry is None:
        entry = "external" if _service(maps, packet.dst, packet.dport, proto, SCOPE_EXTERNAL) else "pod"
    if entry not in ENTRIES:
        raise ValueError(f"entry {entry!r}: expected one of {', '.join(ENTRIES)}")
    t = Trace(packet, entry)
    if entry == "socket":
        _socket(maps, t, now_ns)
        return t
    svc = None
    if entry == "external":
        svc = _service(maps, packet.dst, packet.dport, proto, SCOPE_EXTERNAL)
    if svc is None:
        svc = _service(maps, packet.dst, packet.dport, proto, SCOPE_CLUSTER)
    if svc is None:
        if packet.protocol == "TCP":
            t.tcp_flags = TCP_ACK if packet.tcp_flags is None else packet.tcp_flags
        _reply(maps, t, now_ns, timeouts)
        return t
    t.frontend = _entry_of(svc, packet.dst, packet.dport, packet.protocol)
    _service_packet(maps, t, svc, now_ns, timeouts)
    return t


def _entry_of(svc, vip: str, port: int, protocol: str) -> ServiceEntry:
    return ServiceEntry(
        Frontend(vip, port, protocol, "external" if svc.key_scope == SCOPE_EXTERNAL else "cluster"),
        svc.svc_id, ALG_NAMES.get(svc.algorithm, str(svc.algorithm)), svc.count,
        svc.affinity_timeout if svc.flags & F_AFFINITY else 0, svc.table_size,
        bool(svc.flags & F_TERMINATING_ONLY), bool(svc.flags & F_SOURCE_RANGES), bool(svc.flags & F_LOCAL_DROP))


def _socket(maps, t: Trace, now_ns: int) -> None:
    """bpf/sock.h sock4_xlate() for a socket of the node (its network namespace; a pod's
    socket under the hooks is left to its packets where source ranges apply) whose
    source is the packet's: its bound address, or for an unbound one (SRC 0.0.0.0) the
    node's (sock_config)."""
    p = t.packet
    t.verdict, t.reason = "SOCK_ALLOW", ""
    node = _sock_node_ip(maps)
    # sock_client_ip(): a bound socket's own address, an unbound one's (SRC 0.0.0.0) the node's
    src = None if p.src == "0.0.0.0" else p.src
    client = src or node
    t.notes.append("assumed: a socket of the node's own network namespace, in a cgroup under the hooks; "
                   f"an unbound one stands for the node's address, {node or 'not told (no --node-ip): 0.0.0.0'}")
    if not maps.has("sock_connect4"):
        t.notes.append("no socket hooks are pinned beside these maps: an agent without --socket-lb-cgroup "
                       "translates no socket (this is what the hooks would do)")
    vip = p.dst
    svc = _service(maps, vip, p.dport, p.proto, SCOPE_CLUSTER)
    if svc is None and vip.startswith("127.") and node:
        vip = node
        svc = _service(maps, vip, p.dport, p.proto, SCOPE_CLUSTER)
        if svc is not None:
            t.notes.append(f"a NodePort on loopback is the one on the node's address {node}")
    if svc is None:
        t.notes.append("no service in the cluster scope: the call goes on to DST as named, untranslated")
        return
    fe = t.frontend = _entry_of(svc, vip, p.dport, p.protocol)
    if fe.source_ranges and client is None:
        t.notes.append("loadBalancerSourceRanges, and the source is not known (unbound, no node address): "
                       "not translated, its packets are judged where they meet a svcxdp program")
        return
    if fe.source_ranges and not (_in_ranges(maps, fe.svc_id, client) or
                                 (src == vip and node is not None and _in_ranges(maps, fe.svc_id, node))):
        t.verdict, t.reason = "EPERM", "drop_source_range"
        t.notes.append("the source is outside loadBalancerSourceRanges (and is not the LB IP itself with the "
                       "node's address inside): the call fails at once")
        return
    if svc.count == 0:
        t.verdict, t.reason = "ECONNREFUSED", "sock_reject"
        t.notes.append("no endpoints: the call fails at once, as kube-proxy's REJECT rule would")
        return
    # hashed over the address the hook looks up (a loopback NodePort's: the node's)
    if not _choose(maps, t, svc, Packet(client or "0.0.0.0", p.sport, vip, p.dport, p.protocol), now_ns):
        t.verdict, t.reason = "ECONNREFUSED", "sock_reject"
        t.notes.append(f"backend id {t.choice.backend_id} is not a backend of this service: the call fails")
        return
    t.reason = "sock_xlate"
    t.rewrite = Rewrite((p.src, p.sport), t.choice.backend)
    t.notes.append(f"the socket goes to the backend itself (no packet is translated, no conntrack entry); "
                   f"getpeername() and recvmsg() show {p.dst}:{p.dport}")


def _udp_absent(maps, key: dict, now_ns: int, timeouts: Timeouts) -> bool:
    """bpf/conntrack.h ct_udp_absent() for a UDP forward key. Pins of a build without the
    filter (an older agent) mean a program that always looks in conntrack: False."""
    try:
        table = maps.table(udprecent.MAP)
    except (FileNotFoundError, KeyError):
        return False
    return udprecent.absent(udprecent.read(table, key["src"], key["dst"], key["sport"], key["dport"]),
                            now_ns, timeouts.udp)


def _service_packet(maps, t: Trace, svc, now_ns: int, timeouts: Timeouts) -> None:
    """bpf/svcxdp.c handle_service()."""
    p, fe = t.packet, t.frontend
    key = dict(src=ip_be32(p.src), dst=ip_be32(p.dst), sport=port_be16(p.sport),
               dport=port_be16(p.dport), proto=p.proto, dir=DIR_FORWARD)
    own = ENTRY_UNCONFIRMED[t.entry]   # where this entry point's new flows wait
    where, v = _ct_lookup(maps, now_ns, timeouts, (own,), **key)
    flags = p.tcp_flags if p.tcp_flags is not None else (TCP_ACK if v is not None else TCP_SYN)
    if p.protocol != "TCP":
        flags = 0
    t.tcp_flags = flags
    bare_syn = p.protocol == "TCP" and flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    udp_absent = t.entry == "pod" and p.protocol == "UDP" and _udp_absent(maps, key, now_ns, timeouts)
    if t.entry == "pod" and (bare_syn or udp_absent):
        # A bare SYN starts a connection, and a UDP tuple whose ct_udp_recent slot is
        # SURE_AGE epochs old has no live entry: only the unconfirmed table is looked in.
        if where == "conntrack":
            t.notes.append("a bare SYN starts a connection: the confirmed entry of the tuple is not looked at"
                           if bare_syn else f"no UDP flow hashing to this tuple's ct_udp_recent slot was seen in "
                           f"conntrack for {udprecent.SURE_AGE} epochs of at least the UDP timeout: its "
                           "confirmed entry (expired) is not looked at")
        v = _lookup(maps, own, **key)
        where = own if v is not None else None
    if v is not None:
        idle = (now_ns - v.last_seen) / NSEC
        remaining = timeouts.of(p.proto, v.flags) - idle
        b = _backend(maps, v.backend_id)
        live = b is not None and (b.svc_id, b.ip, b.port) == (v.svc_id, v.nat_ip, v.nat_port)
        reopened = closed(v.flags) and flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        verdict = ("expired" if remaining < 0 else "reopened" if reopened else
                   "kept" if live else "stale")
        t.conntrack = CtEntry(where, (be32_ip(v.nat_ip), be16_port(v.nat_port)), v.backend_id, v.svc_id,
                              (be32_ip(v.peer_ip), be16_port(v.peer_port)) if v.flags & F_SNAT else None,
                              bool(v.flags & F_CLOSING), idle, remaining,
                              flow_state(where, v.flags, remaining, live), verdict)
        if verdict == "kept":
            t.choice = Choice("conntrack", t.conntrack.backend, v.backend_id,
                              detail=f"the flow's {'confirmed' if where == 'conntrack' else 'unconfirmed'} entry")
            t.reason = "ct_hit"
            if where == own and (p.protocol != "TCP" or flags & (TCP_SYN | TCP_ACK) == TCP_ACK):
                t.notes.append("this packet confirms the flow (moved to the conntrack table)")
            _rewrite(maps, t, t.conntrack.backend, t.conntrack.snat, new=False)
            return
        if verdict == "stale":
            t.notes.append("the flow's backend left the service: a backend is chosen again (ct_stale)")
    if p.protocol == "TCP" and flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) not in (TCP_SYN, TCP_ACK):
        # bpf/conntrack.h ct_may_start()
        t.verdict, t.reason = "XDP_DROP", "drop_malformed"
        t.notes.append("TCP flags no connection starts with (netfilter's INVALID), and no flow to "
                       "follow: dropped")
        return
    if _refused_by_ranges(maps, t):
        return
    if svc.count == 0:
        if fe.local_drop:
            t.verdict, t.reason = "XDP_DROP", "drop_no_local"
            t.notes.append("Local traffic policy and no endpoint on this node: dropped")
        elif not _single_host(p.src):
            # bpf/reject.h reject_answerable() (the frame's MAC is the run's to judge)
            t.verdict, t.reason = "XDP_DROP", "drop_malformed"
            t.notes.append("no endpoints, and a source no reject may answer (RFC 1122): dropped")
        else:
            t.reason = "reject"
            t.verdict = "XDP_TX|XDP_DROP"   # (which one, the CPU's budget decides: not in the maps)
            t.notes.append("no endpoints: answered with " +
                           ("a TCP RST" if p.protocol == "TCP" else "ICMP port unreachable") +
                           " within its CPU's reject budget (--reject-rate, --reject-burst); over it, "
                           "dropped unanswered (reject_limited)")
        return
    if not _choose(maps, t, svc, p, now_ns):
        t.verdict, t.reason = "XDP_DROP", "slot_miss"
        t.notes.append(f"backend id {t.choice.backend_id} is not a backend of this service: dropped")
        return
    t.reason = "ct_new"
    t.notes.append(f"a new flow: recorded in {own} until its second packet")
    _rewrite(maps, t, t.choice.backend, None, new=True)


def _choose(maps, t: Trace, svc, p: Packet, now_ns: int) -> bool:
    """bpf/lb.h lb_pick() for a new flow of `p`: the client's live affinity entry, else
    the algorithm's choice (t.choice); False when the chosen id is no backend of the
    service (a slot or table entry read while the writer replaced it)."""
    fe = t.frontend
    backend_id = _affinity(maps, t, svc, now_ns, p.src) if fe.affinity_timeout else 0
    if backend_id:   # (a hit: the entry's backend is a live one of the service)
        t.choice = Choice("affinity", t.affinity.backend, backend_id, detail="the client's affinity entry")
        return True
    t.choice = _select(maps, svc, fe, p)
    if not t.choice.exact:
        return True
    b = _backend(maps, t.choice.backend_id)
    if b is None or b.svc_id != svc.svc_id:
        return False
    if fe.affinity_timeout:
        t.notes.append("the choice becomes the client's affinity entry")
    return True


def _affinity(maps, t: Trace, svc, now_ns: int, client: str) -> int:
    """bpf/affinity.h affinity_get() for `client`: the backend id to use, 0 for none."""
    v = _lookup(maps, "affinity", svc_id=svc.svc_id, client=ip_be32(client))
    if v is None:
        t.notes.append("no affinity entry for this client")
        return 0
    idle = (now_ns - v.last_used) / NSEC
    remaining = svc.affinity_timeout - idle
    b = _backend(maps, v.backend_id)
    member = (b is not None and b.svc_id == svc.svc_id and b.weight > 0 and
              (b.state == ACTIVE or (b.state == TERMINATING and bool(svc.flags & F_TERMINATING_ONLY))))
    if v.gen != svc.affinity_gen:
        verdict = "other period"
    elif remaining < 0:
        verdict = "expired"
    elif not member:
        verdict = "left the service"
    else:
        verdict = "hit"
    t.affinity = StickyEntry(v.backend_id, _addr(b) if b is not None else None, idle, remaining, verdict)
    return v.backend_id if verdict == "hit" else 0


def _select(maps, svc, fe: ServiceEntry, p: Packet) -> Choice:
    """bpf/select.h select_backend(), from the maps' slots, cursors and counts."""
    alg, count = fe.algorithm, fe.count
    affinity = fe.affinity_timeout > 0

    def at(slot: int, how: str) -> Choice:
        bid = _slot_id(maps, svc.svc_id, slot)
        b = _backend(maps, bid)
        return Choice(alg, _addr(b) if b is not None else None, bid, slot, detail=how)

    if alg == "maglev":
        h = predict.flow_key_hash("maglev", affinity, p.src, p.sport, p.dst, p.dport, p.proto)
        if fe.table_size:
            idx = predict.maglev_slot(h, fe.table_size)
            bid = _maglev_entry(maps, svc.svc_id, idx)
            if bid:
                b = _backend(maps, bid)
                return Choice(alg, _addr(b) if b is not None else None, bid,
                              detail=f"Maglev table entry {idx} of {fe.table_size}")
        slot = predict.scale_to(h, count) + 1
        return at(slot, f"no Maglev table: hashed onto slot {slot} of {count} (maglev_fallback)")
    if alg in ("sh", "dh"):
        slot = predict.hashed_slot(alg, affinity, count, p.src, p.sport, p.dst, p.dport, p.proto)
        return at(slot, f"{'source' if alg == 'sh' else 'destination'} hash onto slot {slot} of {count}")
    if alg in predict.ROUND_ROBIN:
        cursor = _rr_cursor(maps, svc.svc_id)
        if cursor is None:
            return Choice(alg, None, detail="no round-robin cursor")
        slot = predict.rr_slot(cursor, count)
        return at(slot, f"round-robin cursor {cursor}: slot {slot} of {count} "
                        "(if no other new flow comes first)")
    if alg in predict.COUNTED:
        cands = []
        for slot in range(1, count + 1):
            bid = _slot_id(maps, svc.svc_id, slot)
            b = _backend(maps, bid)
            cands.append(predict.Candidate(slot, bid, _conns(maps, bid), b.weight if b is not None else 0)
                         if b is not None else None)
        scan = predict.LC_MAX_SCAN
        if count <= scan:
            best = predict.lc_pick(alg, [c for c in cands if c is not None])
            if best is None:
                return Choice(alg, None, detail="no slot resolves")
            counts = ", ".join(f"{c.conns}" for c in cands if c is not None)
            return Choice(alg, _addr(_backend(maps, best.backend_id)), best.backend_id, best.slot,
                          detail=f"lowest cost over connection counts [{counts}]: slot {best.slot}")
        winners = {predict.lc_pick(alg, [c for c in cands[s:s + scan] if c is not None])
                   for s in range(count - scan + 1)}
        addrs = tuple(sorted({_addr(_backend(maps, w.backend_id)) for w in winners if w is not None}))
        return Choice(alg, None, candidates=addrs,
                      detail=f"{count} slots: the lowest cost within a random window of {scan}")
    addrs = []
    for slot in range(1, count + 1):
        b = _backend(maps, _slot_id(maps, svc.svc_id, slot))
        if b is not None:
            addrs.append(_addr(b))
    if count == 1:
        return at(1, "random over one slot")
    return Choice(alg, None, candidates=tuple(sorted(set(addrs))),
                  detail=f"uniformly random over {count} slots")


def _rewrite(maps, t: Trace, backend: Address | None, snat: Address | None, new: bool) -> None:
    p = t.packet
    src = (p.src, p.sport)
    if backend is not None and backend[0] == p.src and snat is None:
        src = (HAIRPIN_IP, p.sport)
        t.notes.append(f"hairpin: the client is its own backend, its source becomes {HAIRPIN_IP}")
    if snat is not None:
        src = snat
    dst = backend
    t.rewrite = Rewrite(src, dst)
    if t.entry == "external":
        # (a source-NATed frame goes to the stack instead when its TTL is 1 or it is
        # VLAN-tagged; one leaving the way it came, or carrying the route's own source,
        # goes to the tc ingress program when the FIB has no neighbour entry for the next
        # hop, passed with a note: bpf/nodeport.h np_forward, bpf/handoff.h)
        t.verdict = "XDP_TX|XDP_PASS" if snat is not None else FORWARDED
        if new:
            t.verdict = "XDP_PASS|XDP_TX|XDP_REDIRECT"
            first = SNAT_PORT_MIN + (p.sport & (SNAT_PORT_COUNT - 1))
            t.rewrite = Rewrite(src, dst, snat=(
                "if the route to the backend leaves by the interface the packet came in on "
                f"(another node): source NAT to that route's node address, port {first} if free "
                f"(else a random one of {SNAT_PORT_MIN}-{SNAT_PORT_MIN + SNAT_PORT_COUNT - 1}; "
                "a port of an unconfirmed flow may be taken, never a confirmed one's), "
                "and XDP_TX"))
    else:
        t.verdict = FORWARDED


def _alive(v, proto: int, now_ns: int, timeouts: Timeouts) -> bool:
    return (now_ns - v.last_seen) / NSEC <= timeouts.of(proto, v.flags)


def _snat_flow_alive(maps, p: Packet, v, now_ns: int, timeouts: Timeouts) -> bool:
    """A one-way flow's SNAT entry is refreshed by nothing: its forward entry, still
    leaving by this port, says whether it lives (nodeport.h np_holder)."""
    _, f = _ct_lookup(maps, src=v.peer_ip, dst=v.nat_ip, sport=v.peer_port, dport=v.nat_port, proto=p.proto,
                      dir=DIR_FORWARD)
    return (f is not None and bool(f.flags & F_SNAT) and _alive(f, p.proto, now_ns, timeouts) and
            (f.peer_ip, f.peer_port, f.nat_ip, f.nat_port) ==
            (ip_be32(p.dst), port_be16(p.dport), ip_be32(p.src), port_be16(p.sport)))


def _reply(maps, t: Trace, now_ns: int, timeouts: Timeouts) -> None:
    """A packet to no frontend: a backend's reply to a tracked flow, or none of ours."""
    p = t.packet
    rn = _lookup(maps, "rev_nat", ip=ip_be32(p.src), port=port_be16(p.sport), proto=p.proto)
    if rn is None:
        t.notes.append("no frontend and not from any service's backend: passed untouched" +
                       (" (before the reply tail: the node's own traffic, or a backend its service has left)"
                        if t.entry == "external" else ""))
        return
    if t.entry == "external" and p.dport >= SNAT_PORT_MIN:
        # confirmed flows' entries in conntrack, unconfirmed ones' in ct_unconfirmed (external)
        _, v = _ct_lookup(maps, src=ip_be32(p.src), dst=ip_be32(p.dst), sport=port_be16(p.sport),
                          dport=port_be16(p.dport), proto=p.proto, dir=DIR_SNAT)
        if v is not None and (_alive(v, p.proto, now_ns, timeouts) or _snat_flow_alive(maps, p, v, now_ns, timeouts)):
            vip = (be32_ip(v.nat_ip), be16_port(v.nat_port))
            t.reply_of, t.reason, t.verdict = vip, "snat_reply", "XDP_PASS|XDP_TX|XDP_REDIRECT"
            t.rewrite = Rewrite(vip, (be32_ip(v.peer_ip), be16_port(v.peer_port)))
            t.notes.append("a reply to a source-NATed flow: both translations reversed")
            return
    hairpin = p.dst == HAIRPIN_IP
    client = p.src if hairpin else p.dst
    vip = None
    entry = None
    via_reply_entry = False
    if rn.flags & F_REVNAT_SHARED:
        _, entry = _ct_lookup(maps, now_ns, timeouts, src=ip_be32(p.src), dst=ip_be32(client),
                              sport=port_be16(p.sport), dport=port_be16(p.dport), proto=p.proto, dir=DIR_REPLY)
        if entry is not None:
            vip = (be32_ip(entry.nat_ip), be16_port(entry.nat_port))
            via_reply_entry = True
    if vip is None:
        key = dict(src=ip_be32(client), dst=rn.vip, sport=port_be16(p.dport), dport=rn.vport, proto=p.proto,
                   dir=DIR_FORWARD)
        _, entry = _ct_lookup(maps, now_ns, timeouts, **key)
        if entry is not None and (entry.nat_ip, entry.nat_port) != (ip_be32(p.src), port_be16(p.sport)):
            # another backend's flow: a newer connection on the tuple may be this one's
            _, entry = _unconfirmed(maps, **key)
        if entry is None or (entry.nat_ip, entry.nat_port) != (ip_be32(p.src), port_be16(p.sport)):
            t.notes.append(f"a backend's address, but no flow of {client}:{p.dport} through it: "
                           "passed untouched")
            return
        vip = (be32_ip(rn.vip), be16_port(rn.vport))
    if not _alive(entry, p.proto, now_ns, timeouts):
        if not (via_reply_entry and _reply_kept(maps, p, client, entry, now_ns, timeouts)):
            t.notes.append("the flow it answers has expired: passed untouched")
            return
        t.notes.append("its reply entry is past its timeout (the backend closed its side), but the flow's "
                       "forward entry lives: it still serves (ct_reply_kept)")
    t.reply_of, t.reason, t.verdict = vip, "revnat", FORWARDED
    t.rewrite = Rewrite(vip, (client, p.dport))
    t.notes.append(f"a backend's reply: its source becomes the frontend {vip[0]}:{vip[1]}")


def _reply_kept(maps, p: Packet, client: str, entry, now_ns: int, timeouts: Timeouts) -> bool:
    """bpf/conntrack.h ct_reply_kept(): the forward entry of a reply entry past its
    timeout still points at this backend and lives."""
    _, fwd = _ct_lookup(maps, now_ns, timeouts, src=ip_be32(client), dst=entry.nat_ip, sport=port_be16(p.dport),
                        dport=entry.nat_port, proto=p.proto, dir=DIR_FORWARD)
    return (fwd is not None and (fwd.nat_ip, fwd.nat_port) == (ip_be32(p.src), port_be16(p.sport))
            and _alive(fwd, p.proto, now_ns, timeouts))


# ---- the packet itself, through the program ------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    """What BPF_PROG_TEST_RUN of the pinned program did with the traced packet."""
    verdict: str
    src: Address | None        # the frame's addresses after the program (None: not IPv4)
    dst: Address | None
    protocol: int
    tcp_flags: int | None
    icmp_type: int | None
    duration_ns: int


def _own_mac(maps, ifindex: int) -> bytes | None:
    """The MAC address the external entry point knows for `ifindex` (ext_macs), or None
    (not known, or a dataplane built before the map)."""
    from .libbpf import u64_lookup
    if not ifindex or not maps.has("ext_macs"):
        return None
    value = u64_lookup(maps.raw_table("ext_macs").map_fd, ifindex)
    return frames.mac_of_key(value) if value else None


def run(maps, t: Trace, ingress_ifindex: int = 0) -> RunResult:
    """Send the traced packet through the program of `t.entry`, opened by its pin (the
    agent pins both entry points next to the maps). Like the packet itself would, it
    changes the dataplane's state: a new flow is recorded, a round-robin cursor moves,
    counters count, a frame handed to tc is noted (bpf/handoff.h; the note goes
    unused). `ingress_ifindex`: the device it arrives on, in the calling thread's
    network namespace (the external path looks up routes there)."""
    from .config import PROGRAM_PINS
    from .testrun import TestRunner
    if t.entry not in PROGRAM_PINS:
        raise ValueError(f"the {t.entry} entry is no packet's: a cgroup hook cannot be test-run")
    name = PROGRAM_PINS[t.entry]
    if not maps.has(name):
        raise FileNotFoundError(f"no program pinned at {maps.pin_dir / name}")
    p = t.packet
    # addressed to the device's own MAC address where the agent told the program it
    # (bpf/otherhost.h: a frame for another's goes to the stack untouched)
    own = _own_mac(maps, ingress_ifindex) if t.entry == "external" else None
    frame = frames.build(p.src, p.sport, p.dst, p.dport, p.proto, t.tcp_flags, dst_mac=own or frames.NODE_MAC)
    res = TestRunner(maps.fd(name)).run(frame, 1, ingress_ifindex)
    out = frames.parse(res.data)
    if out is None:
        return RunResult(res.verdict_name, None, None, 0, None, None, res.duration_ns)
    return RunResult(res.verdict_name, (out.src, out.sport), (out.dst, out.dport), out.proto,
                     out.tcp_flags, out.icmp_type, res.duration_ns)
