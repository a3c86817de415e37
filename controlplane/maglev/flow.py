"""Packet words: the integers the datapath hands to svcxdp_flow_hash().

The BPF program loads ip->saddr and the ports from the packet as native
integers without byte swapping, so the hash sees the network-order bytes read
in host order. These helpers produce the same integers from Python values.
"""
from __future__ import annotations

import ipaddress
import sys

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

DEFAULT_FLOW_SEED = 0x5EED0F10  # SVCXDP_FLOW_HASH_SEED_DEFAULT in csrc/flowhash.h


def addr_word(ip: str | int | ipaddress.IPv4Address) -> int:
    """IPv4 address as the datapath's u32 load of ip->saddr (network bytes, host order)."""
    return int.from_bytes(ipaddress.IPv4Address(ip).packed, sys.byteorder)


def port_word(port: int) -> int:
    """Port (host order, e.g. 8080) as the datapath's u16 load of tcp->source/dest."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range 0..65535")
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)
