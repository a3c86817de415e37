"""Helpers for the etcd lab tests: the lab's members, client traffic that runs through a
fault, and what a node's maps hold (read from its pins with `svcctl dataplane services`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from controlplane.lab import netns, procs
from controlplane.lab.node_processes import instance_name
from controlplane.store.etcd_client import EtcdClient, parse_endpoints
from controlplane.store.paths import STORE_URL_FILE

from .cluster import CLIENT, Cluster

# Client traffic from a pod: every 0.2 s a new TCP connection (an HTTP GET) to one service
# and a PING over one long-lived connection to another. Prints counts as JSON when the stop
# file appears; every failure is listed with its time.
TRAFFIC = textwrap.dedent('''
    import json, os, socket, sys, time
    http_ip, redis_ip, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    s = {"new_ok": 0, "new_fail": 0, "est_ok": 0, "est_fail": 0, "failures": []}
    est = socket.create_connection((redis_ip, 6379), timeout=2)
    while not os.path.exists(stop):
        try:
            with socket.create_connection((http_ip, 80), timeout=2) as c:
                c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                head = c.recv(64)
            ok = head.startswith(b"HTTP/1.") and b" 200 " in head
        except OSError as exc:
            ok, head = False, str(exc).encode()
        s["new_ok" if ok else "new_fail"] += 1
        if not ok:
            s["failures"].append(f"{time.time():.1f} new: {head[:40]!r}")
        try:
            est.sendall(b"PING\\r\\n")
            reply = est.recv(64)
            ok = reply.startswith(b"+PONG")
        except OSError as exc:
            ok, reply = False, str(exc).encode()
        s["est_ok" if ok else "est_fail"] += 1
        if not ok:
            s["failures"].append(f"{time.time():.1f} established: {reply[:40]!r}")
        time.sleep(0.2)
    print(json.dumps(s))
''')


@dataclass
class Traffic:
    proc: subprocess.Popen
    stop_file: Path

    @classmethod
    def start(cls, cluster: Cluster, http_ip: str, redis_ip: str) -> "Traffic":
        tmp = Path(tempfile.mkdtemp(prefix="svcxdp-etcdfault-traffic-"))
        script = tmp / "traffic.py"
        script.write_text(TRAFFIC)
        proc = netns.popen(cluster.lab.netns_for(CLIENT), [sys.executable, str(script), http_ip, redis_ip,
                                                           str(tmp / "stop")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return cls(proc, tmp / "stop")

    def finish(self) -> dict:
        self.stop_file.write_text("")
        try:
            out, err = self.proc.communicate(timeout=30)
        finally:
            shutil.rmtree(self.stop_file.parent, ignore_errors=True)
        assert self.proc.returncode == 0, err
        return json.loads(out)


def members(cluster: Cluster):
    return cluster.lab.status().etcd


def process(cluster: Cluster, host: str, name: str):
    return next(p for p in cluster.lab.status().processes if p.node == host and p.name == name)


def local_client(cluster: Cluster) -> EtcdClient:
    """A client on the members' unix sockets (what svcctl in the root namespace uses)."""
    url = (cluster.state_dir / STORE_URL_FILE).read_text().strip()
    return EtcdClient(parse_endpoints(url), timeout=2.0, retry_for=15.0)


def raft_leader(cluster: Cluster) -> str:
    """The name of the member that leads raft now."""
    for m in members(cluster):
        sock = Path(m.dir) / "client.sock:0"
        try:
            status = EtcdClient(parse_endpoints(f"etcd://unix:{sock}"), timeout=2.0, retry_for=1.0) \
                .call("/maintenance/status", {})
        except Exception:  # noqa: BLE001 - a stopped member
            continue
        if status.get("leader") == status.get("header", {}).get("member_id"):
            return m.name
    raise AssertionError("no etcd member leads")


def kill(cluster: Cluster, host: str, name: str, sig: int = signal.SIGKILL) -> None:
    """Signal a recorded lab process by its pid (only while it is in its namespace)."""
    p = process(cluster, host, name)
    assert procs.alive(p.pid, p.netns), f"{host}/{name} is not running"
    os.kill(p.pid, sig)
    if sig == signal.SIGKILL:
        procs._wait_gone(p.pid, p.netns, 5.0)


def frontends(cluster: Cluster, node: str) -> str:
    """`svcctl dataplane services` of one node: the frontends and backends in its maps."""
    return cluster.svcctl("dataplane", "services", "--instance", instance_name(cluster.lab, node)).stdout


def backends_in_maps(cluster: Cluster, node: str, vip: str) -> list[str]:
    for line in frontends(cluster, node).splitlines():
        if line.startswith(vip + ":"):
            ends = line.split()[-1]
            return [] if ends == "<none>" else ends.split(",")
    return []


def service_manifest(name: str, port: int = 80, selector: str = "nginx", kind: str = "ClusterIP") -> str:
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
        spec:
          type: {kind}
          selector:
            run: {selector}
          ports:
          - port: {port}
            targetPort: 80
        """)


def agent_log(cluster: Cluster, node: str) -> str:
    return Path(process(cluster, node, "agent").log).read_text(errors="replace")
