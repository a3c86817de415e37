"""Traffic from outside the cluster, end to end: real clients on the lab's `outside` host
(curl, a UDP socket) reach Services through NodePorts on both nodes, an externalIP and a
LoadBalancer IP; a backend on the other node is source-NATed, a local one sees the client;
externalTrafficPolicy / internalTrafficPolicy Local and loadBalancerSourceRanges. Pods and
the nodes reach the same addresses, as kube-proxy serves them."""
from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.lab import netns

from .cluster import Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

WALKTHROUGH = Path(__file__).resolve().parents[2] / "examples" / "walkthrough"
NODE1, NODE2 = "192.168.1.31", "192.168.1.32"
OUTSIDE = "192.168.1.100"
EXTERNAL_IP = "203.0.113.250"
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.47"


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("np")


def outside(cluster: Cluster, url: str, timeout: int = 3) -> subprocess.CompletedProcess:
    return cluster.exec("outside", "curl", "-s", "-m", str(timeout), url, timeout=timeout + 10)


def wait_outside(cluster: Cluster, url: str) -> str:
    def check():
        p = outside(cluster, url)
        return p.stdout if p.returncode == 0 and p.stdout else None
    return wait_for(f"{url} from outside", check)


def apply(cluster: Cluster, *docs: dict) -> None:
    cluster.svcctl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def pod(name: str, node: str, app: str) -> dict:
    """An agnhost-like pod pinned to a node: HTTP on 8080 (/clientip), UDP echo on 5353."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": AGNHOST, "ports": [
                {"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]}]}}


def service(name: str, app: str, node_port: int | None = None, udp_node_port: int | None = None,
            **spec) -> dict:
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    if node_port:
        ports[0]["nodePort"] = node_port
    if udp_node_port:
        ports.append({"name": "echo", "port": 53, "targetPort": 5353, "protocol": "UDP",
                      "nodePort": udp_node_port})
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "selector": {"app": app},
                     "ports": ports, **spec}}


def from_node1(cluster: Cluster, url: str) -> str | None:
    """curl as a process on node1: in its namespace and its cgroup (the socket hooks')."""
    p = cluster.exec("node1", "curl", "-s", "-m", "3", url, timeout=15)
    return p.stdout if p.returncode == 0 and p.stdout else None


# connect() to argv[1]:80: "connected", or the error's name.
CONNECT_PROBE = """import errno, socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], 80))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
"""


def connect_error_from_node1(cluster: Cluster, ip: str) -> str:
    """What a process on node1 (its namespace and cgroup) gets from connect() to ip:80."""
    return cluster.exec("node1", sys.executable, "-c", CONNECT_PROBE, ip, timeout=15).stdout.strip()


def client_address(answer: str) -> str:
    return answer.strip().rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def remote_pod(cluster: Cluster) -> str:
    """One backend, on node2: through node1 it is remote, through node2 local."""
    apply(cluster, pod("np-web", "node2", "np"))
    wait_for("np-web running", lambda: cluster.pods("app=np").get("np-web"))
    return cluster.pods("app=np")["np-web"]


def test_walkthrough_nginx_svc_answers_on_both_node_addresses(cluster: Cluster):
    cluster.svcctl("run", "nginx", "--image=nginx", "--replicas=3")
    cluster.svcctl("apply", "-f", str(WALKTHROUGH / "nginx-svc.yaml"))
    cluster.wait_endpoints("nginx-svc", 3)
    for node in (NODE1, NODE2):
        assert "Welcome to nginx!" in wait_outside(cluster, f"http://{node}:30080/")
        for _ in range(6):  # local and remote pods alike
            p = outside(cluster, f"http://{node}:30080/")
            assert p.returncode == 0 and "Welcome to nginx!" in p.stdout, p


def test_nodeport_from_the_node_itself_through_the_socket_hooks(cluster: Cluster):
    """A process on node1 (in its cgroup, where the agent attached the socket hooks)
    reaches nginx-svc's NodePort on loopback, on its own address and on node2's."""
    for url in ("http://127.0.0.1:30080/", f"http://{NODE1}:30080/", f"http://{NODE2}:30080/"):
        assert "Welcome to nginx!" in wait_for(f"{url} from node1", lambda: from_node1(cluster, url)), url


def test_remote_backend_sees_the_node_and_local_backend_sees_the_client(cluster: Cluster, remote_pod):
    apply(cluster, service("np-cluster", "np", node_port=30081))
    cluster.wait_endpoints("np-cluster", 1)
    # through node1 the backend (on node2) is remote: source-NATed to node1's address
    assert client_address(wait_outside(cluster, f"http://{NODE1}:30081/clientip")) == NODE1
    # through node2 it is local: the client's own address reaches the pod
    assert client_address(wait_outside(cluster, f"http://{NODE2}:30081/clientip")) == OUTSIDE


def _udp_echo(cluster: Cluster, address: str, port: int, payload: bytes) -> bytes | None:
    def ask() -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(payload, (address, port))
            try:
                return s.recvfrom(2048)[0]
            except socket.timeout:
                return None
    return netns.call_in(cluster.lab.netns_for("outside"), ask)


def test_udp_nodeport_on_both_nodes(cluster: Cluster, remote_pod):
    apply(cluster, service("np-udp", "np", node_port=30082, udp_node_port=30053))
    cluster.wait_endpoints("np-udp", 1)
    for node in (NODE1, NODE2):
        msg = f"ping via {node}".encode()
        assert wait_for(f"UDP echo via {node}", lambda: _udp_echo(cluster, node, 30053, msg)) == msg


def test_external_ip_answers_from_outside(cluster: Cluster, remote_pod):
    apply(cluster, service("np-extip", "np", externalIPs=[EXTERNAL_IP]))
    cluster.wait_endpoints("np-extip", 1)
    ns = cluster.lab.netns_for("outside")
    netns.run(ns, ["ip", "route", "replace", f"{EXTERNAL_IP}/32", "via", NODE1], check=True)
    try:
        assert client_address(wait_outside(cluster, f"http://{EXTERNAL_IP}/clientip")) == NODE1
    finally:
        netns.run(ns, ["ip", "route", "del", f"{EXTERNAL_IP}/32"], check=False)


def test_external_traffic_policy_local(cluster: Cluster, remote_pod):
    apply(cluster, service("np-local", "np", node_port=30083, externalTrafficPolicy="Local"))
    cluster.wait_endpoints("np-local", 1)
    # node2 holds the endpoint: the pod sees outside's own address
    assert client_address(wait_outside(cluster, f"http://{NODE2}:30083/clientip")) == OUTSIDE
    # node1 has none: its NodePort drops (a timeout, not a refusal)
    p = outside(cluster, f"http://{NODE1}:30083/clientip", timeout=2)
    assert p.returncode == 28, p
    # from inside, the Local policy does not apply (kube-proxy): a pod on node1 and node1
    # itself reach node1's NodePort and are served by the endpoint on node2
    url = f"http://{NODE1}:30083/clientip"
    assert cluster.wait_http(url)
    assert wait_for("node1's Local NodePort from node1", lambda: from_node1(cluster, url))


def test_pods_reach_nodeports_on_their_own_node_and_the_other(cluster: Cluster, remote_pod):
    """kube-proxy serves a node's NodePorts to its pods too (the Kubernetes e2e Service
    tests curl nodeIP:nodePort from a pod); a pod on node1 used to get a RST from its own
    node's stack for node1's address."""
    apply(cluster, service("np-pods", "np", node_port=30085))
    cluster.wait_endpoints("np-pods", 1)
    for node in (NODE1, NODE2):
        answer = cluster.wait_http(f"http://{node}:30085/clientip")
        assert client_address(answer).startswith("10.244.1."), answer   # the pod's own address


def test_internal_traffic_policy_local_from_a_pod(cluster: Cluster, remote_pod):
    apply(cluster, service("np-itp", "np", internalTrafficPolicy="Local"))
    cluster.wait_endpoints("np-itp", 1)
    vip = cluster.cluster_ip("np-itp")
    cluster.lab.add_pod("client2", "node2", "busybox")
    # a pod on node2, where the endpoint is, is served
    assert wait_for("np-itp from node2", lambda: cluster.http(f"http://{vip}/clientip", client="client2")
                    .returncode == 0)
    # a pod on node1 has no local endpoint: dropped
    p = cluster.exec("client", "curl", "-s", "-m", "2", f"http://{vip}/clientip")
    assert p.returncode == 28, p


def test_load_balancer_ip_and_its_source_ranges(cluster: Cluster, remote_pod):
    """LB-IPAM gives the service an address from the lab's pool, which outside routes to
    the nodes; loadBalancerSourceRanges decide who gets in."""
    svc = service("np-lb", "np", type="LoadBalancer")
    apply(cluster, svc)
    cluster.wait_endpoints("np-lb", 1)

    lb_ip = cluster.ingress_ip("np-lb")
    url = f"http://{lb_ip}/clientip"
    assert client_address(wait_outside(cluster, url)) in (NODE1, OUTSIDE)
    # from node1 itself the socket hooks send it straight to the pod, from node1's address
    assert client_address(wait_for("the LB IP from node1", lambda: from_node1(cluster, url))) == NODE1
    # and a pod on node1 reaches it in node1's XDP program, keeping its own address
    assert client_address(cluster.wait_http(url)).startswith("10.244.1.")
    svc["spec"]["loadBalancerSourceRanges"] = ["10.0.0.0/8"]
    apply(cluster, svc)
    wait_for("outside blocked", lambda: outside(cluster, url, timeout=2).returncode == 28)
    for _ in range(4):   # whichever node the outside host's ECMP route picks
        assert outside(cluster, url, timeout=2).returncode == 28
    assert cluster.http(url).returncode == 0            # pods are inside 10.0.0.0/8
    # node1's own address is not: as kube-proxy drops the node's packets, its socket
    # hooks fail the connect() at once
    wait_for("node1 refused", lambda: connect_error_from_node1(cluster, lb_ip) == "EPERM")
    svc["spec"]["loadBalancerSourceRanges"] = ["192.168.1.0/24"]
    apply(cluster, svc)
    assert client_address(wait_outside(cluster, url)) in (NODE1, OUTSIDE)
    assert client_address(wait_for("node1 let in", lambda: from_node1(cluster, url))) == NODE1
    # the ranges filter pods too, as kube-proxy's firewall chain does
    wait_for("a pod blocked", lambda: cluster.http(url).returncode == 28)


def test_a_half_closed_connection_gets_its_late_answer(cluster: Cluster, remote_pod):
    """A client that shuts down its sending side and then waits (nc -N, an HTTP/1.0-style
    request): the server answers after a pause longer than the 10 s close timeout and
    the GC's grace. From a pod to a ClusterIP-only service, whose backend answers match
    the flow's own entry (the address serves no other frontend): the datapath gave a
    half-closed flow the close timeout at the first FIN, and the answer left without
    reverse NAT. Beside it, from outside through node2 (a local backend whose address the
    ClusterIP and NodePort frontends share: a reply entry) and node1 (a remote one, source
    NAT). kube-proxy's conntrack keeps half-closed flows for minutes."""
    import threading
    pause_s = 13
    listeners = [netns.call_in(cluster.lab.netns_for("np-web"), socket.create_server, ("0.0.0.0", port))
                 for port in (9000, 9001)]
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            asked = b""
            while chunk := conn.recv(4096):
                asked += chunk
            if asked != b"ping":
                stop.wait(pause_s)
            conn.sendall(b"the answer to " + asked)

    def serve(listener: socket.socket) -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def ask(host: str, address: str, port: int, question: bytes, timeout_s: float) -> bytes | None:
        def connect() -> socket.socket:
            return socket.create_connection((address, port), timeout=3)
        try:
            s = netns.call_in(cluster.lab.netns_for(host), connect)
            with s:
                s.sendall(question)
                s.shutdown(socket.SHUT_WR)          # half-closed: the answer is still to come
                s.settimeout(timeout_s)
                got = b""
                while chunk := s.recv(4096):
                    got += chunk
                return got
        except OSError:
            return None

    servers = [threading.Thread(target=serve, args=(listener,), daemon=True) for listener in listeners]
    for server in servers:
        server.start()
    try:
        node_port = service("np-half", "np")
        node_port["spec"]["type"] = "NodePort"
        node_port["spec"]["ports"] = [{"name": "late", "port": 90, "targetPort": 9000, "protocol": "TCP",
                                       "nodePort": 30061}]
        cluster_only = service("np-half-cip", "np")
        cluster_only["spec"]["ports"] = [{"name": "late", "port": 91, "targetPort": 9001, "protocol": "TCP"}]
        apply(cluster, node_port, cluster_only)
        cluster.wait_endpoints("np-half-cip", 1)
        askers = {"pod": ("client", cluster.cluster_ip("np-half-cip"), 91),
                  "node1": ("outside", NODE1, 30061), "node2": ("outside", NODE2, 30061)}
        for name, (host, address, port) in askers.items():
            wait_for(f"{name} answers", lambda a=(host, address, port): ask(*a, b"ping", 2) == b"the answer to ping")
        answers: dict[str, bytes | None] = {}
        clients = [threading.Thread(target=lambda n=name, a=asker: answers.__setitem__(n, ask(*a, b"late", pause_s + 10)))
                   for name, asker in askers.items()]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        assert answers == dict.fromkeys(askers, b"the answer to late")
    finally:
        stop.set()
        for server in servers:
            server.join(5)
        for listener in listeners:
            listener.close()
        cluster.svcctl("delete", "svc", "np-half", "np-half-cip", check=False)


def test_a_remote_backend_is_reached_when_the_next_hop_was_never_resolved(cluster: Cluster, remote_pod):
    """Through node1 the backend is on node2: the frame leaves by XDP_TX to node2's MAC,
    which the FIB lookup must know — XDP cannot resolve a neighbour. Without an entry the
    frame, already source-NATed to node1's address, went to the stack, which drops a
    packet from its own address (a martian: real nodes do not set accept_local, the lab
    does) without ever asking for node2's MAC, so the flow never started. The agent keeps
    the next hops behind the external interface as managed neighbours, which the kernel
    resolves by itself (controlplane/agent/nexthops.py)."""
    node1 = cluster.lab.netns_for("node1")
    accept_local = {"net.ipv4.conf.all.accept_local": 0, "net.ipv4.conf.eth0.accept_local": 0}
    svc = service("np-nh", "np", node_port=30991)
    apply(cluster, svc)
    cluster.wait_endpoints("np-nh", 1)

    def node2_entry() -> str:
        return subprocess.run(["ip", "-n", node1, "-d", "neigh", "show", NODE2], capture_output=True,
                              text=True).stdout
    static = node2_entry()          # the lab wires its nodes with permanent entries
    assert "PERMANENT" in static
    netns.sysctl(node1, accept_local)
    try:
        subprocess.run(["ip", "-n", node1, "neigh", "del", NODE2, "dev", "eth0"], check=True)
        wait_for("node2 a managed neighbour of node1, resolved",
                 lambda: "managed" in node2_entry() and "lladdr" in node2_entry(), timeout=10)
        handed = cluster.counter("neigh_handoff")
        assert client_address(wait_outside(cluster, f"http://{NODE1}:30991/clientip")) == NODE1
        # by XDP_TX to the entry the agent made, not handed to tc for want of one
        assert cluster.counter("neigh_handoff") == handed
    finally:
        netns.sysctl(node1, dict.fromkeys(accept_local, 1))
        mac = static.split("lladdr ")[1].split()[0]
        subprocess.run(["ip", "-n", node1, "neigh", "replace", NODE2, "lladdr", mac, "dev", "eth0", "nud",
                        "permanent"], check=True)
        cluster.svcctl("delete", "svc", "np-nh", check=False)


def test_a_backend_reached_on_link_is_resolved_on_the_way_out(cluster: Cluster, remote_pod):
    """A backend on another node reached on-link, without a gateway (pod addresses in the
    nodes' own subnet, as with AWS's VPC CNI), is its own next hop: nothing resolved its
    address before the flow's first frame, and no managed neighbour covers it. XDP cannot
    resolve it, and the stack drops the frame, source-NATed to node1's address, as a
    martian. So every attempt failed, retransmissions too. Now the frame is handed to the
    tc program on node1's ingress (bpf/handoff.h), whose bpf_redirect_neigh makes the
    kernel resolve the pod's address and send it. Here node1 routes node2's pods on-link,
    node2 answers ARP for them (proxy_arp), and node1 does not accept its own address as
    a source, as a real node does not."""
    node1, node2 = cluster.lab.netns_for("node1"), cluster.lab.netns_for("node2")
    pods2 = "10.244.2.0/24"
    assert ipaddress.ip_address(remote_pod) in ipaddress.ip_network(pods2)
    accept_local = {"net.ipv4.conf.all.accept_local": 0, "net.ipv4.conf.eth0.accept_local": 0}
    proxy_arp = {"net.ipv4.conf.eth0.proxy_arp": 1}
    apply(cluster, service("np-onlink", "np", node_port=30992))
    cluster.wait_endpoints("np-onlink", 1)

    def pod_entry() -> str:
        return subprocess.run(["ip", "-n", node1, "neigh", "show", remote_pod], capture_output=True,
                              text=True).stdout
    shown = subprocess.run(["ip", "-n", node1, "route", "show", pods2], check=True, capture_output=True,
                           text=True).stdout.strip()
    assert shown and "\n" not in shown, shown
    route = shown.split()   # what the lab made, put back after
    was = {ns: {key: netns.read_sysctl(ns, key) for key in keys}
           for ns, keys in ((node1, accept_local), (node2, proxy_arp))}
    netns.sysctl(node1, accept_local)
    netns.sysctl(node2, proxy_arp)
    try:
        subprocess.run(["ip", "-n", node1, "route", "replace", pods2, "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", node1, "neigh", "flush", "to", remote_pod], check=True)
        assert pod_entry() == ""
        handed = cluster.counter("neigh_handoff")
        # one attempt: without the handoff no retransmission reaches the pod either
        answer = outside(cluster, f"http://{NODE1}:30992/clientip", timeout=5)
        assert answer.returncode == 0 and client_address(answer.stdout) == NODE1, answer
        assert cluster.counter("neigh_handoff") > handed
        assert "lladdr" in pod_entry()       # resolved by the kernel, on the tc program's send
    finally:   # each step whatever the others did (the route's last: a failure there fails the test)
        for ns, values in was.items():
            netns.sysctl(ns, values)
        cluster.svcctl("delete", "svc", "np-onlink", check=False)
        subprocess.run(["ip", "-n", node1, "neigh", "flush", "to", remote_pod], check=False)
        subprocess.run(["ip", "-n", node1, "route", "replace", *route], check=True)


def test_an_answer_from_an_address_the_node_holds_reaches_a_client_it_had_no_entry_for(cluster: Cluster,
                                                                                       remote_pod):
    """An externalIP the node holds as a second address (kube-vip and keepalived add
    LoadBalancer IPs so). Through node1 the backend is on node2: its answer comes back to
    node1, is translated back to the externalIP and leaves the way it came, to a client
    on the LAN. With no neighbour entry for the client (never talked to, or removed by the
    neighbour GC past 128 entries) XDP cannot send it, and the stack drops it as a
    martian, from one of node1's own addresses though not the one its route to the client
    prefers: the flow never started. Handed to tc (bpf/handoff.h), it reaches the client,
    and node1 has resolved the client's address. (The client is a second address of the
    outside host: its first is node1's gateway, whose entry the lab makes permanent and
    the agent would keep resolved.)"""
    node1, beyond = cluster.lab.netns_for("node1"), cluster.lab.netns_for("outside")
    held, client = "203.0.113.251", "192.168.1.102"
    accept_local = {"net.ipv4.conf.all.accept_local": 0, "net.ipv4.conf.eth0.accept_local": 0}
    lan = netns.run(beyond, ["ip", "-o", "addr", "show", "to", OUTSIDE], check=True, capture_output=True,
                    text=True).stdout.split()[1]

    def client_entry() -> str:
        return subprocess.run(["ip", "-n", node1, "neigh", "show", client, "dev", "eth0"], capture_output=True,
                              text=True).stdout
    was = {key: netns.read_sysctl(node1, key) for key in accept_local}
    try:
        apply(cluster, service("np-held", "np", externalIPs=[held]))
        cluster.wait_endpoints("np-held", 1)
        wait_for("node1's maps hold the externalIP", lambda: f"{held}:80" in cluster.svcctl(
            "dataplane", "services", "--node", "node1").stdout)
        netns.run(beyond, ["ip", "addr", "add", f"{client}/32", "dev", lan], check=True)
        netns.run(beyond, ["ip", "route", "replace", f"{held}/32", "via", NODE1], check=True)
        subprocess.run(["ip", "-n", node1, "addr", "add", f"{held}/32", "dev", "eth0"], check=True)
        netns.sysctl(node1, accept_local)
        subprocess.run(["ip", "-n", node1, "neigh", "flush", "to", client], check=True)
        assert client_entry() == ""
        handed = cluster.counter("neigh_handoff")
        # one attempt: without the handoff no retransmission of the answer gets out either
        answer = cluster.exec("outside", "curl", "-s", "-m", "5", "--interface", client, f"http://{held}/clientip",
                              timeout=15)
        assert answer.returncode == 0 and client_address(answer.stdout) == NODE1, answer
        assert cluster.counter("neigh_handoff") > handed
        assert "lladdr" in client_entry()    # resolved by the kernel, on the tc program's send
    finally:   # each step whatever the others did
        netns.sysctl(node1, was)
        subprocess.run(["ip", "-n", node1, "neigh", "flush", "to", client], capture_output=True)
        subprocess.run(["ip", "-n", node1, "addr", "del", f"{held}/32", "dev", "eth0"], capture_output=True)
        netns.run(beyond, ["ip", "route", "del", f"{held}/32"], capture_output=True)
        netns.run(beyond, ["ip", "addr", "del", f"{client}/32", "dev", lan], capture_output=True)
        cluster.svcctl("delete", "svc", "np-held", check=False)


def test_a_flooded_frame_is_served_by_the_node_it_was_sent_to_only(cluster: Cluster, remote_pod):
    """The LAN's bridge floods every unicast frame (ageing 0: it keeps no address), as a
    switch does until it learns where an address lives. A client's SYN to an externalIP,
    sent to node1, then reaches node2 too; both serve that address, and node2 answered it
    from its local backend, so the client met two SYN-ACKs and reset its connection. Now
    node2 leaves a frame for node1's MAC address to its stack (bpf/otherhost.h), which
    drops it, and every request is served through node1 alone."""
    beyond = cluster.lab.netns_for("outside")
    address = "203.0.113.252"
    lan = netns.run(beyond, ["ip", "-o", "addr", "show", "to", OUTSIDE], check=True, capture_output=True,
                    text=True).stdout.split()[1]
    ageing = netns.run(beyond, ["ip", "-d", "-o", "link", "show", lan], check=True, capture_output=True,
                       text=True).stdout.split(" ageing_time ")[1].split()[0]
    try:
        apply(cluster, service("np-flood", "np", externalIPs=[address]))
        cluster.wait_endpoints("np-flood", 1)
        netns.run(beyond, ["ip", "route", "replace", f"{address}/32", "via", NODE1], check=True)
        assert client_address(wait_outside(cluster, f"http://{address}/clientip")) == NODE1
        netns.run(beyond, ["ip", "link", "set", lan, "type", "bridge", "ageing_time", "0"], check=True)
        others = cluster.counter("pass_other_host", "node2")
        for _ in range(5):
            answer = outside(cluster, f"http://{address}/clientip", timeout=5)
            assert answer.returncode == 0 and client_address(answer.stdout) == NODE1, answer
        assert cluster.counter("pass_other_host", "node2") > others
    finally:
        netns.run(beyond, ["ip", "link", "set", lan, "type", "bridge", "ageing_time", ageing], check=False)
        netns.run(beyond, ["ip", "route", "del", f"{address}/32"], capture_output=True)
        cluster.svcctl("delete", "svc", "np-flood", check=False)


def test_a_large_datagram_reaches_a_pod_behind_a_smaller_mtu(cluster: Cluster, remote_pod):
    """A pod behind a smaller MTU than the node's interface (an overlay's 1450; here 1200)
    and a client sending DF datagrams (any Linux UDP socket) larger than it, to a NodePort.
    The node must tell the client "fragmentation needed" about the NodePort: the stack's
    own answer quoted the pod's address, the client could not match it, never lowered its
    path MTU and resent the same size for ever. With the answer, its next send is
    fragmented and echoed (the first may fail with EMSGSIZE, as with kube-proxy)."""
    apply(cluster, service("np-mtu", "np", node_port=30086, udp_node_port=30058))
    cluster.wait_endpoints("np-mtu", 1)
    node2, pod_ns = cluster.lab.netns_for("node2"), cluster.lab.netns_for("np-web")
    route = subprocess.run(["ip", "-n", node2, "-o", "route", "get", remote_pod], check=True,
                           capture_output=True, text=True).stdout
    veth = route.split(" dev ")[1].split()[0]
    links = (["ip", "-n", node2, "link", "set", veth], ["ip", "-n", pod_ns, "link", "set", "eth0"])
    for link in links:
        subprocess.run([*link, "mtu", "1200"], check=True)
    flow = _open_udp_flow(cluster, NODE2, 30058)
    try:
        assert wait_for("a small echo", lambda: _echo_on(flow, b"small")) == b"small"
        payload = bytes(range(256)) * 5 + b"end"            # 1,283 bytes: > 1200 with headers
        answers = [_echo_on_or_error(flow, payload) for _ in range(3)]
        assert payload in answers, answers
    finally:
        flow.close()
        for link in links:
            subprocess.run([*link, "mtu", "1500"], check=True)
        cluster.svcctl("delete", "svc", "np-mtu", check=False)


def test_a_backend_at_the_node_s_own_address_answers_its_pods_and_outside(cluster: Cluster, remote_pod):
    """A hostNetwork backend (the `kubernetes` Service's API server on a control-plane
    node, an ingress controller on the host network): XDP DNATs to the node's own
    address, and the node answers by itself, out of a device's egress, where no XDP
    program runs. The answer left with the node's address: a pod on that node and a
    client through that node's NodePort reset it (TCP) or never matched it (UDP). The
    tc egress program turns it back into the service's address (bpf/local_reply.h).
    Through node2 the backend is remote and worked before too."""
    host = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "np-host", "namespace": "default", "labels": {"app": "nphost"}},
            "spec": {"nodeName": "node1", "hostNetwork": True, "containers": [{
                "name": "c", "image": AGNHOST,
                "ports": [{"containerPort": 8181}, {"containerPort": 5454, "protocol": "UDP"}]}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np-host", "namespace": "default"},
           "spec": {"type": "NodePort", "selector": {"app": "nphost"}, "ports": [
               {"name": "http", "port": 80, "targetPort": 8181, "protocol": "TCP", "nodePort": 30087},
               {"name": "echo", "port": 53, "targetPort": 5454, "protocol": "UDP", "nodePort": 30059},
               {"name": "closed", "port": 54, "targetPort": 5499, "protocol": "UDP"},
               {"name": "gso", "port": 55, "targetPort": 5455, "protocol": "UDP", "nodePort": 30060}]}}
    apply(cluster, host, pod("np-client1", "node1", "npclient"), svc)
    assert cluster.wait_endpoints("np-host", 1) == [NODE1]
    client = wait_for("np-client1 running", lambda: cluster.pods("app=npclient").get("np-client1"))
    vip = cluster.cluster_ip("np-host")
    # a pod on the backend's node, through the ClusterIP (the server sees the pod)
    assert client_address(cluster.wait_http(f"http://{vip}/clientip", client="np-client1")) == client
    # from outside through the backend's node and through the other node
    assert client_address(wait_outside(cluster, f"http://{NODE1}:30087/clientip")) == OUTSIDE
    assert client_address(wait_outside(cluster, f"http://{NODE2}:30087/clientip")) == NODE2
    msg = b"to the node itself"
    assert wait_for("UDP echo via node1", lambda: _udp_echo(cluster, NODE1, 30059, msg)) == msg
    # nothing listens on the closed port: the node's port unreachable reaches the pod
    # about the service, a refusal at once (it quoted the node's port: a 2 s timeout)
    probe = ("import socket\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
             f"s.connect(('{vip}', 54)); s.send(b'x')\n"
             "try:\n    s.recv(100); print('answered')\n"
             "except ConnectionRefusedError:\n    print('refused')\n"
             "except TimeoutError:\n    print('timeout')\n")
    assert cluster.exec("np-client1", sys.executable, "-c", probe).stdout.strip() == "refused"
    # a server on the host network answering with UDP_SEGMENT (GSO, as QUIC servers do) out
    # of node1's interface, whose TX checksum offload is off: every segment arrives intact
    # (the helpers' checksum update broke them all: UdpInCsumErrors)
    assert wait_for("GSO answers via node1", lambda: _gso_answers(cluster, NODE1, 30060)) == [GSO_SEGMENT] * 3
    for kind, name in (("svc", "np-host"), ("pod", "np-host"), ("pod", "np-client1")):
        cluster.svcctl("delete", kind, name, check=False)


GSO_SEGMENT = bytes(range(250)) * 4   # 1,000 bytes
UDP_SEGMENT = 103                      # the socket option (linux/udp.h)


def _gso_answers(cluster: Cluster, address: str, node_port: int) -> list[bytes] | None:
    """What a client outside receives when the hostNetwork backend behind `node_port`
    (port 5455 of node1's own namespace, np-host's) answers its datagram with three
    segments sent as one UDP_SEGMENT write; None if its datagram never reached it."""
    server = netns.call_in(cluster.lab.netns_for("node1"), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client = netns.call_in(cluster.lab.netns_for("outside"), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with server, client:
        server.bind(("0.0.0.0", 5455))
        server.settimeout(2)
        client.settimeout(1)
        client.sendto(b"go", (address, node_port))
        try:
            _, peer = server.recvfrom(100)
        except socket.timeout:
            return None
        server.setsockopt(socket.SOL_UDP, UDP_SEGMENT, len(GSO_SEGMENT))
        server.sendto(GSO_SEGMENT * 3, peer)
        got = []
        try:
            while len(got) < 3:
                got.append(client.recv(2048))
        except socket.timeout:
            pass
        return got


def _echo_on_or_error(s: socket.socket, payload: bytes) -> bytes | str:
    try:
        s.send(payload)
        return s.recv(4096)
    except OSError as e:          # EMSGSIZE once the error arrives; a timeout before
        return type(e).__name__ + ":" + str(e.errno)


def _open_udp_flow(cluster: Cluster, address: str, port: int) -> socket.socket:
    """A connected UDP socket in outside's namespace: one flow (fixed source port) that
    lives across service changes."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.connect((address, port))
        return s
    return netns.call_in(cluster.lab.netns_for("outside"), make)


def _echo_on(s: socket.socket, payload: bytes) -> bytes | None:
    try:
        s.send(payload)
        return s.recv(2048)
    except (socket.timeout, ConnectionRefusedError):
        return None


def test_type_change_adds_and_removes_exactly_its_frontends_and_stops_their_flows(cluster: Cluster, remote_pod):
    """NodePort -> ClusterIP -> LoadBalancer -> ExternalName: from outside, each type answers
    on exactly its frontends, and a UDP flow through a NodePort the change removed stops
    (its next datagram is the node stack's, which has no such port)."""
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30084},
             {"name": "echo", "port": 53, "targetPort": 5353, "protocol": "UDP", "nodePort": 30054}]
    meta = {"name": "np-type", "namespace": "default"}

    def put(spec: dict) -> None:
        apply(cluster, {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})

    put({"type": "NodePort", "selector": {"app": "np"}, "ports": ports})
    cluster.wait_endpoints("np-type", 1)
    node_port = f"http://{NODE1}:30084/clientip"
    wait_outside(cluster, node_port)
    flow = _open_udp_flow(cluster, NODE1, 30054)
    try:
        assert wait_for("UDP flow through the NodePort", lambda: _echo_on(flow, b"one")) == b"one"

        put({"type": "ClusterIP", "selector": {"app": "np"},
             "ports": [{k: v for k, v in p.items() if k != "nodePort"} for p in ports]})
        wait_for("the NodePort gone", lambda: outside(cluster, node_port, timeout=2).returncode != 0)
        assert _echo_on(flow, b"two") is None and _echo_on(flow, b"three") is None
        assert cluster.http(f"http://{cluster.cluster_ip('np-type')}/clientip").returncode == 0

        put({"type": "LoadBalancer", "selector": {"app": "np"}, "ports": ports})

        lb_ip = cluster.ingress_ip("np-type")
        lb = f"http://{lb_ip}/clientip"
        wait_outside(cluster, lb)
        wait_outside(cluster, node_port)
        assert wait_for("UDP through the NodePort again", lambda: _echo_on(flow, b"four")) == b"four"

        put({"type": "ExternalName", "externalName": "np.example.org"})
        wait_for("the LB IP gone", lambda: outside(cluster, lb, timeout=2).returncode != 0)
        assert outside(cluster, node_port, timeout=2).returncode != 0
        assert _echo_on(flow, b"five") is None
    finally:
        flow.close()
