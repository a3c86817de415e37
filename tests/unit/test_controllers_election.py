"""`svcctl controllers` on etcd: two real processes, exactly one leads; kill it and the other
takes over; a burst of concurrent applies from two processes meanwhile never shares a
ClusterIP or NodePort. Real etcd (tests/etcd_server.py), real processes, stopped by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from controlplane.api import Service
from controlplane.store.etcd_election import LeaderElection
from tests.etcd_server import EtcdServer

ROOT = Path(__file__).resolve().parents[2]
TTL = 2


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "controlplane.cli", *args], cwd=ROOT,
                                stdout=out, stderr=out, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_one_leader_and_a_takeover_when_it_dies(etcd_server: EtcdServer, tmp_path: Path) -> None:
    etcd_server.wipe()
    election = LeaderElection(etcd_server.client(), "controllers", "observer")
    procs = {name: spawn(["controllers", "--store", etcd_server.url, "--lease-ttl", str(TTL),
                          "--identity", name], tmp_path / f"{name}.log") for name in ("a", "b")}
    try:
        first = wait_for(election.leader)
        other = "b" if first == "a" else "a"
        wait_for(lambda: b"waiting to lead" in (tmp_path / f"{other}.log").read_bytes())
        time.sleep(2 * TTL)                       # several lease renewals: the lead stays put
        assert election.leader() == first
        assert b"leading" not in (tmp_path / f"{other}.log").read_bytes().replace(b"waiting to lead", b"")
        os.kill(procs[first].pid, signal.SIGKILL)  # no resignation: the lease must expire
        procs[first].wait(5)
        assert wait_for(lambda: election.leader() == other)
        wait_for(lambda: b"leading\n" in (tmp_path / f"{other}.log").read_bytes())
    finally:
        for proc in procs.values():
            stop(proc)


def test_concurrent_applies_from_two_processes_allocate_distinct_values(etcd_server: EtcdServer,
                                                                          tmp_path: Path) -> None:
    etcd_server.wipe()
    controllers = [spawn(["controllers", "--store", etcd_server.url, "--lease-ttl", str(TTL),
                          "--identity", name], tmp_path / f"c-{name}.log") for name in ("a", "b")]
    try:
        files = []
        for batch in ("x", "y"):
            docs = [{"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": f"{batch}{i}", "namespace": "default"},
                     "spec": {"type": "NodePort", "selector": {"app": batch}, "ports": [{"port": 80}]}}
                    for i in range(6)]
            path = tmp_path / f"{batch}.yaml"
            path.write_text(yaml.safe_dump_all(docs))
            files.append(path)
        appliers = [spawn(["apply", "--store", etcd_server.url, "-f", str(f)], tmp_path / f"apply-{f.stem}.log")
                    for f in files]
        for proc in appliers:
            assert proc.wait(120) == 0, (tmp_path / "apply-x.log").read_text() + (tmp_path / "apply-y.log").read_text()
        store = etcd_server.store()
        services = [s for s in store.list(Service) if s.name != "kubernetes"]
        assert len(services) == 12
        assert len({s.spec.cluster_ip for s in services}) == 12
        assert len({p.node_port for s in services for p in s.spec.ports}) == 12
    finally:
        for proc in controllers:
            stop(proc)
