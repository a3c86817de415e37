"""What the agent tests share: a small dataplane and an agent on it with empty maps, the
agent's loop in a thread, services and endpoint slices written to a real store, a client
that sends SYNs through the loaded program, and a real SQLite lock."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.agent.agent import Agent
from controlplane.agent.desired import NodeConfig
from controlplane.api import EndpointSlice, Service
from controlplane.controllers.registry import MODE_CREATE, Manifest, Registry
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.writer import MapWriter
from controlplane.store import SqliteStore

from .harness import CLIENT, CLIENT_MAC, NODE_MAC


@contextmanager
def small_dataplane(instance: str) -> Iterator[Dataplane]:
    """A loaded, unpinned dataplane with small maps, closed at the end (a module's agents share it)."""
    dp = Dataplane.load(DataplaneConfig(instance=instance, pin=False, ct_size=1024,
                                        max_services=64, max_backends=256, max_slots=1024))
    try:
        yield dp
    finally:
        dp.close()


def fresh_agent(source, dp: Dataplane, node: NodeConfig = NodeConfig("node1"), **kw) -> Agent:
    """An agent on `dp` whose maps hold no services, whatever an earlier test left."""
    MapWriter(dp).sync([])
    return Agent(source, node, dp, **kw)


class AgentLoop:
    """The agent's own loop in a thread (`with`, or start()/stop())."""

    def __init__(self, agent: Agent, poll_s: float = 0.02) -> None:
        self.agent = agent
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=agent.run, args=(self.stop_event,), kwargs={"poll_s": poll_s},
                                       daemon=True)

    def start(self) -> "AgentLoop":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def __enter__(self) -> "AgentLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def healthy(self) -> bool:
        return self.agent.health.report()[0] == 200


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def endpoint_slice(name: str, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-abcde", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def add_service(store: SqliteStore, name: str, ips: list[str]) -> None:
    Registry(store).apply([Manifest(service(name), "test"), Manifest(endpoint_slice(name, ips), "test")],
                          "default", MODE_CREATE)


def set_endpoints(store: SqliteStore, name: str, ips: list[str]) -> None:
    current = store.get(EndpointSlice, "default", f"{name}-abcde").to_dict()
    current["endpoints"] = endpoint_slice(name, ips)["endpoints"]
    store.update(EndpointSlice.from_dict(current))


def remove_service(store: SqliteStore, name: str) -> None:
    store.delete(EndpointSlice, "default", f"{name}-abcde")
    store.delete(Service, "default", name)


class Client:
    """SYNs from fresh source ports to a service's cluster IP, through the real program."""

    def __init__(self, agent: Agent, vips: dict[str, str] | None = None) -> None:
        self.agent = agent
        self.runner = TestRunner(agent.dp.prog_fd)
        self.sport = 20000
        self.vips = vips or {}

    def vip(self, name: str) -> str:
        if name not in self.vips:
            self.vips[name] = self.agent.source.get(Service, "default", name).spec.cluster_ip
        return self.vips[name]

    def backends_of(self, name: str, tries: int = 24) -> set[str] | None:
        """Where new connections to the service go; None when the program does not
        translate them (not a service it knows)."""
        vip = self.vip(name)
        seen: set[str] = set()
        for _ in range(tries):
            self.sport += 1
            pkt = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=self.sport, dport=80, flags="S")
            out = self.runner.run(bytes(pkt))
            assert out.verdict_name == "XDP_PASS"
            dst = Ether(out.data)[IP].dst
            if dst == vip:
                return None
            seen.add(dst)
        return seen


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# Another process holds SQLite's WAL write and recover locks and has marked the shared
# index as needing recovery: the state a store is in while a process recovers it after a
# crash. Every reader then gets "database is locked" once its busy timeout runs out.
_LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
saved = os.pread(fd, 48, 48)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120, os.SEEK_SET)   # WAL_WRITE_LOCK
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 122, os.SEEK_SET)   # WAL_RECOVER_LOCK
os.pwrite(fd, bytes(48), 48)   # the index header's second copy disagrees with the first
print("locked", flush=True)
sys.stdin.read()
os.pwrite(fd, saved, 48)
"""


@contextmanager
def store_under_recovery(store: SqliteStore) -> Iterator[None]:
    """While inside, no process can read `store`'s file."""
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, store.path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.stdin.close()
        locker.wait(10)
