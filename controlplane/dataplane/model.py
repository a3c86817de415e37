"""What the dataplane serves, in its own terms: frontends (VIP, port, protocol) and
the backends behind each. Kubernetes objects are turned into these by the layer
above; the map writer turns these into map entries."""
from __future__ import annotations

import ipaddress
import re
from operator import attrgetter
import socket
from dataclasses import dataclass, field

from controlplane.maglev.primes import DEFAULT_TABLE_SIZE, validate_table_size

from . import wrr
from .layout import ALGORITHMS, const

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
SCOPES = {"cluster": const("SCOPE_CLUSTER"), "external": const("SCOPE_EXTERNAL")}
BACKEND_STATES = {"active": const("BACKEND_ACTIVE"), "terminating": const("BACKEND_TERMINATING")}
MAX_AFFINITY_TIMEOUT = 86400


class ModelError(ValueError):
    pass


def ip_to_be32(ip: str) -> int:
    """The u32 whose in-memory bytes are the address in network order. (Not cached:
    this is as quick as a cache lookup, and a cache of every endpoint address held
    ~13 MB in the agent.)"""
    return int.from_bytes(socket.inet_aton(ip), "little")


def be32_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "little"))


def port_to_be16(port: int) -> int:
    return socket.htons(port)


def be16_to_port(value: int) -> int:
    return socket.ntohs(value)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _valid_ipv4(ip: str) -> bool:
    """What ipaddress.IPv4Address accepts (four decimal octets 0-255, no leading
    zeros), checked in C by one regular expression: a full sync validates every
    endpoint address (as quick as the lru_cache this replaces, without its ~9 MB)."""
    return _IPV4.fullmatch(ip) is not None


def check_ipv4(ip: str, what: str) -> None:
    if not isinstance(ip, str) or not _valid_ipv4(ip):
        raise ModelError(f"{what}: {ip!r} is not an IPv4 address")


_check_ip = check_ipv4


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ModelError(f"{what}: port {port!r} must be 1-65535")


@dataclass(frozen=True, order=True)
class Frontend:
    vip: str
    port: int
    protocol: str = "TCP"
    scope: str = "cluster"

    def __post_init__(self) -> None:
        _check_ip(self.vip, "frontend vip")
        _check_port(self.port, f"frontend {self.vip}")
        if self.protocol not in PROTOCOLS:
            raise ModelError(f"frontend {self.vip}:{self.port}: protocol {self.protocol!r} is not "
                             f"served by the XDP dataplane (TCP, UDP)")
        if self.scope not in SCOPES:
            raise ModelError(f"frontend {self.vip}:{self.port}: scope {self.scope!r} unknown")

    def __str__(self) -> str:
        return f"{self.vip}:{self.port}/{self.protocol}"


@dataclass(frozen=True, order=True, slots=True)
class Backend:
    # slots: a full sync holds 100,000 of these; without a __dict__ each is a third
    # of the size and quicker to make and read.
    ip: str
    port: int
    state: str = "active"
    weight: int = 1

    def __post_init__(self) -> None:
        if not (self.ip.__class__ is str and _valid_ipv4(self.ip)):
            _check_ip(self.ip, "backend ip")
        port, weight = self.port, self.weight
        if not (port.__class__ is int and 0 < port < 65536):
            _check_port(port, f"backend {self.ip}")
        if self.state not in BACKEND_STATES:
            raise ModelError(f"backend {self.ip}:{self.port}: state {self.state!r} unknown")
        if not (weight.__class__ is int and 0 <= weight <= 65535) and \
                not (isinstance(weight, int) and 0 <= weight <= 65535):
            raise ModelError(f"backend {self.ip}:{self.port}: weight {self.weight!r} must be 0-65535")

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


_by_address = attrgetter("ip", "port")


@dataclass(frozen=True)
class ServiceState:
    """Desired state of one frontend."""

    frontend: Frontend
    backends: tuple[Backend, ...] = field(default_factory=tuple)
    algorithm: str = "random"
    affinity_timeout: int = 0  # seconds; 0 = no ClientIP affinity
    # Maglev table size M (prime); None = the default. Always 0 for other algorithms,
    # so that it never makes two otherwise equal states differ.
    maglev_table_size: int | None = None
    # loadBalancerSourceRanges (CIDRs) of a LoadBalancer frontend; empty: every client
    source_ranges: tuple[str, ...] = ()
    # a Local traffic policy whose endpoints are all on other nodes: no backends here,
    # and the datapath drops (kube-proxy) instead of rejecting
    local_drop: bool = False
    # slot_sequence(), computed once (planning, capacity and the entry all ask for it)
    _slots: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Sorted by address (distinct, checked below), which is the dataclass order; the
        # key compares in C, not through Backend.__lt__.
        object.__setattr__(self, "backends", tuple(sorted(self.backends, key=_by_address)))
        if self.algorithm not in ALGORITHMS:
            raise ModelError(f"service {self.frontend}: algorithm {self.algorithm!r} unknown "
                             f"(known: {', '.join(sorted(ALGORITHMS))})")
        m = 0
        if self.algorithm == "maglev":
            m = DEFAULT_TABLE_SIZE if self.maglev_table_size is None else self.maglev_table_size
            try:
                validate_table_size(m)
            except ValueError as exc:
                raise ModelError(f"service {self.frontend}: {exc}") from None
        object.__setattr__(self, "maglev_table_size", m)
        if not 0 <= self.affinity_timeout <= MAX_AFFINITY_TIMEOUT:
            raise ModelError(f"service {self.frontend}: affinity timeout {self.affinity_timeout} "
                             f"must be 0-{MAX_AFFINITY_TIMEOUT}")
        ranges = []
        for cidr in self.source_ranges:
            try:
                ranges.append(str(ipaddress.IPv4Network(cidr, strict=False)))
            except ValueError:
                raise ModelError(f"service {self.frontend}: source range {cidr!r} is not an "
                                 f"IPv4 CIDR") from None
        object.__setattr__(self, "source_ranges", tuple(sorted(set(ranges))))
        if len({(b.ip, b.port) for b in self.backends}) != len(self.backends):
            seen: set[tuple[str, int]] = set()
            for b in self.backends:
                if b.address in seen:
                    raise ModelError(f"service {self.frontend}: backend {b.ip}:{b.port} listed twice")
                seen.add(b.address)

    def slot_backends(self) -> tuple[Backend, ...]:
        """Who takes new flows: ready backends, or — only when none is ready —
        the terminating ones (kube-proxy's fallback, KEP-1669)."""
        if self.algorithm != "wrr" and self._slots is not None:
            return self._slots
        active = tuple(b for b in self.backends if b.state == "active" and b.weight > 0)
        if active:
            return active
        return tuple(b for b in self.backends if b.state == "terminating" and b.weight > 0)

    def slot_sequence(self) -> tuple[Backend, ...]:
        """What the slots map holds, slot 1 first: the slot backends, or for wrr one
        cycle of them expanded by weight (see wrr.py)."""
        if self._slots is None:
            members = self.slot_backends()
            if self.algorithm == "wrr" and members:
                members = tuple(members[i] for i in wrr.cycle([b.weight for b in members]))
            object.__setattr__(self, "_slots", members)
        return self._slots
