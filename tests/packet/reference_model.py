"""A small, readable reference model of the XDP datapath (bpf/svcxdp.c), in Python.

It holds the same state the maps hold — services, slots, backends, conntrack,
fragments, round-robin cursors, counters — in dicts, and `process(frame)` says what
the datapath must do with one frame. It is written from the datapath's *semantics*
(see the module docstring of each step below), not translated from the C, so that
the differential test (test_differential.py) can catch the two disagreeing.

Random backend choice cannot be predicted, so `process` returns every acceptable
outcome (one per slot backend for a new flow of a random service, exactly one
otherwise). Each outcome carries the verdict, the output bytes and a `commit()`
that applies its state changes; the caller commits the one the program chose.

Conventions:
- addresses are dotted strings, ports ints, protocol numbers ints;
- flows never time out here (an example runs in well under the 10 s TCP close
  timeout), and the LRU maps never evict (they are far larger than an example);
- a flow's first packet records it as unconfirmed; its second forward packet (TCP:
  ACK without SYN) confirms it. The two are separate tables in the datapath, so a
  key can be in both; lookups see the confirmed one first while it is current (not
  closed — a FIN from each side, or a RST; nothing expires here), else an unconfirmed one if there is one. A bare
  TCP SYN starts a connection and looks only among the unconfirmed; confirming
  replaces a confirmed entry that is not current, never a current one;
- a first fragment's record expires FRAG_TIMEOUT_S after it was made, read on the
  datapath's clock (CLOCK_MONOTONIC_COARSE, bpf_ktime_get_coarse_ns());
- checksums are updated incrementally, per rewritten field, with RFC 1624 eqn. 3
  (HC' = ~(~HC + ~m + m')), so a packet whose checksum was right stays right and one
  whose checksum was wrong stays exactly as wrong. UDP: a zero checksum means "none"
  and stays zero; an update that yields zero is sent as 0xffff (RFC 768).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

from controlplane.dataplane.affinity_maps import coarse_now_ns as datapath_clock_ns
from controlplane.dataplane.flowsets import WAYS as SET_WAYS, set_of, slot_for_new
from controlplane.dataplane.layout import const
from controlplane.dataplane.model import ip_to_be32, port_to_be16

TCP, UDP, ICMP = 6, 17, 1
FWD, REPLY = 0, 1
FIN_CLIENT, FIN_BACKEND = 1, 2   # Flow.fins

ETH_IP = 0x0800
VLAN_TPIDS = (0x8100, 0x88A8)
IP_MF, IP_OFFSET = 0x2000, 0x1FFF
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
ICMP_ERRORS = (3, 4, 11, 12)  # dest unreachable, source quench, time exceeded, parameter problem
FRAG_TIMEOUT_NS = const("FRAG_TIMEOUT_S") * 10**9
HAIRPIN = socket.inet_ntoa(const("HAIRPIN_IP").to_bytes(4, "big"))


COUNTERS = ("pass_non_ip", "pass_non_service", "revnat", "ct_new", "ct_hit", "ct_stale",
            "reject", "drop_malformed", "frag_nat", "frag_unknown", "icmp_nat", "slot_miss", "hairpin")


# ---- checksums ------------------------------------------------------------------------
def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_update(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3 for a field of len(old) == len(new) bytes (16-bit aligned)."""
    s = (~check) & 0xFFFF
    for i in range(0, len(old), 2):
        s += (~int.from_bytes(old[i:i + 2], "big")) & 0xFFFF
        s += int.from_bytes(new[i:i + 2], "big")
    return (~_fold(s)) & 0xFFFF


def udp_csum_update(check: int, old: bytes, new: bytes) -> int:
    if check == 0:
        return 0
    return csum_update(check, old, new) or 0xFFFF


def csum(data: bytes) -> int:
    """Internet checksum of `data` (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    return (~_fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))) & 0xFFFF


def ip4(b: bytes) -> str:
    return socket.inet_ntoa(bytes(b))  # as ipaddress.IPv4Address would print it, ~5x faster


def ip4b(s: str) -> bytes:
    return socket.inet_aton(s)


# ---- state ----------------------------------------------------------------------------
@dataclass
class Service:
    svc_id: int
    algorithm: str            # "random" | "rr"
    slots: list[int]          # backend ids of slots 1..count


@dataclass
class BackendEntry:
    ip: str
    port: int
    state: str                # "active" | "terminating"; absent from the dict = unused
    svc_id: int


@dataclass
class Flow:
    """A conntrack value: forward entries hold the backend, reply entries the VIP."""
    nat_ip: str
    nat_port: int
    backend_id: int
    svc_id: int
    closing: bool = False   # a FIN or RST seen
    # which sides of a forward entry's connection sent a FIN (FIN_CLIENT | FIN_BACKEND; a
    # RST: both); a reply entry sees one side and keeps none (bpf/svcxdp.h)
    fins: int = 0

    @property
    def closed(self) -> bool:
        """Closed, not half-closed (one side's FIN only): the tuple may be reused."""
        return self.closing and self.fins not in (FIN_CLIENT, FIN_BACKEND)


CtKey = tuple  # (src, dst, sport, dport, proto, dir)


class FlowSetsModel(dict):
    """The pods' unconfirmed table as the datapath keeps it: a dict of entries that also
    knows which slot of which set each key holds (bpf/conntrack.h, ctp_put), so that a
    new key evicts what the datapath evicts (flowsets.slot_for_new, the rule written
    for user space). Until bind() gives it the map's geometry it never evicts."""

    def __init__(self) -> None:
        super().__init__()
        self.seed = self.n_sets = 0
        self.slots: dict[int, list] = {}
        self.next: dict[int, int] = {}

    def bind(self, seed: int, n_sets: int) -> None:
        self.seed, self.n_sets = seed, n_sets

    def _set(self, key: CtKey) -> int:
        src, dst, sport, dport, proto, direction = key   # (fields as the ct_key holds them)
        return set_of(ip_to_be32(src), ip_to_be32(dst), port_to_be16(sport), port_to_be16(dport),
                      proto, direction, self.seed, self.n_sets)

    def __setitem__(self, key: CtKey, flow) -> None:
        if self.n_sets and key not in self:
            i = self._set(key)
            slots = self.slots.setdefault(i, [None] * SET_WAYS)
            w = slot_for_new(self.next.get(i, 0))
            self.next[i] = w + 1
            if slots[w] is not None:
                super().__delitem__(slots[w])
            slots[w] = key
        super().__setitem__(key, flow)

    def __delitem__(self, key: CtKey) -> None:
        super().__delitem__(key)
        if self.n_sets:
            slots = self.slots[self._set(key)]
            slots[slots.index(key)] = None

    def pop(self, key: CtKey, *default):
        if key in self:
            flow = self[key]
            del self[key]
            return flow
        if default:
            return default[0]
        raise KeyError(key)
FragKey = tuple  # (src, dst, ip id, proto)


@dataclass
class Outcome:
    verdict: str                  # "XDP_PASS" | "XDP_DROP" | "XDP_TX"
    out: bytes                    # frame after the program (meaningless for XDP_DROP)
    what: str                     # a readable note of the path taken
    extra: tuple = ()             # secondary counters (ct_stale)
    commit: Callable[[], None] = field(default=lambda: None, repr=False)


class ReferenceDatapath:
    def __init__(self) -> None:
        self.services: dict[tuple[str, int, int], Service] = {}
        self.backends: dict[int, BackendEntry] = {}
        self.rr_next: dict[int, int] = {}
        self.conntrack: dict[CtKey, Flow] = {}      # confirmed flows
        self.unconfirmed = FlowSetsModel()          # flows that sent one packet so far
        # (new address, the other new address or None, direction, when the first
        # fragment was seen)
        self.fragments: dict[FragKey, tuple[str, str | None, int, int]] = {}
        # backend (ip, port, proto) -> (VIP, port it answers for, shared by several frontends)
        self.rev_nat: dict[tuple[str, int, int], tuple[str, int, bool]] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.svc_stats: dict[int, dict[str, int]] = {}

    # ---- map state, as the map writer leaves it -----------------------------------------
    def load(self, writer) -> None:
        """Mirror what MapWriter has installed: services by (VIP, port, proto), their
        slots in `ServiceState.slot_backends()` order, every backend of every service
        (terminating ones included) under the writer's ids. A new service id starts
        with a round-robin cursor of 0 and zeroed stats."""
        protos = {"TCP": TCP, "UDP": UDP}
        services, backends = {}, {}
        for fe, state in writer.installed().items():
            svc_id = writer.svc_id(fe)
            slots = [writer.backend_id(fe, b.ip, b.port) for b in state.slot_backends()]
            services[(fe.vip, fe.port, protos[fe.protocol])] = Service(svc_id, state.algorithm, slots)
            for b in state.backends:
                backends[writer.backend_id(fe, b.ip, b.port)] = BackendEntry(b.ip, b.port, b.state, svc_id)
        old_ids = {s.svc_id for s in self.services.values()}
        for s in services.values():
            if s.svc_id not in old_ids:
                self.rr_next[s.svc_id] = 0
                self.svc_stats[s.svc_id] = dict(packets=0, bytes=0, new_flows=0, rejects=0)
        self.services, self.backends = services, backends
        self.rev_nat = {(ip, port, protos[proto]): (users[0].vip, users[0].port, len(users) > 1)
                        for (ip, port, proto), users in writer.revnat.users.items()}
        table = writer.dp.table("ct_unconfirmed_pod")
        self.unconfirmed.bind(table.seed, table.n_sets)

    def forward_flows(self) -> list[tuple[CtKey, Flow]]:
        both = {**self.unconfirmed, **self.conntrack}
        return [(k, v) for k, v in both.items() if k[5] == FWD]

    def _ct(self, key: CtKey) -> tuple[Flow | None, dict[CtKey, Flow] | None]:
        """A flow's entry and the table holding it: the confirmed one while it is
        current (not closed), else an unconfirmed one (a newer connection on the
        tuple), else the confirmed one."""
        flow = self.conntrack.get(key)
        if flow is not None and not flow.closed:
            return flow, self.conntrack
        if key in self.unconfirmed:
            return self.unconfirmed[key], self.unconfirmed
        return (flow, self.conntrack) if flow is not None else (None, None)

    def _confirm(self, key: CtKey, flow: Flow) -> None:
        """The second forward packet moves a flow and its reply entry to the confirmed
        table, replacing an entry there that is not current (the tuple's older
        connection), never a current one."""
        def put(k: CtKey, f: Flow) -> None:
            old = self.conntrack.get(k)
            if old is None or old.closed:
                self.conntrack[k] = f
        put(key, flow)
        rk = (flow.nat_ip, key[0], flow.nat_port, key[2], key[4], REPLY)
        reply = self.unconfirmed.pop(rk, None)
        if reply is not None:
            put(rk, reply)
        self.unconfirmed.pop(key, None)

    # ---- the packet path ----------------------------------------------------------------
    def process(self, frame: bytes) -> list[Outcome]:
        """Every acceptable outcome for `frame` (more than one only for a random pick)."""
        pkt = bytearray(frame)
        n = len(pkt)

        def done(verdict: str, what: str, counter: str, extra: str | None = None,
                 data: bytes | None = None, effect: Callable[[], None] | None = None) -> Outcome:
            def commit() -> None:
                if effect:
                    effect()
                self.counters[counter] += 1
                if extra:
                    self.counters[extra] += 1
            return Outcome(verdict, bytes(pkt if data is None else data), what,
                           (extra,) if extra else (), commit)

        # Ethernet, at most one 802.1Q / 802.1ad tag.
        if n < 14:
            return [done("XDP_DROP", "short ethernet", "drop_malformed")]
        ethertype = int.from_bytes(pkt[12:14], "big")
        l3 = 14
        if ethertype in VLAN_TPIDS:
            if n < 18:
                return [done("XDP_DROP", "short vlan tag", "drop_malformed")]
            ethertype = int.from_bytes(pkt[16:18], "big")
            l3 = 18
        if ethertype != ETH_IP:
            return [done("XDP_PASS", "not IPv4", "pass_non_ip")]

        # IPv4: version 4, IHL >= 5, header and total length inside the frame.
        if n < l3 + 20:
            return [done("XDP_DROP", "short IPv4 header", "drop_malformed")]
        version, ihl = pkt[l3] >> 4, pkt[l3] & 0xF
        hlen = ihl * 4
        tot = int.from_bytes(pkt[l3 + 2:l3 + 4], "big")
        if version != 4 or ihl < 5 or l3 + hlen > n or tot < hlen or l3 + tot > n:
            return [done("XDP_DROP", "bad IPv4 header", "drop_malformed")]
        ip = IPv4View(pkt, l3)
        l4 = l3 + hlen
        datagram_end = l3 + tot

        if ip.frag_off & IP_OFFSET:
            return [self._later_fragment(ip, done)]
        if ip.proto == ICMP:
            # The ICMP message ends where the datagram does; what follows is padding.
            return [self._icmp(ip, l4, datagram_end, done)]
        l4_len = tot - hlen
        if ip.proto == TCP:
            if l4 + 20 > n or l4_len < 20 or (pkt[l4 + 12] >> 4) < 5:
                return [done("XDP_DROP", "bad TCP header", "drop_malformed")]
            if (pkt[l4 + 12] >> 4) * 4 > l4_len:
                return [done("XDP_DROP", "TCP header longer than the segment", "drop_malformed")]
            tcp_flags = pkt[l4 + 13]
        elif ip.proto == UDP:
            if l4 + 8 > n or l4_len < 8:
                return [done("XDP_DROP", "bad UDP header", "drop_malformed")]
            ulen = int.from_bytes(pkt[l4 + 4:l4 + 6], "big")
            whole = not ip.frag_off & IP_MF  # a first fragment's length covers them all
            if (ulen < 8 or (whole and ulen > l4_len)):
                return [done("XDP_DROP", "bad UDP length", "drop_malformed")]
            tcp_flags = 0
        else:
            return [done("XDP_PASS", "other protocol", "pass_non_service")]
        sport, dport = struct.unpack_from("!HH", pkt, l4)
        frame_bytes = datagram_end  # L2 header + IP datagram, padding not counted

        svc = self.services.get((ip.dst, dport, ip.proto))
        if svc is None:
            return [self._reply(ip, l4, sport, dport, tcp_flags, frame_bytes, done)]
        return self._service(pkt, ip, l3, l4, sport, dport, tcp_flags, svc, frame_bytes, done)

    def _match_reply(self, backend, bport, client, cport, proto):
        """The flow a packet backend:bport -> client:cport answers, and the VIP:port
        it comes from: by the address's rev_nat entry and the flow's forward entry,
        or, for an address several frontends share, by its own reply entry."""
        rn = self.rev_nat.get((backend, bport, proto))
        if rn is None:
            return None
        vip, vport, shared = rn
        if shared:
            flow, _ = self._ct((backend, client, bport, cport, proto, REPLY))
            if flow is not None:
                return flow, flow.nat_ip, flow.nat_port, True
        key = (client, vip, cport, vport, proto, FWD)
        flow, _ = self._ct(key)
        if flow is not None and (flow.nat_ip, flow.nat_port) != (backend, bport):
            # Another backend's flow: a newer connection on the tuple may be this one's.
            flow = self.unconfirmed.get(key)
        if flow is None or (flow.nat_ip, flow.nat_port) != (backend, bport):
            return None
        return flow, vip, vport, False

    # A backend's answer to a tracked flow: source becomes VIP:port again.
    def _reply(self, ip, l4, sport, dport, tcp_flags, frame_bytes, done) -> Outcome:
        # A reply to the hairpin address answers a pod that reached itself.
        hairpin = ip.dst == HAIRPIN
        client = ip.src if hairpin else ip.dst
        match = self._match_reply(ip.src, sport, client, dport, ip.proto)
        if match is None:
            return done("XDP_PASS", "no service, no flow", "pass_non_service")
        flow, vip, vport, via_reply_entry = match
        orig_src = ip.src
        ip.set_src(vip, l4)
        if sport != vport:
            ip.set_port(l4, 0, vport)
        if hairpin:
            ip.set_dst(client, l4)

        def effect() -> None:
            self._touch(flow, tcp_flags, 0 if via_reply_entry else FIN_BACKEND)
            if via_reply_entry and tcp_flags & (TCP_FIN | TCP_RST):
                # the backend closes its side: the flow's forward entry learns it, while
                # it is still this backend's (ct_close_from_reply)
                fwd, _ = self._ct((client, vip, dport, vport, ip.proto, FWD))
                if fwd is not None and (fwd.nat_ip, fwd.nat_port) == (orig_src, sport):
                    self._touch(fwd, tcp_flags, FIN_BACKEND)
            self._frag_record(ip, orig_src, HAIRPIN if hairpin else client, vip, REPLY,
                              client if hairpin else None)
            self._account(flow.svc_id, frame_bytes)
        return done("XDP_PASS", "reverse NAT", "revnat", effect=effect)

    def _backend_valid(self, flow: Flow) -> bool:
        b = self.backends.get(flow.backend_id)
        return (b is not None and b.svc_id == flow.svc_id and b.ip == flow.nat_ip
                and b.port == flow.nat_port)

    def _service(self, pkt, ip, l3, l4, sport, dport, tcp_flags, svc, frame_bytes, done):
        key = (ip.src, ip.dst, sport, dport, ip.proto, FWD)
        if ip.proto == TCP and tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
            # A bare SYN starts a connection: only the unconfirmed are looked at.
            flow = self.unconfirmed.get(key)
            table = self.unconfirmed if flow is not None else None
        else:
            flow, table = self._ct(key)
        stale = None
        # A bare SYN on a closed flow is a new connection reusing the tuple (not on a
        # half-closed one).
        reopened = (flow is not None and flow.closed
                    and tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
        if flow is not None and not reopened:
            if self._backend_valid(flow):
                def hit() -> None:
                    self._touch(flow, tcp_flags, FIN_CLIENT)
                    if table is self.unconfirmed and (
                            ip.proto != TCP or tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK):
                        self._confirm(key, flow)
                    self._account(svc.svc_id, frame_bytes)
                return [self._dnat(pkt, ip, l4, dport, flow.nat_ip, flow.nat_port, "established",
                                   "ct_hit", None, hit, done)]
            stale = "ct_stale"  # its backend is gone: choose again

        # Without a flow to follow, TCP flags no connection starts with (a FIN, a RST,
        # SYN+FIN, none) are netfilter's INVALID: dropped, nothing chosen or answered.
        if ip.proto == TCP and tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) not in (TCP_SYN, TCP_ACK):
            return [done("XDP_DROP", "TCP flags no flow starts with", "drop_malformed", stale)]

        if not svc.slots:
            # A reject answers one host only (RFC 1122): not a link-layer group, not a
            # source of 0/8, 127/8 or 224/3.
            first = int(ip.src.split(".", 1)[0])
            if pkt[0] & 1 or first in (0, 127) or first >= 224:
                return [done("XDP_DROP", "no endpoints, no answer to a group or a martian",
                             "drop_malformed", stale)]

            def rejected() -> None:
                self._account(svc.svc_id, frame_bytes, reject=1)
            return [self._reject(pkt, ip, l3, l4, tcp_flags, stale, rejected, done)]

        if svc.algorithm == "rr":
            n = self.rr_next[svc.svc_id]
            choices = [(svc.slots[n % len(svc.slots)], n + 1)]
        else:
            choices = [(bid, None) for bid in dict.fromkeys(svc.slots)]
        outcomes = []
        for bid, rr_after in choices:
            b = self.backends.get(bid)
            if b is None:
                def miss(rr_after=rr_after) -> None:
                    if rr_after is not None:
                        self.rr_next[svc.svc_id] = rr_after
                outcomes.append(done("XDP_DROP", "slot without backend", "slot_miss", stale,
                                     effect=miss))
                continue

            def new(bid=bid, b=b, rr_after=rr_after) -> None:
                if rr_after is not None:
                    self.rr_next[svc.svc_id] = rr_after
                # (no FIN or RST here: a flow starts with a SYN or an ACK, _service)
                # A dead entry is replaced where it is; a new flow starts unconfirmed.
                into = table if table is not None else self.unconfirmed
                into[key] = Flow(b.ip, b.port, bid, svc.svc_id)
                rn = self.rev_nat.get((b.ip, b.port, ip.proto))
                if rn is not None and rn[2]:  # a shared address: replies need their own entry
                    into[(b.ip, ip.src, b.port, sport, ip.proto, REPLY)] = Flow(ip.dst, dport, bid, svc.svc_id)
                self._account(svc.svc_id, frame_bytes, new=1)
            outcomes.append(self._dnat(bytearray(pkt), None, l4, dport, b.ip, b.port,
                                       f"new flow to {b.ip}:{b.port}", "ct_new", stale, new, done,
                                       l3=l3))
        return outcomes

    def _dnat(self, pkt, ip, l4, dport, nat_ip, nat_port, what, counter, extra, effect, done, l3=None):
        ip = ip or IPv4View(pkt, l3)
        orig_dst = ip.dst
        orig_src = ip.src
        ip.set_dst(nat_ip, l4)
        if dport != nat_port:
            ip.set_port(l4, 2, nat_port)
        hairpin = nat_ip == orig_src   # the client is its own backend
        if hairpin:
            ip.set_src(HAIRPIN, l4)
            extra = "hairpin"

        def full() -> None:
            effect()
            self._frag_record(ip, orig_src, orig_dst, nat_ip, FWD, HAIRPIN if hairpin else None)
        return done("XDP_PASS", what, counter, extra, data=bytes(pkt), effect=full)

    # No endpoints: answer as kube-proxy's REJECT does, straight back out (XDP_TX).
    def _reject(self, pkt, ip, l3, l4, tcp_flags, stale, effect, done) -> Outcome:
        l2 = bytes(pkt[6:12] + pkt[0:6] + pkt[12:l3])  # MACs swapped, VLAN tag kept
        client, vip = ip.src, ip.dst
        if ip.proto == TCP:   # (never a RST: _service drops it first)
            sport, dport, seq, ack = struct.unpack_from("!HHII", pkt, l4)
            doff = pkt[l4 + 12] >> 4
            paylen = ip.tot_len - ip.ihl * 4 - doff * 4
            # RFC 793: answer an ACK with seq = its ack; otherwise ACK what it occupied.
            if tcp_flags & TCP_ACK:
                r_seq, r_ack, r_flags = ack, 0, TCP_RST
            else:
                r_seq = 0
                r_ack = (seq + paylen + bool(tcp_flags & TCP_SYN) + bool(tcp_flags & TCP_FIN)) % 2**32
                r_flags = TCP_RST | TCP_ACK
            tcp = struct.pack("!HHIIBBHHH", dport, sport, r_seq, r_ack, 5 << 4, r_flags, 0, 0, 0)
            pseudo = ip4b(vip) + ip4b(client) + struct.pack("!BBH", 0, TCP, len(tcp))
            tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
            out = l2 + reply_ip_header(vip, client, TCP, 20 + len(tcp)) + tcp
            return done("XDP_TX", "no endpoints: TCP RST", "reject", stale, data=out, effect=effect)
        # UDP: ICMP port unreachable quoting the IP header and 8 bytes (RFC 792).
        quote = bytes(pkt[l3:l4 + 8])
        icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quote
        icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
        out = l2 + reply_ip_header(vip, client, ICMP, 20 + len(icmp)) + icmp
        return done("XDP_TX", "no endpoints: ICMP port unreachable", "reject", stale, data=out,
                    effect=effect)

    # Later fragments carry no ports: translate them as their first fragment was.
    def _later_fragment(self, ip, done) -> Outcome:
        rec = self.fragments.get((ip.src, ip.dst, ip.ident, ip.proto))
        if rec is None:
            return done("XDP_PASS", "fragment of no known datagram", "frag_unknown")
        nat_ip, peer, direction, created = rec
        if datapath_clock_ns() - created > FRAG_TIMEOUT_NS:
            # Past the reassembly timeout the IP id may belong to another datagram.
            return done("XDP_PASS", "fragment of an expired datagram", "frag_unknown")
        if direction == FWD:
            ip.set_dst(nat_ip, None)
            if peer is not None:
                ip.set_src(peer, None)
        else:
            ip.set_src(nat_ip, None)
            if peer is not None:
                ip.set_dst(peer, None)
        return done("XDP_PASS", "later fragment translated", "frag_nat")

    # ICMP errors quoting a translated flow are translated like the flow.
    def _icmp(self, ip, l4, n, done) -> Outcome:
        pkt = ip.pkt
        if l4 + 8 > n:
            return done("XDP_DROP", "short ICMP header", "drop_malformed")
        if pkt[l4] not in ICMP_ERRORS:
            return done("XDP_PASS", "ICMP, not an error", "pass_non_service")
        q = l4 + 8  # the quoted IP header (options in the quote: left alone)
        if q + 20 > n or pkt[q] & 0xF != 5 or pkt[q + 9] not in (TCP, UDP) or q + 24 > n or \
                struct.unpack_from("!H", pkt, q + 6)[0] & 0x1FFF:   # a later fragment's: no ports
            return done("XDP_PASS", "ICMP error, no usable quote", "pass_non_service")
        qsrc, qdst = ip4(pkt[q + 12:q + 16]), ip4(pkt[q + 16:q + 20])
        qsport, qdport = struct.unpack_from("!HH", pkt, q + 20)
        qproto = pkt[q + 9]

        # From the backend's side, about client -> backend: show client -> VIP:port.
        match = self._match_reply(qdst, qdport, qsrc, qsport, qproto)
        if match is not None:
            _, vip, vport, _ = match
            self._rewrite_quote(pkt, l4, q, 16, 22, vip, vport)
            if ip.src == qdst:
                ip.set_src(vip, None)
            return done("XDP_PASS", "ICMP error from the backend side", "icmp_nat")
        # From the client's side, about VIP -> client: show backend -> client.
        flow, _ = self._ct((qdst, qsrc, qdport, qsport, qproto, FWD))
        if flow is not None:
            self._rewrite_quote(pkt, l4, q, 12, 20, flow.nat_ip, flow.nat_port)
            if ip.dst == qsrc:
                ip.set_dst(flow.nat_ip, None)
            return done("XDP_PASS", "ICMP error from the client side", "icmp_nat")
        return done("XDP_PASS", "ICMP error about no flow", "pass_non_service")

    @staticmethod
    def _rewrite_quote(pkt, l4, q, addr_off, port_off, new_ip, new_port) -> None:
        """Quoted address + port, the quoted IP checksum, and the ICMP checksum (which
        covers all three). The quoted transport checksum is left as it was."""
        old_addr, new_addr = bytes(pkt[q + addr_off:q + addr_off + 4]), ip4b(new_ip)
        old_qcheck = bytes(pkt[q + 10:q + 12])
        pkt[q + addr_off:q + addr_off + 4] = new_addr
        qcheck = csum_update(int.from_bytes(old_qcheck, "big"), old_addr, new_addr)
        pkt[q + 10:q + 12] = qcheck.to_bytes(2, "big")
        old_port, new_port_b = bytes(pkt[q + port_off:q + port_off + 2]), new_port.to_bytes(2, "big")
        check = int.from_bytes(pkt[l4 + 2:l4 + 4], "big")
        check = csum_update(check, old_addr, new_addr)
        check = csum_update(check, old_qcheck, qcheck.to_bytes(2, "big"))
        check = csum_update(check, old_port, new_port_b)
        pkt[l4 + 2:l4 + 4] = check.to_bytes(2, "big")
        pkt[q + port_off:q + port_off + 2] = new_port_b

    # ---- state helpers ----------------------------------------------------------------------
    @staticmethod
    def _touch(flow: Flow, tcp_flags: int, side: int) -> None:
        """A FIN closes `side` (FIN_CLIENT or FIN_BACKEND; 0: a reply entry, closed by
        it), a RST both."""
        if tcp_flags & TCP_RST:
            flow.closing = True
            flow.fins |= (FIN_CLIENT | FIN_BACKEND) if side else 0
        elif tcp_flags & TCP_FIN:
            flow.closing = True
            flow.fins |= side

    def _frag_record(self, ip, src, dst, nat_ip, direction, peer: str | None = None) -> None:
        """A first fragment (MF set, offset 0) tells its later fragments what to do: keyed
        by its addresses as it came, the one it changed (`nat_ip`: the destination forward,
        the source in reply) and the other one if it changed that too (`peer`: hairpin)."""
        if ip.frag_off & IP_MF:
            self.fragments[(src, dst, ip.ident, ip.proto)] = (nat_ip, peer, direction, datapath_clock_ns())

    def _account(self, svc_id, nbytes, new=0, reject=0) -> None:
        s = self.svc_stats.setdefault(svc_id, dict(packets=0, bytes=0, new_flows=0, rejects=0))
        s["packets"] += 1
        s["bytes"] += nbytes
        s["new_flows"] += new
        s["rejects"] += reject


def reply_ip_header(src: str, dst: str, proto: int, tot_len: int) -> bytes:
    """The 20-byte header of an answer we make: TOS 0, id 0, DF, TTL 64."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot_len, 0, 0x4000, 64, proto, 0,
                      ip4b(src), ip4b(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]


class IPv4View:
    """Read and rewrite one IPv4 header (and its transport checksum) in a bytearray."""

    def __init__(self, pkt: bytearray, off: int) -> None:
        self.pkt, self.off = pkt, off

    @property
    def ihl(self) -> int:
        return self.pkt[self.off] & 0xF

    @property
    def tot_len(self) -> int:
        return int.from_bytes(self.pkt[self.off + 2:self.off + 4], "big")

    @property
    def ident(self) -> int:
        return int.from_bytes(self.pkt[self.off + 4:self.off + 6], "big")

    @property
    def frag_off(self) -> int:
        return int.from_bytes(self.pkt[self.off + 6:self.off + 8], "big")

    @property
    def proto(self) -> int:
        return self.pkt[self.off + 9]

    @property
    def src(self) -> str:
        return ip4(self.pkt[self.off + 12:self.off + 16])

    @property
    def dst(self) -> str:
        return ip4(self.pkt[self.off + 16:self.off + 20])

    def _field(self, off: int, size: int) -> bytes:
        return bytes(self.pkt[self.off + off:self.off + off + size])

    def _set_check(self, at: int, value: int) -> None:
        self.pkt[at:at + 2] = value.to_bytes(2, "big")

    def _l4_check_at(self, l4: int) -> tuple[int, bool]:
        return (l4 + 16, False) if self.proto == TCP else (l4 + 6, True)

    def _update_l4(self, l4: int | None, old: bytes, new: bytes) -> None:
        if l4 is None:
            return  # a later fragment: no transport header to fix
        at, is_udp = self._l4_check_at(l4)
        check = int.from_bytes(self.pkt[at:at + 2], "big")
        self._set_check(at, (udp_csum_update if is_udp else csum_update)(check, old, new))

    def _set_addr(self, off: int, new_ip: str, l4: int | None) -> None:
        old, new = self._field(off, 4), ip4b(new_ip)
        self.pkt[self.off + off:self.off + off + 4] = new
        ip_check = int.from_bytes(self._field(10, 2), "big")
        self._set_check(self.off + 10, csum_update(ip_check, old, new))
        self._update_l4(l4, old, new)

    def set_src(self, new_ip: str, l4: int | None) -> None:
        self._set_addr(12, new_ip, l4)

    def set_dst(self, new_ip: str, l4: int | None) -> None:
        self._set_addr(16, new_ip, l4)

    def set_port(self, l4: int, off: int, new_port: int) -> None:
        """off 0: source port, 2: destination port."""
        old, new = bytes(self.pkt[l4 + off:l4 + off + 2]), new_port.to_bytes(2, "big")
        self.pkt[l4 + off:l4 + off + 2] = new
        self._update_l4(l4, old, new)
