"""Backend selection in the lab: every algorithm serves a real service, and Maglev
sends each connection where its table says — the pods that stay keep their clients
while another pod is removed."""
from __future__ import annotations

import json

import pytest

from controlplane.dataplane.layout import ALGORITHMS
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.predict import predict
from controlplane.dataplane.writer import maglev_table

from .cluster import CLIENT, Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: hashweb}
spec:
  replicas: 4
  selector: {matchLabels: {app: hashweb}}
  template:
    metadata: {labels: {app: hashweb}}
    spec:
      containers:
      - {name: web, image: nginx, ports: [{containerPort: 80}]}
"""

SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: {name}
  annotations: {{svcxdp.io/lb-algorithm: {algorithm}}}
spec:
  selector: {{app: hashweb}}
  ports: [{{port: 80, targetPort: 80}}]
"""

PORTS = list(range(41001, 41013))
# From the client pod: one HTTP request per fixed source port, the server closing
# first, so the same 4-tuple can open a new connection later (a new flow each time).
CLIENT_SCRIPT = """
import json, socket, sys
vip, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
out = {}
for p in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p))
    s.settimeout(5)
    s.connect((vip, 80))
    s.sendall(b"GET /hostname.html HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    out[p] = data.split(b"\\r\\n\\r\\n", 1)[1].decode().strip()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("alg", nodes=1)


def _by_port(cluster: Cluster, vip: str) -> dict[int, str]:
    p = cluster.exec(CLIENT, "python3", "-c", CLIENT_SCRIPT, vip, *map(str, PORTS), timeout=60)
    assert p.returncode == 0, p.stderr
    return {int(k): v for k, v in json.loads(p.stdout).items()}


def _predicted(cluster: Cluster, vip: str, client_ip: str) -> dict[int, str]:
    pods = {ip: name for name, ip in cluster.pods("app=hashweb").items()}
    state = ServiceState(Frontend(vip, 80), tuple(Backend(ip, 80) for ip in pods), "maglev")
    ids = {b.address: i + 1 for i, b in enumerate(state.backends)}  # placement ignores ids
    table = maglev_table(state, ids)
    return {p: pods[predict(state, client_ip, p, vip, 80, 6, table, ids).ip] for p in PORTS}


def test_every_algorithm_serves_a_real_service(cluster: Cluster):
    cluster.svcctl("apply", "-f", "-", input=DEPLOYMENT)
    for algorithm in sorted(ALGORITHMS):
        name = f"web-{algorithm}"
        cluster.svcctl("apply", "-f", "-", input=SERVICE.format(name=name, algorithm=algorithm))
        cluster.wait_endpoints(name, 4)
        vip = cluster.cluster_ip(name)
        pods = set(cluster.pods("app=hashweb"))
        assert cluster.wait_http(f"http://{vip}/hostname.html").strip() in pods, algorithm
    # ... and each was programmed with its own algorithm, not the node default.
    table = cluster.svcctl("dataplane", "services", "--node", "node1").stdout
    programmed = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    for algorithm in ALGORITHMS:
        assert programmed[f"{cluster.cluster_ip(f'web-{algorithm}')}:80/TCP"] == algorithm


def test_maglev_follows_its_table_and_keeps_clients_when_another_pod_goes(cluster: Cluster):
    vip = cluster.cluster_ip("web-maglev")
    client_ip = cluster.lab.pod(CLIENT).ip
    before = _by_port(cluster, vip)
    assert before == _predicted(cluster, vip, client_ip)
    assert len(set(before.values())) > 1  # the ports spread over the pods
    # One pod goes (scale 4 -> 3): the connections of the pods that stay stay with
    # them, but for the few table entries Maglev reshuffles.
    cluster.svcctl("scale", "deployment", "hashweb", "--replicas=3")
    cluster.wait_endpoints("web-maglev", 3)
    survivors = set(cluster.pods("app=hashweb"))
    after = wait_for("the agent's new table", lambda: (a := _by_port(cluster, vip)) == _predicted(
        cluster, vip, client_ip) and a)
    stayed = [p for p in PORTS if before[p] in survivors]
    moved = [p for p in stayed if after[p] != before[p]]
    assert stayed and len(moved) <= 2, (moved, before, after)
    assert set(after.values()) <= survivors
