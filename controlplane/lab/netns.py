"""Network namespace helpers: create, delete, enter, run a command inside, find its processes.

Every function refuses names that do not start with `svcxdp`, so no helper here can touch
a namespace the project did not create.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import config as _pr2config
from pyroute2 import netns as _pr2netns
from pyroute2.netlink.exceptions import NetlinkError

from controlplane import cgroups
from controlplane.lab.plan import PREFIX

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)

# pyroute2 runs namespace work in a helper process and waits 2 s for it by default;
# on a loaded 2-core machine that fails spuriously. Waiting longer costs nothing.
_pr2config.default_communicate_timeout = max(_pr2config.default_communicate_timeout, 30)


class NetnsError(RuntimeError):
    pass


def check_name(name: str) -> str:
    if not name.startswith(PREFIX) or "/" in name:
        raise NetnsError(f"refusing to touch network namespace {name!r}: not a {PREFIX} name")
    return name


def path(name: str) -> Path:
    return NETNS_RUN_DIR / check_name(name)


def exists(name: str) -> bool:
    return path(name).exists()


def list_names(prefix: str = PREFIX) -> list[str]:
    """Namespaces under /run/netns whose name starts with `prefix`."""
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir() if p.name.startswith(prefix))


def create(name: str) -> bool:
    """Create the namespace if missing; True if it was created now."""
    if exists(name):
        return False
    _pr2netns.create(check_name(name))
    return True


def delete(name: str) -> bool:
    """Remove the namespace's name; the kernel frees it (and its links) with its last process."""
    if not exists(name):
        return False
    _pr2netns.remove(check_name(name))
    return True


# Who made a lab namespace: the alias of its loopback, "svcxdp-lab:<state dir>", set by the
# lab that made it (`ip -n NAME link show lo` shows it). It lives and dies with the namespace,
# so a lab can tell its own namespaces from another state dir's with the same names.
OWNER_ALIAS = "svcxdp-lab:"


def set_owner(name: str, owner: str) -> None:
    with iproute(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], ifalias=OWNER_ALIAS + owner)


def owner(name: str) -> str | None:
    """The owner `set_owner` recorded, or None (no mark, or the namespace is gone)."""
    try:
        with iproute(name) as ipr:
            found = ipr.link_lookup(ifname="lo")
            alias = ipr.get_links(found[0])[0].get_attr("IFLA_IFALIAS") if found else None
    except (OSError, NetlinkError, IndexError):   # removed meanwhile
        return None
    return alias[len(OWNER_ALIAS):] if alias and alias.startswith(OWNER_ALIAS) else None


def inode(name: str) -> int | None:
    try:
        return path(name).stat().st_ino
    except FileNotFoundError:
        return None


def pid_netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pids(name: str) -> list[int]:
    """Processes living in the namespace (what `ip netns pids` does, without a fork)."""
    ino = inode(name)
    if ino is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_netns_inode(int(entry)) == ino:
            found.append(int(entry))
    return sorted(found)


def iproute(name: str) -> IPRoute:
    """A netlink socket bound to the namespace (the namespace must exist)."""
    return IPRoute(netns=check_name(name), flags=0)


def call_in(name: str, fn: Callable[..., T], *args: Any) -> T:
    """Run fn in a helper thread switched into the namespace.

    setns(CLONE_NEWNET) only moves the calling thread, so the rest of the process stays
    where it was; sockets fn creates keep the namespace after the thread ends.
    """
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(path(name), os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def sysctl(name: str, settings: dict[str, str | int]) -> None:
    """Write net.* sysctls inside the namespace (keys like 'net.ipv4.ip_forward')."""

    def write() -> None:
        for key, value in settings.items():
            p = Path("/proc/sys") / key.replace(".", "/")
            if p.exists():  # e.g. no IPv6 in this kernel
                p.write_text(f"{value}\n")

    call_in(name, write)


def read_sysctl(name: str, key: str) -> str:
    """A net.* sysctl's value inside the namespace (a key like 'net.ipv4.ip_forward')."""
    return call_in(name, lambda: (Path("/proc/sys") / key.replace(".", "/")).read_text().strip())


def command(name: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", check_name(name), *argv]


def command_keep_mounts(name: str, argv: Sequence[str]) -> list[str]:
    """Enter only the network namespace. `ip netns exec` also remounts /sys for the
    namespace, which hides bpffs (/sys/fs/bpf) and the pins a node agent keeps there."""
    return ["nsenter", f"--net=/run/netns/{check_name(name)}", "--", *argv]


def run(name: str, argv: Sequence[str], cgroup: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """argv in the namespace (and in `cgroup`, if given: see controlplane.cgroups.command)."""
    return subprocess.run(cgroups.command(cgroup, command(name, argv)), **kwargs)


def popen(name: str, argv: Sequence[str], keep_mounts: bool = False, cgroup: Path | None = None,
          **kwargs: Any) -> subprocess.Popen:
    build = command_keep_mounts if keep_mounts else command
    return subprocess.Popen(cgroups.command(cgroup, build(name, argv)), **kwargs)
