"""Endpoints and EndpointSlice validation."""
from __future__ import annotations

import ipaddress

from ..endpoints import ADDRESS_TYPES, EndpointHints, EndpointPort, Endpoints, EndpointSlice
from ..field_errors import ErrorType, FieldError, duplicate, invalid, not_supported, required
from ..service import PROTOCOLS
from . import names

from .meta import validate_object_meta, validate_port_entry_name

MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 100
# An endpoint may list up to 100 addresses (the API's limit); no meaning is defined for
# the ones after the first, which is all kube-proxy (and controllers/service_view.py) reads.
MAX_ENDPOINT_ADDRESSES = 100
# topology hints: at most this many zones, and nodes, per endpoint (the apiserver's limits)
MAX_ZONE_HINTS = 8
MAX_NODE_HINTS = 8


def _validate_ip(ip: str | None, path: str) -> list[FieldError]:
    if not ip:
        return [required(path)]
    bad = names.ip_address(ip)
    if bad:
        return [invalid(path, ip, m) for m in bad]
    special = names.special_ip(ip)
    return [invalid(path, ip, special)] if special else []


def _validate_ports(ports: list[EndpointPort], path: str, require_name: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    seen: set[str] = set()
    for i, p in enumerate(ports):
        ppath = f"{path}[{i}]"
        errs.extend(validate_port_entry_name(p.name, f"{ppath}.name", require_name, seen))
        if p.port is not None:
            errs.extend(invalid(f"{ppath}.port", p.port, m) for m in names.port_number(p.port))
        if p.protocol not in PROTOCOLS:
            errs.append(not_supported(f"{ppath}.protocol", p.protocol or "", PROTOCOLS))
    return errs


def validate_endpoints(ep: Endpoints) -> list[FieldError]:
    errs = validate_object_meta(ep.metadata, True, names.dns1123_subdomain)
    for i, subset in enumerate(ep.subsets or []):
        spath = f"subsets[{i}]"
        if not subset.addresses and not subset.not_ready_addresses:
            errs.append(required(spath, "must specify `addresses` or `notReadyAddresses`"))
        for field_name, addrs in (("addresses", subset.addresses), ("notReadyAddresses", subset.not_ready_addresses)):
            for j, addr in enumerate(addrs or []):
                errs.extend(_validate_ip(addr.ip, f"{spath}.{field_name}[{j}].ip"))
                if addr.hostname:
                    errs.extend(invalid(f"{spath}.{field_name}[{j}].hostname", addr.hostname, m)
                                for m in names.dns1123_label(addr.hostname))
        ports = subset.ports or []
        for j, p in enumerate(ports):
            if p.port is None:
                errs.append(required(f"{spath}.ports[{j}].port"))
        errs.extend(_validate_ports(ports, f"{spath}.ports", len(ports) > 1))
    return errs


# What names.special_ip refuses in IPv4, as prefixes of a dotted quad without leading
# zeros: unspecified, loopback, link-local, link-local multicast.
_SPECIAL_IPV4_PREFIXES = ("0.0.0.0", "127.", "169.254.", "224.0.0.")


def _plain_ipv4(addr: str | None) -> bool:
    """A valid IPv4 address outside the special ranges (the fast path's test, without
    parsing: a slice of 1,000 endpoints is checked address by address)."""
    return addr is not None and names.is_ipv4(addr) and not addr.startswith(_SPECIAL_IPV4_PREFIXES)


def _validate_slice_address(address_type: str, addr: str, path: str) -> list[FieldError]:
    """One address of an endpoint, by the slice's addressType. IP addresses may not be
    special (ValidateNonSpecialIP, as for v1 Endpoints): the agent would program such a
    backend, and 169.254.169.254 is a cloud's metadata service."""
    if address_type == "IPv4":
        if not names.is_ipv4(addr):
            return [invalid(path, addr, "must be a valid IPv4 address")]
    elif address_type == "IPv6":
        try:
            ok = isinstance(ipaddress.ip_address(addr), ipaddress.IPv6Address)
        except ValueError:
            ok = False
        if not ok:
            return [invalid(path, addr, "must be a valid IPv6 address")]
    elif address_type == "FQDN":
        return [invalid(path, addr, m) for m in names.dns1123_subdomain(addr)]
    else:
        return []   # an unknown addressType is reported once, on addressType
    special = names.special_ip(addr)
    return [invalid(path, addr, special)] if special else []


def _validate_hints(hints: EndpointHints, path: str) -> list[FieldError]:
    """The apiserver's checks of an endpoint's hints: at most 8 zones (label values) and
    8 nodes (node names), none twice; a list over its limit is the one error said of it."""
    errs: list[FieldError] = []
    for field, entries, limit, check in (("forZones", hints.for_zones, MAX_ZONE_HINTS, names.label_value),
                                         ("forNodes", hints.for_nodes, MAX_NODE_HINTS, names.dns1123_subdomain)):
        entries = entries or []
        if len(entries) > limit:
            errs.append(FieldError(ErrorType.TOO_MANY, f"{path}.{field}", len(entries),
                                   f"must have at most {limit} items"))
            continue
        seen: set[str] = set()
        for j, entry in enumerate(entries):
            name, npath = (entry.name if entry is not None else None) or "", f"{path}.{field}[{j}].name"
            if name in seen:
                errs.append(duplicate(npath, name))
            seen.add(name)
            errs.extend(invalid(npath, name, m) for m in check(name))
    return errs


def validate_endpointslice(es: EndpointSlice) -> list[FieldError]:
    errs = validate_object_meta(es.metadata, True, names.dns1123_subdomain)
    at = es.address_type or ""
    if not at:
        errs.append(required("addressType"))
    elif at not in ADDRESS_TYPES:
        errs.append(not_supported("addressType", at, ADDRESS_TYPES))
    endpoints = es.endpoints or []
    if len(endpoints) > MAX_SLICE_ENDPOINTS:
        errs.append(FieldError(ErrorType.TOO_MANY, "endpoints", len(endpoints), f"must have at most {MAX_SLICE_ENDPOINTS} items"))
    for i, ep in enumerate(endpoints):
        if ep.hostname is not None:
            # DNS publishes it as <hostname>.<service>.<ns>.svc: one label, or the name breaks.
            errs.extend(invalid(f"endpoints[{i}].hostname", ep.hostname, m) for m in names.dns1123_label(ep.hostname))
        if ep.hints is not None:
            errs.extend(_validate_hints(ep.hints, f"endpoints[{i}].hints"))
        addrs = ep.addresses or []
        if at == "IPv4" and len(addrs) == 1 and _plain_ipv4(addrs[0]):
            continue  # the common case, checked without building field paths
        apath = f"endpoints[{i}].addresses"
        if not addrs:
            errs.append(required(apath, "must contain at least 1 address"))
        elif len(addrs) > MAX_ENDPOINT_ADDRESSES:
            errs.append(FieldError(ErrorType.TOO_MANY, apath, len(addrs),
                                   f"must have at most {MAX_ENDPOINT_ADDRESSES} items"))
        for j, addr in enumerate(addrs):
            errs.extend(_validate_slice_address(at, addr or "", f"{apath}[{j}]"))
    ports = es.ports or []
    if len(ports) > MAX_SLICE_PORTS:
        errs.append(FieldError(ErrorType.TOO_MANY, "ports", len(ports), f"must have at most {MAX_SLICE_PORTS} items"))
    errs.extend(_validate_ports(ports, "ports", False))
    return errs
