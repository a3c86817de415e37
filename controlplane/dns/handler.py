"""One query in, one response out: the lookup path shared by UDP and TCP.

The hot path is a dict: a UDP response we built for our own zones is kept keyed by the
query's bytes after the id (flags, counts, the question as asked, the EDNS record), so the
same query again costs a lookup and the id patched in; any zone change empties it. What
misses goes through dnspython (parse, check, look up, build) and, for names outside our
zones or CNAMEs pointing out of them, to the forwarder (a coroutine the server awaits).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from .forward import Forwarder
from .wire import BadQuery, authoritative_response, check_query, header_error, make_response, parse_query, \
    dnssec_wishes, to_wire, udp_limit, wants_dnssec
from .zone import Zones

log = logging.getLogger("svcxdp.dns")

UDP_CACHE_ENTRIES = 100_000
MAX_PENDING_FORWARDS = 1000
# Types an ExternalName's CNAME is not followed upstream for: CNAME and ANY are answered by
# the CNAME itself; SRV, as CoreDNS, which leaves external services out of SRV answers;
# type 0 (reserved) has nothing to find.
NOT_CHASED = (dns.rdatatype.CNAME, dns.rdatatype.ANY, dns.rdatatype.SRV, dns.rdatatype.NONE)
# A query that fails with an unexpected exception logs its traceback at most this often:
# one packet type repeated must not flood the log (the rest go to debug, and are counted).
FAILURE_LOG_INTERVAL = 60.0

Result = bytes | None | Awaitable[bytes | None]


@dataclass
class Counters:
    udp: int = 0
    tcp: int = 0
    forwarded: int = 0
    servfail: int = 0
    bad: int = 0


class Handler:
    def __init__(self, zones: Zones, forwarder: Forwarder | None) -> None:
        self.zones = zones
        self.forwarder = forwarder
        self.udp_cache: dict[bytes, bytes] = {}
        self.pending = 0
        self.counters = Counters()
        self.next_failure_log = 0.0
        self.failures_unlogged = 0

    def zone_changed(self) -> None:
        self.udp_cache.clear()

    def handle(self, data: bytes, udp: bool) -> Result:
        """bytes to send, None to stay silent, or an awaitable of either."""
        try:
            result = self._handle(data, udp)
        except Exception:  # a bug must cost one answer, not the server
            return self._failed(data, udp)
        if result is None or isinstance(result, bytes):
            return result
        return self._guarded(result, data, udp)

    async def _guarded(self, pending: Awaitable[bytes | None], data: bytes, udp: bool) -> bytes | None:
        """A forward's failure answered like any other (raised, it would reach asyncio's
        own handler, which logs a traceback per task)."""
        try:
            return await pending
        except Exception:
            return self._failed(data, udp)

    def _failed(self, data: bytes, udp: bool) -> bytes | None:
        """SERVFAIL for a query an unexpected exception stopped, the question echoed when it
        parses; the traceback logged at most once per FAILURE_LOG_INTERVAL."""
        self.counters.servfail += 1
        now = time.monotonic()
        if now >= self.next_failure_log:
            self.next_failure_log = now + FAILURE_LOG_INTERVAL
            log.exception("query failed, answered SERVFAIL (%d more failed since the last logged one)",
                          self.failures_unlogged)
            self.failures_unlogged = 0
        else:
            self.failures_unlogged += 1
            log.debug("query failed, answered SERVFAIL", exc_info=True)
        try:
            query = parse_query(data)
            return to_wire(make_response(query, dns.rcode.SERVFAIL), udp_limit(query) if udp else 65535)
        except Exception:
            return header_error(data, dns.rcode.SERVFAIL)

    def _handle(self, data: bytes, udp: bool) -> Result:
        try:
            query = parse_query(data)
        except BadQuery as exc:
            self.counters.bad += 1
            return header_error(data, exc.rcode) if exc.rcode >= 0 else None
        limit = udp_limit(query) if udp else 65535
        try:
            qname, qtype = check_query(query)
        except BadQuery as exc:
            self.counters.bad += 1
            return to_wire(make_response(query, exc.rcode), limit)
        name = qname.to_text().lower()
        ans = self.zones.lookup(name, qtype)
        if ans is None:
            return self._forward(query, qname, qtype, limit)
        resp = authoritative_response(query, ans, self.zones.ttl)
        chased = ans.chase is not None and qtype not in NOT_CHASED and self.forwarder is not None
        if chased and self.pending < MAX_PENDING_FORWARDS:
            return self._chase(query, resp, dns.name.from_text(ans.chase), qtype, limit)
        # (with MAX_PENDING_FORWARDS in flight, the CNAME alone: a valid answer the client
        # follows itself, as a forward would be refused; not kept, or it would be served
        # until the zone next changes, long after the forwards drained)
        wire = to_wire(resp, limit)
        if udp and not chased:
            if len(self.udp_cache) >= UDP_CACHE_ENTRIES:
                self.udp_cache.clear()
            self.udp_cache[data[2:]] = wire[2:]
        return wire

    def _forward(self, query: dns.message.Message, qname: dns.name.Name, qtype: int, limit: int) -> Result:
        if self.forwarder is None:
            return to_wire(make_response(query, dns.rcode.REFUSED), limit)
        if not self.forwarder.upstreams or self.pending >= MAX_PENDING_FORWARDS:
            self.counters.servfail += 1
            return to_wire(make_response(query, dns.rcode.SERVFAIL), limit)
        return self._forwarded(query, qname, qtype, limit)

    async def _forwarded(self, query: dns.message.Message, qname: dns.name.Name, qtype: int, limit: int) -> bytes:
        assert self.forwarder is not None
        self.counters.forwarded += 1
        self.pending += 1
        try:
            got = await self.forwarder.resolve(qname, qtype, *dnssec_wishes(query))
        finally:
            self.pending -= 1
        if got is None:
            self.counters.servfail += 1
            return to_wire(make_response(query, dns.rcode.SERVFAIL), limit)
        resp = make_response(query, got.rcode)
        resp.answer, resp.authority, resp.additional = got.answer, got.authority, got.additional
        # AD as the upstream set it, to a client that said it understands it (RFC 6840 §5.8)
        if got.authenticated and (query.flags & dns.flags.AD or wants_dnssec(query)):
            resp.flags |= dns.flags.AD
        return to_wire(resp, limit)

    async def _chase(self, query: dns.message.Message, resp: dns.message.Message, target: dns.name.Name,
                     qtype: int, limit: int) -> bytes:
        """An ExternalName's CNAME with the target's records of the asked type appended (what
        CoreDNS's kubernetes plugin does through its upstream for A, AAAA and TXT; here for
        every type but NOT_CHASED), so stub resolvers, which do not chase, get a usable answer.
        A target that has no such records brings the upstream's SOA along, so the negative
        answer can be cached (RFC 2308 §5)."""
        assert self.forwarder is not None
        self.pending += 1
        try:
            got = await self.forwarder.resolve(target, qtype, *dnssec_wishes(query))
        finally:
            self.pending -= 1
        if got is not None:
            resp.answer += [r for r in got.answer if r.name != resp.answer[0].name]
            resp.set_rcode(got.rcode)
            resp.authority = [] if got.answer else got.authority
        return to_wire(resp, limit)
