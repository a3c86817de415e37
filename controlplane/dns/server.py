"""The serving loop: UDP and TCP on one asyncio loop, plus a small metrics/health endpoint.

UDP skips asyncio's transports: the socket is registered with `add_reader` and each
wake-up drains up to BATCH datagrams with plain recvfrom/sendto, answering cache hits
inline (a dict lookup and two byte slices). TCP takes length-prefixed messages, several per
connection, closed after IDLE_TIMEOUT without a query.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable

from .handler import Handler

log = logging.getLogger("svcxdp.dns")

BATCH = 256
IDLE_TIMEOUT = 10.0
RCVBUF = 4 << 20


def udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    except OSError:
        pass
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class UdpServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, handler: Handler) -> None:
        self.loop, self.sock, self.handler = loop, sock, handler
        loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        sock, handler, cache = self.sock, self.handler, self.handler.udp_cache
        recv, send = sock.recvfrom, sock.sendto
        received = 0
        for _ in range(BATCH):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error queued on the socket
            received += 1
            hit = cache.get(data[2:])
            if hit is not None:
                out: bytes | None = data[:2] + hit
            else:
                result = handler.handle(data, udp=True)
                if result is None:
                    continue
                if not isinstance(result, bytes):
                    self.loop.create_task(self._later(result, addr))
                    continue
                out = result
            try:
                send(out, addr)
            except OSError:
                pass  # full socket buffer: the client retries, as with any lost datagram
        handler.counters.udp += received

    async def _later(self, pending: Awaitable[bytes | None], addr: tuple) -> None:
        out = await pending
        if out is not None:
            try:
                self.sock.sendto(out, addr)
            except OSError:
                pass


async def serve_tcp_client(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), IDLE_TIMEOUT)
            data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), IDLE_TIMEOUT)
            handler.counters.tcp += 1
            result = handler.handle(data, udp=False)
            if result is not None and not isinstance(result, bytes):
                result = await result
            if result is None:
                break
            writer.write(len(result).to_bytes(2, "big") + result)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve_metrics(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """GET /metrics (Prometheus text), /health and /ready."""
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            pass
        path = (line.split() + [b"", b""])[1].decode(errors="replace")
        if path == "/metrics":
            body, status = metrics_text(handler), "200 OK"
        elif path in ("/health", "/ready"):
            body, status = "OK\n", "200 OK"
        else:
            body, status = "not found\n", "404 Not Found"
        payload = body.encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        await writer.drain()
    except (asyncio.TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def metrics_text(handler: Handler) -> str:
    c, z = handler.counters, handler.zones
    fwd = handler.forwarder
    lines = [
        "# TYPE svcxdp_dns_requests_total counter",
        f'svcxdp_dns_requests_total{{proto="udp"}} {c.udp}',
        f'svcxdp_dns_requests_total{{proto="tcp"}} {c.tcp}',
        "# TYPE svcxdp_dns_bad_queries_total counter",
        f"svcxdp_dns_bad_queries_total {c.bad}",
        "# TYPE svcxdp_dns_servfail_total counter",
        f"svcxdp_dns_servfail_total {c.servfail}",
        "# TYPE svcxdp_dns_forward_requests_total counter",
        f"svcxdp_dns_forward_requests_total {c.forwarded}",
        "# TYPE svcxdp_dns_forward_cache_hits_total counter",
        f"svcxdp_dns_forward_cache_hits_total {fwd.hits if fwd else 0}",
        "# TYPE svcxdp_dns_names gauge",
        f"svcxdp_dns_names {len(z.data)}",
        "# TYPE svcxdp_dns_zone_serial gauge",
        f"svcxdp_dns_zone_serial {z.serial}",
    ]
    return "\n".join(lines) + "\n"
