"""A real node's attach points, in the agent's own network namespace:

    NodeInterfaces(names=["eth0", "eth1"])           exactly these (when they exist)
    NodeInterfaces(pod_prefixes=["veth", "cali"])    discovery: the default route's device(s)
                                                     plus every link named with a prefix

A netlink socket subscribed to link and route changes marks the list stale, so a new pod
interface (or a moved default route) is picked up at the agent's next refresh without
listing the links on every pass. `uninstall` detaches the program this agent pinned from
every interface that runs it and removes the pins.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK

from controlplane.dataplane.attach import (AttachError, attached_prog_id, detach_tc_egress, detach_tc_ingress,
                                           detach_xdp)
from controlplane.dataplane.config import PROGRAM_PINS

from .attach_sources import Target

log = logging.getLogger("svcxdp.agent")

# The XDP entry points' pins inside the instance's pin folder: pod interfaces run the
# main one, the node's external interfaces the external one (NodePort, LB IPs).
PROG_PIN = PROGRAM_PINS["pod"]
EXTERNAL_PROG_PIN = PROGRAM_PINS["external"]


class NodeInterfaces:
    def __init__(self, names: list[str] | None = None, pod_prefixes: list[str] | None = None) -> None:
        self.names = names
        self.pod_prefixes = tuple(pod_prefixes or ())
        self._stale = threading.Event()
        self._stale.set()
        self._targets: list[Target] = []
        self._closed = False
        self._monitor: IPRoute | None = None
        self._thread = threading.Thread(target=self._follow, name="netlink-links", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        # pyroute2 (0.9) delivers a bound socket's messages to the thread that made it
        self._monitor = IPRoute()
        self._monitor.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE)
        self._stale.set()   # what changed before the subscription is seen at the next call
        while not self._closed:
            try:
                if self._monitor.get():
                    self._stale.set()
            except Exception:  # noqa: BLE001 - closed socket on shutdown, or a transient error
                if self._closed:
                    return
                self._stale.set()

    def close(self) -> None:
        self._closed = True
        if self._monitor is not None:
            self._monitor.close()

    def __call__(self) -> list[Target]:
        if self._stale.is_set():
            self._stale.clear()
            self._targets = self.discover()
        return list(self._targets)

    def discover(self) -> list[Target]:
        with IPRoute() as ipr:
            links = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
            pods: list[str] = []
            if self.names is not None:
                missing = [n for n in self.names if n not in links]
                if missing:
                    log.warning("interfaces not found (yet): %s", ", ".join(missing))
                chosen = [n for n in self.names if n in links]
            else:
                by_index = {i: n for n, i in links.items()}
                chosen = [by_index[r.get_attr("RTA_OIF")] for r in ipr.get_default_routes(family=socket.AF_INET)
                          if r.get_attr("RTA_OIF") in by_index]
                if self.pod_prefixes:
                    pods = [n for n in links if n.startswith(self.pod_prefixes) and n not in chosen]
        # the named or default-route interfaces are where traffic from outside arrives
        return ([Target("", name, links[name], role="external") for name in sorted(set(chosen))] +
                [Target("", name, links[name]) for name in sorted(set(pods))])


def pin_programs(prog_fd: int, external_prog_fd: int, pin_dir: Path) -> None:
    """Pin both entry points next to the maps (replacing an older build's pins), so tools
    and `--uninstall` find what runs on the interfaces after the agent has gone."""
    from controlplane.dataplane.libbpf import lib
    for name, fd in ((PROG_PIN, prog_fd), (EXTERNAL_PROG_PIN, external_prog_fd)):
        path = pin_dir / name
        path.unlink(missing_ok=True)
        if lib().bpf_obj_pin(fd, str(path).encode()) != 0:
            log.warning("could not pin the program at %s", path)


def _pinned_prog_ids(pin_dir: Path) -> set[int]:
    import os

    from controlplane.dataplane.libbpf import lib, prog_id
    ids = set()
    for name in (PROG_PIN, EXTERNAL_PROG_PIN):
        fd = lib().bpf_obj_get(str(pin_dir / name).encode())
        if fd < 0:
            continue
        try:
            ids.add(prog_id(fd))
        finally:
            os.close(fd)
    return ids


def uninstall(pin_dir: Path, interfaces: list[Target]) -> list[str]:
    """Detach the pinned programs from the interfaces that run them, in whichever mode,
    and our tc filters wherever they are (known by their place and name: also when the
    pins are gone already); returns their names. An interface running another XDP
    program keeps it."""
    ours = _pinned_prog_ids(pin_dir)
    detached = []
    for t in interfaces:
        netns = t.netns or None
        # each apart: one that fails (gone meanwhile: a pod's interface or namespace) does
        # not keep the others in place; a filter is ours by its place and name, whatever
        # runs in XDP by now
        took = [_uninstall_step(_detach_our_xdp, t.ifname, netns, ours),
                _uninstall_step(detach_tc_egress, t.ifname, netns),
                _uninstall_step(detach_tc_ingress, t.ifname, netns)]
        if any(took):
            detached.append(t.ifname)
    return detached


def _detach_our_xdp(ifname: str, netns: str | None, ours: set[int]) -> bool:
    if attached_prog_id(ifname, netns) not in ours:
        return False
    detach_xdp(ifname, netns)
    return True


def _uninstall_step(step: Callable[..., bool], ifname: str, *args: object) -> bool:
    """step(ifname, *args): whether it removed something of ours; False, logged, if it
    failed."""
    try:
        return step(ifname, *args)
    except (AttachError, OSError, NetlinkError) as exc:   # (pyroute2's is no OSError)
        log.warning("uninstall: %s: %s", ifname, exc)
        return False
