"""Hairpin on the XDP path: a pod that reaches its own Service and is picked as the
backend gets the packet with the hairpin address as source, and its reply is turned
back into VIP -> pod, byte for byte with valid checksums."""
from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether

from controlplane.dataplane.layout import const

from .harness import CLIENT_MAC, NODE_MAC, VIP, Harness, delta
from .test_datapath import recompute

pytestmark = pytest.mark.root

POD = "10.244.1.10"
HAIRPIN = socket.inet_ntoa(const("HAIRPIN_IP").to_bytes(4, "big"))


def frame(src, dst, l4):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst, ttl=64, id=7) / l4


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_pod_reaching_itself_through_its_service(xdp: Harness, proto):
    l4 = (lambda s, d, **kw: TCP(sport=s, dport=d, flags=kw.get("flags", "S"), seq=1)) if proto == "TCP" \
        else (lambda s, d, **kw: UDP(sport=s, dport=d) / b"ping")
    xdp.service(port=80, protocol=proto, backends=(POD,), backend_port=8080)
    before = xdp.counters()
    out = xdp.send(frame(POD, VIP, l4(40000, 80)))
    assert out.verdict == "XDP_PASS"
    want = recompute(frame(HAIRPIN, POD, l4(40000, 8080)))
    assert out.raw == bytes(want)
    d = delta(before, xdp.counters())
    assert d == {"ct_new": 1, "hairpin": 1}

    # The pod answers the hairpin address; it gets VIP:80 -> itself back.
    reply = xdp.send(frame(POD, HAIRPIN, l4(8080, 40000, flags="SA")))
    assert reply.verdict == "XDP_PASS"
    assert reply.raw == bytes(recompute(frame(VIP, POD, l4(80, 40000, flags="SA"))))

    # Later packets of the flow keep being hairpinned.
    again = xdp.send(frame(POD, VIP, l4(40000, 80, flags="A")))
    assert again.raw == bytes(recompute(frame(HAIRPIN, POD, l4(40000, 8080, flags="A"))))


def test_other_clients_are_not_hairpinned(xdp: Harness):
    xdp.service(port=80, backends=(POD,), backend_port=8080)
    out = xdp.send(frame("10.244.1.11", VIP, TCP(sport=40000, dport=80, flags="S")))
    assert out.pkt[IP].src == "10.244.1.11" and out.pkt[IP].dst == POD
    # A packet to the hairpin address that is no reply of a hairpinned flow passes untouched.
    stray = frame(POD, HAIRPIN, TCP(sport=8080, dport=41000, flags="SA"))
    res = xdp.send(stray)
    assert res.verdict == "XDP_PASS" and res.raw == bytes(stray)


def test_fragments_of_a_hairpinned_datagram_keep_its_addresses_both_ways(xdp: Harness):
    """A datagram's later fragments carry no ports: they are translated as its first
    fragment was, the hairpin address included, or the pod could not reassemble it
    (fragments of one datagram from two sources). Its answer's later fragments come
    addressed to the hairpin address as the first did, and go back as VIP -> pod."""
    xdp.service(port=53, protocol="UDP", backends=(POD,), backend_port=5353)

    def fragments(src, dst, sport, dport, ident):
        datagram = IP(src=src, dst=dst, id=ident, ttl=64) / UDP(sport=sport, dport=dport) / (b"D" * 64)
        return [Ether(src=CLIENT_MAC, dst=NODE_MAC) / f for f in fragment(datagram, fragsize=32)]

    out = [xdp.send(f).pkt for f in fragments(POD, VIP, 40000, 53, 41)]
    assert [(p[IP].src, p[IP].dst) for p in out] == [(HAIRPIN, POD)] * len(out)
    back = [xdp.send(f).pkt for f in fragments(POD, HAIRPIN, 5353, 40000, 42)]
    assert [(p[IP].src, p[IP].dst) for p in back] == [(VIP, POD)] * len(back)
    assert len(out) == len(back) == 3
