"""A node's external side, as a network namespace, for packet tests of the external
entry point: its FIB lookups (where is the backend, which MACs, which source address)
read the namespace of the thread that runs the test-run, so the tests run there.

    svcxdp-pt-np<pid>   ext0 192.168.1.31/24 (the node's external interface)
                        192.168.1.32 (node2) and the clients: permanent neighbours
                        10.244.2.0/24 via node2; 10.244.1.0/24 on pod0 (local pods)
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from controlplane.lab import netns

NODE_IP = "192.168.1.31"
NODE2_IP = "192.168.1.32"
NODE2_MAC = "02:00:00:00:01:32"
CLIENTS = {"192.168.1.100": "02:00:00:00:01:64", "192.168.1.101": "02:00:00:00:01:65"}
LOCAL_POD = "10.244.1.11"
LOCAL_POD_MAC = "02:00:00:00:02:0b"
REMOTE_POD = "10.244.2.11"


@dataclass
class NodeNet:
    name: str
    ext_ifindex: int
    ext_mac: str
    pod_ifindex: int

    def call(self, fn, *args):
        return netns.call_in(self.name, fn, *args)


def _ip(name: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", name, *argv], check=True, capture_output=True,
                          text=True).stdout


def create() -> NodeNet:
    name = f"svcxdp-pt-np{os.getpid()}"
    if netns.exists(name):
        netns.delete(name)
    netns.create(name)
    try:
        _ip(name, "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p")
        _ip(name, "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p")
        for dev in ("lo", "ext0", "ext0p", "pod0", "pod0p"):
            _ip(name, "link", "set", dev, "up")
        _ip(name, "addr", "add", f"{NODE_IP}/24", "dev", "ext0")
        _ip(name, "neigh", "replace", NODE2_IP, "lladdr", NODE2_MAC, "dev", "ext0", "nud", "permanent")
        for ip, mac in CLIENTS.items():
            _ip(name, "neigh", "replace", ip, "lladdr", mac, "dev", "ext0", "nud", "permanent")
        _ip(name, "route", "add", "10.244.2.0/24", "via", NODE2_IP, "dev", "ext0")
        _ip(name, "route", "add", "10.244.1.0/24", "dev", "pod0")
        _ip(name, "neigh", "replace", LOCAL_POD, "lladdr", LOCAL_POD_MAC, "dev", "pod0", "nud", "permanent")
        netns.sysctl(name, {"net.ipv4.ip_forward": 1})
        ifindex = {dev: int(_ip(name, "-o", "link", "show", dev).split(":")[0]) for dev in ("ext0", "pod0")}
        mac = _ip(name, "-o", "link", "show", "ext0").split("link/ether ")[1].split()[0]
    except BaseException:
        netns.delete(name)
        raise
    return NodeNet(name, ifindex["ext0"], mac, ifindex["pod0"])


def delete(n: NodeNet) -> None:
    netns.delete(n.name)


@contextmanager
def created() -> Iterator[NodeNet]:
    """create(), deleted on the way out (a fixture's body: `with nodenet.created() as n: yield n`)."""
    n = create()
    try:
        yield n
    finally:
        delete(n)
