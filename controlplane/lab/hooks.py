"""Seams for what other layers run in the lab (the node agent, later).

A module listed in NODE_PROCESS_MODULES provides

    def node_processes(node: NodeInfo, lab: Lab) -> list[ProcessSpec]   # required
    def on_lab_down(lab: Lab) -> None                                   # optional

`svcctl lab up` starts each node's processes in that node's namespace (once: a live one is
left alone), records their pids, and `lab down` calls on_lab_down before stopping them and
removing the namespaces (e.g. to remove bpffs pins under /sys/fs/bpf/svcxdp).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.lab.topology import Lab, NodeInfo

# e.g. "controlplane.agent.lab" once the agent exists.
NODE_PROCESS_MODULES: list[str] = ["controlplane.lab.node_processes"]


@dataclass(frozen=True)
class ProcessSpec:
    name: str  # unique per node, e.g. "agent"
    argv: list[str]
    env: dict[str, str] | None = field(default=None)
    # Enter only the node's network namespace (nsenter), keeping the host's mounts:
    # a BPF agent needs /sys/fs/bpf, which `ip netns exec` hides.
    keep_mounts: bool = False


NodeProcessProvider = Callable[["NodeInfo", "Lab"], list[ProcessSpec]]


def _modules() -> list:
    return [importlib.import_module(name) for name in NODE_PROCESS_MODULES]


def node_processes(node: NodeInfo, lab: Lab) -> list[ProcessSpec]:
    """All registered modules' processes for one node (the default provider of `lab up`)."""
    specs: list[ProcessSpec] = []
    for mod in _modules():
        specs += mod.node_processes(node, lab)
    return specs


def with_args(name: str, *extra: str, only: bool = False) -> NodeProcessProvider:
    """node_processes with `extra` appended to the argv of each process called `name`
    (and, if `only`, none of the others): a lab whose agents run with other flags."""
    def provider(node: NodeInfo, lab: Lab) -> list[ProcessSpec]:
        return [replace(p, argv=[*p.argv, *extra]) if p.name == name else p
                for p in node_processes(node, lab) if p.name == name or not only]
    return provider


def on_lab_down(lab: Lab) -> None:
    for mod in _modules():
        fn = getattr(mod, "on_lab_down", None)
        if fn:
            fn(lab)
