"""Table-driven packet tests in Katran's style: packet in, verdict, packet out
(byte for byte), counters. Services are set up through the real map writer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta

pytestmark = pytest.mark.root

B1 = BACKENDS[0]


def eth():
    return Ether(src=CLIENT_MAC, dst=NODE_MAC)


def recompute(pkt):
    """A copy with checksums and lengths left for scapy to compute."""
    p = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if p.haslayer(layer):
            l = p[layer]
            if layer is UDP and l.chksum == 0:
                pass  # "no checksum" is a valid choice the sender made
            elif hasattr(l, "chksum"):
                del l.chksum
            if layer in (IP, UDP) and hasattr(l, "len"):
                del l.len
    return p.__class__(bytes(p))


def dnat(pkt, ip=B1, port=8080):
    out = pkt.copy()
    out[IP].dst = ip
    if out.haslayer(TCP):
        out[TCP].dport = port
        del out[TCP].chksum
    if out.haslayer(UDP):
        out[UDP].dport = port
        if pkt[UDP].chksum != 0:
            del out[UDP].chksum
    del out[IP].chksum
    return out.__class__(bytes(out))


@dataclass
class Case:
    description: str
    setup: Callable[[Harness], None]
    packet: object
    verdict: str
    expect: Callable[[object], object] | None  # builds the expected packet; None = unchanged
    counters: dict[str, int] = field(default_factory=dict)


def one_backend(h: Harness):
    h.service(backends=(B1,))
    h.service(port=53, protocol="UDP", backends=(B1,), backend_port=5353)


def no_backends(h: Harness):
    h.service(backends=())
    h.service(port=53, protocol="UDP", backends=())


SYN = eth() / IP(src=CLIENT, dst=VIP, ttl=64) / TCP(sport=40000, dport=80, flags="S", seq=1000)
UDP_Q = eth() / IP(src=CLIENT, dst=VIP) / UDP(sport=40001, dport=53) / Raw(b"query")

CASES = [
    Case("TCP SYN to a VIP is DNATed to its backend", one_backend, SYN, "XDP_PASS",
         lambda p: dnat(p), {"ct_new": 1}),
    Case("UDP to a VIP is DNATed, checksum updated", one_backend, UDP_Q, "XDP_PASS",
         lambda p: dnat(p, port=5353), {"ct_new": 1}),
    Case("UDP with a zero checksum keeps it zero",
         one_backend, eth() / IP(src=CLIENT, dst=VIP) / UDP(sport=40002, dport=53, chksum=0) / Raw(b"x" * 11),
         "XDP_PASS", lambda p: dnat(p, port=5353), {"ct_new": 1}),
    Case("traffic to a non-VIP address passes untouched", one_backend,
         eth() / IP(src=CLIENT, dst="10.244.2.99") / TCP(sport=40000, dport=80), "XDP_PASS", None,
         {"pass_non_service": 1}),
    Case("a VIP on another port passes untouched", one_backend,
         eth() / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=81, flags="S"), "XDP_PASS", None,
         {"pass_non_service": 1}),
    Case("a VIP with the other protocol passes untouched", one_backend,
         eth() / IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=80), "XDP_PASS", None,
         {"pass_non_service": 1}),
    Case("ARP passes untouched", one_backend,
         Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=CLIENT, pdst=VIP), "XDP_PASS", None,
         {"pass_non_ip": 1}),
    Case("IPv6 passes untouched", one_backend,
         Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=53),
         "XDP_PASS", None, {"pass_non_ip": 1}),
    Case("ICMP echo to a VIP passes untouched", one_backend,
         eth() / IP(src=CLIENT, dst=VIP) / ICMP(), "XDP_PASS", None, {"pass_non_service": 1}),
    Case("VLAN-tagged TCP to a VIP is DNATed, tag kept", one_backend,
         Ether(src=CLIENT_MAC, dst=NODE_MAC) / Dot1Q(vlan=42) / IP(src=CLIENT, dst=VIP) / TCP(sport=40003, dport=80, flags="S"),
         "XDP_PASS", lambda p: dnat(p), {"ct_new": 1}),
    Case("IPv4 options: transport header found after them, DNATed", one_backend,
         eth() / IP(src=CLIENT, dst=VIP, options=[IPOption_Router_Alert()]) / TCP(sport=40004, dport=80, flags="S"),
         "XDP_PASS", lambda p: dnat(p), {"ct_new": 1}),
    Case("TTL is left to the kernel when passing", one_backend,
         eth() / IP(src=CLIENT, dst=VIP, ttl=1) / TCP(sport=40005, dport=80, flags="S"),
         "XDP_PASS", lambda p: dnat(p), {"ct_new": 1}),
    Case("IPv4 ethertype with nothing after it is dropped", one_backend,
         Raw(bytes(SYN)[:14]), "XDP_DROP", None, {"drop_malformed": 1}),
    Case("truncated VLAN tag is dropped", one_backend,
         Raw(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC, type=0x8100))[:14] + b"\x00\x2a"), "XDP_DROP", None,
         {"drop_malformed": 1}),
    Case("truncated IPv4 header is dropped", one_backend,
         Raw(bytes(SYN)[:14 + 12]), "XDP_DROP", None, {"drop_malformed": 1}),
    Case("IPv4 total length beyond the frame is dropped", one_backend,
         Raw(bytes(SYN)[:14 + 20 + 10]), "XDP_DROP", None, {"drop_malformed": 1}),
    Case("truncated TCP header is dropped", one_backend,
         eth() / IP(src=CLIENT, dst=VIP, proto=6) / Raw(b"\x9c\x40\x00\x50\x00\x00"), "XDP_DROP", None,
         {"drop_malformed": 1}),
    Case("IHL below 5 is dropped", one_backend,
         eth() / IP(src=CLIENT, dst=VIP, ihl=4) / TCP(sport=40000, dport=80), "XDP_DROP", None,
         {"drop_malformed": 1}),
    Case("TCP SYN to a service without endpoints gets a RST", no_backends, SYN, "XDP_TX",
         lambda p: recompute(Ether(src=NODE_MAC, dst=CLIENT_MAC) /
                             IP(src=VIP, dst=CLIENT, ttl=64, flags="DF", id=0) /
                             TCP(sport=80, dport=40000, flags="RA", seq=0, ack=1001, window=0)),
         {"reject": 1}),
    Case("TCP ACK to a service without endpoints gets a RST with its ack as seq", no_backends,
         eth() / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="A", seq=5, ack=777) / Raw(b"data"),
         "XDP_TX",
         lambda p: recompute(Ether(src=NODE_MAC, dst=CLIENT_MAC) /
                             IP(src=VIP, dst=CLIENT, ttl=64, flags="DF", id=0) /
                             TCP(sport=80, dport=40000, flags="R", seq=777, ack=0, window=0)),
         {"reject": 1}),
    Case("a RST to a service without endpoints is not answered", no_backends,
         eth() / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="R"), "XDP_DROP", None,
         {"drop_malformed": 1}),
    # Without a flow, TCP flags no connection starts with are netfilter's INVALID (kube-proxy
    # drops them): no backend chosen, no new flow counted, no reject sent.
    *[Case(f"TCP flags {flags!r} start no flow: dropped", one_backend,
           eth() / IP(src=CLIENT, dst=VIP) / TCP(sport=40010, dport=80, flags=flags), "XDP_DROP", None,
           {"drop_malformed": 1}) for flags in ("F", "FA", "R", "RA", "SF", "SR", "SA", "")],
    Case("TCP SYN+FIN to a service without endpoints is not answered", no_backends,
         eth() / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="SF"), "XDP_DROP", None,
         {"drop_malformed": 1}),
    # A reject answers one host (RFC 1122): spoofed group or martian sources, or a frame to
    # a link-layer group, would make a service without endpoints a reflector.
    *[Case(f"UDP from {src} to a service without endpoints is not answered", no_backends,
           eth() / IP(src=src, dst=VIP) / UDP(sport=40000, dport=53), "XDP_DROP", None, {"drop_malformed": 1})
      for src in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255")],
    Case("a SYN to a service without endpoints sent to a broadcast MAC is not answered", no_backends,
         Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="S"),
         "XDP_DROP", None, {"drop_malformed": 1}),
    Case("UDP to a service without endpoints gets ICMP port unreachable", no_backends, UDP_Q, "XDP_TX",
         lambda p: recompute(Ether(src=NODE_MAC, dst=CLIENT_MAC) /
                             IP(src=VIP, dst=CLIENT, ttl=64, flags="DF", id=0, tos=0) /
                             ICMP(type=3, code=3) / bytes(p[IP])[:28]),
         {"reject": 1}),
    Case("VLAN-tagged UDP to a service without endpoints: ICMP keeps the tag", no_backends,
         Ether(src=CLIENT_MAC, dst=NODE_MAC) / Dot1Q(vlan=7) / IP(src=CLIENT, dst=VIP) / UDP(sport=40001, dport=53) / Raw(b"q"),
         "XDP_TX",
         lambda p: recompute(Ether(src=NODE_MAC, dst=CLIENT_MAC) / Dot1Q(vlan=7) /
                             IP(src=VIP, dst=CLIENT, ttl=64, flags="DF", id=0) /
                             ICMP(type=3, code=3) / bytes(p[IP])[:28]),
         {"reject": 1}),
    Case("UDP with IP options to a service without endpoints: ICMP quotes the options", no_backends,
         eth() / IP(src=CLIENT, dst=VIP, options=[IPOption_Router_Alert()]) / UDP(sport=40001, dport=53) / Raw(b"q" * 20),
         "XDP_TX",
         lambda p: recompute(Ether(src=NODE_MAC, dst=CLIENT_MAC) /
                             IP(src=VIP, dst=CLIENT, ttl=64, flags="DF", id=0) /
                             ICMP(type=3, code=3) / bytes(p[IP])[:24 + 8]),
         {"reject": 1}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_packet_table(xdp: Harness, case: Case):
    case.setup(xdp)
    before = xdp.counters()
    out = xdp.send(case.packet)
    assert out.verdict == case.verdict
    expected = bytes(case.packet) if case.expect is None else bytes(case.expect(case.packet))
    if case.verdict != "XDP_DROP":
        assert out.raw.hex() == expected.hex(), out.pkt.show(dump=True)
        # The kernel will re-verify these: scapy recomputing them must change nothing.
        assert bytes(recompute(out.pkt)) == out.raw
    assert delta(before, xdp.counters()) == case.counters


def test_checksums_verified_by_scapy_for_many_ports(xdp: Harness):
    xdp.service(backends=(B1,))
    xdp.service(port=53, protocol="UDP", backends=(B1,), backend_port=5353)
    for sport in range(1024, 65536, 997):
        for l4 in (TCP(sport=sport, dport=80, flags="S", seq=sport * 7),
                   UDP(sport=sport, dport=53)):
            out = xdp.send(eth() / IP(src=CLIENT, dst=VIP, id=sport) / l4 / Raw(b"p" * (sport % 50)))
            assert out.verdict == "XDP_PASS"
            assert bytes(recompute(out.pkt)) == out.raw
            assert out.pkt[IP].dst == B1
