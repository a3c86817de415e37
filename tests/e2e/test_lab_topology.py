"""The lab runtime with real clients: nodes, outside, pods and their servers, exec, down."""
from __future__ import annotations

import socket
import sys

import pytest
from pyroute2 import IPRoute

from controlplane.lab import netns
from controlplane.lab.client import run_temporary_pod
from controlplane.lab.hooks import ProcessSpec
from controlplane.lab.state import PortSpec
from controlplane.lab.topology import ETC_NETNS

pytestmark = pytest.mark.root


def sh(lab, host: str, *argv: str, timeout: float = 10) -> str:
    proc = lab.exec(host, list(argv), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} in {host}: rc={proc.returncode} {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def pods(lab):
    """Servers on node2, a busybox client on node1."""
    return {
        "myapp": lab.add_pod("myapp-1", "node2", "ikubernetes/myapp:v2", [80]),
        "nginx": lab.add_pod("nginx-1", "node2", "nginx:1.25", [PortSpec(80)]),
        "httpd": lab.add_pod("httpd-1", "node1", "httpd:2.4", [80]),
        "redis": lab.add_pod("redis-1", "node2", "redis:7", [6379]),
        "echo": lab.add_pod("echo-1", "node2", "example/echo:1", [(5353, "UDP"), (8080, "TCP")]),
        "client": lab.add_pod("client", "node1", "busybox"),
    }


def test_nodes_and_outside(lab):
    status = lab.status()
    assert status.up and not status.missing
    assert [(n.name, n.ip, n.pod_cidr) for n in status.nodes] == [
        ("node1", "192.168.1.31", "10.244.1.0/24"),
        ("node2", "192.168.1.32", "10.244.2.0/24"),
    ]
    assert sh(lab, "node1", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert sh(lab, "outside", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    for n in status.nodes:
        assert netns.exists(n.netns) and n.netns.startswith(lab.prefix + "-node")


def test_outside_reaches_node1(lab):
    out = sh(lab, "outside", "busybox", "ping", "-c", "1", "-W", "2", "192.168.1.31")
    assert "1 packets received" in out


def test_outside_routes_the_load_balancer_pool_to_every_node(lab):
    """One ECMP route: the kernel picks a node per flow (L4 hash), so over many client ports
    both nodes are chosen; and the lab's store holds the pool for LB-IPAM."""
    from controlplane.controllers.lb_pool import load_pool
    from controlplane.store.paths import open_store
    assert "nexthop via 192.168.1.31" in sh(lab, "outside", "ip", "route", "show", "192.168.1.240/28")
    chosen = set()
    for sport in range(40000, 40040):
        out = sh(lab, "outside", "ip", "route", "get", "192.168.1.241", "ipproto", "tcp",
                 "sport", str(sport), "dport", "80")
        chosen.add(out.split(" via ", 1)[1].split()[0])
    assert chosen == {"192.168.1.31", "192.168.1.32"}
    store = open_store(lab.store.state_dir)
    try:
        assert load_pool(store).entries == ["192.168.1.240/28"]
    finally:
        store.close()


def test_pod_to_pod_http_across_nodes(lab, pods):
    ip = pods["myapp"].ip
    assert ip.startswith("10.244.2.")
    assert sh(lab, "client", "busybox", "wget", "-qO-", f"http://{ip}/hostname.html").strip() == "myapp-1"
    assert sh(lab, "client", "busybox", "wget", "-qO-", f"http://{ip}/") == (
        'Hello MyApp | Version: v2 | <a href="hostname.html">Pod Name</a>\n'
    )


def test_image_pages(lab, pods):
    assert "<h1>Welcome to nginx!</h1>" in sh(lab, "client", "curl", "-s", f"http://{pods['nginx'].ip}/")
    assert sh(lab, "client", "curl", "-s", f"http://{pods['httpd'].ip}/").strip() == (
        "<html><body><h1>It works!</h1></body></html>"
    )
    for name in ("nginx", "httpd", "echo"):
        port = 8080 if name == "echo" else 80
        got = sh(lab, "client", "curl", "-s", f"http://{pods[name].ip}:{port}/hostname.html")
        assert got.strip() == pods[name].name
    code = sh(lab, "client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{pods['nginx'].ip}/nope")
    assert code == "404"


def test_redis_ping(lab, pods):
    assert pods["redis"].server == "redis"
    assert sh(lab, "client", "redis-cli", "-h", pods["redis"].ip, "ping").strip() == "PONG"


def test_udp_echo(lab, pods):
    def roundtrip() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(b"hello udp", (pods["echo"].ip, 5353))
            return s.recv(100)

    assert netns.call_in(pods["client"].netns, roundtrip) == b"hello udp"


def test_client_pods_run_nothing(lab, pods):
    assert pods["client"].pid is None and pods["client"].server == "none"
    assert netns.pids(pods["client"].netns) == []


def test_svcctl_exec_passes_output_and_exit_code(lab, pods, svcctl):
    proc = svcctl(lab, "exec", "node1", "--", "sh", "-c", "echo out; echo err >&2; exit 7", capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    proc = svcctl(lab, "exec", "client", "--", "busybox", "wget", "-qO-", f"http://{pods['myapp'].ip}/hostname.html",
                  capture_output=True, text=True)
    assert (proc.returncode, proc.stdout.strip()) == (0, "myapp-1")
    proc = svcctl(lab, "exec", "-i", "outside", "--", "cat", input="piped\n", capture_output=True, text=True)
    assert proc.stdout == "piped\n"
    proc = svcctl(lab, "exec", "no-such-pod", "--", "true", capture_output=True, text=True)
    assert proc.returncode == 1 and "no pod, node or host" in proc.stderr


def test_pod_wiring(lab, pods):
    client = pods["client"]
    assert sh(lab, "client", "cat", "/etc/resolv.conf").splitlines()[1] == "nameserver 10.96.0.10"
    route = sh(lab, "client", "ip", "route", "show", "default")
    assert route.startswith("default via 10.244.1.1 dev eth0")
    with IPRoute(netns=lab.netns_for("node1"), flags=0) as ipr:
        link = ipr.get_links(client.host_ifindex)[0]
        assert link.get("ifname") == client.host_ifname
        neigh = ipr.get_neighbours(ifindex=client.host_ifindex, dst=client.ip)
        assert neigh and neigh[0]["state"] == 128  # NUD_PERMANENT


def test_attach_points(lab, pods):
    points = lab.attach_points("node2")
    ext = [p for p in points if p.role == "external"]
    assert [(p.ifname, p.peer_netns) for p in ext] == [("eth0", lab.netns_for("outside"))]
    by_pod = {p.pod: p for p in points if p.role == "pod"}
    assert set(by_pod) == {"myapp-1", "nginx-1", "redis-1", "echo-1"}
    with IPRoute(netns=lab.netns_for("myapp-1"), flags=0) as ipr:
        assert ipr.link_lookup(ifname="eth0") == [by_pod["myapp-1"].peer_ifindex]
    with IPRoute(netns=lab.netns_for("node2"), flags=0) as ipr:
        for p in points:
            assert ipr.link_lookup(ifname=p.ifname) == [p.ifindex]
    # what the node's agent reads (svcctl agent --attach-points): the same interfaces
    from controlplane.agent.attach_sources import FileAttachPoints, Target
    assert FileAttachPoints(lab.store.attach_file("node2"))() == [
        Target(p.netns, p.ifname, p.ifindex, p.peer_netns, p.peer_ifname, p.role) for p in points]


def test_remove_pod_and_ip_allocation(lab, pods):
    a = lab.add_pod("tmp-a", "node1", "nginx", [80])
    b = lab.add_pod("tmp-b", "node1", "nginx", [80])
    assert a.ip != b.ip and {a.ip, b.ip}.isdisjoint({p.ip for p in pods.values()})
    assert lab.add_pod("tmp-a", "node1", "nginx", [80]) == a  # idempotent
    assert lab.remove_pod("tmp-a") and not lab.remove_pod("tmp-a")
    assert not netns.exists(a.netns) and not (ETC_NETNS / a.netns).exists()
    with IPRoute(netns=lab.netns_for("node1"), flags=0) as ipr:
        assert ipr.link_lookup(ifname=a.host_ifname) == []
    c = lab.add_pod("tmp-c", "node1", "nginx", [80])
    assert c.ip != a.ip  # a freed address is not handed out again at once
    lab.remove_pod("tmp-b")
    lab.remove_pod("tmp-c")


def test_temporary_client_pod(lab, pods):
    rc = run_temporary_pod(lab, "tmp-client", ["sh", "-c", f"wget -qO- http://{pods['myapp'].ip}/ >/dev/null; exit 5"],
                           interactive=False)
    assert rc == 5
    assert lab.pod("tmp-client") is None


def test_up_again_keeps_everything_and_grows(lab, pods):
    before = {p.name: (p.ip, p.pid) for p in lab.pods()}
    status = lab.up(nodes=3)
    assert {p.name: (p.ip, p.pid) for p in status.pods} == before
    assert [n.name for n in status.nodes] == ["node1", "node2", "node3"]
    far = lab.add_pod("far-1", "node3", "nginx", [80])
    assert sh(lab, "client", "busybox", "wget", "-qO-", f"http://{far.ip}/hostname.html").strip() == "far-1"
    assert sh(lab, "client", "redis-cli", "-h", pods["redis"].ip, "ping").strip() == "PONG"


def test_node_processes_and_down_leave_nothing(make_lab):
    lab = make_lab(nodes=2, name="down")
    sleeper = lambda node, _lab: [ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])]
    lab.up(nodes=2, node_processes=sleeper)
    first = {p.node: p.pid for p in lab.status().processes}
    assert set(first) == {"node1", "node2"}
    lab.up(nodes=2, node_processes=sleeper)  # a live process is not started twice
    assert {p.node: p.pid for p in lab.status().processes} == first
    lab.add_pod("web", None, "nginx", [80])
    lab.add_pod("db", None, "redis", [6379])
    status = lab.status()
    assert {p.node for p in status.pods} == {"node1", "node2"}  # fewest-pods scheduling
    pids = [p.pid for p in status.pods] + list(first.values())
    names = status.nodes[0].netns, lab.netns_for("web"), lab.netns_for("outside")

    removed = lab.down()
    assert set(names) <= set(removed)
    assert netns.list_names(lab.prefix + "-") == []
    assert not lab.store.root.exists()
    for pid in pids:
        assert netns.pid_netns_inode(pid) is None, f"pid {pid} still running"
    assert not lab.status().up
    lab.down()  # idempotent
