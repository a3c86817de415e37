"""The DNS query handler on wire bytes: flags, EDNS, truncation, the answer cache and bad
queries (FORMERR / NOTIMP / REFUSED / BADVERS, never an exception). No sockets, no root."""
from __future__ import annotations

import asyncio
import logging
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from controlplane.dns.forward import Cached, Forwarder
from controlplane.dns.handler import Handler
from controlplane.store.interface import ADDED, WatchEvent

from test_dns_records import cluster, eps, external, headless, namespace, service

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
    assert plain.flags & dns.flags.TC and plain.edns < 0
    edns = ask(h, dns.message.make_query(big, "A", use_edns=0, payload=4096))
    assert edns.edns == 0 and edns.payload == 1232
    assert edns.flags & dns.flags.TC  # 120 addresses do not fit 1232 bytes either
    tcp = ask(h, dns.message.make_query(big, "A"), udp=False)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 120
    small = ask(h, dns.message.make_query(NAME, "A", use_edns=0))
    assert small.edns == 0 and not small.flags & dns.flags.TC


def _wire_size(h: Handler, query: dns.message.Message, udp=True) -> int:
    return len(h.handle(query.to_wire(), udp))  # type: ignore[arg-type]


def test_glue_that_does_not_fit_is_dropped_not_the_answer():
    """RFC 2181 §9: TC is not set because additional data does not fit. 16 SRV records
    (1052 bytes) fit 1232 bytes; their 16 glue A records do not all fit besides them."""
    ready = [(f"10.244.1.{i + 2}", True) for i in range(16)]
    h = handler(headless("mid", ports=[{"name": "http", "port": 80}]), eps("mid", ready, ports=(("http", 80, "TCP"),)))
    q = dns.message.make_query("_http._tcp.mid.default.svc.cluster.local", "SRV", use_edns=0, payload=1232)
    r = ask(h, q)
    assert not r.flags & dns.flags.TC and r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 1 and len(r.answer[0]) == 16
    glue = {rr.name.to_text() for rr in r.additional}
    assert glue and glue < {rd.target.to_text() for rd in r.answer[0]}  # what fits, not all
    assert r.edns == 0 and _wire_size(h, q) <= 1232
    tcp = ask(h, q, udp=False)  # over TCP everything fits
    assert sum(len(rr) for rr in tcp.additional) == 16 and not tcp.flags & dns.flags.TC


def test_an_answer_too_big_is_cut_to_whole_records_with_tc():
    """As many whole answer records as fit, TC set: over UDP (a client ignoring TC still
    gets addresses) and over TCP past 65535 bytes (5,000 endpoints), never TC + nothing."""
    many = [(f"10.244.{i // 200}.{i % 200 + 2}", True) for i in range(120)]
    h = handler(headless(), eps("hl", many))
    big = "hl.default.svc.cluster.local"
    for q, limit in ((dns.message.make_query(big, "A"), 512),
                     (dns.message.make_query(big, "A", use_edns=0, payload=4096), 1232)):
        r = ask(h, q)
        assert r.flags & dns.flags.TC and _wire_size(h, q) <= limit
        got = [rd.address for rd in r.answer[0]]
        assert 0 < len(got) < 120 and set(got) <= {ip for ip, _ in many}
        assert limit - _wire_size(h, q) < 16  # one more A record (16 bytes) would not fit
    huge = [(f"10.244.{i // 250}.{i % 250 + 2}", True) for i in range(5000)]
    h = handler(headless(), *(eps("hl", huge[i:i + 1000], name=f"hl-{i}") for i in range(0, 5000, 1000)))
    q = dns.message.make_query(big, "A")
    tcp = ask(h, q, udp=False)
    assert tcp.flags & dns.flags.TC and len(tcp.answer[0]) > 4000 and _wire_size(h, q, udp=False) <= 65535


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


def test_query_type_0_is_nodata_never_a_servfail():
    """QTYPE 0 must not select the "name exists" marker (it did: SERVFAIL, no question,
    and a traceback per packet)."""
    h = handler(namespace("default"), namespace("empty"), headless(), eps("hl", [("10.244.1.5", True)]))
    for name in ("hl.default.svc.cluster.local", "default.svc.cluster.local", "empty.svc.cluster.local",
                 "default.pod.cluster.local", NAME):
        r = ask(h, dns.message.make_query(name, 0))
        assert r.rcode() == dns.rcode.NOERROR and not r.answer, name
        assert r.question[0].name.to_text() == name + "."
        assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]


def test_an_unexpected_exception_is_servfail_with_the_question_and_logged_rate_limited(caplog):
    h = handler()

    def broken(name, qtype):
        raise ValueError("a bug")
    h.zones.lookup = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, logger="svcxdp.dns"):
        for _ in range(50):
            r = ask(h, dns.message.make_query(NAME, "A"))
            assert r.rcode() == dns.rcode.SERVFAIL and r.question[0].name.to_text() == NAME + "."
    assert h.counters.servfail == 50
    errors = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info  # one traceback, not one per packet


class FakeUpstream(Forwarder):
    """Answers every (name, type) with one TXT or A record, or raises."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__([("192.0.2.1", 53)])
        self.fail, self.asked = fail, []

    async def resolve(self, name, rdtype, dnssec=False, checking_disabled=False):
        self.asked.append((name.to_text(), dns.rdatatype.to_text(rdtype)))
        if self.fail:
            raise RuntimeError("a bug in the forwarder")
        rdata = '"hello"' if rdtype == dns.rdatatype.TXT else "192.0.2.10"
        rtype = dns.rdatatype.TXT if rdtype == dns.rdatatype.TXT else dns.rdatatype.A
        answer = [dns.rrset.from_text(name, 30, "IN", rtype, rdata)]
        return Cached(0, 0, dns.rcode.NOERROR, answer, [])


def _settle(out):
    return out if isinstance(out, bytes) else asyncio.run(out)


def test_externalname_is_followed_upstream_for_every_type_but_cname_any_srv():
    """CoreDNS answers A, AAAA and TXT through the target; any other type is chased too
    (a stub resolver does not follow the CNAME itself). CNAME and ANY are answered by the
    CNAME; SRV, as CoreDNS, is not looked up for an external service."""
    up = FakeUpstream()
    h = handler(external(), forwarder=up)
    name = "ext.default.svc.cluster.local"
    txt = dns.message.from_wire(_settle(h.handle(dns.message.make_query(name, "TXT").to_wire(), True)))
    assert [(rr.rdtype, rr.name.to_text()) for rr in txt.answer] == [
        (dns.rdatatype.CNAME, name + "."), (dns.rdatatype.TXT, "www.example.com.")]
    assert txt.rcode() == dns.rcode.NOERROR and not txt.authority
    for qtype in ("MX", "A"):
        r = dns.message.from_wire(_settle(h.handle(dns.message.make_query(name, qtype).to_wire(), True)))
        assert len(r.answer) == 2, qtype
    assert up.asked == [("www.example.com.", "TXT"), ("www.example.com.", "MX"), ("www.example.com.", "A")]
    for qtype in ("CNAME", "ANY", "SRV"):
        out = h.handle(dns.message.make_query(name, qtype).to_wire(), True)
        assert isinstance(out, bytes), qtype  # answered here, nothing asked upstream
        r = dns.message.from_wire(out)
        assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME], qtype
    assert len(up.asked) == 3


def test_externalname_chasing_is_bounded_like_forwarding():
    """With MAX_PENDING_FORWARDS upstream queries in flight, an ExternalName is answered by
    its CNAME alone (chasing had no bound: a flood of them held any number of queries)."""
    from controlplane.dns.handler import MAX_PENDING_FORWARDS
    up = FakeUpstream()
    h = handler(external(), forwarder=up)
    h.pending = MAX_PENDING_FORWARDS
    out = h.handle(dns.message.make_query("ext.default.svc.cluster.local", "A").to_wire(), True)
    assert isinstance(out, bytes) and up.asked == []
    assert [rr.rdtype for rr in dns.message.from_wire(out).answer] == [dns.rdatatype.CNAME]


def test_a_failing_forward_is_servfail_not_an_exception(caplog):
    h = handler(external(), forwarder=FakeUpstream(fail=True))
    with caplog.at_level(logging.DEBUG, logger="svcxdp.dns"):
        for qname in ("ext.default.svc.cluster.local", "www.example.com"):
            r = dns.message.from_wire(_settle(h.handle(dns.message.make_query(qname, "A").to_wire(), False)))
            assert r.rcode() == dns.rcode.SERVFAIL and r.question[0].name.to_text() == qname + "."
    assert len([rec for rec in caplog.records if rec.levelno >= logging.WARNING]) == 1


def test_a_chase_skipped_under_load_is_not_kept_in_the_answer_cache():
    """The CNAME alone, answered while MAX_PENDING_FORWARDS were in flight, was kept in the
    UDP answer cache and served until the zone next changed: once the forwards drain, the
    same query is chased again."""
    from controlplane.dns.handler import MAX_PENDING_FORWARDS
    up = FakeUpstream()
    h = handler(external(), forwarder=up)
    query = dns.message.make_query("ext.default.svc.cluster.local", "A").to_wire()
    h.pending = MAX_PENDING_FORWARDS
    assert isinstance(h.handle(query, True), bytes) and up.asked == []
    assert query[2:] not in h.udp_cache   # what the server answers from before asking the handler
    h.pending = 0
    r = dns.message.from_wire(_settle(h.handle(query, True)))
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert up.asked == [("www.example.com.", "A")]


def test_the_do_bit_is_copied_into_our_answers():
    """RFC 3225 §3: the DO bit of a query is copied into the response (dig +dnssec)."""
    h = handler()
    signed = ask(h, dns.message.make_query(NAME, "A", want_dnssec=True))
    assert signed.ednsflags & dns.flags.DO and signed.answer
    plain = ask(h, dns.message.make_query(NAME, "A", use_edns=0))
    assert plain.edns == 0 and not plain.ednsflags & dns.flags.DO


class LoopbackUpstream(asyncio.DatagramProtocol):
    """A real upstream on 127.0.0.1 (a random port): answers each query with one A record,
    an additional A record and the AD bit; a name starting with "nx" with NXDOMAIN and an
    SOA. Keeps the (name, DO, CD) of every query it gets."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, bool]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        q = dns.message.from_wire(data)
        name = q.question[0].name
        self.seen.append((name.to_text(), bool(q.ednsflags & dns.flags.DO), bool(q.flags & dns.flags.CD)))
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AD
        if name.labels[0].startswith(b"nx"):
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(dns.rrset.from_text("example.org.", 60, "IN", "SOA",
                                                   "ns.example.org. host.example.org. 1 2 3 4 60"))
        else:
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.10"))
            r.additional.append(dns.rrset.from_text("extra.example.org.", 60, "IN", "A", "192.0.2.11"))
        self.transport.sendto(r.to_wire(), addr)


def _through_loopback_upstream(objs, queries):
    """The answers of a Handler whose Forwarder asks a LoopbackUpstream, and what it saw."""
    async def run():
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(LoopbackUpstream, local_addr=("127.0.0.1", 0))
        try:
            h = handler(*objs, forwarder=Forwarder([transport.get_extra_info("sockname")[:2]], timeout=5))
            out = []
            for q in queries:
                got = h.handle(q.to_wire(), True)
                out.append(dns.message.from_wire(got if isinstance(got, bytes) else await got))
            return out, upstream.seen
        finally:
            transport.close()
    return asyncio.run(run())


def test_dnssec_wishes_go_upstream_and_its_answer_comes_back_whole():
    """As CoreDNS's forward relays a query: DO and CD are asked upstream, the answer keeps
    its additional section, and the upstream's AD reaches a client that set DO or AD; the
    answers are cached apart per (DO, CD)."""
    signed = dns.message.make_query("www.example.org", "A", want_dnssec=True)
    signed.flags |= dns.flags.CD
    plain = dns.message.make_query("www.example.org", "A", use_edns=0)
    (r1, r2, r3), seen = _through_loopback_upstream((), [signed, plain, signed])
    assert seen == [("www.example.org.", True, True), ("www.example.org.", False, False)]  # the third: cached
    for r in (r1, r3):
        assert r.flags & dns.flags.AD and r.ednsflags & dns.flags.DO
        assert [rr.name.to_text() for rr in r.additional] == ["extra.example.org."]
    assert not r2.flags & dns.flags.AD and r2.answer


def test_an_externalname_whose_target_does_not_exist_keeps_the_upstream_soa():
    """NXDOMAIN for the CNAME's target carries the upstream's SOA, so the negative answer
    can be cached (RFC 2308 §5); it was dropped."""
    (r,), _ = _through_loopback_upstream((external(target="nx.example.org"),),
                                         [dns.message.make_query("ext.default.svc.cluster.local", "A")])
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME]
    assert [(rr.name.to_text(), rr.rdtype) for rr in r.authority] == [("example.org.", dns.rdatatype.SOA)]
