"""sessionAffinity: ClientIP end to end: the walkthrough's myapp behind a ClusterIP,
real HTTP clients in a client pod, the XDP agents of a two-node lab; `svcctl get
affinity` reads the node's map."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from .cluster import CLIENT, Cluster, cluster_for_module, wait_for

pytestmark = pytest.mark.root

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"


def myapp_service(timeout: int | None, algorithm: str | None = None) -> str:
    """The myapp Service of the walkthrough, with ClientIP affinity (timeout) or None."""
    annotations = f"\n  annotations:\n    svcxdp.io/lb-algorithm: {algorithm}" if algorithm else ""
    affinity = (f"\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n"
                f"      timeoutSeconds: {timeout}") if timeout else ""
    return f"""apiVersion: v1
kind: Service
metadata:
  name: myapp
  namespace: default{annotations}
spec:
  selector:
    app: myapp
    release: canary
  type: ClusterIP{affinity}
  ports:
  - port: 80
    targetPort: 80
"""


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    yield from cluster_for_module("aff")


@pytest.fixture(scope="module")
def myapp(cluster: Cluster) -> str:
    cluster.svcctl("apply", "-f", str(MANIFESTS / "myapp.yaml"))
    cluster.wait_endpoints("myapp", 3)
    vip = cluster.cluster_ip("myapp")
    cluster.wait_http(f"http://{vip}/")
    return vip


def affinity_rows(cluster: Cluster) -> list[list[str]]:
    """`svcctl get affinity myapp --node node1` (the client pod's node), header dropped."""
    out = cluster.svcctl("get", "affinity", "myapp", "--node", "node1").stdout.splitlines()
    if not out:
        return []
    assert out[0].split() == ["SERVICE", "CLIENT", "IP", "BACKEND", "REMAINING"]
    return [line.split() for line in out[1:]]


def client_ip(cluster: Cluster) -> str:
    return cluster.lab.pod(CLIENT).ip


def enable(cluster: Cluster, vip: str, timeout: int, algorithm: str | None = None) -> None:
    """Apply the affinity variant and wait until node1's datapath remembers the client."""
    cluster.svcctl("apply", "-f", "-", input=myapp_service(timeout, algorithm))
    me = client_ip(cluster)

    def programmed() -> bool:
        cluster.hostnames(vip, 1)
        return any(r[1] == me for r in affinity_rows(cluster))
    wait_for("node1's dataplane to remember the client", programmed, timeout=60, every=0.5)


def disable(cluster: Cluster, vip: str) -> None:
    cluster.svcctl("apply", "-f", "-", input=myapp_service(None))
    pods = set(cluster.pods("app=myapp"))
    wait_for("requests spread over every pod again", lambda: set(cluster.hostnames(vip, 24)) == pods)


def test_walkthrough_client_ip_10s_sticks_then_expires(cluster: Cluster, myapp: str):
    vip = myapp
    pods = cluster.pods("app=myapp")
    enable(cluster, vip, 10)
    answers = cluster.hostnames(vip, 24)
    assert len(set(answers)) == 1, answers
    (pod,) = set(answers)
    assert pod in pods
    rows = affinity_rows(cluster)
    me = client_ip(cluster)
    assert [r[:3] for r in rows if r[1] == me] == [["myapp", me, pod]]
    remaining = next(r[3] for r in rows if r[1] == me)
    assert remaining.endswith("s") and 0 <= int(remaining[:-1]) <= 10
    # After more than 10 s of silence the client is selected afresh (random
    # selection: over up to 5 trials some other pod answers).
    previous, seen = pod, {pod}
    for _ in range(5):
        time.sleep(11)
        fresh = cluster.hostnames(vip, 1)[0]
        # ... and sticks again
        assert set(cluster.hostnames(vip, 5)) == {fresh}
        seen.add(fresh)
        if fresh != previous:
            break
        previous = fresh
    assert len(seen) > 1, f"after 5 idle periods still only {seen}"
    disable(cluster, vip)


def test_short_timeout_round_robin_moves_on_after_expiry(cluster: Cluster, myapp: str):
    """CI-fast variant: 2 s, rr (so a fresh selection is the next pod, deterministically)."""
    vip = myapp
    enable(cluster, vip, 2, algorithm="rr")
    first = set(cluster.hostnames(vip, 20))
    assert len(first) == 1
    time.sleep(3)
    second = set(cluster.hostnames(vip, 10))
    assert len(second) == 1 and second != first
    stats = cluster.svcctl("dataplane", "stats", "--node", "node1").stdout
    counters = dict(line.split()[:2] for line in stats.splitlines() if line.startswith("affinity_"))
    assert int(counters["affinity_expired"]) >= 1 and int(counters["affinity_hit"]) >= 28
    assert "AFFINITY ENTRIES" in stats
    disable(cluster, vip)
    assert affinity_rows(cluster) == []


def test_removed_pod_rebalances_its_clients(cluster: Cluster, myapp: str):
    vip = myapp
    enable(cluster, vip, 60)
    (pod,) = set(cluster.hostnames(vip, 5))
    cluster.svcctl("delete", "pod", pod)
    wait_for("another pod answering", lambda: pod not in cluster.hostnames(vip, 1))
    assert len(set(cluster.hostnames(vip, 10))) == 1
    cluster.wait_endpoints("myapp", 3)
    disable(cluster, vip)


def test_prometheus_scrapes_the_agent_and_rates_a_service(cluster: Cluster, myapp: str, tmp_path: Path):
    """Debian's real prometheus, in node1's namespace, scrapes that node's agent on
    127.0.0.1:10249; a query over its HTTP API returns a packet rate for myapp while
    the client pod (on node1) sends it requests; the agent's collector pauses are there
    too, and its log shows it holds its long-lived heap."""
    import json
    import subprocess
    import urllib.parse

    ns = cluster.lab.netns_for("node1")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n- job_name: svcxdp\n  static_configs: [{targets: ['127.0.0.1:10249']}]\n")
    listen = "127.0.0.1:19090"
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen(["ip", "netns", "exec", ns, "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={listen}"],
                                stdout=log, stderr=log)
    query = urllib.parse.quote(f'rate(svcxdp_service_packets_total{{frontend="{myapp}:80",protocol="TCP"}}[5s])')

    def rate() -> float | None:
        cluster.hostnames(myapp, 4)
        p = cluster.exec("node1", "curl", "-s", f"http://{listen}/api/v1/query?query={query}")
        try:
            result = json.loads(p.stdout)["data"]["result"]
        except (ValueError, KeyError):
            return None
        return float(result[0]["value"][1]) if result and float(result[0]["value"][1]) > 0 else None
    try:
        assert wait_for("a packet rate for myapp in prometheus", rate, timeout=60, every=1.0) > 0
        up = cluster.exec("node1", "curl", "-s", f"http://{listen}/api/v1/query?query=kubeproxy_sync_proxy_rules_last_timestamp_seconds")
        assert json.loads(up.stdout)["data"]["result"], up.stdout
        # the conntrack's fill, as the agent's GC walk counted it (or read, before its first pass)
        fill = urllib.parse.quote('svcxdp_map_entries{map="conntrack"}')
        ct = cluster.exec("node1", "curl", "-s", f"http://{listen}/api/v1/query?query={fill}")
        assert float(json.loads(ct.stdout)["data"]["result"][0]["value"][1]) > 0, ct.stdout
        # The agent holds its long-lived heap frozen (gcpause), and its collector's pauses
        # are scraped: the young generation's run all the time.
        agent = next(p for p in cluster.lab.status().processes if p.node == "node1" and p.name == "agent")
        assert "gc: the long-lived heap is held" in Path(agent.log).read_text(errors="replace")
        gen0 = urllib.parse.quote('svcxdp_agent_gc_pause_seconds_count{generation="0"}')
        young = cluster.exec("node1", "curl", "-s", f"http://{listen}/api/v1/query?query={gen0}")
        assert float(json.loads(young.stdout)["data"]["result"][0]["value"][1]) >= 1, young.stdout
    finally:
        prom.terminate()
        prom.wait(timeout=20)


def test_trace_and_get_flows_as_whole_commands(cluster: Cluster, myapp: str):
    """`svcctl trace` and `svcctl get flows` read node1's pins as whole processes: the client
    pod's requests show as its flows to the pod that answered (a ClusterIP of default/myapp);
    a trace of a new flow from that client names the frontend, its affinity entry and that
    pod, and the same packet sent through the program (--run) lands there."""
    import json
    vip = myapp
    enable(cluster, vip, 60)
    me = client_ip(cluster)
    (pod,) = set(cluster.hostnames(vip, 3))
    pod_ip = cluster.pods("app=myapp")[pod]
    doc = json.loads(cluster.svcctl("get", "flows", "--node", "node1", "--service", "myapp", "--client", me,
                                    "-o", "json").stdout)
    flows = [f for f in doc["flows"] if f["frontend"] == {"ip": vip, "port": 80}]
    assert {(f["service"]["name"], f["service"]["kind"]) for f in flows} == {("myapp", "ClusterIP")}, doc
    # the three latest (earlier ones, before affinity, may have gone elsewhere)
    assert [f["backend"]["ip"] for f in sorted(flows, key=lambda f: f["idle_s"])[:3]] == [pod_ip] * 3, flows
    table = cluster.svcctl("get", "flows", "--node", "node1", "--service", "myapp").stdout.splitlines()
    assert table[0].split()[:4] == ["PROTO", "CLIENT", "FRONTEND", "BACKEND"]
    assert any(me in line and pod_ip in line and "default/myapp" in line for line in table[1:]), table
    trace = json.loads(cluster.svcctl("trace", "--node", "node1", f"{me}:45678", f"{vip}:80", "--run",
                                      "-o", "json").stdout)
    assert trace["frontend"]["owner"] == {"namespace": "default", "service": "myapp", "port": "", "kind": "ClusterIP"}
    assert trace["affinity"]["verdict"] == "hit" and trace["choice"]["backend"] == [pod_ip, 80]
    assert trace["run"]["agrees"] and trace["run"]["dst"] == [pod_ip, 80], trace["run"]
    human = cluster.svcctl("trace", "--node", "node1", f"{me}:45678", f"{vip}:80").stdout
    assert "ClusterIP of default/myapp" in human and f"({pod})" in human, human
    disable(cluster, vip)
    # from outside, to a NodePort of node1: the external entry point, run in node1's namespace
    # as arriving on its eth0 (a pod on node2 is source-NATed and sent back out: XDP_TX)
    cluster.svcctl("apply", "-f", "-", input=myapp_service(None).replace("name: myapp", "name: myapp-np").replace(
        "type: ClusterIP", "type: NodePort").replace("targetPort: 80", "targetPort: 80\n    nodePort: 30090"))
    status = cluster.lab.status()
    node1 = next(n for n in status.nodes if n.name == "node1")
    remote = {p.ip for p in status.pods if p.node == "node2"}

    def traced(port: int) -> dict:
        return json.loads(cluster.svcctl("trace", "--node", "node1", f"{status.outside.ip}:{port}",
                                         f"{node1.ip}:30090", "--run", "-o", "json").stdout)
    wait_for("node1 to serve the NodePort", lambda: traced(40000)["frontend"])
    for port in range(40001, 40021):            # random: until a pod on node2 is picked
        trace = traced(port)
        assert trace["entry"] == "external" and trace["frontend"]["owner"]["kind"] == "NodePort"
        run = trace["run"]
        assert run["agrees"] and run["dst"] in trace["choice"]["candidates"], trace
        if run["dst"][0] in remote:             # source-NATed to node1's address, back out of eth0
            assert run["verdict"] == "XDP_TX" and run["src"][0] == node1.ip, run
            break
        # a local pod: its veth is a redirect target (the stack's if node1 had no neighbour entry yet)
        assert run["verdict"] in ("XDP_REDIRECT", "XDP_PASS") and run["src"] == [status.outside.ip, port], run
    else:
        raise AssertionError("20 new flows, none to a pod on node2")
    cluster.svcctl("delete", "svc", "myapp-np")
