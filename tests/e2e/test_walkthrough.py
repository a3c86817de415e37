"""The ClusterIP walkthrough, for real: svcctl against a lab whose nodes run the
XDP agent, real clients in a pod, assertions on what the clients receive."""
from __future__ import annotations

import signal
import os
import subprocess
import time
from pathlib import Path

import pytest


from controlplane import cgroups

from .cluster import CLIENT, Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("walk")


def test_run_and_expose_nginx_answers_from_every_pod(cluster: Cluster):
    out = cluster.svcctl("run", "nginx", "--image=nginx", "--replicas=3").stdout
    assert out.strip() == "deployment.apps/nginx created"
    assert cluster.svcctl("expose", "deployment", "nginx", "--port=80").stdout.strip() == "service/nginx exposed"
    ips = cluster.wait_endpoints("nginx", 3)
    vip = cluster.cluster_ip("nginx")
    table = cluster.svcctl("get", "svc", "nginx").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table[1].split()[:5] == ["nginx", "ClusterIP", vip, "<none>", "80/TCP"]
    ep = cluster.svcctl("get", "endpoints", "nginx").stdout.splitlines()[1].split()
    assert sorted(ep[1].split(",")) == sorted(f"{ip}:80" for ip in ips)
    page = cluster.wait_http(f"http://{vip}/")
    assert "Welcome to nginx!" in page
    pods = set(cluster.pods("app=nginx") or cluster.pods("run=nginx"))
    assert set(cluster.hostnames(vip, 30)) == pods


def test_myapp_manifest_and_the_hostname_loop(cluster: Cluster):
    out = cluster.svcctl("apply", "-f", str(MANIFESTS / "myapp.yaml")).stdout
    assert "created" in out
    cluster.wait_endpoints("myapp", 3)
    vip = cluster.cluster_ip("myapp")
    page = cluster.wait_http(f"http://{vip}/")
    assert page.startswith("Hello MyApp | Version: v1 | <a href=\"hostname.html\">Pod Name</a>")
    pods = set(cluster.pods("app=myapp"))
    assert set(cluster.hostnames(vip, 30)) == pods
    # Applying the same file again changes nothing.
    assert "unchanged" in cluster.svcctl("apply", "-f", str(MANIFESTS / "myapp.yaml")).stdout


def test_redis_ping_pong_through_the_cluster_ip(cluster: Cluster):
    cluster.svcctl("apply", "-f", str(MANIFESTS / "redis.yaml"))
    (pod_ip,) = cluster.wait_endpoints("redis", 1)
    vip = cluster.cluster_ip("redis")
    pong = wait_for("PONG", lambda: cluster.exec(CLIENT, "redis-cli", "-h", vip, "-p", "6379", "ping").stdout.strip() == "PONG")
    assert pong
    assert cluster.exec(CLIENT, "redis-cli", "-h", vip, "set", "k", "v").stdout.strip() == "OK"
    assert cluster.exec(CLIENT, "redis-cli", "-h", pod_ip, "get", "k").stdout.strip() == "v"


def test_scale_changes_who_answers_and_zero_refuses_at_once(cluster: Cluster):
    vip = cluster.cluster_ip("myapp")
    cluster.svcctl("scale", "deployment", "myapp-deploy", "--replicas=1")
    cluster.wait_endpoints("myapp", 1)
    (only,) = cluster.pods("app=myapp")
    wait_for("one pod answering", lambda: set(cluster.hostnames(vip, 6)) == {only})
    cluster.svcctl("scale", "deployment", "myapp-deploy", "--replicas=3")
    cluster.wait_endpoints("myapp", 3)
    wait_for("three pods answering", lambda: set(cluster.hostnames(vip, 24)) == set(cluster.pods("app=myapp")))
    cluster.svcctl("scale", "deployment", "myapp-deploy", "--replicas=0")
    cluster.wait_endpoints("myapp", 0)

    def refused() -> bool:
        start = time.monotonic()
        p = cluster.http(f"http://{vip}/")
        # curl exit 7: "Failed to connect" — the RST came back, no timeout (28).
        return p.returncode == 7 and time.monotonic() - start < 2.0
    assert wait_for("connection refused", refused)
    cluster.svcctl("scale", "deployment", "myapp-deploy", "--replicas=3")
    cluster.wait_endpoints("myapp", 3)
    cluster.wait_http(f"http://{vip}/")


def test_udp_service_without_endpoints_is_refused(cluster: Cluster):
    svc = """apiVersion: v1
kind: Service
metadata:
  name: nothing-udp
spec:
  selector:
    app: does-not-exist
  ports:
  - port: 5353
    protocol: UDP
"""
    cluster.svcctl("apply", "-f", "-", input=svc)
    vip = cluster.cluster_ip("nothing-udp")
    probe = ("import socket,sys\n"
             "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)\n"
             f"s.connect(('{vip}',5353))\n"
             "for _ in range(3):\n"
             "    s.send(b'x')\n"
             "    try: s.recv(10)\n"
             "    except ConnectionRefusedError: print('refused'); sys.exit(0)\n"
             "    except socket.timeout: pass\n"
             "print('timeout'); sys.exit(1)\n")
    assert wait_for("ICMP port unreachable", lambda: cluster.exec(CLIENT, "python3", "-c", probe).stdout.strip() == "refused")


def test_delete_service_stops_answering_and_recreate_works(cluster: Cluster):
    vip = cluster.cluster_ip("nginx")
    cluster.wait_http(f"http://{vip}/")
    assert cluster.svcctl("delete", "svc", "nginx").stdout.strip() == 'service "nginx" deleted'
    wait_for("the old ClusterIP to stop answering", lambda: cluster.http(f"http://{vip}/").returncode != 0)
    cluster.svcctl("expose", "deployment", "nginx", "--port=80")
    new_vip = cluster.cluster_ip("nginx")
    assert "Welcome to nginx!" in cluster.wait_http(f"http://{new_vip}/")


def test_long_lived_connection_survives_other_pods_going_away(cluster: Cluster):
    cluster.svcctl("scale", "deployment", "redis", "--replicas=3")
    cluster.wait_endpoints("redis", 3)
    vip = cluster.cluster_ip("redis")
    script = (
        "import socket,sys,time\n"
        f"s=socket.create_connection(('{vip}',6379),timeout=3)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.readline()\n"
        "ok=0\n"
        "for _ in range(20):\n"
        "    s.sendall(b'PING\\r\\n'); ok += s.recv(64) == b'+PONG\\r\\n'; time.sleep(0.05)\n"
        "print(ok, flush=True)\n")
    proc = subprocess.Popen(["ip", "netns", "exec", cluster.lab.netns_for(CLIENT), "python3", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        sport = proc.stdout.readline().strip()
        pods = cluster.pods("app=redis")
        serving = [name for name in pods
                   if f":{sport}" in cluster.exec(name, "ss", "-tn", "state", "established").stdout]
        assert len(serving) == 1, serving
        others = [n for n in pods if n != serving[0]]
        cluster.svcctl("delete", "pod", *others)
        wait_for("the others gone", lambda: not set(others) & set(cluster.pods("app=redis")), timeout=60)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "20"
    finally:
        proc.kill()
        proc.wait()


def test_health_endpoints(cluster: Cluster):
    code, body = cluster.healthz("node1")
    assert code == 200 and body["lastUpdated"] and body["currentTime"]
    mode = cluster.exec("node1", "curl", "-s", "http://127.0.0.1:10256/proxyMode").stdout
    assert mode == "xdp"


def test_agent_kill_9_under_traffic_loses_no_request(cluster: Cluster):
    vip = cluster.cluster_ip("myapp")
    cluster.wait_http(f"http://{vip}/")
    loop = ("ok=0; fail=0; i=0; while [ $i -lt 60 ]; do "
            f"if busybox wget -qO- http://{vip}/hostname.html >/dev/null 2>&1; then ok=$((ok+1)); else fail=$((fail+1)); fi; "
            "i=$((i+1)); sleep 0.05; done; echo $ok $fail")
    traffic = subprocess.Popen(["ip", "netns", "exec", cluster.lab.netns_for(CLIENT), "sh", "-c", loop],
                               stdout=subprocess.PIPE, text=True)
    # The same from node1 itself, in its cgroup: through the socket hooks, which stay
    # attached while the agent is down.
    node_traffic = subprocess.Popen(cgroups.command(cluster.lab.cgroup_for("node1"), [
        "ip", "netns", "exec", cluster.lab.netns_for("node1"), "sh", "-c", loop]), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    old = cluster.agent_pid("node1")
    os.kill(old, signal.SIGKILL)
    time.sleep(0.5)
    cluster.lab.up(nodes=len(cluster.lab.nodes()), node_processes=__import__(
        "controlplane.lab.hooks", fromlist=["node_processes"]).node_processes)
    assert cluster.agent_pid("node1") != old
    for proc in (traffic, node_traffic):
        out, _ = proc.communicate(timeout=60)
        ok, fail = map(int, out.split())
        assert (ok, fail) == (60, 0)
    wait_for("the restarted agent healthy", lambda: cluster.healthz("node1")[0] == 200, timeout=60)
    # It adopted the maps: the service still answers from all pods.
    assert set(cluster.hostnames(vip, 24)) == set(cluster.pods("app=myapp"))
