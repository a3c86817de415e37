"""Traffic from outside the cluster through the external entry point (svcxdp_external):
NodePort, LoadBalancer IPs and externalIPs to local and remote backends, SNAT and its
reverse, port collisions, source ranges, Local traffic policies, fragments. Packets run
as if they arrived on the node's external interface of a namespace with real routes
(nodenet.py); the expected frames are built byte for byte."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from controlplane.dataplane import readout
from controlplane.dataplane.layout import const
from controlplane.dataplane.model import Backend, Frontend, ServiceState, ip_to_be32
from controlplane.dataplane.testrun import TestRunner

from . import nodenet
from . import harness
from .harness import Harness, Outcome, assert_frag_needed, delta, handoff_key

pytestmark = pytest.mark.root

CLIENT, CLIENT2 = list(nodenet.CLIENTS)
CLIENT_MAC = nodenet.CLIENTS[CLIENT]
NODE = nodenet.NODE_IP
LB_IP = "192.168.1.240"
EXTERNAL_IP = "203.0.113.250"
SNAT_MIN = 32768
SNAT_MASK = 32767
FORWARD, CLOSING = const("CT_DIR_FORWARD"), const("CT_F_CLOSING")
TC_ACT_UNSPEC, TC_ACT_REDIRECT = 0xFFFFFFFF, 7   # (-1 as a u32)


@pytest.fixture(scope="module")
def node():
    n = nodenet.create()
    yield n
    nodenet.delete(n)


class Ext:
    """Runs frames through the external entry point inside the node's namespace."""

    def __init__(self, xdp: Harness, node: nodenet.NodeNet) -> None:
        self.xdp = xdp
        self.node = node
        self.runner = TestRunner(xdp.dp.external_prog_fd)

    def send(self, pkt) -> Outcome:
        res = self.node.call(self.runner.run, bytes(pkt), 1, self.node.ext_ifindex)
        return Outcome(res.verdict_name, res.data)

    def service(self, vip: str, port: int, backends, proto: str = "TCP", backend_port: int = 80,
                **kw) -> Frontend:
        fe = Frontend(vip, port, proto, "external")
        self.xdp.writer.upsert(ServiceState(fe, tuple(Backend(ip, backend_port) for ip in backends), **kw))
        return fe


@pytest.fixture
def ext(xdp, node) -> Ext:
    return Ext(xdp, node)


def from_client(dst: str, dport: int, src: str = CLIENT, sport: int = 40000, proto=TCP, **kw):
    l4 = proto(sport=sport, dport=dport, **kw)
    return (Ether(src=nodenet.CLIENTS[src], dst="02:00:00:00:00:ff") /
            IP(src=src, dst=dst, ttl=64, id=7) / l4 / Raw(b"hello"))


def rebuilt(pkt, **fields):
    """pkt with IP/L4 fields changed and its checksums recomputed, as bytes would be."""
    out = pkt.copy()
    ip, l4 = out[IP], out[IP].payload
    for k, v in fields.items():
        layer, name = k.split("_", 1)
        setattr(ip if layer == "ip" else l4 if layer == "l4" else out[Ether], name, v)
    del ip.chksum
    if hasattr(l4, "chksum"):
        del l4.chksum
    return out.__class__(bytes(out))


def test_nodeport_to_a_local_backend_keeps_the_client_address(ext, xdp):
    ext.service(NODE, 30080, [nodenet.LOCAL_POD])
    pkt = from_client(NODE, 30080, flags="S")
    out = ext.send(pkt)
    assert out.verdict == "XDP_PASS"
    assert out.raw == bytes(rebuilt(pkt, ip_dst=nodenet.LOCAL_POD, l4_dport=80))
    # the pod's answer, on its veth (pod-facing entry point), is turned back into the NodePort
    reply = (Ether(src=nodenet.LOCAL_POD_MAC, dst="02:00:00:00:00:fe") /
             IP(src=nodenet.LOCAL_POD, dst=CLIENT, ttl=64, id=9) / TCP(sport=80, dport=40000, flags="SA"))
    back = xdp.send(reply)
    assert back.verdict == "XDP_PASS"
    assert back.raw == bytes(rebuilt(reply, ip_src=NODE, l4_sport=30080))


@pytest.mark.parametrize("clusterip_first", [True, False], ids=["clusterip-first", "nodeport-first"])
def test_a_backend_shared_with_the_clusterip_has_a_reply_entry_only_when_not_snated(ext, xdp,
                                                                                     clusterip_first):
    """A NodePort's backends serve its ClusterIP too, so rev_nat names one of the two
    frontends and each flow's answer needs a reply entry (conntrack.h). From outside the
    tail writes it (nodeport.h, np_snat): for a local pod, whose answer goes to the client
    and must leave as the NodePort whichever frontend rev_nat names; never for a
    source-NATed flow, answered on its SNAT port, where it would only cost an insert."""
    import socket

    from controlplane.dataplane.config import FLOW_TABLES
    from controlplane.dataplane.flows import DIR_REPLY

    def reply_entries():
        return sorted((name, socket.ntohs(k.dport)) for name in FLOW_TABLES
                      for k in xdp.dp.table(name).keys() if k.dir == DIR_REPLY)

    for vip, node_port, pod in (("10.96.0.100", 30080, nodenet.LOCAL_POD),
                                ("10.96.0.101", 30081, nodenet.REMOTE_POD)):
        writes = [lambda: xdp.service(vip, 80, backends=(pod,), backend_port=80),
                  lambda: ext.service(NODE, node_port, [pod])]
        for write in writes if clusterip_first else writes[::-1]:
            write()
    local = ext.send(from_client(NODE, 30080, sport=40000, flags="S"))
    assert (local.verdict, local.pkt[IP].dst) == ("XDP_PASS", nodenet.LOCAL_POD)
    assert reply_entries() == [("ct_unconfirmed", 40000)]
    answer = (Ether(src=nodenet.LOCAL_POD_MAC, dst="02:00:00:00:00:fe") /
              IP(src=nodenet.LOCAL_POD, dst=CLIENT, ttl=64, id=9) / TCP(sport=80, dport=40000, flags="SA"))
    back = xdp.send(answer).pkt
    assert (back[IP].src, back[TCP].sport) == (NODE, 30080)
    remote = ext.send(from_client(NODE, 30081, sport=40001, flags="S"))
    assert (remote.verdict, remote.pkt[IP].dst) == ("XDP_TX", nodenet.REMOTE_POD)
    assert reply_entries() == [("ct_unconfirmed", 40000)]
    answer = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
              IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63) / TCP(sport=80, dport=remote.pkt[TCP].sport, flags="SA"))
    back = ext.send(answer).pkt
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (NODE, 30081, CLIENT, 40001)
    # confirmed, the local flow's reply entry moves to conntrack with it
    assert ext.send(from_client(NODE, 30080, sport=40000, flags="A")).verdict == "XDP_PASS"
    assert reply_entries() == [("conntrack", 40000)]


def test_each_entry_point_s_new_flows_wait_in_their_own_table(ext, xdp):
    """bpf/conntrack.h: a first packet from outside waits in ct_unconfirmed (large, for far
    clients), a pod's in ct_unconfirmed_pod (small, in cache). The external flow's reply
    comes in through the pod-facing entry point and still finds it; each flow's second
    packet moves it to conntrack."""
    import socket

    def waiting(name):
        return {(socket.ntohs(k.sport), k.dir) for k in xdp.dp.table(name).keys()}

    ext.service(NODE, 30080, [nodenet.LOCAL_POD])
    xdp.service()
    from_pod = (Ether(src=harness.CLIENT_MAC, dst=harness.NODE_MAC) /
                IP(src=harness.CLIENT, dst=harness.VIP) / TCP(sport=41000, dport=80, flags="S"))
    assert ext.send(from_client(NODE, 30080, sport=40000, flags="S")).verdict == "XDP_PASS"
    assert xdp.send(from_pod).verdict == "XDP_PASS"
    assert (waiting("ct_unconfirmed"), waiting("ct_unconfirmed_pod"), waiting("conntrack")) == \
        ({(40000, 0)}, {(41000, 0)}, set())
    reply = (Ether(src=nodenet.LOCAL_POD_MAC, dst="02:00:00:00:00:fe") /
             IP(src=nodenet.LOCAL_POD, dst=CLIENT, ttl=64, id=9) / TCP(sport=80, dport=40000, flags="SA"))
    back = xdp.send(reply)
    assert (back.pkt[IP].src, back.pkt[TCP].sport) == (NODE, 30080)
    assert ext.send(from_client(NODE, 30080, sport=40000, flags="A")).pkt[IP].dst == nodenet.LOCAL_POD
    from_pod[TCP].flags = "A"
    assert xdp.send(from_pod).verdict == "XDP_PASS"
    assert (waiting("ct_unconfirmed"), waiting("ct_unconfirmed_pod"), waiting("conntrack")) == \
        (set(), set(), {(40000, 0), (41000, 0)})


def test_nodeport_to_a_remote_backend_is_snated_and_sent_back_out_with_xdp_tx(ext, xdp):
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    before = xdp.counters()
    pkt = from_client(NODE, 30080, sport=40000, flags="S")
    out = ext.send(pkt)
    assert out.verdict == "XDP_TX"
    snat_port = SNAT_MIN + (40000 & SNAT_MASK)
    want = rebuilt(pkt, eth_src=ext.node.ext_mac, eth_dst=nodenet.NODE2_MAC, ip_ttl=63,
                   ip_src=NODE, ip_dst=nodenet.REMOTE_POD, l4_sport=snat_port, l4_dport=80)
    assert out.raw == bytes(want)
    # the established flow keeps its port
    again = ext.send(from_client(NODE, 30080, sport=40000, flags="A"))
    assert again.pkt[TCP].sport == snat_port and again.verdict == "XDP_TX"
    # the backend's answer comes back on the external interface: both translations reversed
    reply = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
             IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63, id=11) /
             TCP(sport=80, dport=snat_port, flags="SA") / Raw(b"world"))
    back = ext.send(reply)
    assert back.verdict == "XDP_TX"
    assert back.raw == bytes(rebuilt(reply, eth_src=ext.node.ext_mac, eth_dst=CLIENT_MAC, ip_ttl=62,
                                     ip_src=NODE, ip_dst=CLIENT, l4_sport=30080, l4_dport=40000))
    d = delta(before, xdp.counters())
    assert d["snat_new"] == 1 and d["snat_reply"] == 1 and d["xdp_tx"] == 3


def test_a_snated_frame_whose_next_hop_is_unresolved_is_handed_to_tc(ext, xdp):
    """A backend reached on-link (its own address the next hop) that no neighbour entry
    names yet: XDP cannot resolve it, and the stack would drop the frame, which carries
    the node's address. It leaves the program as the frame to send, TTL decremented,
    noted (bpf/handoff.h: its addresses, ports and sequence -> the egress device, and how
    many such frames) for the tc program on the same interface, which sends each with
    bpf_redirect_neigh, and lets the frame go on once none is left. Once the neighbour is known the flow's frames leave
    with XDP_TX, with no note. A frame for a local pod without a neighbour entry keeps
    the client's address and goes to another device: the stack gets it as before (it
    forwards it, and checks it against the pod device's MTU)."""
    on_link = "10.244.3.7"
    nodenet._ip(ext.node.name, "route", "replace", "10.244.3.0/24", "dev", "ext0")
    runner = ext.runner
    try:
        ext.service(NODE, 30090, [on_link])
        before = xdp.counters()
        pkt = from_client(NODE, 30090, sport=40001, flags="S")
        res = ext.node.call(runner.run, bytes(pkt), 1, ext.node.ext_ifindex)
        assert res.verdict_name == "XDP_PASS"
        snat_port = SNAT_MIN + (40001 & SNAT_MASK)
        assert res.data == bytes(rebuilt(pkt, ip_ttl=63, ip_src=NODE, ip_dst=on_link, l4_sport=snat_port,
                                         l4_dport=80))
        assert xdp.handoff_notes() == {handoff_key(res.data): (ext.node.ext_ifindex, 1)}
        moved = delta(before, xdp.counters())
        assert moved.get("neigh_noted") == 1 and "neigh_note_failed" not in moved
        # a note gone stale (its frame lost on the way) counts from one when noted again
        notes = xdp.dp.table("handoff_notes")
        key = notes.Key.from_buffer_copy(handoff_key(res.data))
        stale = notes[key]
        stale.at = 0
        notes[key] = stale
        ext.node.call(runner.run, bytes(pkt), 1, ext.node.ext_ifindex)
        assert xdp.handoff_notes() == {handoff_key(res.data): (ext.node.ext_ifindex, 1)}
        # the same frame again before tc saw the first (one batch): the note counts both
        again = ext.node.call(runner.run, bytes(pkt), 1, ext.node.ext_ifindex)
        assert again.data == res.data
        assert xdp.handoff_notes() == {handoff_key(res.data): (ext.node.ext_ifindex, 2)}
        # tc ingress: each noted frame is sent (its neighbour resolved by the kernel), once
        tc = TestRunner(xdp.dp.handoff_prog_fd, skb=True)
        before = xdp.counters()
        for _ in range(2):
            assert tc.run(res.data, 1, ext.node.ext_ifindex).verdict == TC_ACT_REDIRECT
        assert delta(before, xdp.counters()) == {"neigh_handoff": 2} and xdp.handoff_notes() == {}
        assert tc.run(res.data, 1, ext.node.ext_ifindex).verdict == TC_ACT_UNSPEC
        # noted again once every frame was taken (a retransmission): counted from one again
        ext.node.call(runner.run, bytes(pkt), 1, ext.node.ext_ifindex)
        assert xdp.handoff_notes() == {handoff_key(res.data): (ext.node.ext_ifindex, 1)}
        assert tc.run(res.data, 1, ext.node.ext_ifindex).verdict == TC_ACT_REDIRECT
        assert tc.run(res.data, 1, ext.node.ext_ifindex).verdict == TC_ACT_UNSPEC
        nodenet._ip(ext.node.name, "neigh", "replace", on_link, "lladdr", "02:00:00:00:03:07", "dev", "ext0",
                    "nud", "permanent")
        res = ext.node.call(runner.run, bytes(from_client(NODE, 30090, sport=40001, flags="A")), 1,
                            ext.node.ext_ifindex)
        assert res.verdict_name == "XDP_TX" and xdp.handoff_notes() == {}
        assert Ether(res.data)[Ether].dst == "02:00:00:00:03:07"
        # a local pod without a neighbour entry: to the stack, unnoted, TTL untouched
        ext.service(NODE, 30091, ["10.244.1.12"])
        local = from_client(NODE, 30091, sport=40002, flags="S")
        res = ext.node.call(runner.run, bytes(local), 1, ext.node.ext_ifindex)
        assert res.verdict_name == "XDP_PASS" and xdp.handoff_notes() == {}
        assert res.data == bytes(rebuilt(local, ip_dst="10.244.1.12", l4_dport=80))
    finally:
        xdp.dp.table("handoff_notes").clear()
        nodenet._ip(ext.node.name, "route", "del", "10.244.3.0/24")
        subprocess.run(["ip", "-n", ext.node.name, "neigh", "del", on_link, "dev", "ext0"], capture_output=True)


def test_an_answer_from_a_secondary_address_to_an_unresolved_client_is_handed_to_tc(ext, xdp):
    """A LoadBalancer IP the node holds (kube-vip, keepalived) is another of its own
    addresses, but not the one routes to the clients prefer. A remote backend's answer,
    translated back to an on-link client whose neighbour entry is gone (the neighbour GC
    removes idle ones past 128 entries), carries it as source: on a node that holds it the
    stack drops that as a martian too. The answer leaves by the interface it came in on,
    so it is handed to tc like a source-NATed frame (bpf/handoff.h), naming that interface
    (the program cannot tell whether the node holds the address, and need not)."""
    client = "192.168.1.102"   # on ext0's subnet, no neighbour entry
    ext.service(LB_IP, 80, [nodenet.REMOTE_POD])
    syn = (Ether(src="02:00:00:00:01:66", dst=ext.node.ext_mac) /
           IP(src=client, dst=LB_IP, ttl=64, id=7) / TCP(sport=40003, dport=80, flags="S"))
    assert ext.send(syn).verdict == "XDP_TX"   # source-NATed to node2, whose entry is there
    snat_port = SNAT_MIN + (40003 & SNAT_MASK)
    answer = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
              IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63, id=11) / TCP(sport=80, dport=snat_port, flags="SA"))
    before = xdp.counters()
    res = ext.node.call(ext.runner.run, bytes(answer), 1, ext.node.ext_ifindex)
    assert res.verdict_name == "XDP_PASS"
    assert res.data == bytes(rebuilt(answer, ip_ttl=62, ip_src=LB_IP, ip_dst=client, l4_sport=80,
                                     l4_dport=40003))
    try:
        assert xdp.handoff_notes() == {handoff_key(res.data): (ext.node.ext_ifindex, 1)}
    finally:
        xdp.dp.table("handoff_notes").clear()
    moved = delta(before, xdp.counters())
    assert moved.get("snat_reply") == 1 and moved.get("neigh_noted") == 1


def test_a_frame_for_another_hosts_mac_address_is_left_to_the_stack(ext, xdp):
    """A switch or bridge floods a unicast frame to every port until it learns where its
    destination lives, so every node saw a client's SYN to a LoadBalancer IP, which every
    node serves, and every node answered it (the client reset the connection). Once the
    agent has told the program the interface's own MAC address (bpf/otherhost.h), a
    unicast frame for another address goes to the stack untouched (which drops it as
    PACKET_OTHERHOST), counted pass_other_host; one for the interface's own address, or
    a broadcast one, is served."""
    ext.service(LB_IP, 80, [nodenet.LOCAL_POD])
    own = bytes.fromhex(ext.node.ext_mac.replace(":", ""))
    assert xdp.dp.own_mac(ext.node.ext_ifindex, own)
    try:
        flooded = from_client(LB_IP, 80, sport=40010, flags="S")   # for 02:00:00:00:00:ff
        before = xdp.counters()
        out = ext.send(flooded)
        assert (out.verdict, out.raw) == ("XDP_PASS", bytes(flooded))
        moved = delta(before, xdp.counters())
        assert moved == {"pass_other_host": 1}, moved
        for dst in (ext.node.ext_mac, "ff:ff:ff:ff:ff:ff"):
            mine = from_client(LB_IP, 80, sport=40011, flags="S")
            mine[Ether].dst = dst
            assert ext.send(mine).pkt[IP].dst == nodenet.LOCAL_POD, dst
    finally:
        xdp.dp.own_mac(ext.node.ext_ifindex, bytes(6))   # unknown again: not checked

def test_the_handoff_program_lets_every_frame_without_a_note_go_on(xdp):
    """svcxdp_handoff (tc ingress of the external interfaces) sends only noted frames;
    any other goes on unchanged with TC_ACT_UNSPEC, so filters after ours on the hook
    still see it (TC_ACT_OK would end the chain), whether a note was written lately (a
    lookup) or not (none). The noted case is test_a_snated_frame_whose_next_hop_is_
    unresolved_is_handed_to_tc's. The program only reads the frame: a write would have
    the verifier unclone every cloned packet on the hook (tcpdump open), which its
    instructions would show."""
    runner = TestRunner(xdp.dp.handoff_prog_fd, skb=True)
    last = xdp.dp.table("handoff_last")
    before = xdp.counters()
    for noted_lately in (False, True):
        last[last.Key(0)] = last.Leaf(time.clock_gettime_ns(time.CLOCK_MONOTONIC) if noted_lately else 0)
        for pkt in (from_client(NODE, 30080, flags="S"), from_client(NODE, 30080, proto=UDP)):
            res = runner.run(bytes(pkt), 1, 1)
            assert (res.verdict, res.data) == (TC_ACT_UNSPEC, bytes(pkt))
    assert "neigh_handoff" not in delta(before, xdp.counters())


def test_a_remote_backends_reset_closes_the_snated_flow(ext, xdp):
    """The backend's RST, matched on the flow's SNAT entry, closes the flow's forward
    entry too (it stayed established for hours, its tuple the old backend's)."""
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = ext.send(from_client(NODE, 30080, sport=40100, flags="S")).pkt[TCP].sport
    ext.send(from_client(NODE, 30080, sport=40100, flags="A"))

    def forward_flags() -> int:
        (v,) = [v for k, v in xdp.dp.table("conntrack").items()
                if k.dir == FORWARD and k.sport == socket.htons(40100)]
        return v.flags
    assert not forward_flags() & CLOSING
    reset = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
             IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63) / TCP(sport=80, dport=port, flags="R"))
    back = ext.send(reset)
    assert back.verdict == "XDP_TX" and (back.pkt[IP].dst, back.pkt[TCP].dport) == (CLIENT, 40100)
    assert forward_flags() & CLOSING


def test_a_snated_flow_half_closed_by_its_remote_backend_outlives_the_close_timeout(ext, xdp):
    """The backend's FIN, matched on the SNAT entry, half-closes the flow: the client may
    go on sending after a pause past the close timeout, to the same backend and port, and
    the backend's acknowledgements still come back translated (the SNAT entry, closed by
    that FIN, is kept by the forward entry: np_holder)."""
    from controlplane.dataplane.affinity_maps import coarse_now_ns
    from controlplane.dataplane.flows import half_closed
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = ext.send(from_client(NODE, 30080, sport=40200, flags="S")).pkt[TCP].sport
    ext.send(from_client(NODE, 30080, sport=40200, flags="A"))

    def from_backend(flags: str):
        return (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
                IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63) / TCP(sport=80, dport=port, flags=flags))

    assert ext.send(from_backend("FA")).verdict == "XDP_TX"
    table = xdp.dp.table("conntrack")
    (flags,) = [v.flags for k, v in table.items() if k.dir == FORWARD and k.sport == socket.htons(40200)]
    assert half_closed(flags)
    idle = (xdp.dp.config.tcp_close_timeout_s + 2) * 10**9
    for k, v in list(table.items()):
        v.last_seen = coarse_now_ns() - idle
        table[k] = v
    out = ext.send(from_client(NODE, 30080, sport=40200, flags="PA") / Raw(b"more"))
    assert out.verdict == "XDP_TX" and (out.pkt[IP].dst, out.pkt[TCP].sport) == (nodenet.REMOTE_POD, port)
    back = ext.send(from_backend("A"))
    assert back.verdict == "XDP_TX" and (back.pkt[IP].dst, back.pkt[TCP].dport) == (CLIENT, 40200)


def test_what_no_service_backend_sent_passes_before_the_reply_tail(ext, xdp):
    """Packets on the external interface from an address that is no service's backend
    pass as they came, before the reply tail looks for a flow (svcxdp.c, process): the
    node's own traffic, whose answers come to the ports SNAT uses too, and late answers
    of a backend its service has left, even while its SNAT entry is still there."""
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = ext.send(from_client(NODE, 30080, sport=40000, flags="S")).pkt[TCP].sport

    def answer(src: str, sport: int):
        return (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
                IP(src=src, dst=NODE, ttl=63, id=11) / TCP(sport=sport, dport=port, flags="SA"))

    assert ext.send(answer(nodenet.REMOTE_POD, 80)).verdict == "XDP_TX"   # the backend's: translated
    before = xdp.counters()
    node_own = answer(CLIENT2, 443)
    out = ext.send(node_own)
    assert out.verdict == "XDP_PASS" and out.raw == bytes(node_own)
    # the service's backend is replaced: the old one's SNAT entry stays until it expires
    ext.service(NODE, 30080, ["10.244.2.12"])
    late = answer(nodenet.REMOTE_POD, 80)
    out = ext.send(late)
    assert out.verdict == "XDP_PASS" and out.raw == bytes(late)
    assert delta(before, xdp.counters()) == {"pass_non_service": 2}


def test_two_clients_with_the_same_source_port_get_different_snat_ports(ext):
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    a = ext.send(from_client(NODE, 30080, src=CLIENT, sport=40000, flags="S")).pkt
    b = ext.send(from_client(NODE, 30080, src=CLIENT2, sport=40000, flags="S")).pkt
    assert a[TCP].sport == SNAT_MIN + (40000 & SNAT_MASK)
    assert b[TCP].sport != a[TCP].sport and SNAT_MIN <= b[TCP].sport <= 65535
    for port, client in ((a[TCP].sport, CLIENT), (b[TCP].sport, CLIENT2)):
        reply = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
                 IP(src=nodenet.REMOTE_POD, dst=NODE) / TCP(sport=80, dport=port, flags="SA"))
        back = ext.send(reply).pkt
        assert (back[IP].dst, back[TCP].dport, back[Ether].dst) == (client, 40000, nodenet.CLIENTS[client])


def test_udp_nodeport_to_a_remote_backend(ext):
    ext.service(NODE, 30053, [nodenet.REMOTE_POD], proto="UDP", backend_port=53)
    pkt = from_client(NODE, 30053, sport=5353, proto=UDP)
    out = ext.send(pkt)
    assert out.verdict == "XDP_TX"
    port = SNAT_MIN + (5353 & SNAT_MASK)
    assert out.raw == bytes(rebuilt(pkt, eth_src=ext.node.ext_mac, eth_dst=nodenet.NODE2_MAC, ip_ttl=63,
                                    ip_src=NODE, ip_dst=nodenet.REMOTE_POD, l4_sport=port, l4_dport=53))
    reply = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
             IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=64) / UDP(sport=53, dport=port) / Raw(b"answer"))
    back = ext.send(reply)
    assert back.raw == bytes(rebuilt(reply, eth_src=ext.node.ext_mac, eth_dst=CLIENT_MAC, ip_ttl=63,
                                     ip_src=NODE, ip_dst=CLIENT, l4_sport=30053, l4_dport=5353))


@pytest.mark.parametrize("vip", [LB_IP, EXTERNAL_IP])
def test_load_balancer_ip_and_external_ip(ext, vip):
    ext.service(vip, 80, [nodenet.LOCAL_POD], backend_port=8080)
    pkt = from_client(vip, 80, flags="S")
    out = ext.send(pkt)
    assert out.verdict == "XDP_PASS"
    assert out.raw == bytes(rebuilt(pkt, ip_dst=nodenet.LOCAL_POD, l4_dport=8080))


def test_external_frontends_are_not_served_on_pod_interfaces(xdp, ext):
    """The pod-facing entry point looks up the cluster scope only: an external frontend
    alone (no twin) is not served there."""
    ext.service(NODE, 30080, [nodenet.LOCAL_POD])
    pkt = from_client(NODE, 30080, flags="S")
    assert xdp.send(pkt).raw == bytes(pkt)


def test_pods_reach_a_load_balancer_ip_through_its_twin_within_its_source_ranges(xdp, ext):
    """What the agent writes for a LoadBalancer IP: its external entry and a cluster-scope
    twin, which the pods' entry point finds (kube-proxy serves pods there too); a pod's
    new flow meets the twin's source ranges, as kube-proxy's firewall chain filters pods."""
    ext.service(LB_IP, 80, [nodenet.LOCAL_POD])
    xdp.writer.upsert(ServiceState(Frontend(LB_IP, 80, "TCP", "cluster"), (Backend(nodenet.REMOTE_POD, 8080),),
                                   source_ranges=("10.244.1.0/24",)))

    def from_pod(src: str, sport: int):
        return (Ether(src=harness.CLIENT_MAC, dst=harness.NODE_MAC) /
                IP(src=src, dst=LB_IP, ttl=64) / TCP(sport=sport, dport=80, flags="S"))

    allowed = xdp.send(from_pod("10.244.1.5", 41000))
    assert allowed.verdict != "XDP_DROP"
    assert (allowed.pkt[IP].dst, allowed.pkt[TCP].dport) == (nodenet.REMOTE_POD, 8080)
    before = xdp.counters()
    assert xdp.send(from_pod("10.244.9.5", 41001)).verdict == "XDP_DROP"
    assert delta(before, xdp.counters()) == {"drop_source_range": 1}
    assert not [k for k in xdp.dp.table("conntrack").keys() if k.src == ip_to_be32("10.244.9.5")]


def denied_src() -> int:
    return ip_to_be32(CLIENT2)


def test_source_ranges_allow_and_deny(ext, xdp):
    ext.service(LB_IP, 80, [nodenet.LOCAL_POD], source_ranges=("192.168.1.100/32", "10.0.0.0/8"))
    allowed = ext.send(from_client(LB_IP, 80, src=CLIENT, flags="S"))
    assert allowed.verdict == "XDP_PASS" and allowed.pkt[IP].dst == nodenet.LOCAL_POD
    before = xdp.counters()
    denied = ext.send(from_client(LB_IP, 80, src=CLIENT2, flags="S"))
    assert denied.verdict == "XDP_DROP"
    assert delta(before, xdp.counters())["drop_source_range"] == 1
    # checked on new flows, as kube-proxy's firewall does: the denied flow is not kept
    assert not [k for k in xdp.dp.table("conntrack").keys() if k.src == denied_src()]
    assert ext.send(from_client(LB_IP, 80, src=CLIENT2, flags="A")).verdict == "XDP_DROP"
    # widening the ranges lets it in; dropping them all opens the frontend
    ext.service(LB_IP, 80, [nodenet.LOCAL_POD], source_ranges=("192.168.1.0/24",))
    assert ext.send(from_client(LB_IP, 80, src=CLIENT2, sport=1, flags="S")).verdict == "XDP_PASS"
    ext.service(LB_IP, 80, [nodenet.LOCAL_POD], source_ranges=("10.0.0.0/8",))
    assert ext.send(from_client(LB_IP, 80, src=CLIENT2, sport=2, flags="S")).verdict == "XDP_DROP"
    ext.service(LB_IP, 80, [nodenet.LOCAL_POD])
    assert ext.send(from_client(LB_IP, 80, src=CLIENT2, sport=3, flags="S")).verdict == "XDP_PASS"
    assert len(list(xdp.dp.table("source_ranges").keys())) == 0


def test_a_client_outside_the_source_ranges_leaves_no_trace_but_its_drop(ext, xdp):
    """A flood from outside a LoadBalancer's source ranges is what they are for: it must
    not count as the service's or a backend's new flows, nor write ClientIP affinity
    entries (which would evict the allowed clients' from the shared table)."""
    fe = ext.service(LB_IP, 80, [nodenet.LOCAL_POD], source_ranges=("192.168.1.100/32",),
                     affinity_timeout=10800)
    svc_id = xdp.writer.svc_id(fe)
    flows_before, stats_before, counters_before = (readout.backend_new_flows(xdp.dp),
                                                   xdp.dp.service_stats(svc_id), xdp.counters())
    assert ext.send(from_client(LB_IP, 80, src=CLIENT2, flags="S")).verdict == "XDP_DROP"
    assert delta(counters_before, xdp.counters()) == {"drop_source_range": 1}
    assert xdp.dp.service_stats(svc_id) == stats_before
    assert readout.backend_new_flows(xdp.dp) == flows_before
    assert not list(xdp.dp.table("affinity").keys())
    # the allowed client's flow is counted and remembered as before
    assert ext.send(from_client(LB_IP, 80, src=CLIENT, flags="S")).verdict == "XDP_PASS"
    moved = delta(counters_before, xdp.counters())
    assert (moved["drop_source_range"], moved["ct_new"], moved["affinity_new"]) == (1, 1, 1)
    stats = xdp.dp.service_stats(svc_id)
    assert (stats["new_flows"] - stats_before["new_flows"], stats["packets"] - stats_before["packets"]) == (1, 1)
    assert sum(readout.backend_new_flows(xdp.dp).values()) == sum(flows_before.values()) + 1
    assert [k.client for k in xdp.dp.table("affinity").keys()] == [ip_to_be32(CLIENT)]


def test_local_policy_without_local_endpoints_drops_and_no_endpoints_rejects(ext, xdp):
    """eTP Local, endpoints only elsewhere: dropped (a timeout). No endpoints at all: RST."""
    ext.service(NODE, 30080, [], local_drop=True)
    before = xdp.counters()
    assert ext.send(from_client(NODE, 30080, flags="S")).verdict == "XDP_DROP"
    assert delta(before, xdp.counters()) == {"drop_no_local": 1}
    ext.service(NODE, 30080, [])
    out = ext.send(from_client(NODE, 30080, flags="S"))
    assert out.verdict == "XDP_TX"
    assert out.pkt[TCP].flags == "RA" and out.pkt[IP].src == NODE and out.pkt[TCP].sport == 30080


def test_internal_policy_local_drops_clusterip_traffic_without_local_endpoints(xdp):
    fe = Frontend("10.96.0.50", 80, "TCP")
    xdp.writer.upsert(ServiceState(fe, (), local_drop=True))
    pkt = Ether(src=harness.CLIENT_MAC, dst=harness.NODE_MAC) / IP(src="10.244.1.10", dst="10.96.0.50") / TCP(sport=1234, dport=80, flags="S")
    before = xdp.counters()
    assert xdp.send(pkt).verdict == "XDP_DROP"
    assert delta(before, xdp.counters()) == {"drop_no_local": 1}


def test_fragments_of_a_snated_datagram_get_both_translations(ext):
    ext.service(NODE, 30053, [nodenet.REMOTE_POD], proto="UDP", backend_port=53)
    payload = bytes(range(256)) * 8
    whole = (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") /
             IP(src=CLIENT, dst=NODE, id=77, ttl=64) / UDP(sport=5000, dport=30053) / Raw(payload))
    l4 = bytes(whole[IP])[20:]  # UDP header + payload, split at 1024 bytes (offset 128 x 8)
    f1 = Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / IP(src=CLIENT, dst=NODE, id=77, ttl=64, flags="MF",
                                                            proto=17, frag=0) / Raw(l4[:1024])
    f2 = Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / IP(src=CLIENT, dst=NODE, id=77, ttl=64,
                                                            proto=17, frag=128) / Raw(l4[1024:])
    out1 = ext.send(f1)
    assert out1.verdict == "XDP_TX"
    port = SNAT_MIN + (5000 & SNAT_MASK)
    assert out1.pkt[IP].src == NODE and out1.pkt[IP].dst == nodenet.REMOTE_POD
    assert bytes(out1.pkt[IP])[20:24] == port.to_bytes(2, "big") + (53).to_bytes(2, "big")
    out2 = ext.send(f2)
    assert out2.verdict == "XDP_TX"
    assert out2.raw == bytes(rebuilt(f2, eth_src=ext.node.ext_mac, eth_dst=nodenet.NODE2_MAC, ip_ttl=63,
                                     ip_src=NODE, ip_dst=nodenet.REMOTE_POD))


def test_a_removed_frontend_stops_its_flows(ext, xdp):
    fe = ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    assert ext.send(from_client(NODE, 30080, flags="S")).verdict == "XDP_TX"
    xdp.writer.delete(fe)
    pkt = from_client(NODE, 30080, flags="A")
    out = ext.send(pkt)
    assert out.verdict == "XDP_PASS" and out.raw == bytes(pkt)


def _checksums_valid(out, l4=ICMP):
    """The outer IP and the `l4` checksums as scapy computes them from the same bytes."""
    again = out.copy()
    del again[IP].chksum
    del again[l4].chksum
    again = again.__class__(bytes(again))
    return again[IP].chksum == out[IP].chksum and again[l4].chksum == out[l4].chksum


def test_icmp_errors_about_a_snated_flow_are_translated_both_ways(ext, xdp):
    from scapy.layers.inet import IPerror, UDPerror
    ext.service(NODE, 30053, [nodenet.REMOTE_POD], proto="UDP", backend_port=53)
    first = ext.send(from_client(NODE, 30053, sport=5353, proto=UDP)).pkt
    port = first[UDP].sport
    before = xdp.counters()
    # node2 says the backend's port is closed, quoting node1:port -> backend:53
    err = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) / IP(src=nodenet.NODE2_IP, dst=NODE, ttl=64) /
           ICMP(type=3, code=3) / IP(src=NODE, dst=nodenet.REMOTE_POD, ttl=63) / UDP(sport=port, dport=53))
    out = ext.send(err)
    assert out.verdict == "XDP_TX"
    pkt = out.pkt
    assert (pkt[Ether].dst, pkt[IP].src, pkt[IP].dst) == (CLIENT_MAC, nodenet.NODE2_IP, CLIENT)
    assert (pkt[IPerror].src, pkt[IPerror].dst) == (CLIENT, NODE)
    assert (pkt[UDPerror].sport, pkt[UDPerror].dport) == (5353, 30053)
    assert _checksums_valid(pkt)
    # the client says its port is closed, quoting NODE:30053 -> client:5353
    err = (Ether(src=CLIENT_MAC, dst=ext.node.ext_mac) / IP(src=CLIENT, dst=NODE, ttl=64) /
           ICMP(type=3, code=3) / IP(src=NODE, dst=CLIENT, ttl=63) / UDP(sport=30053, dport=5353))
    out = ext.send(err)
    assert out.verdict == "XDP_TX"
    pkt = out.pkt
    assert (pkt[Ether].dst, pkt[IP].src, pkt[IP].dst) == (nodenet.NODE2_MAC, NODE, nodenet.REMOTE_POD)
    assert (pkt[IPerror].src, pkt[IPerror].dst) == (nodenet.REMOTE_POD, NODE)
    assert (pkt[UDPerror].sport, pkt[UDPerror].dport) == (53, port)
    assert _checksums_valid(pkt)
    assert delta(before, xdp.counters())["icmp_nat"] == 2


def test_icmp_of_no_flow_is_left_to_the_stack_on_the_external_side(ext):
    pkt = Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / IP(src=CLIENT, dst=NODE) / ICMP()
    out = ext.send(pkt)
    assert out.verdict == "XDP_PASS" and out.raw == bytes(pkt)


def test_algorithms_and_client_ip_affinity_on_a_nodeport(ext):
    pods = [nodenet.LOCAL_POD, "10.244.1.12"]
    ext.service(NODE, 30080, pods, algorithm="rr")
    got = [ext.send(from_client(NODE, 30080, sport=1000 + i, flags="S")).pkt[IP].dst for i in range(4)]
    assert got[0] != got[1] and got[:2] == got[2:]            # round robin over both
    ext.service(NODE, 30081, pods, affinity_timeout=60)
    got = {ext.send(from_client(NODE, 30081, sport=2000 + i, flags="S")).pkt[IP].dst for i in range(8)}
    assert len(got) == 1                                        # ClientIP: one pod for the client


def test_fragments_of_a_backends_reply_to_a_snated_flow_get_both_translations(ext):
    ext.service(NODE, 30053, [nodenet.REMOTE_POD], proto="UDP", backend_port=53)
    port = ext.send(from_client(NODE, 30053, sport=5000, proto=UDP)).pkt[UDP].sport
    payload = bytes(range(256)) * 8
    whole = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
             IP(src=nodenet.REMOTE_POD, dst=NODE, id=78, ttl=64) / UDP(sport=53, dport=port) / Raw(payload))
    l4 = bytes(whole[IP])[20:]
    head = Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac)
    f1 = head / IP(src=nodenet.REMOTE_POD, dst=NODE, id=78, ttl=64, flags="MF", proto=17, frag=0) / Raw(l4[:1024])
    f2 = head / IP(src=nodenet.REMOTE_POD, dst=NODE, id=78, ttl=64, proto=17, frag=128) / Raw(l4[1024:])
    out1 = ext.send(f1)
    assert out1.verdict == "XDP_TX"
    assert (out1.pkt[IP].src, out1.pkt[IP].dst) == (NODE, CLIENT)
    assert bytes(out1.pkt[IP])[20:24] == (30053).to_bytes(2, "big") + (5000).to_bytes(2, "big")
    out2 = ext.send(f2)
    assert out2.verdict == "XDP_TX"
    assert out2.raw == bytes(rebuilt(f2, eth_src=ext.node.ext_mac, eth_dst=CLIENT_MAC, ip_ttl=63,
                                     ip_src=NODE, ip_dst=CLIENT))


def test_udp_to_a_nodeport_without_endpoints_gets_icmp_port_unreachable(ext, xdp):
    """As the ClusterIP does (kube-proxy's REJECT), from the NodePort's address."""
    ext.service(NODE, 30053, [], proto="UDP", backend_port=53)
    pkt = from_client(NODE, 30053, sport=5353, proto=UDP)
    before = xdp.counters()
    out = ext.send(pkt)
    assert out.verdict == "XDP_TX"
    want = (Ether(src=pkt[Ether].dst, dst=CLIENT_MAC) / IP(src=NODE, dst=CLIENT, ttl=64, flags="DF", id=0) /
            ICMP(type=3, code=3) / bytes(pkt[IP])[:28])
    assert out.raw == bytes(Ether(bytes(want)))
    assert delta(before, xdp.counters()) == {"reject": 1}


def test_icmp_errors_about_a_nodeport_flow_to_a_local_pod_are_translated_both_ways(ext, xdp):
    """No SNAT here: the pod sees the client, the client sees the NodePort."""
    from scapy.layers.inet import IPerror, UDPerror
    ext.service(NODE, 30053, [nodenet.LOCAL_POD], proto="UDP", backend_port=53)
    assert ext.send(from_client(NODE, 30053, sport=5353, proto=UDP)).pkt[IP].dst == nodenet.LOCAL_POD
    before = xdp.counters()
    # the client says its port is closed, quoting the reply NODE:30053 -> client:5353;
    # on the external interface it becomes an error about LOCAL_POD:53, sent to the pod
    err = (Ether(src=CLIENT_MAC, dst=ext.node.ext_mac) / IP(src=CLIENT, dst=NODE, ttl=64) /
           ICMP(type=3, code=3) / IP(src=NODE, dst=CLIENT, ttl=63) / UDP(sport=30053, dport=5353))
    out = ext.send(err)
    assert out.verdict == "XDP_PASS"
    pkt = out.pkt
    assert (pkt[IP].src, pkt[IP].dst) == (CLIENT, nodenet.LOCAL_POD)
    assert (pkt[IPerror].src, pkt[IPerror].dst) == (nodenet.LOCAL_POD, CLIENT)
    assert (pkt[UDPerror].sport, pkt[UDPerror].dport) == (53, 5353)
    assert _checksums_valid(pkt)
    # the pod's side says the client's datagram could not be delivered, quoting
    # client:5353 -> LOCAL_POD:53; on the pod's veth it becomes one about the NodePort
    err = (Ether(src=nodenet.LOCAL_POD_MAC, dst="02:00:00:00:00:fe") /
           IP(src=nodenet.LOCAL_POD, dst=CLIENT, ttl=64) / ICMP(type=3, code=3) /
           IP(src=CLIENT, dst=nodenet.LOCAL_POD, ttl=63) / UDP(sport=5353, dport=53))
    out = xdp.send(err)
    assert out.verdict == "XDP_PASS"
    pkt = out.pkt
    assert (pkt[IP].src, pkt[IP].dst) == (NODE, CLIENT)
    assert (pkt[IPerror].src, pkt[IPerror].dst) == (CLIENT, NODE)
    assert (pkt[UDPerror].sport, pkt[UDPerror].dport) == (5353, 30053)
    assert _checksums_valid(pkt)
    assert delta(before, xdp.counters())["icmp_nat"] == 2


def test_a_vlan_tagged_new_flow_leaves_nothing_for_the_next_packet(ext):
    """A new flow's pending record (np_scratch) is the tail's to take on every way out.
    The tail once left tagged frames to the stack before taking it, and the record left
    behind was read as the next packet's: a backend's answer to another flow, which sets
    none, was source-NATed as a new flow of the stale frontend."""
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])
    port = ext.send(from_client(NODE, 30080, sport=40000, flags="S")).pkt[TCP].sport
    ext.service(NODE, 30081, [nodenet.LOCAL_POD])
    tagged = (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / Dot1Q(vlan=5) /
              IP(src=CLIENT2, dst=NODE, ttl=64) / TCP(sport=41000, dport=30081, flags="S"))
    out = ext.send(tagged)
    assert out.verdict == "XDP_PASS" and out.pkt[IP].dst == nodenet.LOCAL_POD
    answer = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
              IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63) / TCP(sport=80, dport=port, flags="SA"))
    back = ext.send(answer)
    assert back.verdict == "XDP_TX"
    assert (back.pkt[IP].src, back.pkt[TCP].sport, back.pkt[IP].dst, back.pkt[TCP].dport) == \
        (NODE, 30080, CLIENT, 40000)


@pytest.mark.parametrize("ranges", [(), ("10.244.2.0/24",)], ids=["open", "source-ranges"])
def test_a_client_that_is_its_own_backend_on_another_node_is_answered(ext, ranges):
    """A pod on another node calls the node's NodePort (or LoadBalancer IP) and is chosen
    as its own backend: its source becomes the hairpin address, then the node's on a
    SNAT port. The source ranges see the client; the tail keys the flow and records the
    answer's way back by the client as it sent (np_pending), not by the rewritten source."""
    vip, vport = (NODE, 30080) if not ranges else (LB_IP, 80)
    ext.service(vip, vport, [nodenet.REMOTE_POD], source_ranges=ranges)
    pkt = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
           IP(src=nodenet.REMOTE_POD, dst=vip, ttl=64) / TCP(sport=40000, dport=vport, flags="S"))
    out = ext.send(pkt)
    assert out.verdict == "XDP_TX"
    assert (out.pkt[IP].src, out.pkt[IP].dst, out.pkt[TCP].dport) == (NODE, nodenet.REMOTE_POD, 80)
    answer = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
              IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63) / TCP(sport=80, dport=out.pkt[TCP].sport, flags="SA"))
    back = ext.send(answer).pkt
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == \
        (vip, vport, nodenet.REMOTE_POD, 40000)


def test_an_icmp_error_about_a_snated_flow_sent_elsewhere_is_not_forwarded(ext):
    """An error about node:port -> backend is the node's (its quote's source); one sent
    to another address (here the LoadBalancer IP) is no error about the flow and is not
    passed on to the client."""
    ext.service(NODE, 30053, [nodenet.REMOTE_POD], proto="UDP", backend_port=53)
    port = ext.send(from_client(NODE, 30053, sport=5353, proto=UDP)).pkt[UDP].sport
    err = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) / IP(src=nodenet.NODE2_IP, dst=LB_IP, ttl=64) /
           ICMP(type=3, code=3) / IP(src=NODE, dst=nodenet.REMOTE_POD, ttl=63) / UDP(sport=port, dport=53))
    out = ext.send(err)
    assert out.verdict == "XDP_PASS" and out.pkt[IP].dst == LB_IP


def test_later_fragments_of_a_refused_datagram_are_not_sent_on(ext):
    """A refused first fragment leaves no record for the datagram's later fragments,
    which would otherwise reach the backend past the ranges."""
    ext.service(LB_IP, 53, [nodenet.LOCAL_POD], proto="UDP", backend_port=5353, source_ranges=("10.0.0.0/8",))
    datagram = IP(src=CLIENT2, dst=LB_IP, id=99, ttl=64) / UDP(sport=5000, dport=53) / Raw(b"Z" * 64)
    first, *later = [Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / f for f in fragment(datagram, fragsize=32)]
    assert ext.send(first).verdict == "XDP_DROP"
    for f in later:
        out = ext.send(f)
        assert out.verdict == "XDP_PASS" and out.raw == bytes(f)


def test_a_vlan_tagged_first_packet_meets_the_source_ranges_and_is_snated(ext, xdp):
    """A tagged frame's flow is checked against the source ranges; the tail finds its IP
    header where the pending record says and source-NATs it like any other, then leaves
    it to the stack (which sends tagged frames on)."""
    ext.service(LB_IP, 80, [nodenet.REMOTE_POD], source_ranges=("10.0.0.0/8",))
    ext.service(NODE, 30080, [nodenet.REMOTE_POD])

    def tagged(dst, dport):
        return (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / Dot1Q(vlan=5) /
                IP(src=CLIENT, dst=dst, ttl=64) / TCP(sport=40000, dport=dport, flags="S"))
    before = xdp.counters()
    assert ext.send(tagged(LB_IP, 80)).verdict == "XDP_DROP"
    assert delta(before, xdp.counters())["drop_source_range"] == 1
    out = ext.send(tagged(NODE, 30080))
    assert out.verdict == "XDP_PASS" and out.pkt[Dot1Q].vlan == 5
    pkt = out.pkt
    assert (pkt[IP].src, pkt[IP].dst, pkt[TCP].dport) == (NODE, nodenet.REMOTE_POD, 80)
    assert pkt[TCP].sport >= SNAT_MIN and _checksums_valid(pkt, TCP)
    answer = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
              IP(src=nodenet.REMOTE_POD, dst=NODE, ttl=63) / TCP(sport=80, dport=pkt[TCP].sport, flags="SA"))
    back = ext.send(answer).pkt
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (NODE, 30080, CLIENT, 40000)


def test_a_flow_s_datagram_too_large_for_its_way_out_with_df_is_answered_as_it_was_sent(ext, xdp):
    """A local pod behind a smaller MTU (an overlay's): the client's DF datagram to the
    NodePort is answered "fragmentation needed" about NodePort, not about the pod (which
    the stack's own answer would quote, and the client could not match). A flow's first
    packet is still left to the stack (nodeport.h, np_forward). The way back: a remote
    backend's answer too large for the route to the client is answered to the backend,
    about what it sent (its address, the node's SNAT port)."""
    ext.service(NODE, 30053, [nodenet.LOCAL_POD], proto="UDP", backend_port=53)
    ext.service(NODE, 30054, [nodenet.REMOTE_POD], proto="UDP", backend_port=53)

    def big(dport, sport, size=1400):
        return (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:ff") / IP(src=CLIENT, dst=NODE, flags="DF") /
                UDP(sport=sport, dport=dport) / Raw(b"q" * size))
    nodenet._ip(ext.node.name, "link", "set", "pod0", "mtu", "1000")
    try:
        before = xdp.counters()
        assert ext.send(big(30053, 41000)).verdict == "XDP_PASS"          # a new flow's first
        out = ext.send(big(30053, 41000))
        assert out.verdict == "XDP_TX"
        assert_frag_needed(out.pkt, (CLIENT, CLIENT_MAC), (CLIENT, 41000, NODE, 30053), 1000)
        assert delta(before, xdp.counters())["frag_needed"] == 1
        # without DF: to the stack, translated, to be fragmented there
        nodf = big(30053, 41000)
        nodf[IP].flags = 0
        out = ext.send(nodf)
        assert out.verdict == "XDP_PASS" and (out.pkt[IP].dst, out.pkt[UDP].dport) == (nodenet.LOCAL_POD, 53)
    finally:
        nodenet._ip(ext.node.name, "link", "set", "pod0", "mtu", "1500")
    port = ext.send(big(30054, 42000, size=10)).pkt[UDP].sport
    nodenet._ip(ext.node.name, "route", "add", f"{CLIENT}/32", "dev", "ext0", "mtu", "lock", "1100")
    try:
        reply = (Ether(src=nodenet.NODE2_MAC, dst=ext.node.ext_mac) /
                 IP(src=nodenet.REMOTE_POD, dst=NODE, flags="DF") / UDP(sport=53, dport=port) / Raw(b"a" * 1200))
        out = ext.send(reply)
        assert out.verdict == "XDP_TX"
        assert_frag_needed(out.pkt, (nodenet.REMOTE_POD, nodenet.NODE2_MAC), (nodenet.REMOTE_POD, 53, NODE, port), 1100)
    finally:
        nodenet._ip(ext.node.name, "route", "del", f"{CLIENT}/32", "dev", "ext0")


def test_a_new_builds_tails_serve_the_entry_point_still_attached(node):
    """An agent that loads a new build over the pinned maps (a restart that compiles
    in-process, as with --socket-lb-cgroup; an upgrade) puts its tail programs into the
    pinned np_tail while the previous build's entry point still runs on the external
    interface, until the agent attaches the new one. That entry point's packet must reach
    the new tail program with what it handed over (np_scratch, pinned): a NodePort SYN to
    a remote backend still leaves SNATed with XDP_TX, not passed untranslated."""
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.program import Dataplane, reset
    from controlplane.dataplane.writer import MapWriter
    cfg = DataplaneConfig(instance="pytest-np-tails", ct_size=4096, max_services=64, max_backends=256,
                          max_slots=1024, pin=True)
    reset(cfg)
    old = Dataplane.load(cfg)
    try:
        MapWriter(old).upsert(ServiceState(Frontend(NODE, 30080, "TCP", "external"),
                                           (Backend(nodenet.REMOTE_POD, 80),)))
        new = Dataplane.load(cfg)   # the same maps; its tail programs in np_tail now
        try:
            run = TestRunner(old.external_prog_fd)
            res = node.call(run.run, bytes(from_client(NODE, 30080, sport=40000, flags="S")), 1, node.ext_ifindex)
            out = Outcome(res.verdict_name, res.data)
            assert (out.verdict, out.pkt[IP].dst, out.pkt[IP].src) == ("XDP_TX", nodenet.REMOTE_POD, NODE)
        finally:
            new.close()
    finally:
        old.close()
        reset(cfg)
