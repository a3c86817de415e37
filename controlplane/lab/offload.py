"""Switch off TX checksum offload on a lab interface (what `ethtool -K dev tx off` does).

With offload on, a veth passes TCP/UDP packets whose checksum field holds only the
pseudo-header sum (CHECKSUM_PARTIAL). An XDP program that rewrites addresses and ports and
then sends the frame on (XDP_TX / XDP_REDIRECT) loses that metadata, and the receiver sees a
bad checksum. With offload off, every lab packet carries a complete checksum, as on a wire.
"""
from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from controlplane.lab import netns

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def _set_tx_csum(ifname: str, on: bool) -> None:
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, int(on)))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def disable_tx_checksum(ns: str, *ifnames: str) -> None:
    def run() -> None:
        for ifname in ifnames:
            _set_tx_csum(ifname, False)

    netns.call_in(ns, run)
