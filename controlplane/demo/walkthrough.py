"""The walkthrough demo: an embedded lab cluster whose nodes run the XDP agent,
and the ClusterIP walkthrough replayed with svcctl and real clients. Every command
is printed as a user would type it, followed by its real output."""
from __future__ import annotations

import collections
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from controlplane.lab.node_processes import instance_name
from controlplane.dataplane.config import PIN_ROOT
from controlplane.lab import hooks
from controlplane.lab.addons import install_dns
from controlplane.lab.plan import LB_POOL
from controlplane.lab.topology import Lab
from controlplane.store.paths import open_store, resolve_state_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "walkthrough"
DEMO_PREFIX = "svcxdp-demo"


class Transcript:
    def __init__(self, state_dir: Path) -> None:
        self.env = {**os.environ, "SVCXDP_STATE_DIR": str(state_dir)}

    def say(self, text: str) -> None:
        print(f"\n## {text}", flush=True)

    def svcctl(self, *args: str, show: bool = True, check: bool = True) -> str:
        if show:
            print(f"$ svcctl {shlex.join(args)}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        if show and out:
            print(out.rstrip(), flush=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"demo: `svcctl {shlex.join(args)}` failed with exit code {proc.returncode}")
        return proc.stdout

    def wait(self, what: str, check, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.3)
        raise SystemExit(f"demo: timed out waiting for {what}")

    def get_json(self, *args: str) -> dict:
        out = self.svcctl("get", *args, "-o", "json", show=False, check=False)
        return json.loads(out) if out.strip() else {}

    def ready_endpoints(self, service: str) -> int:
        ep = self.get_json("endpoints", service)
        return sum(len(s.get("addresses") or []) for s in ep.get("subsets") or [])

    def cluster_ip(self, service: str) -> str:
        return self.get_json("svc", service)["spec"]["clusterIP"]

    def pod_exec(self, lab: Lab, host: str, *argv: str) -> str:
        """`svcctl exec HOST -- ARGV`, printed with its output."""
        print(f"$ svcctl exec {host} -- {shlex.join(argv)}", flush=True)
        p = lab.exec(host, list(argv), capture_output=True, text=True, timeout=30)
        out = (p.stdout + p.stderr).rstrip()
        if out:
            print(out, flush=True)
        return p.stdout


def _dns_sections(t: Transcript, lab: Lab) -> None:
    """The walkthrough's DNS steps: a headless Service answered with its pods' addresses,
    a short name through the search path, and an ExternalName as a CNAME."""
    t.say("Cluster DNS: kube-dns at 10.96.0.10, two DNS pods behind the XDP dataplane")
    t.svcctl("get", "svc,pods", "-n", "kube-system", "-o", "wide")
    t.pod_exec(lab, "client", "cat", "/etc/resolv.conf")

    t.say("A headless Service (clusterIP: None): DNS answers with the pods' own addresses")
    print((EXAMPLES / "httpd-svc.yaml").read_text().rstrip())
    t.svcctl("apply", "-f", str(EXAMPLES / "httpd-svc.yaml"))
    t.wait("httpd-svc endpoints", lambda: t.ready_endpoints("httpd-svc") == 3)
    t.svcctl("get", "svc", "httpd-svc")
    t.svcctl("get", "endpoints", "httpd-svc")
    t.wait("httpd-svc in DNS", lambda: len(lab.exec("client", ["dig", "+short", "httpd-svc.default.svc.cluster.local"],
                                                    capture_output=True, text=True).stdout.split()) == 3)
    t.pod_exec(lab, "client", "dig", "+short", "httpd-svc.default.svc.cluster.local")
    t.pod_exec(lab, "client", "nslookup", "httpd-svc")
    t.pod_exec(lab, "client", "dig", "+short", "SRV", "_http._tcp.httpd-svc.default.svc.cluster.local")

    t.say("Short names through the pod's search path: curl http://myapp/")
    t.pod_exec(lab, "client", "curl", "-s", "http://myapp/")
    vip = t.cluster_ip("myapp")
    t.pod_exec(lab, "client", "dig", "+short", "-x", vip)

    t.say("An ExternalName Service: a CNAME in the cluster DNS (www.example.com is the outside host)")
    print((EXAMPLES / "ext-svc.yaml").read_text().rstrip())
    t.svcctl("apply", "-f", str(EXAMPLES / "ext-svc.yaml"))
    t.svcctl("get", "svc", "ext-svc")
    t.wait("ext-svc in DNS", lambda: "www.example.com" in lab.exec(
        "client", ["dig", "+short", "ext-svc.default.svc.cluster.local"], capture_output=True, text=True).stdout)
    t.pod_exec(lab, "client", "dig", "+noall", "+answer", "ext-svc.default.svc.cluster.local")
    t.pod_exec(lab, "client", "curl", "-s", "http://ext-svc/")


MYAPP_CLIENT_IP = """apiVersion: v1
kind: Service
metadata:
  name: myapp
  namespace: default
spec:
  selector:
    app: myapp
    release: canary
  type: ClusterIP
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 10
  ports:
  - port: 80
    targetPort: 80
"""


def _affinity_section(t: Transcript, lab: Lab, state_dir: Path, vip: str) -> None:
    """ClientIP affinity on myapp: the client's loop meets one pod; `get affinity`
    shows the node's entry; back to None. Adds a few seconds, no waiting for expiry."""
    t.say("sessionAffinity: ClientIP (timeoutSeconds: 10): the same loop now meets one pod")
    manifest = state_dir / "myapp-client-ip.yaml"
    manifest.write_text(MYAPP_CLIENT_IP)
    print(MYAPP_CLIENT_IP.rstrip())
    t.svcctl("apply", "-f", str(manifest))
    client_ip = lab.pod("client").ip

    def get(path: str) -> str:
        return lab.exec("client", ["busybox", "wget", "-qO-", f"http://{vip}/{path}"],
                        capture_output=True, text=True, timeout=10).stdout.strip()

    def remembered() -> bool:  # node1's datapath has an entry for the client
        get("hostname.html")
        return client_ip in t.svcctl("get", "affinity", "myapp", "--node", "node1", show=False, check=False)
    t.wait("node1 to remember the client", remembered)
    print(f"$ svcctl exec client -- sh -c 'for i in $(seq 1 12); do wget -qO- http://{vip}/hostname.html; done'")
    answers = [get("hostname.html") or "(failed)" for _ in range(12)]
    print("\n".join(answers))
    spread = collections.Counter(answers)
    print(f"-> {len(spread)} pod answered: " + ", ".join(f"{k} x{v}" for k, v in sorted(spread.items())))
    t.say("Which client sticks to which pod, and for how long (the node's XDP affinity map)")
    t.svcctl("get", "affinity", "myapp", "--node", "node1")
    t.say("Back to sessionAffinity: None: new connections spread again at once")
    t.svcctl("apply", "-f", str(EXAMPLES / "myapp.yaml"))


def _load_balancer_section(t: Transcript, lab: Lab) -> None:
    """A LoadBalancer in front of myapp: LB-IPAM gives it an address from the lab's pool
    (which the outside host routes to the nodes); with externalTrafficPolicy Local each node
    serves its healthCheckNodePort, as kube-proxy does for a cloud load balancer."""
    t.say(f"A LoadBalancer service: svcxdp's LB-IPAM gives it an address from the lab's pool {LB_POOL}")
    print((EXAMPLES / "myapp-lb.yaml").read_text().rstrip())
    t.svcctl("apply", "-f", str(EXAMPLES / "myapp-lb.yaml"))
    t.wait("an address for myapp-lb", lambda: t.get_json("svc", "myapp-lb").get("status", {}).get("loadBalancer"))
    t.svcctl("get", "svc", "myapp-lb")
    t.svcctl("lb-pool")
    lb_ip = t.get_json("svc", "myapp-lb")["status"]["loadBalancer"]["ingress"][0]["ip"]
    url = f"http://{lb_ip}/hostname.html"
    t.say(f"From outside, {lb_ip} reaches the nodes (the outside host's ECMP route) and XDP serves it")
    t.wait(f"{url} from outside", lambda: lab.exec(
        "outside", ["curl", "-s", "-m", "3", url], capture_output=True, text=True, timeout=10).stdout.strip())
    p = lab.exec("outside", ["curl", "-s", "-m", "3", url], capture_output=True, text=True, timeout=10)
    print(f"$ svcctl exec outside -- curl -s {url}\n{p.stdout.strip()}")
    hc = t.get_json("svc", "myapp-lb")["spec"]["healthCheckNodePort"]
    t.say(f"externalTrafficPolicy: Local: every node answers on healthCheckNodePort {hc} whether it has "
          "ready myapp pods (200) or not (503)")
    for node in lab.nodes():
        url = f"http://{node.ip}:{hc}/"
        t.wait(f"{node.name}'s health check", lambda: lab.exec(
            "outside", ["curl", "-s", "-m", "3", url], capture_output=True, text=True).stdout)
        p = lab.exec("outside", ["curl", "-s", "-m", "3", "-w", "  (HTTP %{http_code})", url],
                     capture_output=True, text=True)
        print(f"$ svcctl exec outside -- curl -s {url}\n{p.stdout}")


def _fresh_lab(state_dir: Path) -> Lab:
    lab = Lab(state_dir, prefix=DEMO_PREFIX)
    if lab.status().outside is not None:
        print(f"(removing the previous demo lab in {state_dir})")
    lab.down(on_down=hooks.on_lab_down)   # also what an earlier demo here left unrecorded
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return Lab(state_dir, prefix=DEMO_PREFIX)


def run_walkthrough(nodes: int = 2, keep: bool = False, state_dir: str | None = None) -> int:
    """The demo's lab and store live in <state dir>/demo (--state-dir, else $SVCXDP_STATE_DIR
    or /var/lib/svcxdp), a folder of its own that it removes (unless `keep`)."""
    state_dir = resolve_state_dir(state_dir) / "demo"
    lab = _fresh_lab(state_dir)
    t = Transcript(state_dir)
    try:
        t.say(f"An embedded cluster: {nodes} nodes and an outside host as network namespaces; "
              "each node runs the svcxdp agent, which attaches the XDP dataplane")
        lab.up(nodes=nodes, node_processes=hooks.node_processes)
        install_dns(lab, open_store(state_dir))
        t.svcctl("lab", "status")
        t.wait("the agents", lambda: all((PIN_ROOT / instance_name(lab, n.name) / "services").exists()
                                          for n in lab.nodes()))

        t.say("kubectl run + expose: three nginx pods behind a ClusterIP")
        t.svcctl("run", "nginx", "--image=nginx", "--replicas=3")
        t.svcctl("expose", "deployment", "nginx", "--port=80")
        t.wait("nginx endpoints", lambda: t.ready_endpoints("nginx") == 3)
        t.svcctl("get", "pods", "-o", "wide")
        t.svcctl("get", "svc")
        t.svcctl("get", "endpoints")

        t.say("From outside the cluster: nginx-svc, NodePort 30080 on every node (XDP on the "
              "node's eth0; a pod on the other node is reached through SNAT and XDP_TX)")
        print((EXAMPLES / "nginx-svc.yaml").read_text().rstrip())
        t.svcctl("apply", "-f", str(EXAMPLES / "nginx-svc.yaml"))
        t.wait("nginx-svc endpoints", lambda: t.ready_endpoints("nginx-svc") == 3)
        for node_ip in [n.ip for n in lab.nodes()]:
            url = f"http://{node_ip}:30080"

            def title() -> str:
                p = lab.exec("outside", ["curl", "-s", "-m", "3", url], capture_output=True, text=True,
                             timeout=10)
                return next((line.strip() for line in p.stdout.splitlines() if "<title>" in line), "")
            t.wait(f"{url} from outside", title)
            print(f"$ svcctl exec outside -- curl -s {url} | grep title\n{title()}")

        t.say("A Deployment and Service from YAML: myapp")
        print((EXAMPLES / "myapp.yaml").read_text().rstrip())
        t.svcctl("apply", "-f", str(EXAMPLES / "myapp.yaml"))
        t.wait("myapp endpoints", lambda: t.ready_endpoints("myapp") == 3)
        t.svcctl("describe", "svc", "myapp")
        vip = t.cluster_ip("myapp")

        t.say(f"From a client pod, the ClusterIP {vip} answers (DNAT in XDP on the node)")
        t.svcctl("run", "client", "--rm", "--image=busybox", "--", "wget", "-O", "-", "-q", f"http://{vip}/")
        print(f"$ svcctl exec client -- sh -c 'for i in $(seq 1 12); do wget -qO- http://{vip}/hostname.html; done'")
        lab.add_pod("client", "node1", "busybox")
        answers = []
        for _ in range(12):
            p = lab.exec("client", ["busybox", "wget", "-qO-", f"http://{vip}/hostname.html"],
                         capture_output=True, text=True, timeout=10)
            answers.append(p.stdout.strip() or f"(failed: {p.stderr.strip()})")
            print(answers[-1], flush=True)
        spread = collections.Counter(answers)
        print(f"-> {len(spread)} pods answered: " + ", ".join(f"{k} x{v}" for k, v in sorted(spread.items())))

        _affinity_section(t, lab, state_dir, vip)
        _dns_sections(t, lab)

        t.say("redis behind a ClusterIP: redis-cli PING from a pod")
        t.svcctl("apply", "-f", str(EXAMPLES / "redis.yaml"))
        t.wait("redis endpoints", lambda: t.ready_endpoints("redis") == 1)
        rvip = t.cluster_ip("redis")
        print(f"$ svcctl exec client -- redis-cli -h {rvip} PING")
        t.wait("redis", lambda: lab.exec("client", ["redis-cli", "-h", rvip, "PING"], capture_output=True,
                                         text=True, timeout=10).stdout.strip() == "PONG")
        print(lab.exec("client", ["redis-cli", "-h", rvip, "PING"], capture_output=True, text=True).stdout.rstrip())

        _load_balancer_section(t, lab)

        t.say("Scale myapp to 0: the ClusterIP refuses at once (TCP RST from XDP), like kube-proxy's REJECT")
        t.svcctl("scale", "deployment", "myapp-deploy", "--replicas=0")
        t.wait("no myapp endpoints", lambda: t.ready_endpoints("myapp") == 0)
        time.sleep(0.5)
        p = lab.exec("client", ["curl", "-sS", "-m", "3", f"http://{vip}/"], capture_output=True, text=True)
        print(f"$ svcctl exec client -- curl -sS -m 3 http://{vip}/\n{p.stderr.strip()}  (exit {p.returncode})")
        t.svcctl("scale", "deployment", "myapp-deploy", "--replicas=3")

        t.say("The agent's health, as kube-proxy's: /healthz on port 10256 inside the node")
        p = lab.exec("node1", ["curl", "-s", "http://127.0.0.1:10256/healthz"], capture_output=True, text=True)
        print(f"$ svcctl exec node1 -- curl -s http://127.0.0.1:10256/healthz\n{p.stdout}")
        t.svcctl("dataplane", "stats", "--node", "node1", check=False)
        if keep:
            print(f"\nThe lab is still up. Try:\n  export SVCXDP_STATE_DIR={state_dir}\n"
                  f"  svcctl get svc\n  svcctl exec client -- wget -qO- http://{vip}/\n"
                  f"  svcctl lab down   # when done")
        return 0
    finally:
        if not keep:
            print("\n$ svcctl lab down")
            lab.down(on_down=hooks.on_lab_down)
            shutil.rmtree(state_dir, ignore_errors=True)
