"""`svcctl lab status` says `degraded` and exits non-zero when a process the lab started
(kubelet, agent, etcd member) is not running, though every namespace is there: the lab
then looks whole while pods or services no longer follow the store.

No namespace is made: the lab's recorded namespaces are stand-ins in a temporary
/run/netns, each a link to this process's own network namespace, so a recorded process
"runs in it" exactly when its pid is this test's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.lab import netns
from controlplane.lab.state import LabState, NodeRecord, OutsideRecord, ProcessRecord, StateStore

from tests.unit.cli_kit import run, state_dir  # noqa: F401 (state_dir: an autouse fixture)

PREFIX = "svcxdp-opfix"


@pytest.fixture
def run_netns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "netns"
    directory.mkdir()
    monkeypatch.setattr(netns, "NETNS_RUN_DIR", directory)
    return directory


def exited_pid() -> int:
    """A pid that no longer runs (a child that exited and was reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def record_lab(state: Path, run_netns: Path, kubelet_pid: int) -> None:
    """A one-node lab whose agent runs (this process) and whose kubelet has `kubelet_pid`."""
    node_ns, outside_ns = f"{PREFIX}-node1", f"{PREFIX}-outside"
    for ns in (node_ns, outside_ns):
        (run_netns / ns).symlink_to(f"/proc/{os.getpid()}/ns/net")
    lab = LabState(prefix=PREFIX, outside=OutsideRecord(outside_ns, "br0", "192.168.1.1", "02:00:00:00:00:01"))
    lab.nodes["node1"] = NodeRecord("node1", 1, node_ns, "192.168.1.11", "10.244.1.0/24", "10.244.1.1",
                                    "eth0", "02:00:00:00:01:01")
    log = str(state / "lab" / "logs" / "x.log")
    lab.processes = [ProcessRecord("agent", "node1", node_ns, os.getpid(), ["svcctl", "agent"], log),
                     ProcessRecord("kubelet", "node1", node_ns, kubelet_pid, ["svcctl", "lab", "kubelet"], log)]
    StateStore(state).save(lab)


def test_a_lab_with_every_process_running_is_up(capsys, state_dir: Path, run_netns: Path) -> None:  # noqa: F811
    record_lab(state_dir, run_netns, kubelet_pid=os.getpid())
    code, out, _ = run(capsys, "lab", "status")
    assert code == 0, out
    assert out.splitlines()[0].startswith("lab: up ")
    assert "not running" not in out


def test_a_dead_kubelet_makes_the_lab_degraded(capsys, state_dir: Path, run_netns: Path) -> None:  # noqa: F811
    record_lab(state_dir, run_netns, kubelet_pid=exited_pid())
    code, out, _ = run(capsys, "lab", "status")
    assert code == 1, out
    assert out.splitlines()[0].startswith("lab: degraded ")
    assert "not running: node1/kubelet" in out
    code, out, _ = run(capsys, "lab", "status", "-o", "json")
    assert code == 1 and '"degraded": true' in out
