"""The authoritative data in memory and the lookup over it (no wire format, no I/O).

    zones = Zones("cluster.local", ["10.96.0.0/12", "10.244.0.0/16"], ttl=5)
    zones.replace(("svc", "default", "web"), service_records(...))   # per source object
    zones.lookup("web.default.svc.cluster.local.", A)                # -> Answer | None

The zones are the cluster domain and the in-addr.arpa zones of the given CIDRs (a CIDR
not on an octet boundary is split into the zones of the next one, as CoreDNS does: a /12
becomes sixteen /16 zones). Each source object (a Service, a Pod) owns the records it
contributed; `replace` swaps them as a whole, so an ExternalName turned ClusterIP loses its
CNAME in the same step it gains its A. Values are reference-counted, so two sources may
publish the same record (two headless services selecting one pod give two PTRs, one pod
IP's PTR survives the removal of either).

Answer semantics (RFC 1034 4.3.2, RFC 2308): a name with data of another type, an empty
non-terminal (a name with records only below it, e.g. `default.svc.cluster.local`), or a
name that only exists (records.EXISTS: an existing namespace's `<ns>.svc`, `<ns>.pod`) is
NODATA; a name that does not exist is NXDOMAIN; both carry the zone's SOA in authority.
With `--pods insecure`, `a-b-c-d.<ns>.pod` is made up on lookup, for a strict dotted quad
in a namespace that exists (CoreDNS).
"""
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Hashable, Iterable

from .records import A, CNAME, EXISTS, NS, SOA, SRV, Record, Value, absolute

NOERROR, NXDOMAIN = 0, 3
ANY = 255
MAX_CHAIN = 8  # CNAMEs followed inside our zones before giving up

# SOA timers (CoreDNS's kubernetes plugin): refresh, retry, expire; minimum = the TTL.
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400
_POD_NAME = re.compile(r"^(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})\.([a-z0-9-]+)\.pod\.(.+)$")


@dataclass
class Answer:
    rcode: int = NOERROR
    answer: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    # A CNAME target outside our zones that the server should resolve (A/AAAA queries).
    chase: str | None = None


def reverse_zones(cidr: str) -> list[str]:
    """The in-addr.arpa zones covering an IPv4 CIDR, on octet boundaries."""
    net = ipaddress.IPv4Network(cidr, strict=False)
    octets = -(-net.prefixlen // 8)  # round up
    if octets == 0:
        return ["in-addr.arpa."]
    out = []
    for sub in net.subnets(new_prefix=octets * 8):
        parts = str(sub.network_address).split(".")[:octets]
        out.append(".".join(reversed(parts)) + ".in-addr.arpa.")
    return out


def _parents(name: str, apex: str) -> list[str]:
    """The names strictly between `name` and `apex` (exclusive both ends)."""
    out = []
    while True:
        _, _, name = name.partition(".")
        if not name or name == apex or not name.endswith("." + apex):
            return out
        out.append(name)


class Zones:
    def __init__(self, domain: str, reverse_cidrs: Iterable[str] = (), ttl: int = 5,
                 pods: str = "verified") -> None:
        self.domain = absolute(domain)
        self.ttl = ttl
        self.pods_mode = pods  # verified | insecure | disabled
        self.apexes = [self.domain] + [z for c in reverse_cidrs for z in reverse_zones(c)]
        self.apex_set = frozenset(self.apexes)
        self.nameserver = f"ns.dns.{self.domain}"
        self.data: dict[str, dict[int, dict[Value, int]]] = {}
        self.below: dict[str, int] = {}        # empty non-terminals: owners beneath them
        self.sources: dict[Hashable, list[Record]] = {}
        self.serial = int(time.time())
        self.version = 0                       # bumped on every change (wire caches key on it)

    # -- updates ----------------------------------------------------------------------------
    def replace(self, source: Hashable, records: list[Record]) -> bool:
        """Make `records` what `source` contributes; True if anything changed."""
        old = self.sources.get(source, [])
        if old == records:
            return False
        for r in old:
            self._remove(r)
        for r in records:
            self._add(r)
        if records:
            self.sources[source] = records
        else:
            self.sources.pop(source, None)
        self.version += 1
        self.serial = max(self.serial + 1, int(time.time()))
        return True

    def _add(self, r: Record) -> None:
        node = self.data.get(r.name)
        if node is None:
            node = self.data[r.name] = {}
            apex = self.apex_for(r.name)
            if apex is not None:
                for p in _parents(r.name, apex):
                    self.below[p] = self.below.get(p, 0) + 1
        values = node.setdefault(r.rdtype, {})
        values[r.value] = values.get(r.value, 0) + 1

    def _remove(self, r: Record) -> None:
        node = self.data.get(r.name)
        values = node.get(r.rdtype) if node else None
        if not values or r.value not in values:
            return
        values[r.value] -= 1
        if values[r.value] == 0:
            del values[r.value]
            if not values:
                del node[r.rdtype]
        if not node:
            del self.data[r.name]
            apex = self.apex_for(r.name)
            if apex is not None:
                for p in _parents(r.name, apex):
                    left = self.below[p] - 1
                    if left:
                        self.below[p] = left
                    else:
                        del self.below[p]

    # -- queries ----------------------------------------------------------------------------
    def apex_for(self, name: str) -> str | None:
        """The most specific of our zones that holds `name`: its longest suffix that is an
        apex (a label at a time: a /12's sixteen zones and a /16's 256 are no slower)."""
        while name:
            if name in self.apex_set:
                return name
            name = name.partition(".")[2]
        return None

    def soa(self, apex: str) -> Record:
        return Record(apex, SOA, (self.nameserver, f"hostmaster.{self.domain}", self.serial,
                                  SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl))  # type: ignore[arg-type]

    def lookup(self, qname: str, qtype: int) -> Answer | None:
        """The answer for a lowercase absolute name, or None when it is not in our zones."""
        apex = self.apex_for(qname)
        if apex is None:
            return None
        out = Answer()
        name = qname
        for _ in range(MAX_CHAIN):
            node = self._node(name, apex)
            if node is None and name == apex:
                node = {}  # SOA and NS are made, not stored
            if node is None:
                if name == apex or name in self.below:
                    break  # NODATA
                out.rcode = NXDOMAIN
                break
            hits = self._matching(name, node, qtype, apex)
            if hits:
                out.answer += hits
                break
            targets = node.get(CNAME)
            if not targets or qtype == CNAME:
                break  # NODATA
            target = next(iter(targets))
            out.answer.append(Record(name, CNAME, target))
            next_apex = self.apex_for(target)  # type: ignore[arg-type]
            if next_apex is None:
                out.chase = target  # type: ignore[assignment]
                return out
            name, apex = target, next_apex  # type: ignore[assignment]
        if not out.answer or out.rcode == NXDOMAIN or (qtype != CNAME and _only_cnames(out.answer)):
            out.authority.append(self.soa(apex))
        self._glue(out)
        return out

    def _node(self, name: str, apex: str) -> dict[int, dict[Value, int]] | None:
        node = self.data.get(name)
        if node is not None or self.pods_mode != "insecure":
            return node
        m = _POD_NAME.match(name)
        if m is None or m.group(6) != self.domain or f"{m.group(5)}.pod.{self.domain}" not in self.data:
            return None  # only in namespaces that exist (their marker, records.namespace_records)
        try:
            # Strict dotted quad, as CoreDNS's net.ParseIP: leading zeros (010-...) are no address.
            ip = ipaddress.IPv4Address(".".join(m.group(i) for i in range(1, 5)))
        except ValueError:
            return None
        return {A: {str(ip): 1}}

    def _matching(self, name: str, node: dict[int, dict[Value, int]], qtype: int, apex: str) -> list[Record]:
        if name == apex and qtype in (SOA, NS, ANY):
            extra = [self.soa(apex)] if qtype in (SOA, ANY) else []
            if qtype in (NS, ANY):
                extra.append(Record(apex, NS, self.nameserver))
            if qtype != ANY:
                return extra
        else:
            extra = []
        if qtype == ANY:
            return extra + [Record(name, t, v) for t, vals in node.items() if t != EXISTS for v in vals]
        return [Record(name, qtype, v) for v in node.get(qtype, ())]

    def _glue(self, out: Answer) -> None:
        """A records of SRV targets and of the nameserver, when we hold them."""
        wanted = [r.value[3] for r in out.answer if r.rdtype == SRV]  # type: ignore[index]
        wanted += [r.value for r in out.answer if r.rdtype == NS]
        seen = set()
        for target in wanted:
            if target in seen:
                continue
            seen.add(target)
            for ip in (self.data.get(target) or {}).get(A, ()):  # type: ignore[call-overload]
                out.additional.append(Record(target, A, ip))  # type: ignore[arg-type]

    def __contains__(self, name: str) -> bool:
        return name in self.data


def _only_cnames(records: list[Record]) -> bool:
    return all(r.rdtype == CNAME for r in records)
