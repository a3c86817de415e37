"""What the dataplane serves, in its own terms: frontends (VIP, port, protocol) and
the backends behind each. Kubernetes objects are turned into these by the layer
above; the map writer turns these into map entries."""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, chain, islice, repeat
from operator import attrgetter, is_, lt
from typing import Callable, Iterable, Sequence

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


def _all_valid_ipv4_joined(ips: Sequence[str]) -> bool:
    """_all_valid_ipv4 by one regular expression: one match over the addresses joined by
    newlines (an item holding a newline of its own could pose as two addresses, hence
    the count). Used where inet_pton is laxer than _valid_ipv4 (see _PTON_IS_STRICT);
    at 10 addresses about half the cost of a match each, but the repeated group makes a
    long text slow (100,000 addresses: ~45 ms, against ~10 ms by inet_pton)."""
    if not ips:
        return True
    try:
        text = "\n".join(ips)
    except TypeError:   # not a str among them: the caller checks one by one
        return False
    return text.count("\n") == len(ips) - 1 and _IPV4_LINES.fullmatch(text) is not None


_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET


def _all_valid_ipv4_pton(ips: Sequence[str]) -> bool:
    """_all_valid_ipv4 by inet_pton, one C call per address (~70 ns; a regular
    expression match costs ~250 ns). It refuses what _valid_ipv4 refuses (glibc's and
    musl's inet_pton take four decimal octets 0-255 without leading zeros, nothing
    else); _PTON_IS_STRICT checks that of the C library at hand."""
    try:
        return all(map(_inet_pton, repeat(_AF_INET), ips))   # 4 bytes, never false
    except (OSError, ValueError, TypeError):   # refused; a NUL or surrogate; not a str
        return False


# Addresses _valid_ipv4 refuses and a lax inet_pton might take: if it takes any, the
# bulk checks use the regular expression.
_PTON_PROBES = ("01.2.3.4", "1.2.3.04", "00.1.2.3", "1.2.3", "1.2.3.4.", ".1.2.3.4", "1..2.3",
                "1.2.3.4.5", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "1.2.3.256", "256.1.2.3",
                "1000.1.2.3", "0x1.2.3.4", "+1.2.3.4", "1.2.3.-4", "\u0661.2.3.4", "1.2.3.4/8", "")
_PTON_IS_STRICT = (_all_valid_ipv4_pton(["0.0.0.0", "255.255.255.255", "10.244.1.2"])
                   and not any(_all_valid_ipv4_pton([probe]) for probe in _PTON_PROBES))


# True when every item passes _valid_ipv4 (False may also mean: not all are str)
_all_valid_ipv4: Callable[[Sequence[str]], bool] = (_all_valid_ipv4_pton if _PTON_IS_STRICT
                                                    else _all_valid_ipv4_joined)


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


def _states_valid(states: Sequence[str] | str) -> bool:
    """A single state, or every state of a column, known (False: an unhashable one too)."""
    try:
        return states in _STATE_NAMES if isinstance(states, str) else set(states) <= _STATE_NAMES
    except TypeError:
        return False


def _columns_valid(ips: Sequence[str], ports: Sequence[int], states: Sequence[str] | str,
                   weights: Sequence[int] | int) -> bool:
    """True when Backend() would accept every row of these columns (False may also mean:
    a value of an unexpected type, which Backend() may still take): one call over all
    the addresses (_all_valid_ipv4); the types, min and max of the ports and weights; the set of states.
    A single state or weight stands for all of them."""
    try:
        return (_all_valid_ipv4(ips) and _all_in_range(ports, 1, 65535)
                and ((weights.__class__ is int and 0 <= weights <= 65535) if isinstance(weights, int)
                     else _all_in_range(weights, 0, 65535))
                and _states_valid(states))
    except TypeError:       # values min/max cannot order
        return False


def _fill(ips: Sequence[str], ports: Sequence[int], states: Sequence[str] | str,
          weights: Sequence[int] | int) -> tuple[Backend, ...]:
    """Backends from columns of equal length, not checked: the objects are allocated in
    one go and each slot filled a column at a time, all in C (map; any() only drives
    the setters, which return None). A Python loop making one object at a time costs
    about twice as much for a full sync's 100,000."""
    n = len(ips)
    made = tuple(map(_new, repeat(Backend, n)))
    any(map(_set_ip, made, ips))
    any(map(_set_port, made, ports))
    any(map(_set_state, made, repeat(states, n) if isinstance(states, str) else states))
    any(map(_set_weight, made, repeat(weights, n) if isinstance(weights, int) else weights))
    return made


def make_backends(ips: Sequence[str], ports: Sequence[int], states: Sequence[str] | str = "active",
                  weights: Sequence[int] | int = 1) -> tuple[Backend, ...]:
    """Backends from columns of equal length, in their order: the same objects, after
    the same checks, as Backend(ip, port, state, weight) for each, but quicker for a
    full sync's 100,000: each column is checked at once (_columns_valid) and the objects
    are then made without checking each again (_fill). A single state or weight stands
    for all of them (checked once). When a column fails, the backends are made one by
    one through Backend(), whose ModelError names the first bad one exactly as before."""
    n = len(ips)
    state_column = (states,) * n if isinstance(states, str) else states
    weight_column = (weights,) * n if isinstance(weights, int) else weights
    if not len(ports) == len(state_column) == len(weight_column) == n:
        raise ValueError(f"make_backends: columns of unequal length ({n} addresses, {len(ports)} "
                         f"ports, {len(state_column)} states, {len(weight_column)} weights)")
    if not _columns_valid(ips, ports, states, weights):
        return tuple(map(Backend, ips, ports, state_column, weight_column))
    return _fill(ips, ports, states, weights)


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
    # The backends as the columns they were made from, (ips, ports, state or states,
    # weight or weights), when the maker kept them (UncheckedModel): a full sync's
    # writer reads its 100,000 addresses from these, not from each Backend (NewPlans).
    _columns: tuple | None = field(default=None, init=False, repr=False, compare=False)

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


_NO_COLUMNS = ((), (), "active", 1)   # the _columns of no backends


class UncheckedModel:
    """Frontends, backends and service states made without checking each as it is made,
    for a caller that makes many (the desired state of a full sync: 10,000 states of
    10 backends each) and checks them together, a few thousand backends at a time.

    backends() hands out the indices of the backends it will make (a range; pass it on
    whole, or a subsequence of it: len, bool and compress work on it as on the tuple it
    stands for); frontend() makes a Frontend at once (its fields as Frontend() sets them);
    state() takes ServiceState's fields, backends as indices, and returns what to pass to
    states(), which makes the states. Everything is checked as the constructors would
    have checked it one object at a time: the backends a batch at a time (_batch: all
    addresses by one call, the types and ranges of the ports and weights, the states'
    names, each call's (ip, port) pairs strictly rising, the order ServiceState keeps
    without sorting), the frontends' addresses and ports together, and each state's
    algorithm, table size and affinity, its source ranges normalised. When all is well
    states() returns the states, each equal to ServiceState(...) of the same fields;
    otherwise it returns None, or raises, and nothing made here may be used: the caller
    makes it all again through the checked constructors (make_backends, Frontend,
    ServiceState), which raise the same ModelError as always, naming the first bad value
    (or, given a value of a type only they take, or backends to sort, make the same)."""

    # Backends checked and made together. Made a column at a time, a whole sync's
    # 100,000 at once took ~4x as long as in batches whose objects and strings stay in
    # the CPU cache across the passes (the objects are scattered over the heap).
    BATCH = 2048

    def __init__(self) -> None:
        self._made: list[Backend] = []     # the backends of the batches made so far
        self._ok = True                    # every batch, and the frontends' fields, checked
        # the batch to come, one entry per backends() call
        self._ips: list[Sequence[str]] = []
        self._ports: list[Sequence[int]] = []
        self._states: list[Sequence[str] | str] = []
        self._weights: list[Sequence[int] | int] = []
        self._queued = 0
        self._vips: list[str] = []
        self._vports: list[int] = []
        # each backends() call's columns, by the first index it handed out
        self._columns_at: dict[int, tuple] = {}

    def backends(self, ips: Sequence[str], ports: Sequence[int], states: Sequence[str] | str = "active",
                 weights: Sequence[int] | int = 1) -> Sequence[int]:
        """The indices of the backends make_backends(ips, ports, states, weights) makes;
        the columns must be of equal length (not checked)."""
        self._ips.append(ips)
        self._ports.append(ports)
        self._states.append(states)
        self._weights.append(weights)
        start = len(self._made) + self._queued
        self._queued += len(ips)
        self._columns_at[start] = (ips, ports, states, weights)
        if self._queued >= self.BATCH:
            self._batch()
        return range(start, start + len(ips))

    def frontend(self, vip: str, port: int, protocol: str = "TCP", scope: str = "cluster") -> Frontend:
        """Frontend(vip, port, protocol, scope), its checks left to states()."""
        self._vips.append(vip)
        self._vports.append(port)
        if protocol not in PROTOCOLS or scope not in SCOPES:
            self._ok = False
        fe = _new(Frontend)
        fe.__dict__.update(vip=vip, port=port, protocol=protocol, scope=scope)
        return fe

    @staticmethod
    def state(frontend: Frontend, backends: Sequence[int], algorithm: str = "random",
              affinity_timeout: int = 0, maglev_table_size: int | None = None,
              source_ranges: tuple[str, ...] = (), local_drop: bool = False) -> tuple:
        """ServiceState's fields, backends as indices from backends(), for states()."""
        return (frontend, backends, algorithm, affinity_timeout, maglev_table_size, source_ranges, local_drop)

    def _batch(self) -> None:
        """Check the queued backends and, if they pass, make them."""
        lengths = list(map(len, self._ips))
        ips = list(chain.from_iterable(self._ips))
        ports = list(chain.from_iterable(self._ports))
        states, weights = _joined(self._states, lengths, str), _joined(self._weights, lengths, int)
        if self._ok and len(ports) == len(ips) and _columns_valid(ips, ports, states, weights) \
                and _rising(ips, ports, lengths):
            self._made.extend(_fill(ips, ports, states, weights))
        else:
            self._ok = False
        self._ips, self._ports, self._states, self._weights = [], [], [], []
        self._queued = 0

    def states(self, pending: Iterable[tuple]) -> tuple[ServiceState, ...] | None:
        """The ServiceStates of `pending` (from state()), in order; None when anything
        made does not pass the checks."""
        if self._queued:
            self._batch()
        if not (self._ok and _all_valid_ipv4(self._vips) and _all_in_range(self._vports, 1, 65535)):
            return None
        made, columns_at = self._made, self._columns_at
        out = []
        append = out.append
        last: object = None
        tup: tuple[Backend, ...] = ()
        columns: tuple | None = None
        for frontend, backends, algorithm, affinity, size, ranges, local_drop in pending:
            if backends is not last:   # the states of one port share its tuple, as before
                last = backends
                if backends.__class__ is range:
                    tup = tuple(made[backends.start:backends.stop])
                    # a whole call's range (not a part of one): its columns are the backends'
                    columns = columns_at.get(backends.start)
                    if columns is not None and (backends.step != 1 or len(columns[0]) != len(backends)):
                        columns = None
                else:
                    tup = tuple(map(made.__getitem__, backends))
                    columns = None if tup else _NO_COLUMNS
            if algorithm not in ALGORITHMS or not 0 <= affinity <= MAX_AFFINITY_TIMEOUT:
                return None
            m = 0
            if algorithm == "maglev":
                m = DEFAULT_TABLE_SIZE if size is None else size
                if m.__class__ is not int or _table_size_error(m) is not None:
                    return None
            if ranges or ranges.__class__ is not tuple:
                ranges = _normal_ranges(ranges, frontend)
            state = _new(ServiceState)
            state.__dict__.update(frontend=frontend, backends=tup, algorithm=algorithm,
                                  affinity_timeout=affinity, maglev_table_size=m,
                                  source_ranges=ranges, local_drop=local_drop, _columns=columns)
            append(state)
        return tuple(out)


def _joined(parts: list, lengths: list[int], scalar: type) -> Sequence | object:
    """One column (states or weights) of several calls' backends: the one value all the
    calls passed (the usual case), or the parts joined, a single value standing for each
    backend of its call."""
    first = parts[0] if parts else None
    if isinstance(first, scalar) and all(map(is_, parts, repeat(first))):
        return first
    return list(chain.from_iterable(repeat(part, n) if isinstance(part, scalar) else part
                                    for part, n in zip(parts, lengths)))


def _rising(ips: list[str], ports: list[int], lengths: list[int]) -> bool:
    """The (ip, port) pairs of each run (`lengths`, in order) strictly rising, compared in
    one go (in C) over the joined columns, the comparisons across two runs left out: the
    addresses first (the pairs' order where they differ, and they mostly do), then the
    pairs wherever an address does not rise."""
    rises = list(map(lt, ips, islice(ips, 1, None)))   # rises[i]: ips[i] < ips[i + 1]
    last = len(rises)
    joins = [end - 1 for end in accumulate(lengths) if 0 < end <= last]
    any(map(rises.__setitem__, joins, repeat(True)))   # setitem returns None: all run
    i = -1
    try:
        while True:
            i = rises.index(False, i + 1)
            if not (ips[i], ports[i]) < (ips[i + 1], ports[i + 1]):
                return False
    except ValueError:      # no other
        return True
