"""A backend at the node's own address (a hostNetwork pod): XDP DNATs the client's packet
and the node answers it itself, out of a device's egress, where only the tc program
svcxdp_local_reply (bpf/local_reply.h) can turn the answer's source back into the
service's; so are ICMP errors the node sends about a translated flow. Frames run through
BPF_PROG_TEST_RUN of both programs. A test-run socket buffer carries complete checksums
(CHECKSUM_NONE): the partial checksums of what the node really sends are met in the lab
(tests/e2e/test_nodeport.py, a hostNetwork backend); a GSO socket buffer and a forwarded
one (skb->ingress_ifindex set) are test-run contexts of their own."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.testrun import TestRunner

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta

pytestmark = pytest.mark.root
TC_ACT_UNSPEC = 0xFFFFFFFF   # -1, as test-run's u32 retval gives it: the chain goes on

NODE_IP = "192.168.1.31"      # the backend: the node's own address, a hostNetwork server


@pytest.fixture
def tc(xdp: Harness) -> TestRunner:
    return TestRunner(xdp.dp.local_reply_prog_fd, skb=True)


def _answer(proto, sport: int, dport: int, payload: bytes = b"pong", **ip) -> Ether:
    return (Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=NODE_IP, dst=CLIENT, ttl=64, id=5, **ip) /
            proto(sport=sport, dport=dport) / Raw(payload))


def _expected(pkt: Ether, src: str, sport: int | None) -> bytes:
    out = pkt.copy()
    out[IP].src = src
    del out[IP].chksum
    l4 = out[IP].payload
    if sport is not None:
        l4.sport = sport
    if hasattr(l4, "chksum") and not (isinstance(l4, UDP) and l4.chksum == 0):
        del l4.chksum
    return bytes(Ether(bytes(out)))


@pytest.mark.parametrize("proto,port", [(TCP, 80), (UDP, 53)])
def test_the_nodes_own_answer_leaves_from_the_service(xdp: Harness, tc: TestRunner, proto, port):
    xdp.writer.upsert(ServiceState(Frontend(VIP, port, proto.__name__), (Backend(NODE_IP, 8181),), "random"))
    first = (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) /
             proto(sport=40000, dport=port, **({"flags": "S"} if proto is TCP else {})))
    out = xdp.send(first)
    assert out.verdict == "XDP_PASS" and (out.pkt[IP].dst, out.pkt[proto].dport) == (NODE_IP, 8181)
    before = xdp.counters()
    answer = _answer(proto, 8181, 40000)
    if proto is TCP:
        answer[TCP].flags = "SA"
    res = tc.run(bytes(answer))
    assert res.verdict == TC_ACT_UNSPEC         # sent on, past any later filter on the hook
    assert res.data == _expected(answer, VIP, port)
    assert delta(before, xdp.counters())["local_revnat"] == 1
    # another client port of the same client is no flow: left alone
    stranger = _answer(proto, 8181, 40001)
    assert tc.run(bytes(stranger)).data == bytes(stranger)
    # the same answer received on a device (forwarded: the XDP program on that device has
    # reverse-NATed it already, or it is none of ours) leaves at the first test
    before = xdp.counters()
    assert tc.run(bytes(answer), ingress_ifindex=1).data == bytes(answer)
    assert "local_revnat" not in delta(before, xdp.counters())


def test_a_zero_udp_checksum_stays_zero_and_later_fragments_follow_the_first(xdp: Harness, tc: TestRunner):
    xdp.writer.upsert(ServiceState(Frontend(VIP, 53, "UDP"), (Backend(NODE_IP, 8181),), "random"))
    xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=40002, dport=53))
    zero = _answer(UDP, 8181, 40002)
    zero[UDP].chksum = 0
    out = Ether(tc.run(bytes(zero)).data)
    assert (out[IP].src, out[UDP].sport, out[UDP].chksum) == (VIP, 53, 0)
    # a large answer the node fragmented: the first fragment is translated and recorded,
    # the later ones (no UDP header) take the same source
    whole = bytes(IP(src=NODE_IP, dst=CLIENT, id=77) / UDP(sport=8181, dport=40002) / Raw(b"x" * 1600))[20:]
    head = Ether(src=NODE_MAC, dst=CLIENT_MAC)
    f1 = head / IP(src=NODE_IP, dst=CLIENT, id=77, flags="MF", proto=17, frag=0) / Raw(whole[:1024])
    f2 = head / IP(src=NODE_IP, dst=CLIENT, id=77, proto=17, frag=128) / Raw(whole[1024:])
    o1, o2 = Ether(tc.run(bytes(f1)).data), Ether(tc.run(bytes(f2)).data)
    assert (o1[IP].src, bytes(o1[IP].payload)[:2]) == (VIP, (53).to_bytes(2, "big"))
    assert o2[IP].src == VIP and bytes(o2[IP].payload) == whole[1024:]
    again = Ether(bytes(o2))
    del again[IP].chksum
    assert Ether(bytes(again))[IP].chksum == o2[IP].chksum


def test_a_udp_gso_answer_keeps_a_pseudo_header_sum(xdp: Harness, tc: TestRunner):
    """A hostNetwork server sending with UDP_SEGMENT (QUIC) out of a device without TX
    checksum offload: one socket buffer of several segments, CHECKSUM_NONE (as in a
    test-run) yet its checksum field the pseudo-header's sum only, which the software
    segmentation completes for each segment. The address change goes into that sum, the
    port change not at all (each segment's header is summed as it is cut); the helpers
    would treat it as a complete checksum and every segment would arrive corrupt."""
    xdp.writer.upsert(ServiceState(Frontend(VIP, 443, "UDP"), (Backend(NODE_IP, 8443),), "random"))
    xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=40005, dport=443))
    seg, payload = 1000, bytes(range(256)) * 12                 # 3072 bytes: 4 segments

    def pseudo_sum(src: str) -> int:   # what udp4_hwcsum leaves in the field: ~csum_tcpudp_magic
        words = bytes(IP(src=src, dst=CLIENT))[12:20] + bytes([0, 17]) + (8 + len(payload)).to_bytes(2, "big")
        s = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s

    answer = _answer(UDP, 8443, 40005, payload)
    answer[UDP].chksum = pseudo_sum(NODE_IP)
    out = Ether(tc.run(bytes(answer), gso_size=seg).data)
    assert (out[IP].src, out[UDP].sport, out[UDP].chksum) == (VIP, 443, pseudo_sum(VIP))
    assert bytes(out[UDP].payload) == payload
    again = Ether(bytes(out))
    del again[IP].chksum
    assert Ether(bytes(again))[IP].chksum == out[IP].chksum
    # the same answer as one datagram (no GSO) carries a complete checksum, updated as such
    plain = _answer(UDP, 8443, 40005, payload[:seg])
    assert tc.run(bytes(plain)).data == _expected(plain, VIP, 443)


def _icmp_checksums_valid(out: Ether) -> bool:
    again = Ether(bytes(out))
    del again[IP].chksum, again[ICMP].chksum, again[IPerror].chksum
    again = Ether(bytes(again))
    return (again[IP].chksum, again[ICMP].chksum, again[IPerror].chksum) == \
        (out[IP].chksum, out[ICMP].chksum, out[IPerror].chksum)


def test_icmp_errors_the_node_sends_about_a_translated_flow_quote_the_service(xdp: Harness, tc: TestRunner):
    """A local backend's port unreachable (nothing listens on the hostNetwork port), and the
    stack's own error about a frame XDP translated and passed to it (here "fragmentation
    needed" towards a pod on another node): they quoted the backend, which the client cannot
    match to its socket. On their way out they quote the service, and the one the backend
    itself sent comes from the service's address."""
    xdp.writer.upsert(ServiceState(Frontend(VIP, 53, "UDP"), (Backend(NODE_IP, 8181),), "random"))
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"), (Backend(BACKENDS[0], 8080),), "random"))
    xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=40003, dport=53))
    xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=40004, dport=80, flags="S"))
    before = xdp.counters()
    unreach = (Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=NODE_IP, dst=CLIENT) / ICMP(type=3, code=3) /
               IPerror(src=CLIENT, dst=NODE_IP) / UDPerror(sport=40003, dport=8181))
    out = Ether(tc.run(bytes(unreach)).data)
    assert (out[IP].src, out[IPerror].dst, out[UDPerror].dport, out[UDPerror].sport) == (VIP, VIP, 53, 40003)
    assert _icmp_checksums_valid(out)
    too_big = (Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src="10.244.1.1", dst=CLIENT) / ICMP(type=3, code=4, nexthopmtu=1400) /
               IPerror(src=CLIENT, dst=BACKENDS[0], flags="DF") / TCPerror(sport=40004, dport=8080))
    out = Ether(tc.run(bytes(too_big)).data)
    assert (out[IP].src, out[IPerror].dst, out[TCPerror].dport, out[ICMP].nexthopmtu) == ("10.244.1.1", VIP, 80, 1400)
    assert _icmp_checksums_valid(out)
    assert delta(before, xdp.counters())["icmp_nat"] == 2
    # about no flow: left alone
    stranger = unreach.copy()
    stranger[UDPerror].sport = 40009
    assert tc.run(bytes(stranger)).data == bytes(stranger)
