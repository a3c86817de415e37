"""The default forwarding path: after the rewrite the program looks the next hop up in the
FIB and redirects the frame straight to the egress device — a local pod's veth, or the
node's eth0 towards a pod on the other node — so service traffic of a pod never enters
its node's stack (bpf/fib.h). Real clients (curl, a UDP socket) in a pod on node1, pods
on both nodes; node1's IP forwarding counter shows whether its stack forwarded them."""
from __future__ import annotations

import json
import os
import socket

import pytest

from controlplane.dataplane.config import PIN_ROOT
from controlplane.dataplane.libbpf import obj_get, u32_delete, u32_update
from controlplane.lab import netns
from controlplane.lab.node_processes import instance_name

from .cluster import CLIENT, Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.47"


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("redirect")


def _forwarded(cluster: Cluster, node: str = "node1") -> int:
    """Ip: ForwDatagrams of the node's namespace: packets its stack forwarded."""
    lines = [ln.split() for ln in cluster.exec(node, "cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Ip:")]
    return int(lines[1][lines[0].index("ForwDatagrams")])


def _apply(cluster: Cluster, *docs: dict) -> None:
    cluster.svcctl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "echo"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": IMAGE, "ports": [
                {"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]}]}}


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
           "spec": {"selector": {"app": "echo"}, "ports": [
               {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
               {"name": "udp", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}}


@pytest.fixture(scope="module")
def echo(cluster: Cluster) -> str:
    """The echo Service's ClusterIP, one pod on each node."""
    _apply(cluster, _pod("echo-local", "node1"), _pod("echo-remote", "node2"), SERVICE)
    cluster.wait_endpoints("echo", 2)
    vip = cluster.cluster_ip("echo")
    cluster.wait_http(f"http://{vip}/clientip")
    return vip


def _udp_echoes(cluster: Cluster, vip: str, n: int) -> list[bytes | None]:
    """n datagrams from n sockets (n flows) in the client pod; each one's echo or None."""
    def run() -> list[bytes | None]:
        out: list[bytes | None] = []
        for i in range(n):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                payload = f"flow {i}".encode()
                s.sendto(payload, (vip, 53))
                try:
                    data, peer = s.recvfrom(2048)
                except socket.timeout:
                    out.append(None)
                    continue
                out.append(data if peer == (vip, 53) else b"wrong source " + repr(peer).encode())
        return out
    return netns.call_in(cluster.lab.netns_for(CLIENT), run)


def test_pod_traffic_to_a_service_skips_the_node_stack_both_ways(cluster: Cluster, echo: str):
    """Requests to the local and the remote pod and their replies are redirected on node1:
    the answers are right (the pod sees the client's own address, replies come from the
    VIP) and node1's stack forwards none of them."""
    client_ip = cluster.lab.pod(CLIENT).ip
    wait_for("both pods answering", lambda: len(set(cluster.hostnames(echo, 20))) == 2, timeout=30)
    fwd0, red0, cached0 = _forwarded(cluster), cluster.counter("fib_redirect"), cluster.counter("fib_cached")
    answers = [cluster.http(f"http://{echo}/clientip").stdout for _ in range(20)]
    echoes = _udp_echoes(cluster, echo, 40)
    fwd1, red1, cached1 = _forwarded(cluster), cluster.counter("fib_redirect"), cluster.counter("fib_cached")
    assert all(a.strip().rsplit(":", 1)[0] == client_ip for a in answers), answers
    assert echoes == [f"flow {i}".encode() for i in range(40)]
    # 20 TCP connections (>= 5 packets each way) and 40 datagrams and their echoes, most of
    # them sent on by the agent's FIB result cache (its route watcher runs: bpf/fib.h)
    assert (red1 - red0) + (cached1 - cached0) >= 20 * 5 + 40, (red0, red1, cached0, cached1)
    assert cached1 - cached0 > red1 - red0, (red0, red1, cached0, cached1)
    assert fwd1 - fwd0 <= 5, f"node1's stack forwarded {fwd1 - fwd0} packets"


def test_an_interface_that_is_no_redirect_target_goes_through_the_stack(cluster: Cluster, echo: str):
    """Take the local pod's veth out of tx_ports (as for a peer without an XDP program):
    its traffic is still served, now forwarded by node1's stack; put it back."""
    local = cluster.lab.pod("echo-local")
    fd = obj_get(str(PIN_ROOT / instance_name(cluster.lab, "node1") / "tx_ports"))
    try:
        u32_delete(fd, local.host_ifindex)
        refused0, fwd0 = cluster.counter("redirect_refused"), _forwarded(cluster)
        wait_for("the local pod answering", lambda: cluster.hostnames(echo, 10).count("echo-local") > 0)
        assert cluster.counter("redirect_refused") > refused0
        assert _forwarded(cluster) > fwd0
    finally:
        # a DEVMAP entry names its device by ifindex in the writer's namespace
        netns.call_in(cluster.lab.netns_for("node1"), u32_update, fd, local.host_ifindex, local.host_ifindex)
        os.close(fd)


def test_a_reject_still_leaves_by_xdp_tx(cluster: Cluster):
    cluster.svcctl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty", "namespace": "default"},
         "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80, "protocol": "TCP"}]}}))
    vip = cluster.cluster_ip("empty")
    assert wait_for("refused", lambda: cluster.http(f"http://{vip}/").returncode == 7)
