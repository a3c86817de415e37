"""Background processes inside lab namespaces: start detached, check, stop by recorded pid.

A pid is only trusted while /proc/<pid>/ns/net is still the lab namespace it was started
in, so a recycled pid is never signalled.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from controlplane.lab import netns


def start(ns: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          keep_mounts: bool = False, cgroup: Path | None = None, cwd: Path | None = None) -> int:
    """Start argv in namespace ns (and in `cgroup`, if given), detached from our session,
    output to log; return its pid.

    `ip netns exec` (and the cgroup shell) exec argv in place, so the pid is the server's own pid.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = netns.popen(
            ns,
            argv,
            keep_mounts=keep_mounts,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the svcctl that started it; no tty signals
            close_fds=True,
            env={**os.environ, **env} if env else None,  # extra variables on top of ours
            cgroup=cgroup,
            cwd=cwd,
        )
    # Keep the Popen alive in a module list so it is reaped when the process ends.
    _children[proc.pid] = proc
    # `ip` starts in our namespace and switches; wait for that so the pid passes alive().
    ino = netns.inode(ns)
    deadline = time.monotonic() + 5.0
    while netns.pid_netns_inode(proc.pid) != ino:
        if proc.poll() is not None:
            raise ProcessError(f"{argv[0]} in {ns} exited with {proc.returncode} (log {log})")
        if time.monotonic() > deadline:
            raise ProcessError(f"{argv[0]} did not enter {ns}")
        time.sleep(0.002)
    return proc.pid


class ProcessError(RuntimeError):
    pass


_children: dict[int, subprocess.Popen] = {}


def alive(pid: int | None, ns: str) -> bool:
    if not pid:
        return False
    _reap(pid)
    ino = netns.inode(ns)
    if ino is not None and netns.pid_netns_inode(pid) == ino:
        return True
    # Gone, or a zombie (it has no namespace any more): collect the exit status of
    # a child of ours now, or it stays a zombie until this process ends.
    _reap(pid)
    return False


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def stop(pid: int | None, ns: str, timeout: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after timeout; only if pid is still in ns."""
    if not alive(pid, ns):
        return
    assert pid is not None
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, ns):
            return
        time.sleep(0.02)
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, ns, 2.0)


def stop_all_in(ns: str, timeout: float = 2.0) -> None:
    """Kill every process in a namespace we own (stragglers a recorded pid missed)."""
    victims = netns.pids(ns)
    for pid in victims:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if alive(p, ns)]
        if victims:
            time.sleep(0.02)
    for pid in victims:
        _signal(pid, signal.SIGKILL)
    for pid in victims:
        _wait_gone(pid, ns, 2.0)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, ns: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid, ns) and time.monotonic() < deadline:
        time.sleep(0.02)
