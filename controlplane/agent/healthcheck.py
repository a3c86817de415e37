"""kube-proxy's service health server: for each LoadBalancer Service with
`externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort`, on every node,
that tells an external load balancer whether this node can serve the service:

    200 {"service": {"namespace": ..., "name": ...}, "localEndpoints": N, "serviceProxyHealthy": true}
    503 ... when N is 0 (no *ready* endpoint on this node: terminating ones do not count, even
        while they still serve existing flows) or when the agent itself is unhealthy

on any path, with the header `X-Load-Balancing-Endpoint-Weight: N` (pkg/proxy/healthcheck).
N counts this node's ready endpoint addresses of the service.

The agent calls `update(cache, keys)` after every sync with the services it touched (all of
them on a full sync); servers are opened and closed to match. A port that cannot be bound
(taken by something else on the node) is logged and retried on the next update.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from controlplane.api.service import LOAD_BALANCER, POLICY_LOCAL, Service

from .cache import ServiceCache, ServiceKey
from .http_endpoint import EndpointHandler, EndpointServer

log = logging.getLogger("svcxdp.agent.healthcheck")


def needs_health_check(svc: Service) -> bool:
    return (svc.type == LOAD_BALANCER and svc.spec.external_traffic_policy == POLICY_LOCAL
            and bool(svc.spec.health_check_node_port) and svc.proxied)


def local_ready_endpoints(cache: ServiceCache, key: ServiceKey, node: str) -> int:
    view = cache.view(key)
    if view is None:
        return 0
    return len({b.ip for port in view.ports for b in port.backends if b.ready and b.node_name == node})


@dataclass
class _Entry:
    key: ServiceKey
    port: int
    endpoints: int
    servers: list[EndpointServer]


def response(key: ServiceKey, endpoints: int, proxy_healthy: bool) -> tuple[int, bytes]:
    """Status code and body, laid out as kube-proxy writes them (tab-indented JSON)."""
    body = {"service": {"namespace": key[0], "name": key[1]}, "localEndpoints": endpoints,
            "serviceProxyHealthy": proxy_healthy}
    code = 200 if endpoints and proxy_healthy else 503
    return code, json.dumps(body, indent="\t").encode()


class ServiceHealthServers:
    """The health servers of one node, kept in line with the agent's cache."""

    def __init__(self, node: str, proxy_healthy: Callable[[], bool] = lambda: True,
                 addresses: Iterable[str] = ("0.0.0.0",)) -> None:
        self.node = node
        self.proxy_healthy = proxy_healthy
        self.addresses = tuple(addresses)   # where to listen, in the node's netns (default: all)
        self._entries: dict[ServiceKey, _Entry] = {}
        self._lock = threading.Lock()

    # ---- what the agent calls -----------------------------------------------------------
    def update(self, cache: ServiceCache, keys: Iterable[ServiceKey]) -> None:
        for key in keys:
            svc = cache.services.get(key)
            if svc is None or not needs_health_check(svc):
                self._close(key)
                continue
            port = svc.spec.health_check_node_port
            assert port is not None
            count = local_ready_endpoints(cache, key, self.node)
            entry = self._entries.get(key)
            if entry is not None and entry.port != port:
                self._close(key)
                entry = None
            if entry is None:
                entry = _Entry(key, port, count, [])
                with self._lock:
                    self._entries[key] = entry
            with self._lock:
                if entry.endpoints != count:
                    log.info("health check %s/%s: %d local endpoints", *key, count)
                entry.endpoints = count
        # open new servers; a port whose bind failed earlier is retried on every update
        for entry in list(self._entries.values()):
            if not entry.servers:
                self._open(entry)

    def ports(self) -> dict[ServiceKey, int]:
        with self._lock:
            return {k: e.port for k, e in self._entries.items() if e.servers}

    def close(self) -> None:
        for key in list(self._entries):
            self._close(key)

    # ---- servers --------------------------------------------------------------------------
    def _answer(self, key: ServiceKey) -> tuple[int, bytes, int] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            count = entry.endpoints
        code, body = response(key, count, self.proxy_healthy())
        return code, body, count

    def _open(self, entry: _Entry) -> None:
        key = entry.key
        answer = self._answer

        class Handler(EndpointHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                result = answer(key)
                if result is None:          # closed meanwhile
                    self.send_error(503)
                    return
                code, body, count = result
                self.send_body(code, body, "application/json", (("X-Content-Type-Options", "nosniff"),
                                                                ("X-Load-Balancing-Endpoint-Weight", str(count))))

        servers = []
        try:
            for address in self.addresses:
                servers.append(EndpointServer((address, entry.port), Handler))
        except OSError as exc:
            for server in servers:
                server.server_close()
            log.error("health check %s/%s: cannot listen on port %d: %s (retrying)", *key, entry.port, exc)
            return
        for server in servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                             name=f"healthcheck-{entry.port}", daemon=True).start()
        entry.servers = servers
        log.info("health check %s/%s: serving on port %d (%d local endpoints)", *key, entry.port, entry.endpoints)

    def _close(self, key: ServiceKey) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return
        for server in entry.servers:
            server.shutdown()
            server.server_close()
        if entry.servers:
            log.info("health check %s/%s: closed port %d", *key, entry.port)
