"""Keeping the XDP program attached to every interface a node serves, as pods come
and go. Each veth peer gets a pass-through XDP program too: native XDP on veth
delivers XDP_TX frames (our RSTs and ICMP answers) and redirected frames only to a
peer that has NAPI (an XDP program, or GRO on). An interface whose peer got it becomes
a redirect target (bpf/fib.h: translated frames for it skip the node's stack). A pod
interface whose peer this agent does not run (a real node's pods, --interfaces /
--discover: the CNI owns the pod's end) stays on the stack path, and is attached in
generic mode unless told otherwise (`pod_mode`): in native mode the answers the program
sends back to the pod would be dropped by the veth (measured: none of 5 arrived; in
generic mode 5 of 5)."""
from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK

from controlplane.dataplane.attach import (AttachError, attach_tc_egress, attach_tc_ingress, attach_xdp,
                                          drain_events, event_socket, foreign_addresses_on, in_netns,
                                          interface_mac, links_touch)
from controlplane.dataplane.program import Dataplane, load_floor_program

log = logging.getLogger("svcxdp.agent")
# How often an external interface's other addresses are looked for where no link event
# said so sooner (the namespace's event socket could not be opened, or an event was lost).
MAC_RECHECK_S = 60.0
FAILED = "its address could not be read"


class AttachTarget(Protocol):
    netns: str
    ifname: str
    ifindex: int
    peer_netns: str
    peer_ifname: str


def is_external(t: AttachTarget) -> bool:
    """The node's external interface (NodePort, LB IPs, externalIPs), not a pod's: the
    target's role, "pod" when it names none."""
    return getattr(t, "role", "pod") == "external"


def accept_local(t: AttachTarget) -> None:
    """Let the stack take packets with one of the node's own addresses as source from a pod
    interface: a local backend's answer to a NodePort client, which XDP reverse-NATs to the
    node's address, enters the stack there wherever it is not redirected (a real node's
    stack-forwarding build: every one), and the stack dropped it as a martian — a NodePort
    whose backend was on the node it was reached through never answered. Strict reverse-path
    filtering drops it all the same: warned about, per interface."""
    conf = Path("/proc/sys/net/ipv4/conf")
    with in_netns(t.netns or None):   # /proc/sys/net is the opening thread's namespace's
        (conf / t.ifname / "accept_local").write_text("1")
        rp_filter = max(int((conf / name / "rp_filter").read_text()) for name in ("all", t.ifname))
    if rp_filter == 1:
        log.warning("rp_filter is strict on %s (net.ipv4.conf.all/%s.rp_filter): answers of its pods to "
                    "NodePort clients are dropped; set it to 2 (loose) or 0", t.ifname, t.ifname)


@dataclass(frozen=True)
class _Key:
    netns: str
    ifname: str
    ifindex: int


class InterfaceManager:
    """`mode`: the XDP mode of the external interfaces and of pod interfaces whose peer
    gets the pass-through program; `pod_mode`: of pod interfaces whose peer does not
    ("auto": generic)."""

    def __init__(self, dp: Dataplane, targets: Callable[[], list[AttachTarget]],
                 mode: str = "native", pod_mode: str = "auto") -> None:
        self.dp = dp
        self.targets = targets
        self.mode = mode
        self.pod_mode = pod_mode
        self._pass_bpf, self._pass_fd = load_floor_program()
        self._attached: set[_Key] = set()
        # what the dataplane was told (own_mac): the address, when, and why not checked
        self._macs: dict[_Key, tuple[bytes, float, tuple[str, ...]]] = {}
        # each namespace of external interfaces: its link events, or when they could not
        # be opened (tried again after MAC_RECHECK_S)
        self._link_events: dict[str, socket.socket | float] = {}
        # namespaces whose links changed, until their interfaces were looked at again
        self._relinked: set[str] = set()

    def mode_for(self, t: AttachTarget) -> str:
        if is_external(t) or (t.peer_netns and t.peer_ifname):
            return self.mode
        return "generic" if self.pod_mode == "auto" else self.pod_mode

    def external_targets(self) -> list[AttachTarget]:
        return [t for t in self.targets() if is_external(t)]

    def refresh(self) -> int:
        """Attach to targets not yet served; returns how many were attached now."""
        current = {_Key(t.netns, t.ifname, t.ifindex): t for t in self.targets()}
        self._attached &= set(current)  # gone interfaces need no detach
        self._forget_macs(current)
        # an ifindex names a device per namespace; the map is keyed by ifindex alone
        spaces: dict[int, set[str]] = {}
        for key, t in current.items():
            if is_external(t):
                spaces.setdefault(t.ifindex, set()).add(t.netns)
        self._relinked |= self._links_changed(current)
        attached = 0
        for key, t in current.items():
            if is_external(t):   # before the attach: no moment of answering others' frames
                self._note_mac(key, t, shared=len(spaces[t.ifindex]) > 1, relinked=t.netns in self._relinked)
            if key in self._attached:
                continue
            peer = bool(t.peer_netns and t.peer_ifname)
            try:
                if peer:
                    attach_xdp(self._pass_fd, t.peer_ifname, t.peer_netns, self.mode)
                # the node's external interface gets the entry point for traffic
                # from outside (NodePort, LB IPs, externalIPs)
                attach_xdp(self.dp.external_prog_fd if is_external(t) else self.dp.prog_fd,
                           t.ifname, t.netns, self.mode_for(t))
                # Native mode only: a generic-mode peer program does not make the
                # veth take redirected frames.
                if peer and self.mode == "native" and not self.dp.allow_redirect(t.ifindex, t.netns):
                    log.info("%s (ifindex %d) is beyond the redirect map: its frames go "
                             "through the stack", t.ifname, t.ifindex)
                if not is_external(t):
                    accept_local(t)
            except (AttachError, OSError) as exc:  # e.g. a pod removed meanwhile
                log.warning("attach to %s in %s failed: %s", t.ifname, t.netns, exc)
                continue
            self._attached.add(key)
            attached += 1
            log.info("XDP attached to %s (%s, ifindex %d, %s mode)", t.ifname, t.netns, t.ifindex,
                     self.mode_for(t))
            try:
                # the node's own answers for a backend at its address leave here
                # (bpf/local_reply.h); without it the XDP program still serves
                attach_tc_egress(self.dp.local_reply_prog_fd, t.ifname, t.netns)
            except (AttachError, OSError) as exc:
                log.warning("tc egress on %s in %s: %s; a hostNetwork backend's answers leave it "
                            "untranslated", t.ifname, t.netns, exc)
            if is_external(t):
                try:
                    # translated frames whose next hop is not resolved yet go out through
                    # it (bpf/handoff.h); without it they go to the stack, which drops the
                    # ones that carry one of the node's own addresses
                    attach_tc_ingress(self.dp.handoff_prog_fd, t.ifname, t.netns)
                except (AttachError, OSError) as exc:
                    log.warning("tc ingress on %s in %s: %s; a flow to a backend on another node, "
                                "or an answer to a client, whose neighbour entry is missing is dropped",
                                t.ifname, t.netns, exc)
        self._relinked.clear()   # (kept if the loop raised: looked at by the next refresh)
        return attached

    def _note_mac(self, key: _Key, t: AttachTarget, shared: bool, relinked: bool) -> None:
        """Tell the external entry point the interface's own MAC address, so that it leaves
        frames for other hosts' to the stack (bpf/otherhost.h): read at every refresh and
        written when it changed (a bond's address moves with fail_over_mac); what else may
        be addressed to it is looked for again when a link of its namespace changed
        (`relinked`), and every MAC_RECHECK_S. Not checked (0): an interface whose frames
        may be the node's under other addresses (a bridge or bond port, a macvlan stacked
        on it), or whose ifindex another namespace's external interface shares."""
        noted = self._macs.get(key)
        try:
            mac = interface_mac(t.ifname, t.netns or None)
            if (noted is not None and noted[0] == mac and not relinked
                    and time.monotonic() - noted[1] < MAC_RECHECK_S):
                return
            why = tuple([f"ifindex {t.ifindex} is an external interface's in another namespace too"] if shared
                        else foreign_addresses_on(t.ifindex, t.netns or None))
            if why and (noted is None or noted[2] != why):
                log.warning("%s in %s: frames for other hosts' MAC addresses are served as the node's (%s)",
                            t.ifname, t.netns or "the root namespace", "; ".join(why))
            if not self.dp.own_mac(t.ifindex, bytes(6) if why else mac) and noted is None:
                log.info("%s (ifindex %d) is beyond the MAC map: frames for other hosts flooded to it are "
                         "served as if they were the node's", t.ifname, t.ifindex)
        except (AttachError, OSError, NetlinkError) as exc:   # gone meanwhile: the attach says so too
            if noted is None or noted[2] != (FAILED,):
                log.warning("the MAC address of %s in %s: %s; not checked", t.ifname, t.netns, exc)
            try:   # not another device's address, from an ifindex used again
                self.dp.own_mac(t.ifindex, bytes(6))
            except OSError:
                pass
            self._macs[key] = (b"", time.monotonic(), (FAILED,))
            return
        self._macs[key] = (mac, time.monotonic(), why)

    def _links_changed(self, current: dict[_Key, AttachTarget]) -> set[str]:
        """Which of the external interfaces' namespaces had a link change that concerns
        one of them (attach.links_touch: a macvlan stacked on it, it or a port enslaved)
        since the last refresh: their interfaces are looked at again now, not a minute
        later. A namespace whose socket is opened now counts (it is opened before that
        look, so no change falls between). One no longer served has its socket closed
        (it would keep the namespace alive); one whose socket could not be opened is
        tried again after MAC_RECHECK_S, on the minute's look meanwhile."""
        external: dict[str, set[int]] = {}
        for t in current.values():
            if is_external(t):
                external.setdefault(t.netns, set()).add(t.ifindex)
        for netns in [n for n in self._link_events if n not in external]:
            events = self._link_events.pop(netns)
            if isinstance(events, socket.socket):
                events.close()
        changed = set()
        for netns, ifindexes in external.items():
            events = self._link_events.get(netns)
            if events is None or (not isinstance(events, socket.socket)
                                  and time.monotonic() - events >= MAC_RECHECK_S):
                try:
                    self._link_events[netns] = event_socket(netns or None, RTMGRP_LINK)
                    changed.add(netns)
                except (AttachError, OSError) as exc:
                    if events is None:
                        log.warning("link events of %s: %s; an interface's other addresses are looked "
                                    "for every %.0f s", netns or "the root namespace", exc, MAC_RECHECK_S)
                    self._link_events[netns] = time.monotonic()
                continue
            if not isinstance(events, socket.socket):
                continue
            touch = frozenset(ifindexes)
            try:
                if drain_events(events, lambda data: links_touch(data, touch)):
                    changed.add(netns)
            except OSError as exc:   # reopened at the next refresh, and looked at then
                log.warning("link events of %s: %s; reopening", netns or "the root namespace", exc)
                events.close()
                del self._link_events[netns]
        return changed

    def close(self) -> None:
        """Close the link event sockets (the programs stay attached)."""
        for events in self._link_events.values():
            if isinstance(events, socket.socket):
                events.close()
        self._link_events.clear()

    def _forget_macs(self, current: dict[_Key, AttachTarget]) -> None:
        """An external interface gone from the targets: its entry no longer names it (0:
        not checked), unless a current one's has the same ifindex."""
        kept = {t.ifindex for t in current.values() if is_external(t)}
        for key in [key for key in self._macs if key not in current]:
            del self._macs[key]
            if key.ifindex not in kept:
                try:
                    self.dp.own_mac(key.ifindex, bytes(6))
                except OSError as exc:
                    log.warning("forgetting the MAC address of ifindex %d: %s", key.ifindex, exc)

    @property
    def attached(self) -> int:
        return len(self._attached)
