"""A running cluster for end-to-end tests: a lab whose nodes run the real agent
(XDP attached, pinned maps) and the lab kubelet, driven through svcctl as a user
would, with real clients (busybox wget, curl, redis-cli) in a client pod."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from controlplane.lab.node_processes import instance_name
from controlplane.dataplane.config import PIN_ROOT
from controlplane.lab import hooks
from controlplane.lab.topology import Lab

CLIENT = "client"


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0, every: float = 0.2):
    """Poll until check() is truthy; the value is returned. Not a timing assertion:
    the deadline only bounds a test that would otherwise hang."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    lab: Lab

    @property
    def state_dir(self) -> Path:
        return self.lab.store.state_dir

    def svcctl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "SVCXDP_STATE_DIR": str(self.state_dir)}
        proc = subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env=env, text=True,
                              capture_output=True, timeout=60, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"svcctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def exec(self, host: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return self.lab.exec(host, list(argv), capture_output=True, text=True, timeout=timeout)

    # ---- reading the store through svcctl ----------------------------------------------
    def get_json(self, *args: str) -> dict:
        return json.loads(self.svcctl("get", *args, "-o", "json").stdout)

    def cluster_ip(self, service: str) -> str:
        return self.get_json("svc", service)["spec"]["clusterIP"]

    def ingress_ip(self, service: str) -> str:
        """The first LoadBalancer ingress IP of the Service, once it has one."""
        def check() -> str | None:
            lb = self.get_json("svc", service).get("status", {}).get("loadBalancer") or {}
            return lb["ingress"][0].get("ip") if lb.get("ingress") else None
        return wait_for(f"an ingress IP for {service}", check)

    def endpoint_ips(self, service: str) -> list[str]:
        ep = self.get_json("endpoints", service)
        return sorted(a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or [])

    def counter(self, name: str, node: str = "node1") -> int:
        """A datapath counter of the node's agent (`svcctl dataplane stats`)."""
        out = self.svcctl("dataplane", "stats", "--node", node).stdout
        values = [int(parts[1]) for parts in map(str.split, out.splitlines()) if parts and parts[0] == name]
        assert values, f"no counter {name} in:\n{out}"
        return values[0]

    def pods(self, selector: str) -> dict[str, str]:
        items = self.get_json("pods", "-l", selector)["items"]
        return {p["metadata"]["name"]: p.get("status", {}).get("podIP") for p in items}

    def wait_endpoints(self, service: str, count: int) -> list[str]:
        def check() -> list[str] | None:
            ips = self.endpoint_ips(service)
            return ips if len(ips) == count else None
        return wait_for(f"{count} endpoints of {service}", check) if count else \
            wait_for(f"no endpoints of {service}", lambda: self.endpoint_ips(service) == []) and []

    # ---- clients ---------------------------------------------------------------------------
    def http(self, url: str, client: str = CLIENT) -> subprocess.CompletedProcess:
        return self.exec(client, "curl", "-s", "-m", "3", url)

    def wait_http(self, url: str, client: str = CLIENT) -> str:
        def check() -> str | None:
            p = self.http(url, client)
            return p.stdout if p.returncode == 0 and p.stdout else None
        return wait_for(f"an answer from {url}", check)

    def hostnames(self, vip: str, n: int, client: str = CLIENT) -> list[str]:
        names = []
        for _ in range(n):
            p = self.exec(client, "busybox", "wget", "-qO-", f"http://{vip}/hostname.html")
            assert p.returncode == 0, p.stderr
            names.append(p.stdout.strip())
        return names

    def agent_pid(self, node: str = "node1") -> int:
        return next(p.pid for p in self.lab.status().processes if p.node == node and p.name == "agent")

    def healthz(self, node: str = "node1") -> tuple[int, dict]:
        p = self.exec(node, "curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", "http://127.0.0.1:10256/healthz")
        body, _, code = p.stdout.rpartition("\n")
        return int(code or 0), (json.loads(body) if body.strip() else {})

    def pins(self) -> list[str]:
        return [str(p) for n in self.lab.nodes() if (p := PIN_ROOT / instance_name(self.lab, n.name)).exists()]


def start_cluster(lab: Lab, nodes: int, node_processes=hooks.node_processes, **up) -> Cluster:
    lab.up(nodes=nodes, node_processes=node_processes, **up)
    cluster = Cluster(lab)
    lab.add_pod(CLIENT, "node1", "busybox")
    wait_for("the agents to be healthy",
             lambda: all(cluster.healthz(n.name)[0] == 200 for n in lab.nodes()), timeout=60)
    return cluster


def _print_logs(lab: Lab, lines: int = 40) -> None:
    """The node processes' logs: pytest shows them when a test fails."""
    logs = lab.store.root / "logs"
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"---- {log.name} (last {len(tail)} lines) ----", *tail, sep="\n")


def cluster_for_module(tag: str, nodes: int = 2, node_processes=hooks.node_processes, **up):
    """The body of a module-scoped cluster fixture: up, yield, down, and assert that
    nothing of it is left (namespaces, pins, processes, state). `up`: more Lab.up
    arguments (store="etcd", etcd_members=3)."""
    from .conftest import RUN_PREFIX, lab_leftovers
    state_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-{tag}-state-"))
    lab = Lab(state_dir, prefix=f"{RUN_PREFIX}-{tag}")
    cluster = Cluster(lab)
    try:
        start_cluster(lab, nodes, node_processes, **up)
        yield cluster
    finally:
        left = stop_cluster(cluster) + lab_leftovers(lab)
        shutil.rmtree(state_dir, ignore_errors=True)
        assert not left, f"the cluster left things behind: {left}"


def stop_cluster(cluster: Cluster) -> list[str]:
    """Tear down; return what was left behind (must be nothing)."""
    lab = cluster.lab
    status = lab.status()
    pids = [p.pid for p in status.processes] + [p.pid for p in status.pods if p.pid]
    nodes = lab.nodes() if status.outside is not None else []
    _print_logs(lab)
    lab.down(on_down=hooks.on_lab_down)
    left = [f"pin {PIN_ROOT / instance_name(lab, n.name)}" for n in nodes
            if (PIN_ROOT / instance_name(lab, n.name)).exists()]
    left += [f"pid {p}" for p in pids if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().split(") ", 1)[1][0] != "Z"]
    return left
