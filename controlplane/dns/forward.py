"""Names outside our zones: asked of upstream resolvers, answers cached for their TTL.

Upstreams come from a flag or, by default, the `nameserver` lines of the node's
resolv.conf (CoreDNS's `forward . /etc/resolv.conf`). Each upstream is tried in turn over
UDP (TCP when the answer is truncated) within one overall deadline; none configured or none
answering gives SERVFAIL, never a hang. Answers are cached per (name, type) for the
smallest TTL in them (negative answers: the SOA minimum), capped like CoreDNS's cache
(success 3600 s, denial 1800 s), and served with their TTLs counted down.

A client's DNSSEC wishes go upstream with its question, as CoreDNS's `forward` relays the
query: DO (the signatures wanted) and CD (checking disabled) are asked for, and an answer
keeps its RRSIGs, its additional section and the AD bit the upstream set; answers are
cached apart per (DO, CD).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

log = logging.getLogger("svcxdp.dns.forward")

MAX_SUCCESS_TTL = 3600
MAX_DENIAL_TTL = 1800
CACHE_ENTRIES = 10000


def parse_upstream(text: str) -> tuple[str, int]:
    """'192.168.1.100' or '192.168.1.100:5353' -> (ip, port); ValueError names the value."""
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "53")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"upstream {text!r}: expected IP or IP:PORT") from None
    return host, number


def resolv_conf_upstreams(path: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The nameservers of a resolv.conf (missing file: none)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(parse_upstream(parts[1]))
            except ValueError:
                continue
    return out


@dataclass
class Cached:
    expires: float
    stored: float
    rcode: int
    answer: list[dns.rrset.RRset]
    authority: list[dns.rrset.RRset]
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    authenticated: bool = False   # the upstream's AD bit


def _ttl(resp: dns.message.Message) -> int:
    if resp.answer:
        return min(MAX_SUCCESS_TTL, min(r.ttl for r in resp.answer))
    for r in resp.authority:
        if r.rdtype == dns.rdatatype.SOA:
            return min(MAX_DENIAL_TTL, r.ttl, r[0].minimum)
    return 0


def _aged(rrsets: list[dns.rrset.RRset], age: int) -> list[dns.rrset.RRset]:
    out = []
    for r in rrsets:
        copy = r.copy()
        copy.ttl = max(0, r.ttl - age)
        out.append(copy)
    return out


class Forwarder:
    def __init__(self, upstreams: list[tuple[str, int]], timeout: float = 2.0,
                 entries: int = CACHE_ENTRIES) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.entries = entries
        self.cache: dict[tuple[str, int, bool, bool], Cached] = {}
        self.hits = self.misses = self.failures = 0

    async def resolve(self, name: dns.name.Name, rdtype: int, dnssec: bool = False,
                      checking_disabled: bool = False) -> Cached | None:
        """The upstream answer (from cache when fresh), or None: answer SERVFAIL. `dnssec`,
        `checking_disabled`: the client's DO and CD bits, asked upstream with the question."""
        key = (name.to_text().lower(), rdtype, dnssec, checking_disabled)
        now = time.monotonic()
        hit = self.cache.get(key)
        if hit is not None and hit.expires > now:
            self.hits += 1
            age = int(now - hit.stored)
            return Cached(hit.expires, hit.stored, hit.rcode, _aged(hit.answer, age), _aged(hit.authority, age),
                          _aged(hit.additional, age), hit.authenticated)
        self.misses += 1
        resp = await self._ask(name, rdtype, dnssec, checking_disabled)
        if resp is None:
            self.failures += 1
            return None
        got = Cached(now, now, resp.rcode(), list(resp.answer), list(resp.authority), list(resp.additional),
                     bool(resp.flags & dns.flags.AD))
        ttl = _ttl(resp)
        if ttl > 0 and resp.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            if len(self.cache) >= self.entries:
                self.cache.clear()  # crude, bounded; a busy resolver refills what it uses
            got.expires = now + ttl
            self.cache[key] = got
        return got

    async def _ask(self, name: dns.name.Name, rdtype: int, dnssec: bool,
                   checking_disabled: bool) -> dns.message.Message | None:
        if not self.upstreams:
            return None
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232, want_dnssec=dnssec)
        if checking_disabled:
            query.flags |= dns.flags.CD
        deadline = time.monotonic() + self.timeout
        for ip, port in self.upstreams:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            per_try = max(0.05, left / 2) if len(self.upstreams) > 1 else left
            try:
                resp = await dns.asyncquery.udp(query, ip, port=port, timeout=per_try)
                if resp.flags & dns.flags.TC:
                    resp = await dns.asyncquery.tcp(query, ip, port=port,
                                                    timeout=max(0.05, deadline - time.monotonic()))
            except (dns.exception.DNSException, OSError, asyncio.TimeoutError, EOFError) as exc:
                log.debug("upstream %s:%d for %s: %s", ip, port, name, exc)
                continue
            if resp.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                continue
            return resp
        return None
