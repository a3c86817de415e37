"""ct_udp_recent, the filter that lets a UDP first packet skip conntrack (bpf/conntrack.h,
ct_udp_absent): one value of a byte per tuple hash, each the tag (epoch mod TAGS, plus 1;
0: never) of the epoch in which a UDP flow hashing there was last written or refreshed in
conntrack. An epoch is the smallest power of two of nanoseconds not shorter than the UDP
timeout. A slot SURE_AGE or more epochs old vouches that no such entry lives.

User space reads it (trace.py models the skip) and fills it with "maybe" whenever a
program is loaded over a conntrack table that outlived the last one (program.py): the
stamps may be missing (a filter new beside it) or of another epoch length (another
UDP timeout), and the entries they vouch for must not be skipped.
"""
from __future__ import annotations

import ctypes as ct

from controlplane._csrc import lib

from .affinity_maps import coarse_now_ns
from .layout import const

MAP = "ct_udp_recent"
SLOTS = const("CT_RECENT_SLOTS")
TAGS = const("CT_RECENT_TAGS")
SURE_AGE = const("CT_RECENT_SURE_AGE")   # epochs: what ct_udp_absent() calls certainly expired
_NSEC = 1_000_000_000


def slot(src: int, dst: int, sport: int, dport: int) -> int:
    """conntrack.h ct_udp_slot() of a UDP forward key: the fields as the key holds them
    (network byte order, read as this host's integers); the hash is csrc/flowhash.h's."""
    return lib.svcxdp_ffi_udp_recent_hash(src, dst, sport, dport) & (SLOTS - 1)


def epoch_shift(udp_timeout_s: int) -> int:
    """conntrack.h CT_UDP_EPOCH_SHIFT: log2 of the epoch, in nanoseconds."""
    return (udp_timeout_s * _NSEC - 1).bit_length()


def epoch(now_ns: int, udp_timeout_s: int) -> int:
    return now_ns >> epoch_shift(udp_timeout_s)


def tag_of_epoch(e: int) -> int:
    """The tag a stamp in epoch `e` writes (conntrack.h ct_udp_tag())."""
    return (e & (TAGS - 1)) + 1


def tag(now_ns: int, udp_timeout_s: int) -> int:
    return tag_of_epoch(epoch(now_ns, udp_timeout_s))


def absent(t: int, now_ns: int, udp_timeout_s: int) -> bool:
    """conntrack.h ct_udp_absent() of a slot holding tag `t`."""
    return t == 0 or (tag(now_ns, udp_timeout_s) - t) & (TAGS - 1) >= SURE_AGE


def fill_maybe(table, udp_timeout_s: int, now_ns: int | None = None) -> None:
    """Every slot stamped now: nothing is skipped until the UDP flows that may be in
    conntrack (stamped by no program, or under another timeout) have been idle a full
    timeout."""
    leaf = table.Leaf()
    ct.memset(ct.addressof(leaf), tag(coarse_now_ns() if now_ns is None else now_ns, udp_timeout_s),
              ct.sizeof(leaf))
    table[table.Key(0)] = leaf


def read(table, src: int, dst: int, sport: int, dport: int) -> int:
    """The tag of a UDP forward key's slot."""
    return int(table[table.Key(0)].tag[slot(src, dst, sport, dport)])


def write(table, src: int, dst: int, sport: int, dport: int, t: int) -> None:
    """Set the tag of a UDP forward key's slot (tests: age a slot, or mark it)."""
    leaf = table[table.Key(0)]
    leaf.tag[slot(src, dst, sport, dport)] = t
    table[table.Key(0)] = leaf
