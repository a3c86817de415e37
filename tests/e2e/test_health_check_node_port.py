"""The healthCheckNodePort of eTP Local LoadBalancers, served by every node's agent as
kube-proxy's service health server, asked by curl from the `outside` host: 200 with the
local endpoint count on a node with a ready local endpoint, 503 elsewhere and when the
node's endpoints are only terminating; closed when the service stops needing it."""
from __future__ import annotations

import json

import pytest

from .cluster import Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

POD_BACKED = """apiVersion: v1
kind: Pod
metadata:
  name: hc-web
  labels: {app: hc-web}
spec:
  nodeName: node1
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: hc-web
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: hc-web}
  ports: [{port: 80}]
"""

# A service without selector whose endpoints we write ourselves, to reach states the lab's
# kubelet passes through too fast (a terminating endpoint that still serves).
SLICE = """apiVersion: v1
kind: Service
metadata:
  name: hc-manual
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hc-manual-1
  labels: {kubernetes.io/service-name: hc-manual}
addressType: IPv4
ports: [{port: 80, protocol: TCP}]
endpoints:
- addresses: [10.244.1.200]
  nodeName: node1
  conditions: {ready: %(ready)s, serving: true, terminating: %(terminating)s}
- addresses: [10.244.1.201]
  nodeName: node1
  conditions: {ready: %(ready)s, serving: true, terminating: %(terminating)s}
"""


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("hc")


def node_ips(cluster: Cluster) -> dict[str, str]:
    return {n.name: n.ip for n in cluster.lab.nodes()}


def ask(cluster: Cluster, ip: str, port: int) -> tuple[int, dict]:
    """curl from outside: (status code, JSON body); code 0 when nothing answers."""
    p = cluster.exec("outside", "curl", "-s", "-m", "3", "-w", "\n%{http_code}", f"http://{ip}:{port}/")
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), (json.loads(body) if body.strip() else {})


def health_port(cluster: Cluster, service: str) -> int:
    return cluster.get_json("svc", service)["spec"]["healthCheckNodePort"]


def wait_answer(cluster: Cluster, ip: str, port: int, code: int) -> dict:
    def check() -> dict | None:
        got, body = ask(cluster, ip, port)
        return body if got == code else None
    return wait_for(f"{code} from {ip}:{port}", check, timeout=30, every=0.3)


def test_ready_local_endpoint_node_answers_200_others_503(cluster: Cluster) -> None:
    cluster.svcctl("apply", "-f", "-", input=POD_BACKED)
    cluster.wait_endpoints("hc-web", 1)
    port = health_port(cluster, "hc-web")
    ips = node_ips(cluster)
    body = wait_answer(cluster, ips["node1"], port, 200)
    assert body == {"service": {"namespace": "default", "name": "hc-web"}, "localEndpoints": 1,
                    "serviceProxyHealthy": True}
    body = wait_answer(cluster, ips["node2"], port, 503)
    assert body["localEndpoints"] == 0 and body["service"]["name"] == "hc-web"
    # the header a cloud load balancer may weigh nodes by
    p = cluster.exec("outside", "curl", "-s", "-m", "3", "-D", "-", "-o", "/dev/null", f"http://{ips['node1']}:{port}/")
    assert "X-Load-Balancing-Endpoint-Weight: 1" in p.stdout


def test_terminating_only_local_endpoints_give_503_and_the_server_closes_with_the_policy(cluster: Cluster) -> None:
    cluster.svcctl("apply", "-f", "-", input=SLICE % {"ready": "true", "terminating": "false"})
    port = health_port(cluster, "hc-manual")
    ip = node_ips(cluster)["node1"]
    assert wait_answer(cluster, ip, port, 200)["localEndpoints"] == 2
    cluster.svcctl("apply", "-f", "-", input=SLICE % {"ready": "false", "terminating": "true"})
    assert wait_answer(cluster, ip, port, 503)["localEndpoints"] == 0
    cluster.svcctl("apply", "-f", "-", input=SLICE % {"ready": "true", "terminating": "false"})
    wait_answer(cluster, ip, port, 200)
    cluster.svcctl("apply", "-f", "-", input=SLICE.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster")
                   % {"ready": "true", "terminating": "false"})
    wait_for("the health check port to close", lambda: ask(cluster, ip, port)[0] == 0, timeout=30, every=0.3)
