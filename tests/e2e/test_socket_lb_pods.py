"""With `svcctl lab up --socket-lb-pods` (SVCXDP_SOCKET_LB_PODS=1 at `lab up`), the
lab's pod processes go through the socket hooks too: the pods cgroup holds them, a pod
reaching itself through its Service (hairpin) works without any packet NAT, and the
hooks keep translating pods' connections while the agent is down."""
from __future__ import annotations

import json
import os
import sys

import pytest

from controlplane import cgroups
from controlplane.dataplane.sockhooks import HOOKS, attached_ids
from controlplane.lab import plan

from .cluster import CLIENT, Cluster, cluster_for_module
from .test_nodeport import connect_error_from_node1
from .test_socket_lb import OWN, check_hairpin, kill_agent, restart_agent

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    os.environ["SVCXDP_SOCKET_LB_PODS"] = "1"   # read by the agent's lab hook at `lab up`
    try:
        yield from cluster_for_module("sockpods", nodes=1)
    finally:
        os.environ.pop("SVCXDP_SOCKET_LB_PODS", None)


def test_pods_cgroup_holds_the_hooks(cluster: Cluster):
    ids = attached_ids(cgroups.path(plan.pods_cgroup(cluster.lab.prefix, 1)))
    assert all(len(ids[h.name]) == 1 for h in HOOKS), ids


def test_hairpin_through_the_socket_hooks(cluster: Cluster):
    check_hairpin(cluster)


# Connect to VIP:port, print the peer the kernel holds (/proc/net/tcp of this network
# namespace) and the one getpeername() shows: a backend and the VIP through the hooks,
# the VIP twice through the XDP path (the packets are NATed, not the socket).
PEER_PROBE = """import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
port = s.getsockname()[1]
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    local, remote = line.split()[1:3]
    if int(local.split(":")[1], 16) == port:
        print(socket.inet_ntoa(bytes.fromhex(remote.split(":")[0])[::-1]), s.getpeername()[0])
"""


def test_agent_down_pod_hooks_stay_attached_and_serve(cluster: Cluster):
    """kill -9 the agent: the pods cgroup keeps its programs, and a pod's connect() to a
    Service is still translated by them (not by the XDP program, which would serve the
    pod too and hide a lost hook)."""
    cluster.svcctl("apply", "-f", str(OWN / "hairpin.yaml"))
    cluster.wait_endpoints("hairpin", 1)
    vip = cluster.cluster_ip("hairpin")
    ((pod, pod_ip),) = cluster.pods("app=hairpin").items()
    cg = cgroups.path(plan.pods_cgroup(cluster.lab.prefix, 1))
    before = attached_ids(cg)
    kill_agent(cluster)
    for _ in range(5):
        out = cluster.exec(pod, sys.executable, "-c", PEER_PROBE, vip, "80").stdout.split()
        assert out == [pod_ip, vip], f"kernel peer / getpeername: {out}"
    assert attached_ids(cg) == before
    restart_agent(cluster)
    after = attached_ids(cg)
    assert all(len(after[h.name]) == 1 for h in HOOKS) and after != before, (before, after)
    assert cluster.exec(pod, sys.executable, "-c", PEER_PROBE, vip, "80").stdout.split() == [pod_ip, vip]


def test_a_pod_under_the_hooks_meets_load_balancer_source_ranges_with_its_own_address(cluster: Cluster):
    """The hooks judge only the node's own sockets by a LoadBalancer IP's source ranges: a
    pod's source is not known before routing, so its connect() is left to its packets,
    which the pods' XDP entry point checks with the pod's own address. Ranges that hold the
    pods and not the node: a pod gets in, a process on node1 is refused (EPERM)."""
    cluster.svcctl("apply", "-f", str(OWN / "hairpin.yaml"))
    cluster.wait_endpoints("hairpin", 1)
    (backend,) = cluster.pods("app=hairpin")
    lb = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hairpin-lb", "namespace": "default"},
          "spec": {"type": "LoadBalancer", "selector": {"app": "hairpin"},
                   "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                   "loadBalancerSourceRanges": ["10.244.0.0/16"]}}
    cluster.svcctl("apply", "-f", "-", input=json.dumps(lb))
    cluster.wait_endpoints("hairpin-lb", 1)

    lb_ip = cluster.ingress_ip("hairpin-lb")
    assert cluster.wait_http(f"http://{lb_ip}/hostname.html").strip() == backend
    # not translated by the hooks: the kernel's peer is the LB IP (its packets are NATed)
    assert cluster.exec(CLIENT, sys.executable, "-c", PEER_PROBE, lb_ip, "80").stdout.split() == [lb_ip, lb_ip]
    assert connect_error_from_node1(cluster, lb_ip) == "EPERM"
