"""ct_udp_recent, the filter that lets a UDP first packet skip conntrack (bpf/conntrack.h,
ct_udp_absent): a slot per tuple hash holding 1 + the UDP-timeout epoch in which a UDP
flow hashing there was last written or refreshed in conntrack (0: never).

User space reads it (trace.py models the skip) and fills it with "maybe" whenever a
program is loaded over a conntrack table that outlived the last one (program.py): the
stamps may be missing (a filter new beside it) or of another epoch length (another
UDP timeout), and the entries they vouch for must not be skipped.
"""
from __future__ import annotations

from .affinity_maps import coarse_now_ns
from .layout import const

MAP = "ct_udp_recent"
SLOTS = const("CT_RECENT_SLOTS")
_NSEC = 1_000_000_000
_M32 = 0xFFFFFFFF


def slot(src: int, dst: int, sport: int, dport: int) -> int:
    """conntrack.h ct_udp_slot() of a UDP forward key: the fields as the key holds them
    (network byte order, read as this host's integers)."""
    h = (src * 0x9E3779B1) & _M32
    h ^= (dst * 0x85EBCA6B) & _M32
    h ^= ((((sport << 16) | dport) & _M32) * 0xC2B2AE35) & _M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    return h & (SLOTS - 1)


def epoch(now_ns: int, udp_timeout_s: int) -> int:
    """conntrack.h ct_udp_epoch()."""
    return (now_ns // (udp_timeout_s * _NSEC)) & _M32


def absent(stamp: int, now_ns: int, udp_timeout_s: int) -> bool:
    """conntrack.h ct_udp_absent() of a slot holding `stamp`."""
    return stamp + 1 < epoch(now_ns, udp_timeout_s)


def stamp_of(now_ns: int, udp_timeout_s: int) -> int:
    """What conntrack.h ct_udp_stamp() writes at `now_ns`."""
    return epoch(now_ns, udp_timeout_s) + 1


def fill_maybe(table, udp_timeout_s: int, now_ns: int | None = None) -> None:
    """Every slot stamped now: nothing is skipped until the UDP flows that may be in
    conntrack (written before this filter existed) have been idle a full timeout."""
    value = stamp_of(coarse_now_ns() if now_ns is None else now_ns, udp_timeout_s)
    keys = (table.Key * SLOTS)(*range(SLOTS))
    values = (table.Leaf * SLOTS)(*([value] * SLOTS))
    table.items_update_batch(keys, values)


def read(table, src: int, dst: int, sport: int, dport: int) -> int:
    """The slot's stamp for a UDP forward key's fields."""
    return int(table[table.Key(slot(src, dst, sport, dport))].value)


def write(table, src: int, dst: int, sport: int, dport: int, stamp: int) -> None:
    """Set the slot of a UDP forward key's fields (tests: age a slot, or mark it)."""
    table[table.Key(slot(src, dst, sport, dport))] = table.Leaf(stamp)

