"""The cgroup socket hooks (bpf/sock.h): load them from the dataplane's program
object (one bcc module with the XDP entry, so they share every map), attach them to
a cgroup, pin them.

Attached with BPF_F_ALLOW_MULTI so they coexist with other programs on the same
cgroup (systemd's, on a real node's root). An attachment outlives the process that
made it, so the hooks keep serving while the agent is down; each hook's program is
also pinned (<pin dir>/sock_<hook>), and a restarted agent swaps its new program in
for the pinned one in place (BPF_F_REPLACE): no moment without translation. With no pin
(a reset), the program attached under the hook's function name is the one replaced.
"""
from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bcc import BPF, BPFAttachType, BPFProgType

from controlplane import cgroups

from . import libbpf
from .libbpf import BPF_F_ALLOW_MULTI, BPF_F_REPLACE
from .model import ip_to_be32


@dataclass(frozen=True)
class Hook:
    name: str          # short name: pin file, CLI output
    function: str      # entry in bpf/sock.h
    prog_type: int
    attach_type: int


HOOKS = (
    Hook("connect4", "svcxdp_connect4", BPFProgType.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET4_CONNECT),
    Hook("sendmsg4", "svcxdp_sendmsg4", BPFProgType.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_UDP4_SENDMSG),
    Hook("recvmsg4", "svcxdp_recvmsg4", BPFProgType.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_UDP4_RECVMSG),
    Hook("getpeername4", "svcxdp_getpeer4", BPFProgType.CGROUP_SOCK_ADDR,
         BPFAttachType.CGROUP_INET4_GETPEERNAME),
    # AF_INET6 sockets naming an IPv4-mapped address (::ffff:VIP); other IPv6 addresses
    # are left alone. No sendmsg6: the kernel passes a mapped destination to sendmsg4.
    Hook("connect6", "svcxdp_connect6", BPFProgType.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET6_CONNECT),
    Hook("recvmsg6", "svcxdp_recvmsg6", BPFProgType.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_UDP6_RECVMSG),
    Hook("getpeername6", "svcxdp_getpeer6", BPFProgType.CGROUP_SOCK_ADDR,
         BPFAttachType.CGROUP_INET6_GETPEERNAME),
    Hook("sock_release", "svcxdp_release", BPFProgType.CGROUP_SOCK, BPFAttachType.CGROUP_INET_SOCK_RELEASE),
)


class SockHookError(RuntimeError):
    pass


@contextmanager
def _cgroup_fd(cgroup: Path) -> Iterator[int]:
    try:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise SockHookError(f"cgroup {cgroup}: {exc.strerror}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _prog_id(fd: int) -> int:
    return libbpf.prog_id(fd)


class SockHooks:
    """The loaded hook programs of one dataplane instance."""

    def __init__(self, bpf: BPF, pin_dir: Path | None) -> None:
        self.pin_dir = pin_dir
        self.fds: dict[str, int] = {}
        for hook in HOOKS:
            try:
                fn = bpf.load_func(hook.function.encode(), hook.prog_type, attach_type=hook.attach_type)
            except Exception as exc:  # bcc raises bare Exception on verifier errors
                raise SockHookError(f"loading the {hook.name} hook failed: {exc}") from exc
            self.fds[hook.name] = fn.fd

    def _pin(self, hook: Hook) -> Path | None:
        return self.pin_dir / f"sock_{hook.name}" if self.pin_dir else None

    def _pinned_fd(self, hook: Hook) -> int | None:
        pin = self._pin(hook)
        if pin is None or not pin.exists():
            return None
        return libbpf.obj_get(str(pin))

    def attach(self, *targets: Path, allow_root: bool = False) -> None:
        """Attach every hook to each cgroup in `targets`, replacing this instance's
        previous programs (the pinned ones) where they are attached; then pin these.
        All cgroups in one call: the pins name the programs to replace, so they move
        on only once every cgroup has had its swap. The cgroup2 root only with
        allow_root (a real node; never the machine the tests run on)."""
        paths = [Path(t) for t in targets]
        for cgroup in paths:
            if not allow_root and cgroup.resolve() == cgroups.mount().resolve():
                raise SockHookError(f"refusing to attach to the root cgroup {cgroup} without allow_root")
        for cgroup in paths:
            self._attach_one(cgroup)
        self._repin()

    def _attach_one(self, cgroup: Path) -> None:
        with _cgroup_fd(cgroup) as cg:
            for hook in HOOKS:
                fd = self.fds[hook.name]
                old = self._pinned_fd(hook)
                try:
                    attached = libbpf.prog_query(cg, hook.attach_type)
                    if _prog_id(fd) in attached:
                        continue
                    if old is None or _prog_id(old) not in attached:
                        # No pin names it (`dataplane reset` removed the pins, a lost bpffs):
                        # an earlier build's program by its name, which would otherwise go on
                        # translating first, over maps nothing updates any more.
                        if old is not None:
                            os.close(old)
                        old = _earlier(hook, attached)
                    if old is not None:
                        libbpf.prog_attach(fd, cg, hook.attach_type, BPF_F_ALLOW_MULTI | BPF_F_REPLACE, old)
                    else:
                        libbpf.prog_attach(fd, cg, hook.attach_type, BPF_F_ALLOW_MULTI)
                except OSError as exc:
                    raise SockHookError(f"attaching {hook.name} to {cgroup}: {exc.strerror}") from exc
                finally:
                    if old is not None:
                        os.close(old)

    def _repin(self) -> None:
        for hook in HOOKS:
            pin = self._pin(hook)
            if pin is None:
                continue
            if pin.exists():
                old = libbpf.obj_get(str(pin))
                same = _prog_id(old) == _prog_id(self.fds[hook.name])
                os.close(old)
                if same:
                    continue
                pin.unlink()
            libbpf.obj_pin(self.fds[hook.name], str(pin))

    def detach(self, cgroup: Path) -> None:
        """Detach this instance's hooks (these programs or the pinned ones) from cgroup."""
        with _cgroup_fd(Path(cgroup)) as cg:
            for hook in HOOKS:
                old = self._pinned_fd(hook)
                for fd in {self.fds[hook.name], old} - {None}:
                    if _prog_id(fd) in libbpf.prog_query(cg, hook.attach_type):
                        libbpf.prog_detach(fd, cg, hook.attach_type)
                if old is not None:
                    os.close(old)

    def attached(self, cgroup: Path) -> dict[str, bool]:
        """Per hook: is this instance's program (loaded or pinned) attached to cgroup?"""
        out = {}
        with _cgroup_fd(Path(cgroup)) as cg:
            for hook in HOOKS:
                ids = {_prog_id(self.fds[hook.name])}
                old = self._pinned_fd(hook)
                if old is not None:
                    ids.add(_prog_id(old))
                    os.close(old)
                out[hook.name] = bool(ids & set(libbpf.prog_query(cg, hook.attach_type)))
        return out


def _earlier(hook: Hook, attached: list[int]) -> int | None:
    """An fd of a program attached to `hook` that bears its function's name (an earlier
    build's, whose pin is gone), or None."""
    for prog in attached:
        try:
            fd = libbpf.prog_fd_by_id(prog)
        except OSError:   # gone meanwhile
            continue
        if libbpf.prog_name(fd) == hook.function:
            return fd
        os.close(fd)
    return None


def detach_pinned(pin_dir: Path, cgroup: Path) -> list[str]:
    """Detach an instance's pinned hook programs from `cgroup` without loading anything
    (`svcctl agent --uninstall`); returns the hooks detached."""
    detached = []
    with _cgroup_fd(Path(cgroup)) as cg:
        for hook in HOOKS:
            pin = Path(pin_dir) / f"sock_{hook.name}"
            if not pin.exists():
                continue
            fd = libbpf.obj_get(str(pin))
            try:
                if _prog_id(fd) in libbpf.prog_query(cg, hook.attach_type):
                    libbpf.prog_detach(fd, cg, hook.attach_type)
                    detached.append(hook.name)
            finally:
                os.close(fd)
    return detached


def set_config(table, client_ip: str | None, netns_cookie: int) -> None:
    """sock_config: the address the node's unbound sockets are keyed by (affinity, the
    flow hash, loadBalancerSourceRanges; None: not known), and the cookie of the node's
    network namespace (own_netns_cookie() in the agent; 0: every socket is taken as the
    node's)."""
    cfg = table.Leaf()
    cfg.client_ip = ip_to_be32(client_ip) if client_ip else 0
    cfg.netns_cookie = netns_cookie
    table[table.Key(0)] = cfg


SO_NETNS_COOKIE = 71   # <asm-generic/socket.h> (Linux 5.14); not in Python's socket module


def own_netns_cookie() -> int:
    """The cookie of the calling thread's network namespace, as bpf_get_netns_cookie()
    gives it for a socket there; 0 where the option is refused (the hooks then take every
    socket as the node's; every kernel with the hooks' bpf_set_retval, 5.18, has it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        except OSError:
            return 0
    return int.from_bytes(raw, sys.byteorder)


def attached_ids(cgroup: Path) -> dict[str, list[int]]:
    """Program ids on each hook of `cgroup`, whoever attached them (tests, status)."""
    with _cgroup_fd(Path(cgroup)) as cg:
        return {hook.name: libbpf.prog_query(cg, hook.attach_type) for hook in HOOKS}
