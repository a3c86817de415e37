"""How `svcctl lab up` runs an agent on every lab node (controlplane.lab.hooks): the lab
knows the agent's command line; the agent learns its interfaces from the lab's attach file.

On an etcd lab (`lab up --store etcd`) node processes get the members' LAN addresses
(`--store etcd://...`) and no state directory for their store, as on a real cluster, and
the controllers run as `svcctl controllers` on node1 and node2 (one leads, by etcd lease)."""
from __future__ import annotations

import os
import sys

from controlplane.dataplane.config import DataplaneConfig, node_instance
from controlplane.dataplane.program import reset
from controlplane.lab.hooks import ProcessSpec


def instance_name(lab, node_name: str) -> str:
    return node_instance(lab.prefix, node_name)


CONTROLLER_NODES = ("node1", "node2")
LEASE_TTL_S = 3


def node_processes(node, lab) -> list[ProcessSpec]:
    url = lab.store_url()
    store = ["--store", url] if url else ["--state-dir", str(lab.store.state_dir)]
    argv = [sys.executable, "-m", "controlplane.cli", "agent", "--node", node.name,
            "--attach-points", str(lab.store.attach_file(node.name)),
            *store, "--instance", instance_name(lab, node.name),
            "--ct-size", "65536"]
    if node.ip:
        argv += ["--node-ip", node.ip]
    # The socket hooks always serve the node's own processes (its cgroup); pods too
    # only when asked (SVCXDP_SOCKET_LB_PODS=1 in the environment of `lab up`).
    argv += ["--socket-lb-cgroup", str(lab.cgroup_for(node.name))]
    if os.environ.get("SVCXDP_SOCKET_LB_PODS") == "1":
        argv += ["--socket-lb-cgroup", str(lab.pods_cgroup_for(node.name))]
    specs = [ProcessSpec(name="agent", argv=argv, keep_mounts=True)]
    if node.index == 1:
        # One pod runtime for the whole lab; it lives with the first node. It must
        # share the host's mounts: a pod's /run/netns entry is a bind mount.
        specs.append(ProcessSpec(name="kubelet", argv=[
            sys.executable, "-m", "controlplane.cli", "lab", "kubelet",
            "--state-dir", str(lab.store.state_dir), *(["--store", url] if url else [])], keep_mounts=True))
    if url and node.name in CONTROLLER_NODES:
        specs.append(ProcessSpec(name="controllers", argv=[
            sys.executable, "-m", "controlplane.cli", "controllers", "--store", url,
            "--lease-ttl", str(LEASE_TTL_S), "--identity", node.name]))
    return specs


def on_lab_down(lab) -> None:
    for name in lab.node_names():   # recorded, or (a forced down) found by their namespaces
        reset(DataplaneConfig(instance=instance_name(lab, name)))
