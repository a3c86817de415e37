"""`svcctl dns`: the cluster DNS server assembled — zones fed from the store, the handler,
UDP + TCP listeners and the metrics endpoint on one asyncio loop."""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass, field

from controlplane.store.interface import Store

from .feed import ClusterObjects, StoreFeed
from .forward import Forwarder
from .handler import Handler
from .records import zone_records
from .server import UdpServer, serve_metrics, serve_tcp_client, udp_socket
from .zone import Zones

log = logging.getLogger("svcxdp.dns")


@dataclass
class DnsConfig:
    domain: str = "cluster.local"
    reverse_cidrs: list[str] = field(default_factory=lambda: ["10.96.0.0/12", "10.244.0.0/16"])
    ttl: int = 5
    listen: str = "0.0.0.0"
    port: int = 53
    metrics_port: int = 9153          # 0: none
    upstreams: list[tuple[str, int]] = field(default_factory=list)
    forward: bool = True              # False: REFUSED for names outside our zones
    forward_timeout: float = 2.0
    pods: str = "verified"            # verified | insecure | disabled
    # Seconds to keep answering after SIGTERM (CoreDNS's health `lameduck`): the pod is
    # already leaving the Service's endpoints, so queries still sent here get answers.
    lameduck: float = 3.0


class DnsServer:
    """Build with a store, `await start()`, then `await serve_forever()` or `stop()`."""

    def __init__(self, store: Store, config: DnsConfig) -> None:
        self.store, self.config = store, config
        self.zones = Zones(config.domain, config.reverse_cidrs, config.ttl, config.pods)
        self.zones.replace(("static",), zone_records(config.domain))
        forwarder = Forwarder(config.upstreams, config.forward_timeout) if config.forward else None
        self.handler = Handler(self.zones, forwarder)
        self.objects = ClusterObjects(self.zones)
        self.udp: UdpServer | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.feed: StoreFeed | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.feed = StoreFeed(self.store, self.objects, loop, self.handler.zone_changed)
        self.feed.load()
        log.info("loaded %d names at resourceVersion %d", len(self.zones.data), self.feed.rv)
        self.feed.start()
        c = self.config
        self.udp = UdpServer(loop, udp_socket(c.listen, c.port), self.handler)
        self.servers.append(await asyncio.start_server(
            functools.partial(serve_tcp_client, self.handler), c.listen, c.port, reuse_address=True))
        if c.metrics_port:
            self.servers.append(await asyncio.start_server(
                functools.partial(serve_metrics, self.handler), c.listen, c.metrics_port, reuse_address=True))
        log.info("serving %s on %s:%d (udp, tcp), upstreams %s", c.domain, c.listen, c.port,
                 ", ".join(f"{h}:{p}" for h, p in c.upstreams) or "none")

    def stop(self) -> None:
        if self.feed:
            self.feed.stop.set()
        if self.udp:
            self.udp.close()
            self.udp = None
        for s in self.servers:
            s.close()
        self.servers.clear()


async def run_forever(store: Store, config: DnsConfig) -> None:
    server = DnsServer(store, config)
    await server.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    if config.lameduck > 0:
        log.info("terminating: still answering for %.1f s", config.lameduck)
        await asyncio.sleep(config.lameduck)
    log.info("stopping")
    server.stop()
