"""Connected UDP sockets whose backend left its service are aborted, so their next
connect() chooses again (Cilium's agent does the same for socket-LB).

A connected UDP socket was pointed at its backend by the connect4 hook once; its
sends never pass a hook again (the kernel runs cgroup/sendmsg4 only for sends that
name an address). When that backend is removed, the socket would keep sending to a
dead address, so the reaper finds it (sock_diag dump of connected UDP sockets, matched
to sock_revnat by socket cookie and destination) and destroys it (SOCK_DESTROY: the
kernel's udp_abort): the application's pending and next receive fail with
ECONNABORTED, the socket is disconnected, and its next connect() is translated anew.
sock_diag works per network namespace: the reaper serves the one it runs in.

AF_INET6 sockets connected to an IPv4-mapped address (::ffff:VIP, translated by the
connect6 hook with the IPv4 code) are reaped the same way: sock_diag dumps one family
per request (udp_dump skips a socket whose sk_family is not the request's), so both are
dumped; such a socket shows its peer as ::ffff:a.b.c.d (sk_v6_daddr), whose last 4 bytes
are the IPv4 address sock_revnat is keyed by, and it is destroyed by its AF_INET6
sockid, which the kernel resolves with the IPv4 lookup when both addresses are mapped
(udp_diag_destroy, net/ipv4/udp_diag.c). Native IPv6 peers are not services: left alone.
"""
from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass

from .layout import const

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_ESTABLISHED = 1   # a connected UDP socket's state
_NLMSG = struct.Struct("=IHHII")
_DIAG_MSG = struct.Struct("=BBBB48sIIIII")   # inet_diag_msg with its inet_diag_sockid
_V4MAPPED = b"\0" * 10 + b"\xff\xff"       # ::ffff:0:0/96, an IPv4 peer of an AF_INET6 socket
UNUSED = const("BACKEND_UNUSED")


@dataclass(frozen=True)
class UdpSocket:
    family: int          # AF_INET, or AF_INET6 for a socket connected to ::ffff:a.b.c.d
    sockid: bytes        # inet_diag_sockid as the kernel gave it (names the socket to destroy)
    cookie: int
    dst: bytes           # IPv4, 4 bytes, network order (an AF_INET6 socket's: the mapped word)
    dport: bytes         # 2 bytes, network order


def _request(msg_type: int, flags: int, family: int, sockid: bytes = b"\0" * 48) -> bytes:
    req = struct.pack("=BBBBI", family, socket.IPPROTO_UDP, 0, 0, 1 << TCP_ESTABLISHED) + sockid
    return _NLMSG.pack(_NLMSG.size + len(req), msg_type, flags, 1, 0) + req


def _ipv4_peer(family: int, sockid: bytes) -> bytes | None:
    """The IPv4 destination of a dumped socket: idiag_dst[0] of an AF_INET one, the
    last 4 bytes of an AF_INET6 one's idiag_dst in ::ffff:0:0/96; None for any other
    (native IPv6) destination."""
    if family == socket.AF_INET:
        return sockid[20:24]
    dst = sockid[20:36]
    return dst[12:] if dst[:12] == _V4MAPPED else None


def _messages(sock: socket.socket):
    while True:
        data = sock.recv(65536)
        off = 0
        while off + _NLMSG.size <= len(data):
            length, mtype, _, _, _ = _NLMSG.unpack_from(data, off)
            if mtype == NLMSG_DONE:
                return
            yield mtype, data[off + _NLMSG.size: off + length]
            off += (length + 3) & ~3


def connected_udp() -> list[UdpSocket]:
    """Every UDP socket of this network namespace connected to an IPv4 address: AF_INET
    ones and AF_INET6 ones connected to an IPv4-mapped address."""
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        for family in (socket.AF_INET, socket.AF_INET6):
            nl.sendall(_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family))
            for mtype, body in _messages(nl):
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", body)
                    if family == socket.AF_INET6 and -err == errno.ENOENT:
                        break   # a kernel without IPv6: no AF_INET6 sock_diag handler
                    raise OSError(-err, "sock_diag dump failed")
                sockid = _DIAG_MSG.unpack_from(body)[4]
                dst = _ipv4_peer(family, sockid)
                if dst is None:
                    continue
                lo, hi = struct.unpack_from("=II", sockid, 40)
                out.append(UdpSocket(family, sockid, lo | hi << 32, dst, sockid[2:4]))
    return out


def destroy(s: UdpSocket) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.sendall(_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, s.family, s.sockid))
        for mtype, body in _messages(nl):
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", body)
                if err and -err != errno.ENOENT:   # it went away by itself
                    raise OSError(-err, "SOCK_DESTROY failed")
                return


def reap(dp, only: Collection[tuple[str, int]] | None = None) -> int:
    """Destroy the connected UDP sockets translated to a backend that no longer serves
    their service; returns how many. `only`: look only at sockets connected to these
    backend addresses (ip, port), the ones a sync just took out of a frontend; the
    others are passed over without a map lookup."""
    revnat, backends = dp.table("sock_revnat"), dp.table("backends")
    wanted = None if only is None else {(socket.inet_aton(ip), port.to_bytes(2, "big")) for ip, port in only}
    n = 0
    for s in connected_udp():
        if wanted is not None and (s.dst, s.dport) not in wanted:
            continue
        key = revnat.Key(s.cookie, int.from_bytes(s.dst, "little"), int.from_bytes(s.dport, "little"),
                         socket.IPPROTO_UDP, 0)
        try:
            rv = revnat[key]
        except KeyError:
            continue   # not one the hooks translated
        b = backends[backends.Key(rv.backend_id)]
        if (b.state != UNUSED and b.svc_id == rv.svc_id and b.ip == key.ip and b.port == key.port):
            continue
        destroy(s)
        try:
            del revnat[key]
        except KeyError:
            pass
        n += 1
    return n
