"""The service health server's answers (kube-proxy's layout) and local endpoint counts, from
a real store through the agent's cache; the sockets are tested in the lab
(tests/e2e/test_health_check_node_port.py)."""
from __future__ import annotations

import json
from pathlib import Path

from controlplane.agent.cache import ServiceCache
from controlplane.agent.healthcheck import local_ready_endpoints, needs_health_check, response
from controlplane.api import Service
from controlplane.controllers import Manifest, Registry, reconcile
from controlplane.store import SqliteStore


def test_response_layout_as_kube_proxy() -> None:
    code, body = response(("default", "web"), 2, True)
    assert code == 200
    assert body.decode() == ('{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "web"\n\t},\n'
                             '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}')
    assert response(("default", "web"), 0, True)[0] == 503
    assert response(("default", "web"), 2, False)[0] == 503      # an unhealthy proxy fails the node
    assert json.loads(response(("a", "b"), 0, False)[1])["localEndpoints"] == 0


def test_local_ready_endpoints_per_node(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    registry = Registry(store)

    def endpoint(ip: str, node: str, ready: bool) -> dict:
        return {"addresses": [ip], "nodeName": node,
                "conditions": {"ready": ready, "serving": True, "terminating": not ready}}
    registry.apply([Manifest(d) for d in (
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "b", "port": 81, "protocol": "TCP"}],
         "endpoints": [endpoint("10.244.1.2", "node1", True), endpoint("10.244.1.3", "node1", True),
                       endpoint("10.244.1.4", "node1", False), endpoint("10.244.2.2", "node2", False)]})])
    reconcile(store)
    cache = ServiceCache.load(store)
    key = ("default", "web")
    assert needs_health_check(cache.services[key])
    # addresses, not address x port; terminating endpoints do not count
    assert local_ready_endpoints(cache, key, "node1") == 2
    assert local_ready_endpoints(cache, key, "node2") == 0
    svc = store.get(Service, "default", "web")
    svc.spec.external_traffic_policy = "Cluster"
    svc.spec.health_check_node_port = None
    assert not needs_health_check(svc)
