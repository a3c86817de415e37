"""The other forwarding mode: after the rewrite the program looks the next hop up in
the FIB and redirects the frame straight to the pod's veth (agent --fib-redirect)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controlplane.lab import hooks

from .cluster import Cluster, cluster_for_module

pytestmark = pytest.mark.root

MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "walkthrough"


def fib_redirect_agents(node, lab):
    return [dataclasses.replace(s, argv=[*s.argv, "--fib-redirect"]) if s.name == "agent" else s
            for s in hooks.node_processes(node, lab)]


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("fib", node_processes=fib_redirect_agents)


def _counter(cluster: Cluster, name: str) -> int:
    out = cluster.svcctl("dataplane", "stats", "--node", "node1").stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1])
    raise AssertionError(f"no counter {name} in:\n{out}")


def test_service_traffic_is_redirected_by_the_fib_and_still_served(cluster: Cluster):
    cluster.svcctl("apply", "-f", str(MANIFESTS / "myapp.yaml"))
    cluster.wait_endpoints("myapp", 3)
    vip = cluster.cluster_ip("myapp")
    before = _counter(cluster, "fib_redirect")
    assert cluster.wait_http(f"http://{vip}/").startswith("Hello MyApp")
    pods = set(cluster.pods("app=myapp"))
    assert set(cluster.hostnames(vip, 30)) == pods   # pods on node1 and node2
    assert _counter(cluster, "fib_redirect") > before
    # A reject still goes back out of the same interface (XDP_TX), not through the FIB.
    cluster.svcctl("scale", "deployment", "myapp-deploy", "--replicas=0")
    cluster.wait_endpoints("myapp", 0)
    from .cluster import wait_for
    assert wait_for("refused", lambda: cluster.http(f"http://{vip}/").returncode == 7)
