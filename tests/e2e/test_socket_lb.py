"""Socket-level load balancing in the lab: processes on a node (node shells,
`svcctl exec NODE`, hostNetwork pods) reach ClusterIPs through the cgroup hooks
the node's agent attached to the node's cgroup; the hooks keep serving while the
agent is down; a connected UDP socket whose backend goes is aborted by the agent
right after the sync that removed it (the agents here run no periodic sweep, so
only that can abort it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import cgroups
from controlplane.dataplane.config import PIN_ROOT
from controlplane.dataplane.libbpf import map_info, obj_get
from controlplane.dataplane.sockhooks import HOOKS, attached_ids
from controlplane.lab import hooks, plan
from controlplane.lab.node_processes import instance_name

from .cluster import Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"
OWN = Path(__file__).resolve().parents[1] / "fixtures" / "socklb"   # this module's manifests
EMPTY_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  selector: {app: nothing-has-this}
  ports: [{port: 80, targetPort: 8080}]
"""


# The lab's, with agents that sweep for sockets of removed backends only at start.
node_processes = hooks.with_args("agent", "--socket-reap-interval", "0")


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("sock", nodes=2, node_processes=node_processes)


def node_cgroup(cluster: Cluster, node: str = "node1") -> Path:
    return cgroups.path(plan.node_cgroup(cluster.lab.prefix, int(node.removeprefix("node"))))


def test_node_cgroups_hold_the_hooks(cluster: Cluster):
    for n in cluster.lab.nodes():
        ids = attached_ids(node_cgroup(cluster, n.name))
        assert all(len(ids[h.name]) == 1 for h in HOOKS), ids
    # Pods use the XDP path unless the agent is told otherwise.
    pods = cgroups.path(plan.pods_cgroup(cluster.lab.prefix, 1))
    assert all(not v for v in attached_ids(pods).values())


def test_redis_cli_ping_from_the_node(cluster: Cluster):
    cluster.svcctl("apply", "-f", str(MANIFESTS / "redis.yaml"))
    cluster.wait_endpoints("redis", 1)
    vip = cluster.cluster_ip("redis")

    def ping() -> bool:
        p = cluster.svcctl("exec", "node1", "--", "redis-cli", "-h", vip, "-p", "6379", "PING", check=False)
        return p.stdout.strip() == "PONG"
    assert wait_for("PONG from node1", ping)


def test_curl_from_a_node_reaches_every_pod(cluster: Cluster):
    cluster.svcctl("apply", "-f", str(MANIFESTS / "myapp.yaml"))
    cluster.wait_endpoints("myapp", 3)
    vip = cluster.cluster_ip("myapp")
    assert cluster.wait_http(f"http://{vip}/", client="node1").startswith("Hello MyApp")
    pods = set(cluster.pods("app=myapp"))
    for node in ("node1", "node2"):
        seen = {cluster.http(f"http://{vip}/hostname.html", client=node).stdout.strip() for _ in range(30)}
        assert seen == pods, node


def test_service_without_endpoints_is_refused_on_the_node(cluster: Cluster):
    cluster.svcctl("apply", "-f", "-", input=EMPTY_SERVICE)
    vip = cluster.cluster_ip("empty")
    wait_for("the agent to program it", lambda: cluster.http(f"http://{vip}/", "node1").returncode == 7)
    # The errno itself, from a process on the node (curl only says it could not connect).
    probe = ("import errno, socket\n"
             "try:\n"
             f"    socket.create_connection(('{vip}', 80), timeout=3)\n"
             "except OSError as e:\n"
             "    print(errno.errorcode[e.errno])\n")
    assert cluster.exec("node1", sys.executable, "-c", probe).stdout.strip() == "ECONNREFUSED"


def test_hostnetwork_pod_reaches_a_service(cluster: Cluster):
    cluster.svcctl("apply", "-f", str(OWN / "hostnet-client.yaml"))
    vip = cluster.cluster_ip("myapp")
    (pod,) = wait_for("the hostNetwork pod", lambda: cluster.pods("app=hostclient") or None)
    handle = wait_for("it running", lambda: cluster.lab.pod(pod))
    assert handle.host_network and handle.ip == next(n.ip for n in cluster.lab.nodes() if n.name == handle.node)
    page = cluster.wait_http(f"http://{vip}/", client=pod)
    assert page.startswith("Hello MyApp")


def kill_agent(cluster: Cluster, node: str = "node1") -> None:
    """kill -9 the node's agent and wait until it is gone: nothing of it runs any more."""
    old = cluster.agent_pid(node)
    os.kill(old, signal.SIGKILL)
    wait_for("the agent gone", lambda: not Path(f"/proc/{old}").exists()
             or Path(f"/proc/{old}/stat").read_text().split(") ", 1)[1][0] == "Z")


def restart_agent(cluster: Cluster, node: str = "node1", timeout: float = 60) -> None:
    cluster.lab.up(nodes=len(cluster.lab.nodes()), node_processes=node_processes)
    wait_for("the restarted agent healthy", lambda: cluster.healthz(node)[0] == 200, timeout=timeout)


def test_agent_down_hooks_stay_attached_and_serve(cluster: Cluster):
    vip = cluster.cluster_ip("myapp")
    cg = node_cgroup(cluster)
    before = attached_ids(cg)
    kill_agent(cluster)
    assert attached_ids(cg) == before
    for _ in range(10):
        assert cluster.http(f"http://{vip}/hostname.html", client="node1").stdout.strip()
    restart_agent(cluster)
    # Its programs replaced the old ones in place: still one per hook.
    after = attached_ids(cg)
    assert all(len(after[h.name]) == 1 for h in HOOKS) and after != before
    assert cluster.http(f"http://{vip}/", client="node1").stdout.startswith("Hello MyApp")


def test_agent_with_another_ct_size_replaces_its_dataplane(cluster: Cluster):
    """An agent restarted with another --ct-size (or upgraded to a build whose maps differ)
    finds pinned maps it must not reuse: it replaces the dataplane rather than refusing to
    start (a DaemonSet would crash-loop until someone ran `svcctl dataplane reset` on each
    node). The old programs serve from their own maps until the first sync has filled the
    new ones: the log shows the sync before any attach of XDP or the socket hooks; the old
    maps' pins go only after that; the socket hooks are swapped in place (one program per
    hook); pods and the node reach the service after it."""
    vip = cluster.cluster_ip("myapp")
    conntrack = PIN_ROOT / instance_name(cluster.lab, "node1") / "conntrack"
    assert max_entries(conntrack) == 65536   # the lab's --ct-size
    cg = node_cgroup(cluster)
    before = attached_ids(cg)
    log = cluster.lab.store.logs / "node1-agent.log"
    kill_agent(cluster)
    start = log.stat().st_size
    try:
        cluster.lab.up(nodes=len(cluster.lab.nodes()),
                       node_processes=hooks.with_args("agent", "--socket-reap-interval", "0", "--ct-size", "32768"))
        wait_for("the agent healthy over a new dataplane", lambda: cluster.healthz("node1")[0] == 200, timeout=120)
        # the old maps stay pinned aside until the new programs serve everywhere, then go
        pins = conntrack.parent
        wait_for("the old maps unpinned", lambda: not [p for p in pins.iterdir() if p.name.endswith("_stale")])
        with open(log, errors="replace") as f:
            f.seek(start)
            said = f.read()
        assert "replaced by new ones" in said and "conntrack: max_entries 65536 != 32768" in said, said
        sync = said.index("sync (start)")
        assert sync < said.index("XDP attached") and sync < said.index("socket-level load balancing attached"), said
        assert max_entries(conntrack) == 32768
        # (the hooks are swapped right after the first sync, which /healthz already reports)
        after = wait_for("the socket hooks swapped", lambda: (ids := attached_ids(cg)) != before and ids)
        assert all(len(after[h.name]) == 1 for h in HOOKS), after
        assert cluster.wait_http(f"http://{vip}/").startswith("Hello MyApp")
        assert cluster.http(f"http://{vip}/", client="node1").stdout.startswith("Hello MyApp")
    finally:   # the module's agent again (its dataplane replaced once more)
        kill_agent(cluster)
        restart_agent(cluster, timeout=120)
    assert max_entries(conntrack) == 65536


def max_entries(pin: Path) -> int:
    fd = obj_get(str(pin))
    try:
        return map_info(fd).max_entries
    finally:
        os.close(fd)


UDP_PROBE = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"hairpin", (sys.argv[1], 53))
data, peer = s.recvfrom(100)
print(data.decode(), peer[0], peer[1])
"""


def check_hairpin(cluster: Cluster) -> None:
    """The only pod of `hairpin` reaches its own Service: over TCP it reads its own name,
    over UDP its echo comes back from the VIP."""
    cluster.svcctl("apply", "-f", str(OWN / "hairpin.yaml"))
    cluster.wait_endpoints("hairpin", 1)
    vip = cluster.cluster_ip("hairpin")
    (pod,) = cluster.pods("app=hairpin")
    assert cluster.wait_http(f"http://{vip}/hostname.html", client=pod).strip() == pod
    out = cluster.exec(pod, sys.executable, "-c", UDP_PROBE, vip).stdout.split()
    assert out == ["hairpin", vip, "53"]


def test_hairpin_through_xdp(cluster: Cluster):
    check_hairpin(cluster)


MAPPED_PROBE = """import socket, sys
vip = "::ffff:" + sys.argv[1]
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.settimeout(3)
t.connect((vip, 80))
peer = t.getpeername()
t.sendall(b"GET /hostname.html HTTP/1.0\\r\\nHost: hairpin\\r\\n\\r\\n")
reply = b""
while chunk := t.recv(4096):
    reply += chunk
print(peer[0], peer[1], reply.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"mapped", (vip, 53))
data, peer = u.recvfrom(100)
print(peer[0], peer[1], data.decode())
"""


def test_ipv4_mapped_addresses_from_the_node(cluster: Cluster):
    """Dual-stack clients (Java, Node.js, Go) name a ClusterIP as ::ffff:VIP on an AF_INET6
    socket: translated as the IPv4 address (the lab's nodes run with IPv6 off, which mapped
    addresses do not need), and the peer and the UDP reply show the mapped VIP."""
    vip = cluster.cluster_ip("hairpin")
    (pod,) = cluster.pods("app=hairpin")
    out = cluster.exec("node1", sys.executable, "-c", MAPPED_PROBE, vip)
    assert out.stdout.split() == [f"::ffff:{vip}", "80", pod, f"::ffff:{vip}", "53", "mapped"], out


REAP_PROBE = """import os, socket, sys, time
vip, go = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)

def connect_and_echo(data):
    # (retried: a moment with no endpoint refuses the connect, a new pod may not answer yet)
    for _ in range(100):
        try:
            s.connect((vip, 53))
            s.send(data)
            return s.recv(100).decode()
        except (ConnectionRefusedError, socket.timeout):
            time.sleep(0.1)

print("first", connect_and_echo(b"one"), flush=True)
while not os.path.exists(go):   # the test deletes the pod, then creates `go`
    time.sleep(0.05)
t0 = time.monotonic()
while time.monotonic() - t0 < 20:
    try:
        s.send(b"x")
    except OSError:
        pass
    try:
        s.recv(100)
    except ConnectionAbortedError:
        print("aborted", flush=True)
        break
    except OSError:   # no answer, or unreachable: the pod is going
        pass
else:
    print("never aborted", flush=True)
    sys.exit(1)
print("again", connect_and_echo(b"two"), flush=True)
"""


def test_a_connected_udp_socket_of_a_removed_backend_is_aborted_and_reconnects(cluster: Cluster, tmp_path):
    cluster.svcctl("apply", "-f", str(OWN / "udp-echo.yaml"))
    cluster.wait_endpoints("udpecho", 1)
    vip = cluster.cluster_ip("udpecho")
    (old,) = cluster.pods("app=udpecho")
    go = tmp_path / "go"
    probe = netns_popen(cluster, "node1", [sys.executable, "-c", REAP_PROBE, vip, str(go)])
    try:
        assert probe.stdout.readline().split() == ["first", "one"]
        cluster.svcctl("delete", "pod", old)          # its Deployment makes another
        go.touch()
        out, err = probe.communicate(timeout=60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    assert out.split() == ["aborted", "again", "two"], (out, err)
    assert old not in cluster.pods("app=udpecho")


def netns_popen(cluster: Cluster, host: str, argv: list[str]) -> subprocess.Popen:
    """argv on `host` (its namespace and cgroup: under the node's socket hooks), running."""
    from controlplane.lab import netns
    lab = cluster.lab
    return netns.popen(lab.netns_for(host), argv, cgroup=lab.cgroup_for(host), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
