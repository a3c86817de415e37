"""SNAT ports of external flows to another node (nodeport.h, np_snat_alloc): a flow that
never sent a second packet (unconfirmed) keeps its port only while it is young, or when
the backend keeps answering it; a confirmed flow's port is never taken; a flood of
one-packet flows leaves a port for a new flow.

Entries are aged by writing them from user space on the datapath's own clock
(bpf_ktime_get_coarse_ns), so nothing here waits."""
from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane.affinity_maps import coarse_now_ns as datapath_clock_ns
from controlplane.dataplane.layout import const
from controlplane.dataplane.model import ip_to_be32

from . import nodenet
from .harness import delta
from .test_nodeport import CLIENT, CLIENT2, NODE, SNAT_MASK, SNAT_MIN, Ext, from_client, rebuilt
from .test_nodeport import ext, node  # noqa: F401 (fixtures)
from .test_trace import maps  # noqa: F401 (fixture)

SEC = 10**9
RECLAIM_NS = const("SNAT_RECLAIM_MS") * 10**6
DIR_SNAT = const("CT_DIR_SNAT")
DIR_FORWARD = const("CT_DIR_FORWARD")
UDP_TIMEOUT_NS = const("DEFAULT_UDP_TIMEOUT_S") * SEC
BACKEND_PORT = 53
NODE_PORT = 30053


@pytest.fixture
def dns(ext: Ext) -> Ext:
    ext.service(NODE, NODE_PORT, [nodenet.REMOTE_POD], proto="UDP", backend_port=BACKEND_PORT)
    return ext


def query(src: str, sport: int) -> Ether:
    return from_client(NODE, NODE_PORT, src=src, sport=sport, proto=UDP)


def answer(port: int) -> Ether:
    return (Ether(src=nodenet.NODE2_MAC, dst="02:00:00:00:00:fe") /
            IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=64, id=5) /
            UDP(sport=BACKEND_PORT, dport=port) / Raw(b"answer"))


def folded(sport: int) -> int:
    """The SNAT port a client port is tried at first."""
    return SNAT_MIN + (sport & SNAT_MASK)


def assert_snated(ext: Ext, pkt, port: int) -> None:
    out = ext.send(pkt)
    assert out.verdict == "XDP_TX"
    assert out.raw == bytes(rebuilt(pkt, eth_src=ext.node.ext_mac, eth_dst=nodenet.NODE2_MAC, ip_ttl=63,
                                    ip_src=NODE, ip_dst=nodenet.REMOTE_POD, l4_sport=port,
                                    l4_dport=BACKEND_PORT))


def assert_answer_reaches(ext: Ext, port: int, client: str, cport: int) -> None:
    reply = answer(port)
    reply[Ether].dst = ext.node.ext_mac
    out = ext.send(reply)
    assert out.verdict == "XDP_TX"
    assert out.raw == bytes(rebuilt(reply, eth_src=ext.node.ext_mac, eth_dst=nodenet.CLIENTS[client],
                                    ip_ttl=63, ip_src=NODE, ip_dst=client, l4_sport=NODE_PORT,
                                    l4_dport=cport))


def snat_entries(ext: Ext, table: str) -> dict[int, object]:
    """SNAT reply entries of `table` by SNAT port."""
    t = ext.xdp.dp.table(table)
    return {socket.ntohs(k.dport): v for k, v in t.items() if k.dir == DIR_SNAT}


def age(ext: Ext, table: str, port: int, last_seen: int) -> None:
    t = ext.xdp.dp.table(table)
    for k, v in list(t.items()):
        if k.dir == DIR_SNAT and socket.ntohs(k.dport) == port:
            v.last_seen = last_seen
            t[k] = v
            return
    raise AssertionError(f"no SNAT entry for port {port} in {table}")


def holder(ext: Ext, table: str, port: int, client: int, last_seen: int) -> None:
    """A SNAT reply entry for `port` towards the service's backend, of a client flow
    that has no forward entry here."""
    t = ext.xdp.dp.table(table)
    k = t.Key()
    k.src, k.dst = ip_to_be32(nodenet.REMOTE_POD), ip_to_be32(NODE)
    k.sport, k.dport = socket.htons(BACKEND_PORT), socket.htons(port)
    k.proto, k.dir = socket.IPPROTO_UDP, DIR_SNAT
    v = t.Leaf()
    v.last_seen = last_seen
    v.nat_ip, v.nat_port = ip_to_be32(NODE), socket.htons(NODE_PORT)
    v.peer_ip, v.peer_port = client, socket.htons(1000 + port % 50000)
    t[k] = v


def test_an_unanswered_flows_port_is_taken_after_the_reclaim_time_and_both_flows_go_on(dns, xdp):
    port = folded(40000)
    assert_snated(dns, query(CLIENT, 40000), port)
    # unconfirmed: its reply entry waits in ct_unconfirmed, where a flood evicts its own kind
    assert port in snat_entries(dns, "ct_unconfirmed") and port not in snat_entries(dns, "conntrack")
    # still young: another flow whose first try is the same port takes another one
    young = dns.send(query(CLIENT2, 40000)).pkt[UDP].sport
    assert young != port
    # unanswered past the reclaim time: the next flow that tries the port takes it
    age(dns, "ct_unconfirmed", port, datapath_clock_ns() - RECLAIM_NS - SEC)
    before = xdp.counters()
    assert folded(7232) == port
    assert_snated(dns, query(CLIENT2, 7232), port)
    assert delta(before, xdp.counters())["snat_reclaimed"] == 1
    assert_answer_reaches(dns, port, CLIENT2, 7232)
    # the first client's next datagram finds its port taken: it leaves with a new one
    # (and, being its second packet, confirms the flow: the entry is in conntrack)
    new_port = dns.send(query(CLIENT, 40000)).pkt[UDP].sport
    assert new_port not in (port, young) and SNAT_MIN <= new_port <= 65535
    assert new_port in snat_entries(dns, "conntrack")
    assert_snated(dns, query(CLIENT, 40000), new_port)
    assert_answer_reaches(dns, new_port, CLIENT, 40000)
    assert_answer_reaches(dns, port, CLIENT2, 7232)


def test_a_confirmed_flows_port_is_never_taken(dns, xdp):
    """Even when it is the only port a new flow could take: every other port of the
    backend is held by (fresh, confirmed) flows, so the new flow is dropped and counted."""
    port = folded(40000)
    assert_snated(dns, query(CLIENT, 40000), port)
    assert_snated(dns, query(CLIENT, 40000), port)   # second packet: confirmed
    assert port in snat_entries(dns, "conntrack") and port not in snat_entries(dns, "ct_unconfirmed")
    now = datapath_clock_ns()
    for p in range(SNAT_MIN, 65536):
        if p != port:
            holder(dns, "conntrack", p, ip_to_be32("198.18.0.1") + p, now)
    # past the reclaim time; then past its timeout while the client keeps sending (a
    # one-way flow: no answer refreshes the reply entry, its forward entry lives)
    for last_seen in (now - RECLAIM_NS - SEC, now - UDP_TIMEOUT_NS - SEC):
        age(dns, "conntrack", port, last_seen)
        before = xdp.counters()
        assert dns.send(query(CLIENT2, 7232)).verdict == "XDP_DROP"
        assert delta(before, xdp.counters())["snat_exhausted"] == 1
        # and its flow is not kept without SNAT: its next packet is dropped again
        assert dns.send(query(CLIENT2, 7232)).verdict == "XDP_DROP"
        assert_snated(dns, query(CLIENT, 40000), port)
        assert_answer_reaches(dns, port, CLIENT, 40000)


def test_an_evicted_reply_entry_is_written_back_by_the_flows_next_packet(dns):
    """A flood evicts unconfirmed entries: a flow whose reply entry went keeps its port
    when it is still free, and its answers are translated again."""
    port = folded(40000)
    assert_snated(dns, query(CLIENT, 40000), port)
    t = dns.xdp.dp.table("ct_unconfirmed")
    for k in [k for k in t.keys() if k.dir == DIR_SNAT]:
        del t[k]
    assert_snated(dns, query(CLIENT, 40000), port)
    assert port in snat_entries(dns, "conntrack")
    assert_answer_reaches(dns, port, CLIENT, 40000)


def test_a_reused_tuple_s_new_flow_is_source_nated_beside_its_old_entries(dns):
    """A client port reused after its flow expired, with the old flow's entry still in
    conntrack and an expired one of the tuple in ct_unconfirmed: the new flow is written
    over the unconfirmed one, and the tail must give that entry its SNAT (not the old
    conntrack entry, which a lookup there finds first), or the flow's next packet leaves
    with the client's address."""
    port = folded(5353)
    for _ in range(2):      # the second datagram confirms the flow
        assert_snated(dns, query(CLIENT, 5353), port)
    t, u = dns.xdp.dp.table("conntrack"), dns.xdp.dp.table("ct_unconfirmed")
    expired = datapath_clock_ns() - UDP_TIMEOUT_NS - 10 * SEC
    [(k, v)] = [(k, v) for k, v in t.items() if k.dir == DIR_FORWARD]
    v.last_seen = expired
    t[k] = v
    u[k] = v
    for _ in range(2):
        assert_snated(dns, query(CLIENT, 5353), port)
    assert_answer_reaches(dns, port, CLIENT, 5353)


def flood(ext: Ext, n: int) -> dict[str, int]:
    """n one-packet flows from spoofed clients (198.18.0.0/15, random source ports) to
    the NodePort, none answered; returns the verdicts counted."""
    import random
    rng = random.Random(11)
    template = bytearray(bytes(query(CLIENT, 1)))
    verdicts: dict[str, int] = {}

    def run() -> None:
        for i in range(n):
            frame = template[:]
            frame[26:30] = (0xC6120000 + i).to_bytes(4, "big")      # IP source
            frame[34:36] = rng.randrange(1024, 65536).to_bytes(2, "big")  # UDP source port
            v = ext.runner.run(bytes(frame), 1, ext.node.ext_ifindex).verdict_name
            verdicts[v] = verdicts.get(v, 0) + 1

    ext.node.call(run)
    return verdicts


def test_a_flood_of_unanswered_flows_leaves_a_port_for_a_new_flow(dns, xdp):
    """More one-packet flows than the backend has SNAT ports (32,768): their reply
    entries live in the unconfirmed table and go first, so the flood neither runs out
    of ports nor keeps a new flow from getting one; and its answers come back."""
    before = xdp.counters()
    verdicts = flood(dns, 40_000)
    assert verdicts == {"XDP_TX": 40_000}
    d = delta(before, xdp.counters())
    assert "snat_exhausted" not in d
    out = dns.send(query(CLIENT, 40000))
    assert out.verdict == "XDP_TX"
    port = out.pkt[UDP].sport
    assert_snated(dns, query(CLIENT, 40000), port)
    assert_answer_reaches(dns, port, CLIENT, 40000)


def test_with_every_port_held_a_new_flow_takes_the_oldest_unanswered_one_never_a_confirmed_one(dns, xdp):
    """Every SNAT port of the backend busy: three quarters held by confirmed flows, the
    rest by unconfirmed ones younger than the reclaim time (a flood faster than ports
    come free). A new flow takes an unconfirmed flow's port; no confirmed one moves."""
    now = datapath_clock_ns()
    first = folded(40000)
    unconfirmed = {p for p in range(SNAT_MIN, 65536) if p % 4 == first % 4}
    for p in range(SNAT_MIN, 65536):
        if p in unconfirmed:
            holder(dns, "ct_unconfirmed", p, ip_to_be32("198.19.0.1") + p, now - (p % 1000) * 1000)
        else:
            holder(dns, "conntrack", p, ip_to_be32("198.18.0.1") + p, now)
    confirmed = snat_entries(dns, "conntrack")
    assert len(confirmed) == 32768 - len(unconfirmed)
    before = xdp.counters()
    out = dns.send(query(CLIENT, 40000))
    assert out.verdict == "XDP_TX"
    port = out.pkt[UDP].sport
    assert port in unconfirmed
    assert delta(before, xdp.counters())["snat_reclaimed"] == 1
    assert_answer_reaches(dns, port, CLIENT, 40000)
    after = snat_entries(dns, "conntrack")
    assert {p: (v.peer_ip, v.peer_port) for p, v in after.items()} == \
        {p: (v.peer_ip, v.peer_port) for p, v in confirmed.items()}


def test_trace_follows_the_replies_of_unconfirmed_and_one_way_snat_flows(dns, maps):
    """`svcctl dataplane trace` reads the SNAT entries where the program does."""
    from controlplane.dataplane.trace import Packet, trace
    port = folded(40000)
    assert_snated(dns, query(CLIENT, 40000), port)
    reply = Packet(nodenet.REMOTE_POD, BACKEND_PORT, NODE, port, "UDP")
    for _ in range(2):
        t = trace(maps, reply, entry="external")
        assert (t.reason, t.reply_of) == ("snat_reply", (NODE, NODE_PORT))
        assert_snated(dns, query(CLIENT, 40000), port)     # confirmed; then one-way
        age(dns, "conntrack", port, datapath_clock_ns() - UDP_TIMEOUT_NS - SEC)


def test_a_tcp_handshake_keeps_its_port_while_retransmitting_and_confirms_it_with_its_ack(ext, xdp):
    from scapy.layers.inet import TCP
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = folded(40000)
    syn = from_client(NODE, 30080, sport=40000, flags="S")
    assert ext.send(syn).pkt[TCP].sport == port
    assert port in snat_entries(ext, "ct_unconfirmed")
    # no SYN-ACK yet; the client retransmits its SYN after the reclaim time: the port
    # is its own again for another reclaim time
    age(ext, "ct_unconfirmed", port, datapath_clock_ns() - RECLAIM_NS - SEC)
    assert ext.send(syn).pkt[TCP].sport == port
    other = ext.send(from_client(NODE, 30080, src=CLIENT2, sport=7232, flags="S")).pkt[TCP].sport
    assert other != port
    # the backend's SYN-ACK finds the unconfirmed entry; the client's ACK confirms the flow
    reply = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) / IP(src=nodenet.REMOTE_POD, dst=NODE) /
             TCP(sport=80, dport=port, flags="SA"))
    back = ext.send(reply).pkt
    assert (back[IP].dst, back[TCP].dport, back[TCP].sport) == (CLIENT, 40000, 30080)
    assert ext.send(from_client(NODE, 30080, sport=40000, flags="A")).pkt[TCP].sport == port
    assert port in snat_entries(ext, "conntrack") and port not in snat_entries(ext, "ct_unconfirmed")


def test_a_reused_tuple_s_retransmitted_syn_keeps_its_snat_entry_unconfirmed(ext, xdp):
    """The handshake of a reused tuple whose old connection's entry (expired) is still in
    conntrack: while it is unconfirmed its SNAT entry stays in ct_unconfirmed, where a
    flood can only evict its own kind, through a retransmitted SYN (the tail checks the
    port on the entry handle_service used, not the old one conntrack holds), and moves to
    conntrack with the ACK."""
    from scapy.layers.inet import TCP
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = folded(40000)
    syn, ack = (from_client(NODE, 30080, sport=40000, flags=f) for f in ("S", "A"))
    for pkt in (syn, ack):      # the old connection, confirmed
        assert ext.send(pkt).pkt[TCP].sport == port
    t, u = ext.xdp.dp.table("conntrack"), ext.xdp.dp.table("ct_unconfirmed")
    [(k, v)] = [(k, v) for k, v in t.items() if k.dir == DIR_FORWARD]
    v.last_seen = datapath_clock_ns() - ext.xdp.dp.config.tcp_timeout_s * SEC - 10 * SEC
    t[k] = v
    u[k] = v                    # and an expired record of the tuple waiting unconfirmed
    for _ in range(2):          # the new connection's SYN, then its retransmission
        assert ext.send(syn).pkt[TCP].sport == port
        assert port in snat_entries(ext, "ct_unconfirmed") and port not in snat_entries(ext, "conntrack")
    assert ext.send(ack).pkt[TCP].sport == port
    assert port in snat_entries(ext, "conntrack") and port not in snat_entries(ext, "ct_unconfirmed")


def age_all(ext: Ext, by_ns: int) -> None:
    """Every conntrack entry last seen `by_ns` earlier than it was."""
    t = ext.xdp.dp.table("conntrack")
    for k, v in list(t.items()):
        v.last_seen -= by_ns
        t[k] = v


@pytest.mark.parametrize("closer", ["client", "backend"])
@pytest.mark.parametrize("flag", ["R", "F"])
def test_a_connection_closed_from_either_side_gives_its_port_back(ext, xdp, closer, flag):
    """A connection its client reset (or half-closed), whose backend then said nothing,
    held its SNAT port for the whole TCP timeout (6 h): only the backend's own FIN or RST
    closed the port's entry. The client's closes it too, so once the flow's forward
    entry is past its timeout (the close timeout after a RST, the half-close one after a
    lone FIN) the GC sweeps both and the port is free for a new flow."""
    from scapy.layers.inet import TCP

    from controlplane.dataplane.ctgc import GRACE_NS, ConntrackGC
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = folded(40000)
    for f in ("S", "A"):
        assert ext.send(from_client(NODE, 30080, sport=40000, flags=f)).pkt[TCP].sport == port
    reply = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) / IP(src=nodenet.REMOTE_POD, dst=NODE) /
             TCP(sport=80, dport=port, flags="A"))
    assert ext.send(reply).pkt[IP].dst == CLIENT
    if closer == "client":
        assert ext.send(from_client(NODE, 30080, sport=40000, flags=flag + "A")).pkt[TCP].sport == port
    else:
        reply[TCP].flags = flag + "A"
        assert ext.send(reply).pkt[IP].dst == CLIENT
    config = ext.xdp.dp.config
    timeout_s = config.tcp_close_timeout_s if flag == "R" else config.tcp_half_close_timeout_s
    age_all(ext, timeout_s * SEC + GRACE_NS + SEC)
    ConntrackGC(ext.xdp.dp).sweep_all()
    assert port not in snat_entries(ext, "conntrack")
    new = from_client(NODE, 30080, src=CLIENT2, sport=40000, flags="S")
    assert ext.send(new).pkt[TCP].sport == port


def test_a_confirmed_one_way_flows_evicted_port_entry_is_written_back(dns):
    """A one-way flow's port entry is read by nothing, so the LRU may evict it while the
    flow's forward entry, touched by every packet, stays; the port then looked free and a
    new flow took it, the backend's answers to either going to the other's client. The
    flow's entry refreshes once a second and then looks at its port's entry (keeping it
    warm in the LRU), writing it back when it is gone."""
    port = folded(40000)
    for _ in range(2):                                   # the second datagram confirms it
        assert_snated(dns, query(CLIENT, 40000), port)
    t = dns.xdp.dp.table("conntrack")
    for k in [k for k in t.keys() if k.dir == DIR_SNAT]:
        del t[k]                                         # as the LRU would evict it
    age_all(dns, 2 * SEC)                                # its forward entry refreshes next
    assert_snated(dns, query(CLIENT, 40000), port)
    assert port in snat_entries(dns, "conntrack")
    assert dns.send(query(CLIENT2, 7232)).pkt[UDP].sport != port   # folded(7232) == port
    assert_answer_reaches(dns, port, CLIENT, 40000)


def test_a_port_that_is_a_frontend_on_the_node_address_is_never_a_snat_port(dns, xdp):
    """A frontend on the node's address at a port in the SNAT range (a NodePort range
    reaching past 32767, a high port of an externalIP the node holds): frontends are
    looked up before SNAT replies, so the backend's answers to a SNAT flow on that port
    were taken for new flows to the other service (over UDP, sent to its backend)."""
    taken = folded(40000)
    dns.service(NODE, taken, [nodenet.LOCAL_POD], proto="UDP", backend_port=53)
    port = dns.send(query(CLIENT, 40000)).pkt[UDP].sport
    assert port != taken and SNAT_MIN <= port <= 65535
    assert_answer_reaches(dns, port, CLIENT, 40000)
