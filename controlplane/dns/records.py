"""The cluster's DNS records, computed from API objects: pure functions, no I/O.

Follows the Kubernetes DNS-based service discovery specification (kubernetes/dns
docs/specification.md, schema 1.1.0) the way CoreDNS's `kubernetes` plugin answers:

    <svc>.<ns>.svc.<zone>            A      ClusterIP; headless: every ready endpoint (none
                                            ready: no records, NXDOMAIN, spec 2.4.1)
    <ep>.<svc>.<ns>.svc.<zone>       A      a ready endpoint (of any service but an
                                            ExternalName, as CoreDNS; the spec asks it of
                                            headless ones); <ep> = its hostname, else the
                                            dashed address (10-244-1-5)
    _<port>._<proto>.<svc>.<ns>.svc  SRV    named ports: ClusterIP -> one record, target the
                                            service; headless -> one per endpoint, target <ep>
    <svc>.<ns>.svc.<zone>            SRV    every port, named or not (CoreDNS: a query without
                                            _port._proto matches them all), targets as above
    <d>.<c>.<b>.<a>.in-addr.arpa     PTR    ClusterIPs and endpoints (CoreDNS's reverse
                                            lookup falls back to every service's endpoints)
    <svc>.<ns>.svc.<zone>            CNAME  ExternalName -> spec.externalName
    <a>-<b>-<c>-<d>.<ns>.pod.<zone>  A      a pod's address (pods "verified")
    dns-version.<zone>               TXT    the schema version
    <ns>.svc.<zone>, <ns>.pod.<zone> -      exist (NODATA) while the namespace does

Names are lowercase and absolute (trailing dot). "Ready" for an endpoint is its `ready`
condition, or any endpoint when the Service has `publishNotReadyAddresses`. SRV weights
split 100 over the records of one owner name, as CoreDNS does (at least 1 each).
"""
from __future__ import annotations

from dataclasses import dataclass
from socket import inet_aton, inet_ntoa
from typing import Iterable, Union

from controlplane.api.endpoints import EndpointSlice
from controlplane.api.pod import FAILED, SUCCEEDED, Pod
from controlplane.api.service import EXTERNAL_NAME, Service

SCHEMA_VERSION = "1.1.0"

# Record types we hold (the numbers dnspython and the wire use).
A, NS, CNAME, SOA, PTR, TXT, SRV = 1, 2, 5, 6, 12, 16, 33
# Not a type: "this name exists" with no data (a namespace's `<ns>.svc` and `<ns>.pod`
# answer NODATA, not NXDOMAIN). Outside 0..65535, so no query type can select it.
EXISTS = -1

Srv = tuple[int, int, int, str]            # priority, weight, port, target
Value = Union[str, Srv]                    # A: dotted quad; CNAME/PTR/NS: name; TXT: text


@dataclass(frozen=True, slots=True)   # slots: a zone holds hundreds of thousands
class Record:
    name: str      # lowercase, absolute
    rdtype: int
    value: Value


def absolute(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def reverse_name(ip: str) -> str:
    """10.96.0.10 -> 10.0.96.10.in-addr.arpa."""
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa."


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


def service_name(svc: Service, zone: str) -> str:
    return f"{svc.name}.{svc.namespace}.svc.{zone}".lower()


def _ipv4(ip: str | None) -> str | None:
    """`ip` if it is an IPv4 address in its one dotted-quad form (four parts, no leading
    zeros: what ipaddress.IPv4Address takes), else None. Through inet_aton and back, in
    a fifth of ipaddress's time (it was 40 % of making a 10,000 x 10 zone)."""
    if not ip:
        return None
    try:
        return ip if inet_ntoa(inet_aton(ip)) == ip else None
    except (OSError, ValueError):   # not an address; a NUL in the text
        return None


def _cluster_ips(svc: Service) -> list[str]:
    ips = list(svc.spec.cluster_ips or []) or [svc.spec.cluster_ip or ""]
    return [ip for ip in map(_ipv4, ips) if ip]


@dataclass(frozen=True)
class EndpointAddress:
    """One endpoint address of a service as DNS sees it."""
    ip: str
    label: str                                     # hostname, or the dashed address
    ports: tuple[tuple[str, str, int], ...]        # (port name, protocol, number)


def published_endpoints(svc: Service, slices: Iterable[EndpointSlice]) -> list[EndpointAddress]:
    """The endpoint addresses DNS publishes for a service, in slice order, one per
    (label, ip); ports merged over the slices that list the same address."""
    publish_all = bool(svc.spec.publish_not_ready_addresses)
    seen: dict[tuple[str, str], dict[tuple[str, str, int], None]] = {}
    for es in slices:
        if es.address_type not in (None, "IPv4"):
            continue
        ports = tuple((p.name or "", (p.protocol or "TCP").lower(), p.port)
                      for p in es.ports or [] if p.port is not None)
        for ep in es.endpoints or []:
            if not (publish_all or ep.ready):
                continue
            for raw in ep.addresses or []:
                ip = _ipv4(raw)
                if ip is None:
                    continue
                label = (ep.hostname or dashed(ip)).lower()
                seen.setdefault((label, ip), {}).update(dict.fromkeys(ports))
    return [EndpointAddress(ip, label, tuple(ports)) for (label, ip), ports in seen.items()]


def service_records(svc: Service, slices: Iterable[EndpointSlice], zone: str) -> list[Record]:
    """Every record one Service contributes."""
    name = absolute(service_name(svc, zone))
    if svc.type == EXTERNAL_NAME:
        target = (svc.spec.external_name or "").strip()
        return [Record(name, CNAME, absolute(target))] if target else []
    endpoints = published_endpoints(svc, slices)
    if svc.is_headless:
        return _headless_records(name, endpoints)
    out: list[Record] = []
    ips = _cluster_ips(svc)
    if not ips:
        return out  # no address yet: the name and its endpoints' names do not exist
    for ip in ips:
        out.append(Record(name, A, ip))
        out.append(Record(reverse_name(ip), PTR, name))
    ports = [((sp.name or "").lower(), (sp.protocol or "TCP").lower(), sp.port) for sp in svc.ports]
    for port_name, proto, number in ports:
        if port_name:
            out.append(Record(f"_{port_name}._{proto}.{name}", SRV, (0, 100, number, name)))
    out += _srv(name, [(number, name) for _, _, number in ports])
    return out + _endpoint_records(name, endpoints)


def _headless_records(name: str, endpoints: list[EndpointAddress]) -> list[Record]:
    # No ready endpoint, no records: the name, its SRV and endpoint names are NXDOMAIN
    # (spec 2.4.1 "If there are no ready endpoints ... the answer should be NXDOMAIN").
    out: list[Record] = [Record(name, A, ep.ip) for ep in endpoints]
    named: dict[tuple[str, str], list[tuple[int, str]]] = {}
    every: list[tuple[int, str]] = []
    for ep in endpoints:
        host = f"{ep.label}.{name}"
        for port_name, proto, number in ep.ports:
            every.append((number, host))
            if port_name:
                named.setdefault((port_name.lower(), proto), []).append((number, host))
    for (port_name, proto), targets in named.items():
        out += _srv(f"_{port_name}._{proto}.{name}", targets)
    out += _srv(name, every)
    return out + _endpoint_records(name, endpoints)


def _endpoint_records(name: str, endpoints: list[EndpointAddress]) -> list[Record]:
    """Each endpoint's own name under the service's, and its PTR. (Not the SRV CoreDNS
    also answers at an endpoint's name: at 10,000 services x 10 endpoints it would be
    100,000 records more, for a query nobody was seen to make.)"""
    out: list[Record] = []
    for ep in endpoints:
        host = f"{ep.label}.{name}"
        out.append(Record(host, A, ep.ip))
        out.append(Record(reverse_name(ep.ip), PTR, host))
    return out


def _srv(owner: str, targets: list[tuple[int, str]]) -> list[Record]:
    """SRV records of one owner name, (port, target) each; CoreDNS spreads a weight of 100
    over the records it returns for a name, at least 1 each."""
    weight = max(1, 100 // max(1, len(targets)))
    return [Record(owner, SRV, (0, weight, number, target)) for number, target in targets]


def pod_records(pod: Pod, zone: str) -> list[Record]:
    """`a-b-c-d.<ns>.pod.<zone>` for a pod that has an address and is not finished."""
    ip = _ipv4(pod.ip)
    if ip is None or pod.phase in (SUCCEEDED, FAILED):
        return []
    return [Record(absolute(f"{dashed(ip)}.{pod.namespace}.pod.{zone}"), A, ip)]


def namespace_records(namespace: str, zone: str, pods: bool) -> list[Record]:
    """An existing namespace's names, NODATA even when nothing is in it (CoreDNS): `<ns>.svc`,
    and `<ns>.pod` unless pod records are disabled. In `--pods insecure` the latter is
    also what lets `a-b-c-d.<ns>.pod` answer: only for namespaces that exist."""
    kinds = ("svc", "pod") if pods else ("svc",)
    return [Record(absolute(f"{namespace}.{kind}.{zone}"), EXISTS, "") for kind in kinds]


def zone_records(zone: str) -> list[Record]:
    """The records every cluster zone has regardless of objects."""
    return [Record(absolute(f"dns-version.{zone}"), TXT, SCHEMA_VERSION)]
