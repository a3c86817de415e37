"""What the dataplane serves, in its own terms: frontends (VIP, port, protocol) and
the backends behind each. Kubernetes objects are turned into these by the layer
above; the map writer turns these into map entries."""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter, lt
from typing import Sequence

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
_IPV4_TEXT = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_IPV4 = re.compile(_IPV4_TEXT)
# Many addresses joined by newlines, checked by one match (see _all_valid_ipv4)
_IPV4_LINES = re.compile(rf"(?:{_IPV4_TEXT}\n)*{_IPV4_TEXT}")


def _valid_ipv4(ip: str) -> bool:
    """What ipaddress.IPv4Address accepts (four decimal octets 0-255, no leading
    zeros), checked in C by one regular expression: a full sync validates every
    endpoint address (as quick as the lru_cache this replaces, without its ~9 MB)."""
    return _IPV4.fullmatch(ip) is not None


def _all_valid_ipv4(ips: Sequence[str]) -> bool:
    """True when every item passes _valid_ipv4 (False may also mean: not all are str).
    One match over the addresses joined by newlines costs about half of one match per
    address (the per-call overhead is most of a match); an item holding a newline of its
    own could pose as two addresses, hence the count."""
    if not ips:
        return True
    try:
        text = "\n".join(ips)
    except TypeError:   # not a str among them: the caller checks one by one
        return False
    return text.count("\n") == len(ips) - 1 and _IPV4_LINES.fullmatch(text) is not None


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
        vip, port = self.vip, self.port
        # The usual case in C (one match, class checks); anything else takes the checks
        # that name what is wrong. One Frontend per service port and way in.
        if not (vip.__class__ is str and _IPV4.fullmatch(vip) is not None):
            _check_ip(vip, "frontend vip")
        if not (port.__class__ is int and 0 < port < 65536):
            _check_port(port, f"frontend {vip}")
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


_new = object.__new__
# The slots' own setters: they fill a frozen Backend without its __setattr__ (which
# refuses) and without __init__ (which validates one object at a time).
_set_ip, _set_port = Backend.ip.__set__, Backend.port.__set__            # type: ignore[attr-defined]
_set_state, _set_weight = Backend.state.__set__, Backend.weight.__set__  # type: ignore[attr-defined]


def _all_in_range(values: Sequence[int], low: int, high: int) -> bool:
    """Every value an int (exactly: a bool or other subclass goes the slow way) in
    low..high, checked in C: the set of their types, their min and max."""
    return not values or (set(map(type, values)) == {int} and min(values) >= low
                          and max(values) <= high)


_STATE_NAMES = frozenset(BACKEND_STATES)


def make_backends(ips: Sequence[str], ports: Sequence[int], states: Sequence[str] | str = "active",
                  weights: Sequence[int] | int = 1) -> tuple[Backend, ...]:
    """Backends from columns of equal length, in their order: the same objects, after
    the same checks, as Backend(ip, port, state, weight) for each, but quicker for a
    full sync's 100,000 (~1.4x: 105 -> 77 ms CPU in 10,000 columns of 10, most of
    what remains being the objects' allocation): each column is checked at once (one
    match over all the addresses; the types, min and max of the ports and weights; the
    set of states) and the objects are then made without checking each again. A single
    state or weight stands for all of them (checked once). When a column fails, the
    backends are made one by one through Backend(), whose ModelError names the first
    bad one exactly as before."""
    n = len(ips)
    one_state, one_weight = isinstance(states, str), isinstance(weights, int)
    state_column = (states,) * n if one_state else states
    weight_column = (weights,) * n if one_weight else weights
    if not len(ports) == len(state_column) == len(weight_column) == n:
        raise ValueError(f"make_backends: columns of unequal length ({n} addresses, {len(ports)} "
                         f"ports, {len(state_column)} states, {len(weight_column)} weights)")
    try:
        checked = (_all_valid_ipv4(ips) and _all_in_range(ports, 1, 65535)
                   and ((weights.__class__ is int and 0 <= weights <= 65535) if one_weight  # type: ignore[operator]
                        else _all_in_range(weights, 0, 65535))                            # type: ignore[arg-type]
                   and (states in _STATE_NAMES if one_state else set(states) <= _STATE_NAMES))
    except TypeError:       # an unhashable state, or values min/max cannot order
        checked = False
    if not checked:
        return tuple(map(Backend, ips, ports, state_column, weight_column))
    out = []
    append = out.append
    for ip, port, state, weight in zip(ips, ports, state_column, weight_column):
        b = _new(Backend)
        _set_ip(b, ip)
        _set_port(b, port)
        _set_state(b, state)
        _set_weight(b, weight)
        append(b)
    return tuple(out)


_by_address = attrgetter("ip", "port")


@lru_cache(maxsize=64)
def _table_size_error(m: int) -> str | None:
    """validate_table_size's complaint about m, or None; cached, since the prime test
    takes ~64 divisions at the default size and every Maglev state asks (a few sizes
    in use at most)."""
    try:
        validate_table_size(m)
    except ValueError as exc:
        return str(exc)
    return None


def _normal_ranges(cidrs: Sequence[str], frontend: Frontend) -> tuple[str, ...]:
    ranges = []
    for cidr in cidrs:
        try:
            ranges.append(str(ipaddress.IPv4Network(cidr, strict=False)))
        except ValueError:
            raise ModelError(f"service {frontend}: source range {cidr!r} is not an "
                             f"IPv4 CIDR") from None
    return tuple(sorted(set(ranges)))


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
        backends = self.backends
        if backends.__class__ is not tuple:
            backends = tuple(backends)
            object.__setattr__(self, "backends", backends)
        # Sorted by address (the dataclass order, the backends being distinct) with no
        # address twice. Strictly increasing addresses are both, checked in C; the
        # endpoints come sorted from the service views, so sorting is the exception.
        addresses = list(map(_by_address, backends))
        if not all(map(lt, addresses, addresses[1:])):
            backends = tuple(sorted(backends, key=_by_address))
            object.__setattr__(self, "backends", backends)
            seen: set[tuple[str, int]] = set()
            for b in backends:
                if b.address in seen:
                    raise ModelError(f"service {self.frontend}: backend {b.ip}:{b.port} listed twice")
                seen.add(b.address)
        if self.algorithm not in ALGORITHMS:
            raise ModelError(f"service {self.frontend}: algorithm {self.algorithm!r} unknown "
                             f"(known: {', '.join(sorted(ALGORITHMS))})")
        m = 0
        if self.algorithm == "maglev":
            m = DEFAULT_TABLE_SIZE if self.maglev_table_size is None else self.maglev_table_size
            if m.__class__ is int:
                error = _table_size_error(m)
            else:
                try:
                    validate_table_size(m)
                    error = None
                except ValueError as exc:
                    error = str(exc)
            if error:
                raise ModelError(f"service {self.frontend}: {error}")
        if self.maglev_table_size != m or self.maglev_table_size.__class__ is not int:
            object.__setattr__(self, "maglev_table_size", m)
        if not 0 <= self.affinity_timeout <= MAX_AFFINITY_TIMEOUT:
            raise ModelError(f"service {self.frontend}: affinity timeout {self.affinity_timeout} "
                             f"must be 0-{MAX_AFFINITY_TIMEOUT}")
        if self.source_ranges or self.source_ranges.__class__ is not tuple:   # () stays as it is
            object.__setattr__(self, "source_ranges", _normal_ranges(self.source_ranges, self.frontend))

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
