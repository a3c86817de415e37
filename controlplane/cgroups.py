"""cgroup v2 helpers: find the hierarchy, make and remove the project's cgroups, put
processes in them.

The socket hooks (bpf/sock.h) act on the sockets of the processes in the cgroup
they are attached to (a socket belongs to the cgroup its creator was in when it
made it). Every cgroup made here is named `svcxdp...` and lives directly under
the cgroup2 mount, so clean-up removes exactly what the project made.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

PREFIX = "svcxdp"
PROC_MOUNTS = Path("/proc/self/mounts")
# Where a cgroup2 hierarchy is mounted when the machine has none.
OWN_MOUNT = Path("/run/svcxdp/cgroup2")


class CgroupError(RuntimeError):
    pass


def find_mount() -> Path | None:
    """The cgroup2 mount point (first one listed), or None."""
    for line in PROC_MOUNTS.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    return None


def mount() -> Path:
    """The cgroup2 mount, mounting one at OWN_MOUNT only if none is mounted."""
    found = find_mount()
    if found is not None:
        return found
    OWN_MOUNT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "none", str(OWN_MOUNT)], check=True)
    return OWN_MOUNT


def check_name(name: str) -> str:
    if not name.startswith(PREFIX) or "/" in name or name in (".", ".."):
        raise CgroupError(f"refusing to touch cgroup {name!r}: not a {PREFIX} name")
    return name


def path(name: str) -> Path:
    return mount() / check_name(name)


def create(name: str) -> Path:
    """The cgroup `name` under the cgroup2 root, made if missing."""
    p = path(name)
    p.mkdir(exist_ok=True)
    return p


def pids(cgroup: Path) -> list[int]:
    try:
        return [int(x) for x in (cgroup / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def remove(name: str) -> bool:
    """Remove one of our cgroups (the kernel detaches its programs with it); processes
    still in it move to the root first. True if it existed."""
    p = path(name)
    if not p.is_dir():
        return False
    root = p.parent
    for pid in pids(p):
        try:
            join(root, pid)
        except OSError:   # gone meanwhile
            pass
    p.rmdir()
    return True


def list_names(prefix: str = PREFIX) -> list[str]:
    root = find_mount()
    if root is None:
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def join(cgroup: Path, pid: int = 0) -> None:
    """Move a process (0: the caller, all its threads) into `cgroup`."""
    (cgroup / "cgroup.procs").write_text(f"{pid}\n")


def current(pid: int = 0) -> Path:
    """The cgroup2 directory a process is in."""
    for line in Path(f"/proc/{pid or 'self'}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount() / line[3:].lstrip("/")
    raise CgroupError(f"process {pid or os.getpid()} is in no cgroup2 hierarchy")


def command(cgroup: Path | None, cmd: Sequence[str]) -> list[str]:
    """`cmd` started inside `cgroup` (None: unchanged): a shell moves itself there and
    execs cmd in place (same pid), so everything cmd starts is there too. A shell, not
    a preexec_fn, which can deadlock in a threaded parent; and before `ip netns exec`,
    which hides the cgroup mount behind a fresh /sys."""
    if cgroup is None:
        return list(cmd)
    return ["sh", "-c", 'echo 0 > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *cmd]


@contextmanager
def entered(cgroup: Path) -> Iterator[None]:
    """Run the block with this process in `cgroup`, then move it back: sockets made in
    the block belong to `cgroup` for their whole life."""
    before = current()
    join(cgroup)
    try:
        yield
    finally:
        join(before)
