"""Ethernet/IPv4/TCP|UDP frames for one tuple, and the tuple of a frame the program
returned: what `svcctl trace --run` hands to BPF_PROG_TEST_RUN (testrun.py) and
reads back. Checksums are computed (the program updates them incrementally)."""
from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

ETH_P_IP = 0x0800
TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
CLIENT_MAC = bytes.fromhex("020000000001")
NODE_MAC = bytes.fromhex("020000000002")


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac_key(mac: bytes) -> int:
    """A MAC address as bpf/otherhost.h reads one from a frame (the ext_macs map's
    values): three u16 loads in the host's byte order, the first lowest."""
    return sum(int.from_bytes(mac[i:i + 2], sys.byteorder) << (8 * i) for i in (0, 2, 4))


def mac_of_key(key: int) -> bytes:
    """The MAC address of a mac_key()."""
    return b"".join(((key >> (8 * i)) & 0xFFFF).to_bytes(2, sys.byteorder) for i in (0, 2, 4))


def build(src: str, sport: int, dst: str, dport: int, proto: int, tcp_flags: int = 0x02,
          payload: bytes = b"svcxdp trace", dst_mac: bytes = NODE_MAC) -> bytes:
    """One frame from CLIENT_MAC to `dst_mac` with the tuple, TCP flags and payload."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, tcp_flags, 65535, 0, 0) + payload
        off = 16
    elif proto == UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        off = 6
    else:
        raise ValueError(f"protocol {proto}: only TCP and UDP frames are built")
    check = csum(s + d + struct.pack("!BBH", 0, proto, len(l4)) + l4) or (0xFFFF if proto == UDP else 0)
    l4 = l4[:off] + struct.pack("!H", check) + l4[off + 2:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + CLIENT_MAC + struct.pack("!H", ETH_P_IP) + ip + l4


@dataclass(frozen=True)
class Parsed:
    src: str
    sport: int
    dst: str
    dport: int
    proto: int
    tcp_flags: int | None     # None: not TCP
    icmp_type: int | None     # an ICMP frame (a reject's port unreachable)


def parse(frame: bytes) -> Parsed | None:
    """The IPv4 tuple of a frame (no VLAN: the frames we build have none); None when
    it is not IPv4."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    l4 = 14 + ihl
    if proto in (TCP, UDP) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        flags = frame[l4 + 13] if proto == TCP and len(frame) > l4 + 13 else None
        return Parsed(src, sport, dst, dport, proto, flags, None)
    icmp = frame[l4] if len(frame) > l4 else None
    return Parsed(src, 0, dst, 0, proto, None, icmp)
