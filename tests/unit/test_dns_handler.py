"""The DNS query handler on wire bytes: flags, EDNS, truncation, the answer cache and bad
queries (FORMERR / NOTIMP / REFUSED / BADVERS, never an exception). No sockets, no root."""
from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from controlplane.dns.forward import Forwarder
from controlplane.dns.handler import Handler
from controlplane.store.interface import ADDED, WatchEvent

from test_dns_records import cluster, eps, headless, service

NAME = "web.default.svc.cluster.local"


def handler(*objs, forwarder=None) -> Handler:
    zones, objects = cluster(service(), *objs)
    h = Handler(zones, forwarder)
    h.objects = objects  # for tests that change the zone
    return h


def ask(h: Handler, query: dns.message.Message | bytes, udp=True) -> dns.message.Message:
    wire = query if isinstance(query, bytes) else query.to_wire()
    out = h.handle(wire, udp)
    assert isinstance(out, bytes), out
    return dns.message.from_wire(out)


def test_authoritative_answer_flags_and_question_echo():
    q = dns.message.make_query("WEB.Default.svc.Cluster.Local", "A")
    r = ask(handler(), q)
    assert r.id == q.id and r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.AA and r.flags & dns.flags.RD
    assert r.question[0].name.to_text() == "WEB.Default.svc.Cluster.Local."  # as asked (0x20)
    assert [rd.address for rd in r.answer[0]] == ["10.96.0.50"]


def test_nxdomain_and_nodata_on_the_wire():
    h = handler()
    nx = ask(h, dns.message.make_query("nope.default.svc.cluster.local", "A"))
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask(h, dns.message.make_query(NAME, "AAAA"))
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA


def test_edns_echoed_and_truncation_over_udp_only():
    many = [(f"10.244.{i // 200}.{i % 200 + 2}", True) for i in range(120)]
    h = handler(headless(), eps("hl", many))
    big = "hl.default.svc.cluster.local"
    plain = ask(h, dns.message.make_query(big, "A"))
    assert plain.flags & dns.flags.TC and not plain.answer and plain.edns < 0
    edns = ask(h, dns.message.make_query(big, "A", use_edns=0, payload=4096))
    assert edns.edns == 0 and edns.payload == 1232
    assert edns.flags & dns.flags.TC  # 120 addresses do not fit 1232 bytes either
    tcp = ask(h, dns.message.make_query(big, "A"), udp=False)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 120
    small = ask(h, dns.message.make_query(NAME, "A", use_edns=0))
    assert small.edns == 0 and not small.flags & dns.flags.TC


def test_cache_hit_patches_the_id_and_a_zone_change_invalidates():
    h = handler()
    q1 = dns.message.make_query(NAME, "A")
    ask(h, q1)
    assert len(h.udp_cache) == 1
    q2 = dns.message.make_query(NAME, "A")
    wire = q2.to_wire()
    cached = h.udp_cache[wire[2:]]
    assert dns.message.from_wire(wire[:2] + cached).id == q2.id
    h.objects.apply([WatchEvent(ADDED, service(ip="10.96.0.51"), 99)])
    h.zone_changed()  # what the feed calls after applying
    assert not h.udp_cache
    assert [rd.address for rd in ask(h, q2).answer[0]] == ["10.96.0.51"]


def test_no_upstream_is_servfail_at_once_and_no_forwarding_is_refused():
    q = dns.message.make_query("www.example.com", "A")
    assert ask(handler(forwarder=Forwarder([])), q).rcode() == dns.rcode.SERVFAIL
    assert ask(handler(forwarder=None), q).rcode() == dns.rcode.REFUSED


def _raw(qdcount=1, flags=0x0100, questions=b"", arcount=0, tail=b"") -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qdcount, 0, 0, arcount) + questions + tail


def _q(name=b"\x03web\x07default\x03svc\x07cluster\x05local\x00", qtype=1, qclass=1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


@pytest.mark.parametrize("packet,rcode", [
    (_raw(0), dns.rcode.FORMERR),                                   # no question
    (_raw(2, questions=_q() + _q()), dns.rcode.FORMERR),            # two questions
    (_raw(1, questions=_q()[:-3]), dns.rcode.FORMERR),              # cut short
    (_raw(1, questions=b"\x40" + b"a" * 64 + b"\x00" + b"\x00\x01\x00\x01"), dns.rcode.FORMERR),  # 64-byte label
    (_raw(1, questions=_q((b"\x3f" + b"a" * 63) * 4 + b"\x00")), dns.rcode.FORMERR),  # name > 255
    (_raw(1, questions=_q(b"\xc0\x0c")), dns.rcode.FORMERR),        # pointer loop
    (_raw(1, questions=_q(qclass=3)), dns.rcode.REFUSED),           # CHAOS
    (_raw(1, questions=_q(qclass=1234)), dns.rcode.NOTIMP),         # no such class
    (_raw(1, flags=0x2800, questions=_q()), dns.rcode.NOTIMP),      # opcode UPDATE
    (_raw(1, flags=0x2000, questions=_q()), dns.rcode.NOTIMP),      # opcode NOTIFY
    (_raw(1, questions=_q(qtype=252)), dns.rcode.REFUSED),          # AXFR
    (_raw(1, questions=_q(qtype=41)), dns.rcode.FORMERR),           # OPT as a question
    (_raw(1, questions=_q() + b"junk"), dns.rcode.FORMERR),         # trailing bytes
])
def test_bad_queries_get_error_codes(packet, rcode):
    out = handler().handle(packet, True)
    assert isinstance(out, bytes)
    assert out[:2] == b"\x12\x34" and out[2] & 0x80  # our id, QR set
    assert out[3] & 0x0F == rcode


def test_edns_version_1_is_badvers():
    q = dns.message.make_query(NAME, "A", use_edns=1)
    r = ask(handler(), q)
    assert r.rcode() == dns.rcode.BADVERS


def test_responses_and_runts_are_dropped():
    h = handler()
    assert h.handle(b"\x12", True) is None
    assert h.handle(_raw(1, flags=0x8180, questions=_q()), True) is None  # QR set: a response


def test_random_garbage_never_raises():
    import random
    rng = random.Random(7)
    h = handler()
    base = dns.message.make_query(NAME, "SRV", use_edns=0).to_wire()
    for _ in range(3000):
        pkt = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        pkt = bytes(pkt[: rng.randint(0, len(pkt) + 4)])
        out = h.handle(pkt, rng.random() < 0.5)
        assert out is None or isinstance(out, bytes) or hasattr(out, "__await__")
        if hasattr(out, "close"):
            out.close()  # an un-awaited forward (names outside our zones)
