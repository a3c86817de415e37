"""Lab fixtures for end-to-end tests (root, network namespaces, real clients).

Each test run names its namespaces `svcxdp-t<pid>-...` and keeps its state under a fresh
/tmp folder, so it never touches a user's `svcctl lab` (prefix `svcxdp`) or another test
run. Every lab is torn down in a finalizer, also when the test fails, and the finalizer
asserts that nothing of it is left.

    def test_x(lab):                  # module-scoped, 2 nodes, pods added by tests stay
        pod = lab.add_pod("web", "node2", "nginx", [80])
        lab.exec("web", [...], capture_output=True, text=True)

    def test_y(make_lab):             # a private lab, torn down after the test
        lab = make_lab(nodes=1)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane import cgroups
from controlplane.lab import netns
from controlplane.lab.topology import ETC_NETNS, Lab

RUN_PREFIX = f"svcxdp-t{os.getpid()}"
_RUN_RE = re.compile(r"^(svcxdp-t(\d+)-[a-z0-9]+)-(node\d+|etcd\d+|outside|pod-.+)$")
_DIR_RE = re.compile(r"^(svcxdp-t(\d+)-[a-z0-9]+)-state-")


def lab_leftovers(lab: Lab, pids: list[int] = ()) -> list[str]:
    """What of `lab` still exists: namespaces, /etc/netns entries, state files, processes."""
    left = [f"netns {n}" for n in netns.list_names(lab.prefix + "-")]
    left += [f"cgroup {c}" for c in cgroups.list_names(lab.prefix + "-")]
    if ETC_NETNS.is_dir():
        left += [f"{ETC_NETNS}/{n}" for n in os.listdir(ETC_NETNS) if n.startswith(lab.prefix + "-")]
    if lab.store.root.exists():
        left.append(f"state {lab.store.root}")
    left += [f"pid {p}" for p in pids if Path(f"/proc/{p}").exists() and _not_zombie(p)]
    return left


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _recorded_pids(lab: Lab) -> list[int]:
    s = lab.status()
    return [p.pid for p in s.pods if p.pid] + [p.pid for p in s.processes]


def _sweep_dead_runs() -> None:
    """Labs of earlier test runs whose pytest process was killed before its finalizers ran:
    their namespaces and /tmp state folders carry the dead run's pid."""
    found: dict[str, Path | None] = {}
    for name in netns.list_names("svcxdp-t"):
        m = _RUN_RE.match(name)
        if m and _dead_run(int(m.group(2))):
            found.setdefault(m.group(1), None)
    for d in Path(tempfile.gettempdir()).glob("svcxdp-t*-*"):
        m = _DIR_RE.match(d.name)
        if m and d.is_dir() and _dead_run(int(m.group(2))):
            found[m.group(1)] = d
    for prefix, state_dir in found.items():
        # forced: the dead run's namespaces are its own state dir's, which may be gone
        Lab(state_dir or tempfile.mkdtemp(prefix="svcxdp-sweep-"), prefix=prefix).down(force=True)
        if state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)


def _dead_run(pid: int) -> bool:
    return pid != os.getpid() and not _not_zombie(pid)


class LabFactory:
    """Makes labs with distinct prefixes and tears all of them down, asserting a clean slate."""

    def __init__(self) -> None:
        self.labs: list[tuple[Lab, Path]] = []

    def __call__(self, nodes: int = 2, name: str | None = None) -> Lab:
        tag = name or f"l{len(self.labs)}"
        prefix = f"{RUN_PREFIX}-{tag}"
        state_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-state-"))
        lab = Lab(state_dir, prefix=prefix)
        self.labs.append((lab, state_dir))
        lab.up(nodes=nodes)
        return lab

    def teardown(self) -> None:
        problems = []
        for lab, state_dir in self.labs:
            pids = _recorded_pids(lab)
            lab.down()
            left = lab_leftovers(lab, pids)
            if left:
                problems.append(f"{lab.prefix}: {left}")
            shutil.rmtree(state_dir, ignore_errors=True)
        self.labs.clear()
        assert not problems, f"lab left things behind: {problems}"


@pytest.fixture(scope="session")
def _lab_session_guard() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    _sweep_dead_runs()
    yield


@pytest.fixture
def make_lab(_lab_session_guard) -> Iterator[Callable[..., Lab]]:
    factory = LabFactory()
    yield factory
    factory.teardown()


@pytest.fixture(scope="module")
def lab(_lab_session_guard, request) -> Iterator[Lab]:
    """A 2-node lab shared by one test module."""
    factory = LabFactory()
    mod = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "").replace("_", "")[:8]
    try:
        yield factory(nodes=2, name=mod or "m")
    finally:
        factory.teardown()


@pytest.fixture(scope="session")
def svcctl() -> Callable[..., subprocess.CompletedProcess]:
    """svcctl(lab, ARGS..., **subprocess_kwargs): run `svcctl ARGS` as a user would, against
    that lab's state dir."""

    def run(lab: Lab, *args: str, **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "SVCXDP_STATE_DIR": str(lab.store.state_dir)}
        kwargs.setdefault("timeout", 30)
        return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env=env, **kwargs)

    return run
