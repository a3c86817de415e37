"""The agent's HTTP endpoints on 127.0.0.1, asked over real sockets: the health server's
/healthz, /livez and /proxyMode (status, body, content type) and a 404 elsewhere; a service health
server's answer with kube-proxy's headers. (/metrics is asked in
tests/packet/test_agent_metrics.py, which needs loaded maps.)"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from controlplane.agent.cache import ServiceCache
from controlplane.agent.health import Health, serve
from controlplane.agent.healthcheck import ServiceHealthServers
from controlplane.agent.http_endpoint import EndpointHandler, EndpointServer
from controlplane.controllers import Manifest, Registry, reconcile
from controlplane.store import SqliteStore


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_health_server_answers_healthz_proxy_mode_and_404() -> None:
    health = Health("node1")
    server = serve(health, host="127.0.0.1", port=0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        code, headers, body = get(f"{base}/healthz")
        assert code == 503 and headers["Content-Type"] == "application/json"
        assert json.loads(body)["nodeHealthy"] is False and json.loads(body)["nodeName"] == "node1"
        health.synced()
        code, headers, body = get(f"{base}/healthz?verbose")
        assert code == 200 and int(headers["Content-Length"]) == len(body)
        assert json.loads(body)["nodeHealthy"] is True and json.loads(body)["lastUpdated"]
        # /livez: the loop goes round, in sync or not
        health.out_of_sync()
        assert get(f"{base}/healthz")[0] == 503
        code, _, body = get(f"{base}/livez")
        assert code == 200 and json.loads(body)["alive"] is True
        health.last_beat -= health.stuck_after_s + 1       # the loop stuck
        code, _, body = get(f"{base}/livez")
        assert code == 503 and json.loads(body)["alive"] is False
        code, headers, body = get(f"{base}/proxyMode")
        assert (code, body, headers["Content-Type"]) == (200, b"xdp", "text/plain")
        assert get(f"{base}/nothing")[0::2] == (404, b"404 page not found\n")
    finally:
        server.shutdown()
        server.server_close()


def free_node_port() -> int:
    """A port of the NodePort range that nothing on 127.0.0.1 listens on now."""
    for port in range(32767, 30000, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in the NodePort range")


def test_service_health_server_answers_with_kube_proxys_headers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    port = free_node_port()
    Registry(store).apply([Manifest(d) for d in (
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": port,
                  "ports": [{"port": 80}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"port": 80, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "nodeName": "node1", "conditions": {"ready": True}}
                       for ip in ("10.244.1.2", "10.244.1.3")]})])
    reconcile(store)
    servers = ServiceHealthServers("node1", addresses=("127.0.0.1",))
    try:
        servers.update(ServiceCache.load(store), [("default", "web")])
        assert servers.ports() == {("default", "web"): port}
        code, headers, body = get(f"http://127.0.0.1:{port}/any/path")
        assert code == 200 and json.loads(body)["localEndpoints"] == 2
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
        assert int(headers["Content-Length"]) == len(body)
    finally:
        servers.close()
        store.close()


def test_an_endpoint_server_binds_without_asking_dns_its_name(monkeypatch) -> None:
    """http.server's bind looks its own address up (socket.getfqdn); with a resolver that
    does not answer, every health server the sync opened stalled it ~10 s."""
    asked: list[str] = []
    monkeypatch.setattr(socket, "getfqdn", lambda name="": asked.append(name) or name)
    for host in ("127.0.0.1", "0.0.0.0"):
        server = EndpointServer((host, 0), EndpointHandler)
        server.server_close()
        assert server.server_name == host
    assert asked == []
