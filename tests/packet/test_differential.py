"""Differential test: the XDP program against the reference model (reference_model.py)
on randomised map states and packet sequences.

Each example starts from empty maps, installs a few services through the real map
writer (the model mirrors what the writer installed), then runs a sequence of
operations: packets of every kind the datapath distinguishes, and map changes in
between. After every packet the program's verdict and output bytes must be one of
the model's acceptable outcomes (random picks: any slot backend; round robin: the
exact one), and the model then follows the program's choice. At the end of an
example the datapath counters and per-service stats must match the model's.
Independently of the model, a packet whose checksums were right must leave the
program with right checksums.
"""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from controlplane.dataplane.model import Backend, Frontend, ServiceState

from .harness import CLIENT_MAC, NODE_MAC, Harness
from .reference_model import ReferenceDatapath, csum

pytestmark = pytest.mark.root

VIPS = ("10.96.0.1", "10.96.0.2")
SVC_PORTS = (80, 53)
BACKEND_IPS = ("10.244.1.1", "10.244.1.2", "10.244.1.3", "10.244.1.4")
BACKEND_PORTS = (8080, 80)
CLIENTS = ("10.244.9.1", "10.244.9.2", "10.244.1.1")  # the last one is also a backend
CLIENT_PORTS = (40000, 40001, 53)
ELSEWHERE = ("192.0.2.1", "10.244.1.2")
ROUTER = "10.244.0.1"
ADDRESSES = VIPS + BACKEND_IPS + CLIENTS[:2] + ELSEWHERE
TCP_FLAGS = ("S", "A", "PA", "SA", "FA", "F", "R", "RA", "", "SF")

# ---- map states ------------------------------------------------------------------------
frontends = st.builds(Frontend, st.sampled_from(VIPS), st.sampled_from(SVC_PORTS),
                      st.sampled_from(("TCP", "UDP")))
backend_lists = st.lists(
    st.builds(Backend, st.sampled_from(BACKEND_IPS), st.sampled_from(BACKEND_PORTS),
              st.sampled_from(("active", "active", "terminating"))),
    max_size=4, unique_by=lambda b: b.address)
service_states = st.builds(ServiceState, frontends, backend_lists, st.sampled_from(("random", "rr")))
initial_services = st.lists(service_states, min_size=1, max_size=4,
                            unique_by=lambda s: s.frontend)


# ---- packets -----------------------------------------------------------------------------
@st.composite
def l2_options(draw):
    return dict(vlan=draw(st.sampled_from((None, None, None, 42))),
                pad=draw(st.sampled_from(("none", "none", "ethernet", "trailer"))))


@st.composite
def l3_options(draw):
    return dict(ip_options=draw(st.booleans() if draw(st.integers(0, 5)) == 0 else st.just(False)),
                ttl=draw(st.sampled_from((64, 1))), ident=draw(st.integers(0, 3)),
                first_fragment=draw(st.integers(0, 7)) == 0)


@st.composite
def l4_options(draw):
    return dict(flags=draw(st.sampled_from(TCP_FLAGS)),
                seq=draw(st.sampled_from((0, 1000, 2**32 - 1))),
                ack=draw(st.sampled_from((0, 777, 2**32 - 1))),
                payload=draw(st.sampled_from((0, 0, 1, 5, 40))),
                udp_zero=draw(st.integers(0, 4)) == 0)


def send_ops():
    """To an installed service (its index, resolved when the op runs), or anywhere."""
    return st.tuples(st.just("send"), st.sampled_from(CLIENTS + ELSEWHERE[:1]),
                     st.one_of(st.integers(0, 7), st.integers(0, 7), st.sampled_from(ADDRESSES)),
                     st.sampled_from(CLIENT_PORTS),
                     st.sampled_from(SVC_PORTS + BACKEND_PORTS[:1]), st.sampled_from(("TCP", "UDP")),
                     l2_options(), l3_options(), l4_options())


def flow_ops():
    """Packets about tracked flows, resolved against the model when they run."""
    idx = st.integers(0, 7)
    return st.one_of(
        st.tuples(st.just("again"), idx, l2_options(), l3_options(), l4_options()),
        st.tuples(st.just("reply"), idx, st.booleans(), l2_options(), l3_options(), l4_options()),
        st.tuples(st.just("icmp"), idx, st.sampled_from(("backend", "router", "client")),
                  st.sampled_from(((3, 3), (3, 4), (11, 0), (12, 0), (4, 0), (0, 0), (8, 0))),
                  st.sampled_from((8, 8, 0, 4, 30)), st.sampled_from((5, 5, 5, 6)), l2_options()),
        st.tuples(st.just("later_fragment"), idx, st.booleans(), st.integers(1, 3), l2_options()),
    )


malformations = st.sampled_from((
    "truncate", "ihl_small", "ihl_big", "version", "tot_len_big", "tot_len_small",
    "doff_small", "doff_big", "l4_short", "udp_len"))
malformed_ops = st.tuples(st.just("malformed"), send_ops(), malformations, st.integers(0, 200))
non_ip_ops = st.tuples(st.just("non_ip"), st.sampled_from(("arp", "ipv6", "vlan_arp")))

map_ops = st.one_of(
    st.tuples(st.just("upsert"), service_states),
    st.tuples(st.just("delete"), st.integers(0, 7)),
    st.tuples(st.just("remove_backend"), st.integers(0, 7), st.integers(0, 3)),
    st.tuples(st.just("terminate_backend"), st.integers(0, 7), st.integers(0, 3)),
    st.tuples(st.just("add_backend"), st.integers(0, 7), st.sampled_from(BACKEND_IPS),
              st.sampled_from(BACKEND_PORTS)),
)

operations = st.lists(
    st.one_of(send_ops(), send_ops(), flow_ops(), flow_ops(), malformed_ops, non_ip_ops, map_ops),
    min_size=6, max_size=30)


def frame(ip_pkt, l2: dict) -> bytes:
    """Ethernet (+ an optional 802.1Q tag) around an IPv4 packet, optional padding."""
    eth = Ether(src=CLIENT_MAC, dst=NODE_MAC)
    if l2["vlan"] is not None:
        eth = eth / Dot1Q(vlan=l2["vlan"])
    raw = bytes(eth / ip_pkt)
    if l2["pad"] == "ethernet" and len(raw) < 60:
        raw += b"\0" * (60 - len(raw))
    elif l2["pad"] == "trailer":
        raw += b"\xde\xad\xbe\xef"
    return raw


def ip_layer(src, dst, l3: dict, proto=None):
    kw = dict(src=src, dst=dst, ttl=l3["ttl"], id=l3["ident"])
    if l3["ip_options"]:
        kw["options"] = [IPOption_Router_Alert()]
    if l3["first_fragment"]:
        kw["flags"] = "MF"
    if proto is not None:
        kw["proto"] = proto
    return IP(**kw)


def transport(proto, sport, dport, l4: dict):
    payload = Raw(bytes(range(l4["payload"])))
    if proto == "TCP":
        return TCP(sport=sport, dport=dport, flags=l4["flags"], seq=l4["seq"], ack=l4["ack"]) / payload
    if l4["udp_zero"]:
        return UDP(sport=sport, dport=dport, chksum=0) / payload
    return UDP(sport=sport, dport=dport) / payload


def build_send(op, states) -> bytes:
    _, src, dst, sport, dport, proto, l2, l3, l4 = op
    if isinstance(dst, int):
        fes = sorted(states)
        if fes:
            fe = fes[dst % len(fes)]
            dst, dport, proto = fe.vip, fe.port, fe.protocol
        else:
            dst = VIPS[0]
    return frame(ip_layer(src, dst, l3) / transport(proto, sport, dport, l4), l2)


def malform(op, states) -> bytes:
    _, base, how, n = op
    raw = bytearray(build_send(base, states))
    l3 = 18 if base[6]["vlan"] is not None else 14
    ihl = raw[l3] & 0xF
    l4 = l3 + ihl * 4
    tot = int.from_bytes(raw[l3 + 2:l3 + 4], "big")
    if how == "truncate":
        return bytes(raw[:14 + n % (len(raw) - 14)])
    if how == "ihl_small":
        raw[l3] = 0x40 | (n % 5)
    elif how == "ihl_big":
        raw[l3] = 0x40 | (6 + n % 10)
    elif how == "version":
        raw[l3] = ((n % 16) << 4 if n % 16 != 4 else 0x60) | ihl
    elif how == "tot_len_big":
        raw[l3 + 2:l3 + 4] = (len(raw) - l3 + 1 + n).to_bytes(2, "big")
    elif how == "tot_len_small":
        raw[l3 + 2:l3 + 4] = (n % (ihl * 4)).to_bytes(2, "big")
    elif how == "doff_small" and raw[l3 + 9] == 6:
        raw[l4 + 12] = (n % 5) << 4 | (raw[l4 + 12] & 0xF)
    elif how == "doff_big" and raw[l3 + 9] == 6:
        raw[l4 + 12] = (6 + n % 10) << 4 | (raw[l4 + 12] & 0xF)
    elif how == "udp_len" and raw[l3 + 9] == 17:
        raw[l4 + 4:l4 + 6] = (n % 8 if n % 2 else tot - ihl * 4 + 1 + n).to_bytes(2, "big")
    elif how == "l4_short":
        hdr = 20 if raw[l3 + 9] == 6 else 8
        raw[l3 + 2:l3 + 4] = (ihl * 4 + n % hdr).to_bytes(2, "big")
    else:
        return bytes(raw[:l3 + 1 + n % (tot - 1)])
    return bytes(raw)


def build_non_ip(kind) -> bytes:
    if kind == "arp":
        return bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENTS[0], pdst=VIPS[0]))
    if kind == "vlan_arp":
        return bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=3) /
                     ARP(psrc=CLIENTS[0], pdst=VIPS[0]))
    return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src="fd00::1", dst="fd00::2") /
                 UDP(sport=1, dport=53))


PROTO_NUM = {"TCP": 6, "UDP": 17}
PROTO_NAME = {6: "TCP", 17: "UDP"}


def build_flow_packet(op, model: ReferenceDatapath) -> bytes | None:
    """Packets about the model's tracked flows (forward entries, sorted for determinism)."""
    flows = sorted(model.forward_flows(), key=lambda kv: kv[0])
    kind = op[0]
    if kind == "later_fragment":
        _, idx, known, offset, l2 = op
        if known and model.fragments:
            src, dst, ident, proto = sorted(model.fragments)[idx % len(model.fragments)]
        else:
            (src, dst, _, _, proto, _), _ = flows[idx % len(flows)] if flows else ((CLIENTS[0], VIPS[0], 0, 0, 6, 0), None)
            ident = idx % 4
        pkt = IP(src=src, dst=dst, id=ident, proto=proto, frag=offset, flags="MF" if offset < 3 else 0)
        return frame(pkt / Raw(bytes(range(16))), l2)
    if not flows:
        return None
    (client, vip, cport, vport, proto, _), flow = flows[idx_of(op) % len(flows)]
    pname = PROTO_NAME[proto]
    if kind == "again":
        _, _, l2, l3, l4 = op
        return frame(ip_layer(client, vip, l3) / transport(pname, cport, vport, l4), l2)
    if kind == "reply":
        _, _, wrong_port, l2, l3, l4 = op
        bport = flow.nat_port + 1 if wrong_port else flow.nat_port
        return frame(ip_layer(flow.nat_ip, client, l3) / transport(pname, bport, cport, l4), l2)
    if kind == "icmp":
        _, _, side, (itype, icode), extra, quote_ihl, l2 = op
        if side == "client":  # the client complains about VIP:port -> client
            inner = IP(src=vip, dst=client, proto=proto)
            qsport, qdport = vport, cport
            outer = IP(src=client, dst=vip)
        else:  # the backend (or a router on the way) complains about client -> backend
            inner = IP(src=client, dst=flow.nat_ip, proto=proto)
            qsport, qdport = cport, flow.nat_port
            outer = IP(src=flow.nat_ip if side == "backend" else ROUTER, dst=client)
        if quote_ihl == 6:
            inner.options = [IPOption_Router_Alert()]
        l4 = (TCP(sport=qsport, dport=qdport, flags="S", seq=1) if proto == 6
              else UDP(sport=qsport, dport=qdport) / Raw(b"quoted"))
        quote = bytes(inner / l4)
        quote = quote[:quote_ihl * 4 + extra]
        return frame(outer / ICMP(type=itype, code=icode) / Raw(quote), l2)
    raise AssertionError(kind)


def idx_of(op) -> int:
    return op[1]


# ---- checks independent of the model -------------------------------------------------------
def checksums_ok(raw: bytes) -> dict[str, bool]:
    """Which checksums of an Ethernet/IPv4 frame are right (unfragmented datagrams only)."""
    l3 = 18 if raw[12:14] in (b"\x81\x00", b"\x88\xa8") else 14
    if len(raw) < l3 + 20 or raw[l3:l3 + 1] not in (bytes([0x45]), bytes([0x46])):
        return {}
    ihl = (raw[l3] & 0xF) * 4
    tot = int.from_bytes(raw[l3 + 2:l3 + 4], "big")
    if len(raw) < l3 + tot or tot < ihl:
        return {}
    res = {"ip": csum(raw[l3:l3 + ihl]) == 0}
    frag = int.from_bytes(raw[l3 + 6:l3 + 8], "big") & 0x3FFF
    proto, seg = raw[l3 + 9], raw[l3 + ihl:l3 + tot]
    if frag:
        return res
    if proto in (6, 17) and len(seg) >= (20 if proto == 6 else 8):
        if proto == 17 and seg[6:8] == b"\0\0":
            return res
        pseudo = raw[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, proto, len(seg))
        res["l4"] = csum(pseudo + seg) == 0
    elif proto == 1 and len(seg) >= 8:
        res["l4"] = csum(seg) == 0
    return res


# ---- the test ---------------------------------------------------------------------------------
def apply_map_op(op, states: dict[Frontend, ServiceState], h: Harness) -> None:
    kind = op[0]
    fes = sorted(states)
    if kind == "upsert":
        state = op[1]
        states[state.frontend] = state
        h.writer.upsert(state)
        return
    if not fes:
        return
    fe = fes[op[1] % len(fes)]
    old = states[fe]
    if kind == "delete":
        del states[fe]
        h.writer.delete(fe)
        return
    backends = list(old.backends)
    if kind == "add_backend":
        if any(b.address == (op[2], op[3]) for b in backends):
            return
        backends.append(Backend(op[2], op[3]))
    elif not backends:
        return
    else:
        i = op[2] % len(backends)
        if kind == "remove_backend":
            del backends[i]
        else:
            backends[i] = Backend(backends[i].ip, backends[i].port, "terminating")
    new = ServiceState(fe, tuple(backends), old.algorithm)
    states[fe] = new
    h.writer.upsert(new)


def run_packet(raw: bytes, h: Harness, model: ReferenceDatapath, check_checksums: bool = True) -> None:
    from scapy.layers.l2 import Ether as _Ether  # for readable failure messages
    outcomes = model.process(raw)
    res = h.runner.run(raw)
    verdict, out = res.verdict_name, res.data
    match = [o for o in outcomes if o.verdict == verdict and (verdict == "XDP_DROP" or o.out == out)]
    if not match:
        lines = [f"packet: {_Ether(raw)!r}", f"  bytes {raw.hex()}",
                 f"program: {verdict} {out.hex() if verdict != 'XDP_DROP' else ''}"]
        if verdict != "XDP_DROP":
            lines.append(f"  as scapy: {_Ether(out)!r}")
        for o in outcomes:
            lines.append(f"model ({o.what}): {o.verdict} {o.out.hex() if o.verdict != 'XDP_DROP' else ''}")
            if o.verdict != "XDP_DROP":
                lines.append(f"  as scapy: {_Ether(o.out)!r}")
        raise AssertionError("program and model disagree\n" + "\n".join(lines))
    if currently_in_test_context():
        note(f"{match[0].what}: {_Ether(raw).summary()}")
        event(match[0].what.split(" to ")[0])
        if len(outcomes) > 1:
            event("random pick")
        if match[0].verdict != "XDP_DROP" and "ct_stale" in match[0].extra:
            event("stale flow")
    match[0].commit()
    if verdict != "XDP_DROP" and check_checksums:
        before, after = checksums_ok(raw), checksums_ok(out)
        for name, ok in before.items():
            if ok and name in after and verdict == "XDP_PASS":
                assert after[name], f"{name} checksum broken: {_Ether(raw)!r} -> {_Ether(out)!r}"
        if verdict == "XDP_TX":
            assert all(after.values()), f"reply with a bad checksum: {_Ether(out)!r}"


@settings(max_examples=800, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(services=initial_services, ops=operations)
def test_program_matches_reference_model(xdp: Harness, services, ops):
    xdp.reset()
    model = ReferenceDatapath()
    counters_before = xdp.counters()
    states: dict[Frontend, ServiceState] = {}
    for s in services:
        apply_map_op(("upsert", s), states, xdp)
    model.load(xdp.writer)

    for op in ops:
        kind = op[0]
        if kind in ("upsert", "delete", "remove_backend", "terminate_backend", "add_backend"):
            apply_map_op(op, states, xdp)
            model.load(xdp.writer)
            note(f"map: {op}")
            continue
        if kind == "send":
            raw = build_send(op, states)
        elif kind == "malformed":
            raw = malform(op, states)
        elif kind == "non_ip":
            raw = build_non_ip(op[1])
        else:
            raw = build_flow_packet(op, model)
            if raw is None:
                continue
        run_packet(raw, xdp, model)

    after = xdp.counters()
    delta = {k: after[k] - counters_before[k] for k in model.counters}
    assert delta == model.counters
    for fe in states:
        svc_id = xdp.writer.svc_id(fe)
        assert xdp.dp.service_stats(svc_id) == model.svc_stats[svc_id], fe
    assert ct_keys(xdp, "conntrack") == set(model.conntrack)
    assert ct_keys(xdp, "ct_unconfirmed_pod") == set(model.unconfirmed)


def ct_keys(h: Harness, table: str) -> set[tuple]:
    """A conntrack table's keys as the model writes them."""
    return {(socket.inet_ntoa(struct.pack("<I", k.src)), socket.inet_ntoa(struct.pack("<I", k.dst)),
             socket.ntohs(k.sport), socket.ntohs(k.dport), k.proto, k.dir)
            for k in h.dp.table(table).keys()}


# ---- directed cases ------------------------------------------------------------------------
C, V, B = "10.244.9.1", VIPS[0], BACKEND_IPS[0]


def eth_frame(ip_pkt) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / ip_pkt)


def strict_run(xdp: Harness, services, packets, check_checksums=True) -> None:
    """Services installed, then each packet checked against the model."""
    xdp.reset()
    for s in services:
        xdp.writer.upsert(s)
    model = ReferenceDatapath()
    model.load(xdp.writer)
    for raw in packets:
        run_packet(raw, xdp, model, check_checksums)


def test_udp_checksum_computed_as_zero_is_sent_as_ffff(xdp: Harness):
    """RFC 768: a DNAT whose updated UDP checksum comes out as 0 must send 0xffff.
    Chooses the source port that makes the translated datagram's sum 0xffff."""
    svc = ServiceState(Frontend(V, 53, "UDP"), (Backend(B, 5353),))
    translated = bytes(IP(src=C, dst=B) / UDP(sport=0, dport=5353, chksum=0) / Raw(b"q"))
    pseudo = translated[12:20] + struct.pack("!BBH", 0, 17, len(translated) - 20)
    s0 = (~csum(pseudo + translated[20:])) & 0xFFFF  # folded sum with sport = 0
    sport = (0xFFFF - s0) or 0xFFFF
    raw = eth_frame(IP(src=C, dst=V) / UDP(sport=sport, dport=53) / Raw(b"q"))
    strict_run(xdp, [svc], [raw])
    xdp.reset()
    xdp.writer.upsert(svc)
    assert xdp.send(Ether(raw)).raw[14 + 20 + 6:14 + 20 + 8] == b"\xff\xff"


def test_round_robin_survives_terminating_and_removed_backends(xdp: Harness):
    """Exact round robin over the slot order while backends change under it."""
    fe = Frontend(V, 80, "TCP")
    bs = tuple(Backend(ip, 8080) for ip in BACKEND_IPS)
    packets = [eth_frame(IP(src=C, dst=V) / TCP(sport=41000 + i, dport=80, flags="S")) for i in range(9)]
    xdp.reset()
    states: dict = {}
    apply_map_op(("upsert", ServiceState(fe, bs, "rr")), states, xdp)
    model = ReferenceDatapath()
    model.load(xdp.writer)
    for i, raw in enumerate(packets):
        run_packet(raw, xdp, model)
        if i == 3:
            apply_map_op(("terminate_backend", 0, 1), states, xdp)
            model.load(xdp.writer)
        if i == 6:
            apply_map_op(("remove_backend", 0, 0), states, xdp)
            model.load(xdp.writer)


# Malformed packets the differential test once found the program mishandling (it
# DNATed or answered them); the strict model says they are dropped or left alone.
NO_ENDPOINTS_TCP = ServiceState(Frontend(V, 80, "TCP"), ())
NO_ENDPOINTS_UDP = ServiceState(Frontend(V, 53, "UDP"), ())
ONE_BACKEND_TCP = ServiceState(Frontend(V, 80, "TCP"), (Backend(B, 8080),))

MALFORMED_CASES = {
    "tcp_doff_beyond_segment: RST for a malformed SYN": (
        [NO_ENDPOINTS_TCP],
        [eth_frame(IP(src=C, dst=V) / TCP(sport=40000, dport=80, flags="S", seq=1000, dataofs=15))]),
    "tcp_doff_beyond_segment: DNAT of a malformed segment": (
        [ONE_BACKEND_TCP],
        [eth_frame(IP(src=C, dst=V) / TCP(sport=40000, dport=80, flags="S", seq=1000, dataofs=15))]),
    "udp_length_mismatch: ICMP for a malformed datagram": (
        [NO_ENDPOINTS_UDP],
        [eth_frame(IP(src=C, dst=V) / UDP(sport=40000, dport=53, len=200) / Raw(b"q"))]),
    "icmp_beyond_datagram: quoted ports taken from the frame trailer": (
        [ONE_BACKEND_TCP],
        [eth_frame(IP(src=C, dst=V) / TCP(sport=40000, dport=80, flags="S")),
         eth_frame(IP(src=B, dst=C) / ICMP(type=3, code=3) /
                   Raw(bytes(IP(src=C, dst=B, proto=6, len=40)))) + struct.pack("!HH", 40000, 8080)]),
}


@pytest.mark.parametrize("case", list(MALFORMED_CASES))
def test_malformed_packets_found_by_the_differential_test(xdp: Harness, case):
    services, packets = MALFORMED_CASES[case]
    strict_run(xdp, services, packets)
