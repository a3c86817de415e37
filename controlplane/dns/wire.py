"""Wire format, through dnspython: checking a query, turning an `Answer` into a response,
sizing it for UDP or TCP (glue dropped first; TC only when answer records do not fit).

`check_query` says what a real server answers to a bad query instead of a lookup:
FORMERR for packets that do not parse or do not ask exactly one question, NOTIMP for
opcodes other than QUERY and for classes nobody serves, REFUSED for classes we do not
serve and for zone transfers, BADVERS for EDNS versions above 0.
"""
from __future__ import annotations

import io

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.SRV
import dns.renderer
import dns.rrset

from .records import A, CNAME, NS, PTR, SOA, SRV, TXT, Record
from .zone import Answer

# What we advertise and the most we send over UDP (the DNS flag day 2020 default).
EDNS_PAYLOAD = 1232
PLAIN_UDP = 512
IN = dns.rdataclass.IN
# Classes that exist but that we do not serve (REFUSED); anything else unknown: NOTIMP.
KNOWN_CLASSES = {dns.rdataclass.CH, dns.rdataclass.HS, dns.rdataclass.NONE, dns.rdataclass.ANY}
TRANSFERS = {dns.rdatatype.AXFR, dns.rdatatype.IXFR}
MAX_QUESTIONS = 1


class BadQuery(Exception):
    """A query answered with an error code and no lookup."""

    def __init__(self, rcode: int, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode


def header_error(data: bytes, rcode: int) -> bytes | None:
    """An error response built from the header alone (the rest did not parse): the id,
    opcode and RD echoed, QR set, no sections. None when not even a header arrived or the
    packet is itself a response (answering those could loop two servers)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags = 0x80 | (data[2] & 0x79)  # QR, opcode, RD
    return data[:2] + bytes([flags, 0x80 | (rcode & 0x0F)]) + b"\x00" * 8


def parse_query(data: bytes) -> dns.message.Message:
    """dnspython's parse with our limits; raises BadQuery."""
    if len(data) >= 12 and data[2] & 0x80:
        raise BadQuery(-1, "a response, not a query")
    if len(data) >= 12 and (data[2] >> 3) & 0x0F != dns.opcode.QUERY:
        raise BadQuery(dns.rcode.NOTIMP, f"opcode {(data[2] >> 3) & 0x0F}")  # before parsing its sections
    try:
        msg = dns.message.from_wire(data, question_only=False, ignore_trailing=False)
    except dns.message.UnknownTSIGKey:
        raise BadQuery(dns.rcode.REFUSED, "TSIG is not supported")
    except dns.message.BadEDNS:
        raise BadQuery(dns.rcode.FORMERR, "bad EDNS")
    except (dns.exception.DNSException, ValueError, IndexError, TypeError) as exc:
        raise BadQuery(dns.rcode.FORMERR, f"malformed: {exc.__class__.__name__}")
    return msg


def check_query(msg: dns.message.Message) -> tuple[dns.name.Name, int]:
    """The one question (name, type) of a query we will look up; raises BadQuery."""
    if msg.opcode() != dns.opcode.QUERY:
        raise BadQuery(dns.rcode.NOTIMP, f"opcode {dns.opcode.to_text(msg.opcode())}")
    if msg.edns > 0:
        raise BadQuery(dns.rcode.BADVERS, f"EDNS version {msg.edns}")
    if len(msg.question) != MAX_QUESTIONS:
        raise BadQuery(dns.rcode.FORMERR, f"{len(msg.question)} questions")
    if msg.answer or msg.authority:
        raise BadQuery(dns.rcode.FORMERR, "records in answer/authority of a query")
    q = msg.question[0]
    if q.rdclass != IN:
        rcode = dns.rcode.REFUSED if q.rdclass in KNOWN_CLASSES else dns.rcode.NOTIMP
        raise BadQuery(rcode, f"class {dns.rdataclass.to_text(q.rdclass)}")
    if q.rdtype in TRANSFERS:
        raise BadQuery(dns.rcode.REFUSED, "zone transfers are not offered")
    if dns.rdatatype.is_metatype(q.rdtype) and q.rdtype != dns.rdatatype.ANY:
        raise BadQuery(dns.rcode.FORMERR, f"meta type {dns.rdatatype.to_text(q.rdtype)} as a question")
    return q.name, q.rdtype


def make_response(query: dns.message.Message, rcode: int = 0, recursion: bool = True) -> dns.message.Message:
    """The response's header and question; EDNS when the query had it, with its DO bit
    copied (RFC 3225 §3: a server MUST copy DO into the response)."""
    resp = dns.message.make_response(query, recursion_available=recursion, our_payload=EDNS_PAYLOAD)
    resp.set_rcode(rcode)
    if wants_dnssec(query):
        resp.ednsflags |= dns.flags.DO
    return resp


def wants_dnssec(query: dns.message.Message) -> bool:
    """The query's DO bit: DNSSEC records wanted (only ever from upstream: our zones are
    not signed)."""
    return query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)


def dnssec_wishes(query: dns.message.Message) -> tuple[bool, bool]:
    """(DO, CD) of a query: what a forward asks upstream with the question."""
    return wants_dnssec(query), bool(query.flags & dns.flags.CD)


def _rdata(r: Record) -> dns.rdata.Rdata:
    v = r.value
    if r.rdtype == A:
        return dns.rdtypes.IN.A.A(IN, A, v)
    if r.rdtype in (CNAME, PTR, NS):
        cls = {CNAME: dns.rdtypes.ANY.CNAME.CNAME, PTR: dns.rdtypes.ANY.PTR.PTR, NS: dns.rdtypes.ANY.NS.NS}[r.rdtype]
        return cls(IN, r.rdtype, dns.name.from_text(v))  # type: ignore[arg-type]
    if r.rdtype == SRV:
        prio, weight, port, target = v  # type: ignore[misc]
        return dns.rdtypes.IN.SRV.SRV(IN, SRV, prio, weight, port, dns.name.from_text(target))
    if r.rdtype == TXT:
        return dns.rdtypes.ANY.TXT.TXT(IN, TXT, [v.encode()])  # type: ignore[union-attr]
    if r.rdtype == SOA:
        mname, rname, serial, refresh, retry, expire, minimum = v  # type: ignore[misc]
        return dns.rdtypes.ANY.SOA.SOA(IN, SOA, dns.name.from_text(mname), dns.name.from_text(rname),
                                       serial, refresh, retry, expire, minimum)
    raise ValueError(f"no rdata for type {r.rdtype}")


def add_records(section: list[dns.rrset.RRset], records: list[Record], ttl: int) -> None:
    """Append records as RRsets, one per (name, type), in first-seen order."""
    by_key: dict[tuple[str, int], dns.rrset.RRset] = {}
    for r in records:
        rrset = by_key.get((r.name, r.rdtype))
        if rrset is None:
            rrset = by_key[(r.name, r.rdtype)] = dns.rrset.RRset(dns.name.from_text(r.name), IN, r.rdtype)
            section.append(rrset)
        rrset.add(_rdata(r), ttl)


def authoritative_response(query: dns.message.Message, ans: Answer, ttl: int) -> dns.message.Message:
    resp = make_response(query, ans.rcode)
    resp.flags |= dns.flags.AA
    add_records(resp.answer, ans.answer, ttl)
    add_records(resp.authority, ans.authority, ttl)
    add_records(resp.additional, ans.additional, ttl)
    return resp


def udp_limit(query: dns.message.Message) -> int:
    """How many bytes this client takes over UDP."""
    if query.edns < 0:
        return PLAIN_UDP
    return max(PLAIN_UDP, min(query.payload, EDNS_PAYLOAD))


def to_wire(resp: dns.message.Message, limit: int = 65535) -> bytes:
    """The response in at most `limit` bytes (the client's UDP size, or 65535 over TCP).

    What does not fit is left out the way RFC 2181 §9 asks: additional records silently
    (they are optional, never a reason for TC: an SRV answer is still whole without its
    glue); answer records one at a time, as many whole ones as fit, with TC set so the
    client retries over TCP and one that does not still gets a usable partial set."""
    try:
        return resp.to_wire(max_size=limit)
    except dns.exception.TooBig:
        return _fitted(resp, limit)


def _fitted(resp: dns.message.Message, limit: int) -> bytes:
    """`to_wire` for a response over `limit`: filled record by record (rare, so the common
    case above stays one render)."""
    r = dns.renderer.Renderer(resp.id, resp.flags, limit)
    opt_size = _opt_size(resp)
    r.reserve(opt_size)  # the OPT record goes last and must still fit
    for q in resp.question:
        r.add_question(q.name, q.rdtype, q.rdclass)
    try:
        for rrset in resp.answer:
            _add_what_fits(r, rrset)
        for rrset in resp.authority:
            r.add_rrset(dns.renderer.AUTHORITY, rrset)
    except dns.exception.TooBig:
        r.flags |= dns.flags.TC  # the renderer dropped the record that did not fit
    else:
        for rrset in resp.additional:
            try:
                r.add_rrset(dns.renderer.ADDITIONAL, rrset)
            except dns.exception.TooBig:
                continue  # a smaller glue RRset later may still fit
    r.release_reserved()
    if resp.opt is not None:
        r.add_rrset(dns.renderer.ADDITIONAL, resp.opt)
    r.write_header()
    return r.get_wire()


def _add_what_fits(r: dns.renderer.Renderer, rrset: dns.rrset.RRset) -> None:
    """The answer RRset whole or, when it does not fit, as many of its records as do
    (same bytes, one record at a time) before TooBig."""
    try:
        r.add_rrset(dns.renderer.ANSWER, rrset)
        return
    except dns.exception.TooBig:
        pass
    for rd in rrset:
        single = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
        single.add(rd, rrset.ttl)
        r.add_rrset(dns.renderer.ANSWER, single)


def _opt_size(resp: dns.message.Message) -> int:
    if resp.opt is None:
        return 0
    out = io.BytesIO()
    resp.opt.to_wire(out)
    return out.tell()
