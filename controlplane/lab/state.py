"""The lab's record of everything it created, as JSON under <state dir>/lab/.

Each change is recorded before the object is made, so `lab down` can remove exactly what
exists even after a crash half-way. A flock serialises svcctl, agents and tests.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controlplane.dataplane.commands import INSTANCES_FILE
from controlplane.dataplane.config import node_instance
from controlplane.store.paths import resolve_state_dir   # --state-dir, $SVCXDP_STATE_DIR, /var/lib/svcxdp

STATE_VERSION = 1


@dataclass
class PortSpec:
    port: int
    protocol: str = "TCP"  # TCP | UDP (as a Kubernetes containerPort)
    name: str | None = None


@dataclass
class OutsideRecord:
    netns: str
    bridge: str
    ip: str
    bridge_mac: str


@dataclass
class NodeRecord:
    name: str
    index: int
    netns: str
    ip: str
    pod_cidr: str
    gateway: str
    ext_ifname: str
    ext_mac: str
    ext_ifindex: int = 0
    ext_peer_ifname: str = ""  # bridge port in the outside namespace
    ext_peer_ifindex: int = 0
    last_host: int = 1  # IPAM cursor: next pod gets the next free host after this one


@dataclass
class PodRecord:
    name: str
    netns: str
    node: str
    ip: str
    image: str
    ports: list[PortSpec] = field(default_factory=list)
    host_ifname: str = ""  # node side of the veth
    host_ifindex: int = 0
    host_mac: str = ""
    pod_ifname: str = "eth0"
    pod_ifindex: int = 0
    pod_mac: str = ""
    server: str = "none"  # what runs in it: none | podserver | redis
    pid: int | None = None
    etc_dir: str | None = None  # /etc/netns/<netns> (resolv.conf, hosts) if we made it
    phase: str = "Pending"  # Pending while being built, Running once its server is ready
    host_network: bool = False  # runs in its node's namespace and cgroup, with the node's IP


@dataclass
class EtcdMemberRecord:
    """An etcd member of the lab's store (`lab up --store etcd`): its own namespace on the
    LAN, data and client socket under <state dir>/lab/etcd/<name>/."""

    name: str
    index: int
    netns: str
    ip: str
    ext_mac: str
    ext_peer_ifname: str   # its bridge port in the outside namespace
    dir: str               # data (dir/data) and the unix client socket (dir/client.sock:0)
    ext_ifname: str = "eth0"


@dataclass
class ProcessRecord:
    """A long-running process the lab started in a node namespace (e.g. an agent)."""

    name: str
    node: str
    netns: str
    pid: int
    argv: list[str]
    log: str


@dataclass
class LabState:
    prefix: str
    version: int = STATE_VERSION
    outside: OutsideRecord | None = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    made_etc_netns: bool = False  # we created /etc/netns and may remove it when empty
    store: str = "sqlite"  # sqlite (<state dir>/store.db) | etcd (the members below)
    etcd: dict[str, EtcdMemberRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        outside = data.get("outside")
        return cls(
            prefix=data["prefix"],
            version=data.get("version", STATE_VERSION),
            outside=OutsideRecord(**outside) if outside else None,
            nodes={k: NodeRecord(**v) for k, v in data.get("nodes", {}).items()},
            pods={
                k: PodRecord(**{**v, "ports": [PortSpec(**p) for p in v.get("ports", [])]})
                for k, v in data.get("pods", {}).items()
            },
            processes=[ProcessRecord(**p) for p in data.get("processes", [])],
            made_etc_netns=data.get("made_etc_netns", False),
            store=data.get("store", "sqlite"),
            etcd={k: EtcdMemberRecord(**v) for k, v in data.get("etcd", {}).items()},
        )

    def netns_names(self) -> list[str]:
        names = [p.netns for p in self.pods.values()]
        names += [n.netns for n in self.nodes.values()]
        names += [m.netns for m in self.etcd.values()]
        if self.outside:
            names.append(self.outside.netns)
        return names


@dataclass(frozen=True)
class AttachPoint:
    """An interface the agent attaches XDP to, and the veth peer that needs a program too
    (native XDP on veth only delivers XDP_TX/REDIRECT frames to a peer that has one)."""

    node: str
    netns: str
    ifname: str
    ifindex: int
    role: str  # "pod" (node side of a pod veth) | "external" (the node's eth0)
    peer_netns: str
    peer_ifname: str
    peer_ifindex: int
    pod: str | None = None
    pod_ip: str | None = None


def attach_points(state: "LabState", node: str | None = None) -> list[AttachPoint]:
    """Where the agent attaches XDP on each node: every running pod veth's node side, and eth0."""
    if state.outside is None:
        return []
    points = []
    for n in state.nodes.values():
        if node is not None and n.name != node:
            continue
        points.append(AttachPoint(
            n.name, n.netns, n.ext_ifname, n.ext_ifindex, "external",
            state.outside.netns, n.ext_peer_ifname, n.ext_peer_ifindex,
        ))
        for p in state.pods.values():
            if p.node == n.name and p.phase == "Running" and not p.host_network:
                points.append(AttachPoint(
                    n.name, n.netns, p.host_ifname, p.host_ifindex, "pod",
                    p.netns, p.pod_ifname, p.pod_ifindex, p.name, p.ip,
                ))
    return points


class StateStore:
    """<state dir>/lab/{state.json,lock,logs/,redis/,attach/}.

    attach/<node>.json is what the lab tells a node's agent (`svcctl agent --attach-points`):
    the interfaces to attach XDP to, rewritten with every save, so the agent needs no lab."""

    def __init__(self, state_dir: str | os.PathLike | None = None) -> None:
        self.state_dir = resolve_state_dir(state_dir)
        self.root = self.state_dir / "lab"
        self.file = self.root / "state.json"
        self.lock_file = self.root / "lock"
        self.logs = self.root / "logs"
        self.data = self.root / "data"
        self.attach = self.root / "attach"
        self.instances_file = self.state_dir / INSTANCES_FILE   # node -> dataplane instance

    def attach_file(self, node: str) -> Path:
        return self.attach / f"{node}.json"

    def exists(self) -> bool:
        return self.file.exists()

    def load(self) -> LabState | None:
        try:
            return LabState.from_json(json.loads(self.file.read_text()))
        except FileNotFoundError:
            return None

    def save(self, state: LabState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.file)  # readers never see half a file
        instances = {node: node_instance(state.prefix, node) for node in state.nodes}
        self.instances_file.write_text(json.dumps(instances, indent=1) + "\n")
        self.attach.mkdir(exist_ok=True)
        for node in state.nodes:
            points = [asdict(p) for p in attach_points(state, node)]
            target = self.attach_file(node)
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(points, indent=1) + "\n")
            os.replace(tmp, target)

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
