"""A place for the socket hooks to run for real: a network namespace with the
backends' addresses on its loopback and a server on each, and a cgroup (under
the cgroup2 mount, removed afterwards) whose sockets the hooks translate."""
from __future__ import annotations

import os
import selectors
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pyroute2 import IPRoute

from controlplane import cgroups
from controlplane.lab import netns

TCP_PORT = 8080
UDP_PORT = 5353
CLIENT_IP = "10.244.9.1"   # bindable source of the client sockets


@dataclass
class Servers:
    """On every backend address: TCP answers its own address and closes; UDP echoes
    its own address to the sender."""

    sockets: list[socket.socket] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self.sockets:
            sel.register(s, selectors.EVENT_READ)
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                me = s.getsockname()[0].encode()
                if s.type == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    with conn:
                        conn.sendall(me)
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(me + b" " + data, peer)
        sel.close()


@dataclass
class SockEnv:
    ns: str
    cgroup: Path
    backends: tuple[str, ...]

    def socket(self, kind: int, in_cgroup: bool = True, bind_port: int | None = None,
               family: int = socket.AF_INET) -> socket.socket:
        """A socket made in the namespace, belonging to the test cgroup (or not). An
        AF_INET6 one binds to CLIENT_IP in its IPv4-mapped form."""
        def make() -> socket.socket:
            if not in_cgroup:
                return socket.socket(family, kind)
            with cgroups.entered(self.cgroup):
                return socket.socket(family, kind)
        s = netns.call_in(self.ns, make)
        s.settimeout(5)
        if bind_port is not None:
            # Ports of earlier tests may sit in TIME_WAIT.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((mapped(CLIENT_IP) if family == socket.AF_INET6 else CLIENT_IP, bind_port))
        return s

    @contextmanager
    def address(self, ip: str) -> Iterator[None]:
        """`ip` on the namespace's loopback (a /32 or /128) while the block runs."""
        prefixlen = 128 if ":" in ip else 32
        with IPRoute(netns=self.ns, flags=0) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.addr("add", index=lo, address=ip, prefixlen=prefixlen)
        try:
            yield
        finally:
            with IPRoute(netns=self.ns, flags=0) as ipr:
                ipr.addr("del", index=lo, address=ip, prefixlen=prefixlen)

    def tcp_backend(self, vip: str, port: int, **kw) -> tuple[str, tuple]:
        """connect() to vip:port; (the backend that answered, getpeername())."""
        family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        with self.socket(socket.SOCK_STREAM, family=family, **kw) as s:
            s.connect((vip, port))
            peer = s.getpeername()
            return s.recv(64).decode(), peer


def mapped(ip: str) -> str:
    """An IPv4 address as an AF_INET6 socket names it: ::ffff:a.b.c.d."""
    return f"::ffff:{ip}"


def _addresses(ns: str, addrs: list[str]) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        for a in addrs:
            ipr.addr("add", index=lo, address=a, prefixlen=32)


@contextmanager
def sock_env(backends: tuple[str, ...]) -> Iterator[SockEnv]:
    name = f"svcxdp-socktest-{os.getpid()}"
    netns.create(name)
    servers = Servers()
    cg = None
    try:
        # IPv6 on (lab nodes have it off; real nodes on): AF_INET6 sockets with
        # IPv4-mapped addresses, and ::1 for an IPv6 destination the hooks leave alone.
        netns.sysctl(name, {"net.ipv6.conf.all.disable_ipv6": 0, "net.ipv6.conf.default.disable_ipv6": 0})
        _addresses(name, [*backends, CLIENT_IP])

        def listen() -> list[socket.socket]:
            out = []
            for ip in backends:
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((ip, TCP_PORT))
                t.listen(128)
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((ip, UDP_PORT))
                out += [t, u]
            return out
        servers.sockets = netns.call_in(name, listen)
        servers.thread = threading.Thread(target=servers.serve, daemon=True)
        servers.thread.start()
        cg = cgroups.create(name)
        yield SockEnv(name, cg, backends)
    finally:
        servers.stop.set()
        if servers.thread:
            servers.thread.join()
        for s in servers.sockets:
            s.close()
        if cg is not None:
            cgroups.remove(name)
        netns.delete(name)
