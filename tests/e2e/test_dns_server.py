"""`svcctl dns` as a process, asked by real clients (dig, nslookup) inside a network
namespace of its own, with a real upstream (dnsmasq) for names outside the cluster. The
store is the one `svcctl apply` writes; the server follows its change feed."""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from controlplane.lab import netns

from .cluster import wait_for
from .conftest import RUN_PREFIX

pytestmark = pytest.mark.root

NS = f"{RUN_PREFIX}-dnssrv"
SERVER, UPSTREAM, DEAD = "127.0.0.1", "127.0.0.2", "127.0.0.9"
ZONE = ".default.svc.cluster.local"


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pids: list[int] = []

    def start(self, argv: list[str], log: str) -> int:
        out = open(self.root / log, "wb")
        proc = subprocess.Popen(netns.command(NS, argv), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.pids.append(proc.pid)
        return proc.pid

    def svcctl(self, *args: str, input: str | None = None) -> str:
        env = {**os.environ, "SVCXDP_STATE_DIR": str(self.root)}
        p = subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env=env, text=True,
                           capture_output=True, input=input, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def apply(self, yaml: str) -> None:
        self.svcctl("apply", "-f", "-", input=textwrap.dedent(yaml))

    def run(self, *argv: str) -> str:
        p = subprocess.run(netns.command(NS, list(argv)), capture_output=True, text=True, timeout=30)
        return p.stdout + p.stderr

    def dig(self, *args: str, server: str = SERVER, port: int = 53) -> str:
        return self.run("dig", f"@{server}", "-p", str(port), "+tries=1", "+time=5", *args)

    def short(self, *args: str, **kw) -> list[str]:
        return sorted(self.dig("+short", *args, **kw).split("\n")[:-1])


def status(out: str) -> str:
    return out.split("status: ", 1)[1].split(",", 1)[0] if "status: " in out else out


def _wait_port(env: Env, port: int) -> None:
    wait_for(f"a DNS answer on port {port}",
             lambda: "status:" in env.dig("dns-version.cluster.local", "TXT", port=port), timeout=30)


@pytest.fixture(scope="module")
def env():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-dnssrv-state-"))
    e = Env(root)
    netns.create(NS)
    try:
        with netns.iproute(NS) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        e.apply("""
            apiVersion: v1
            kind: Service
            metadata: {name: myapp}
            spec:
              selector: {app: myapp}
              ports: [{name: http, port: 80}]
            """)
        # The upstream: dnsmasq, authoritative-ish for example.com, nothing else.
        e.start(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                 f"--listen-address={UPSTREAM}", "--bind-interfaces", "--port=53", "--pid-file=",
                 "--local=/example.com/", "--host-record=www.example.com,192.0.2.10",
                 "--host-record=mirror.example.com,192.0.2.20", "--user=root"], "dnsmasq.log")
        svc = [sys.executable, "-m", "controlplane.cli", "dns", "--state-dir", str(root), "--listen", SERVER]
        e.start(svc + ["--upstream", UPSTREAM], "dns.log")
        # A second server whose upstream does not answer, and a third with none at all.
        e.start(svc + ["--port", "5301", "--metrics-port", "0", "--upstream", DEAD,
                       "--forward-timeout", "1"], "dns-dead.log")
        e.start(svc + ["--port", "5302", "--metrics-port", "0", "--resolv-conf", "/dev/null"], "dns-none.log")
        for port in (53, 5301, 5302):
            _wait_port(e, port)
        yield e
    finally:
        for pid in e.pids:
            try:
                os.killpg(pid, 15)
            except ProcessLookupError:
                pass
        for pid in e.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for log in root.glob("*.log"):
            print(f"---- {log.name}", log.read_text(errors="replace")[-3000:], sep="\n")
        netns.delete(NS)
        shutil.rmtree(root, ignore_errors=True)


def test_service_a_srv_ptr_over_udp_and_tcp(env):
    ip = json.loads(env.svcctl("get", "svc", "myapp", "-o", "json"))["spec"]["clusterIP"]
    assert env.short("myapp" + ZONE) == [ip]
    assert env.short("+tcp", "myapp" + ZONE) == [ip]
    assert env.short("_http._tcp.myapp" + ZONE, "SRV") == [f"0 100 80 myapp{ZONE}."]
    assert env.short("-x", ip) == [f"myapp{ZONE}."]
    out = env.run("nslookup", f"myapp{ZONE}", SERVER)
    assert f"Address: {ip}" in out, out
    assert status(env.dig("nope" + ZONE)) == "NXDOMAIN"
    nodata = env.dig("myapp" + ZONE, "AAAA")
    assert status(nodata) == "NOERROR" and "ANSWER: 0" in nodata and "SOA" in nodata


def test_new_service_resolves_and_deleted_gives_nxdomain(env):
    env.apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: fresh}
        spec:
          selector: {app: fresh}
          ports: [{port: 8080}]
        """)
    ip = wait_for("fresh to resolve", lambda: env.short("fresh" + ZONE), timeout=10)
    assert ip[0].startswith("10.")
    env.svcctl("delete", "svc", "fresh")
    wait_for("fresh to be NXDOMAIN", lambda: status(env.dig("fresh" + ZONE)) == "NXDOMAIN", timeout=10)


def test_forwarding_externalname_chase_and_retarget(env):
    assert env.short("www.example.com") == ["192.0.2.10"]
    assert status(env.dig("nothing.example.com")) == "NXDOMAIN"
    env.apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: ext-svc}
        spec: {type: ExternalName, externalName: www.example.com}
        """)
    wait_for("the CNAME and its target", lambda: env.short("ext-svc" + ZONE) == ["192.0.2.10", "www.example.com."])
    env.apply("""
        apiVersion: v1
        kind: Service
        metadata: {name: ext-svc}
        spec: {type: ExternalName, externalName: mirror.example.com}
        """)
    wait_for("the retargeted CNAME", lambda: env.short("ext-svc" + ZONE) == ["192.0.2.20", "mirror.example.com."])


def test_no_upstream_or_a_dead_one_is_servfail_not_a_hang(env):
    t0 = time.monotonic()
    assert status(env.dig("www.example.com", port=5302)) == "SERVFAIL"
    assert status(env.dig("www.example.com", port=5301)) == "SERVFAIL"
    assert time.monotonic() - t0 < 9  # dig's own +time=5 would have given up otherwise
    # Cluster names are still answered by both.
    assert env.short("myapp" + ZONE, port=5302)


def apply_headless(env, name: str, addresses: list[str], headless: bool = True) -> None:
    """A headless service (or, with `headless` False, one with a ClusterIP) with one named
    port and one slice of ready `addresses`."""
    endpoints = "".join(f"- addresses: [{a}]\n" for a in addresses)
    env.svcctl("apply", "-f", "-", input=textwrap.dedent(f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}}}
        spec:
          {"clusterIP: None" if headless else "type: ClusterIP"}
          ports: [{{name: http, port: 80}}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {name}-1
          labels: {{kubernetes.io/service-name: {name}}}
        addressType: IPv4
        ports: [{{name: http, port: 80, protocol: TCP}}]
        endpoints:
        """) + endpoints)


def test_truncated_udp_answer_is_retried_over_tcp(env):
    apply_headless(env, "big", [f"10.244.{i // 200}.{i % 200 + 2}" for i in range(150)])
    wait_for("big's addresses", lambda: len(env.short("+tcp", "big" + ZONE)) == 150)
    udp_only = env.dig("+ignore", "big" + ZONE)
    assert "flags: qr aa" in udp_only and " tc" in udp_only.split("flags:", 1)[1].split(";", 1)[0]
    assert len(env.short("big" + ZONE)) == 150  # dig falls back to TCP on TC, as resolvers do


def test_srv_glue_that_does_not_fit_is_left_out_without_tc(env):
    """RFC 2181 §9: 16 SRV records (1052 bytes) fit 1232 bytes; not all their glue does,
    which is no reason for TC (the whole answer was dropped and TC set)."""
    apply_headless(env, "mid", [f"10.244.3.{i + 2}" for i in range(16)])
    wait_for("mid's addresses", lambda: len(env.short("+tcp", "mid" + ZONE)) == 16)
    out = env.dig("+bufsize=1232", "+ignore", "_http._tcp.mid" + ZONE, "SRV")
    flags = out.split("flags:", 1)[1].split(";", 1)[0]
    assert "ANSWER: 16," in out and " tc" not in flags, out


def test_endpoint_names_ptr_srv_of_a_clusterip_service_and_the_do_bit(env):
    """As CoreDNS answers them: a ClusterIP service's endpoints by name and by address
    (`dig -x` of a pod IP), SRV at the service's own name, and the DO bit of a query copied
    into the answer (dig +dnssec)."""
    apply_headless(env, "cip", ["10.244.5.7", "10.244.5.8"], headless=False)
    ip = json.loads(env.svcctl("get", "svc", "cip", "-o", "json"))["spec"]["clusterIP"]
    wait_for("cip's endpoint names", lambda: env.short("10-244-5-7.cip" + ZONE) == ["10.244.5.7"], timeout=10)
    assert env.short("cip" + ZONE) == [ip]
    assert env.short("-x", "10.244.5.8") == [f"10-244-5-8.cip{ZONE}."]
    assert env.short("cip" + ZONE, "SRV") == [f"0 100 80 cip{ZONE}."]
    assert "flags: do;" in env.dig("+dnssec", "cip" + ZONE)
    assert "flags: do;" in env.dig("+dnssec", "www.example.com")      # forwarded, too
    assert "flags:;" in env.dig("cip" + ZONE).split("EDNS:", 1)[1]


def test_garbage_does_not_kill_the_server(env):
    rng = random.Random(1)

    def blast() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(2000):
                s.sendto(bytes(rng.randrange(256) for _ in range(rng.randint(0, 600))), (SERVER, 53))
        with socket.create_connection((SERVER, 53), timeout=2) as t:
            t.sendall(b"\x00\x05abc")  # a message cut short, then the connection closed

    netns.call_in(NS, blast)
    assert env.short("myapp" + ZONE)
    metrics = env.run("curl", "-s", f"http://{SERVER}:9153/metrics")
    assert "svcxdp_dns_bad_queries_total" in metrics
