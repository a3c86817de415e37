"""Managed neighbour entries for the next hops behind the node's external interfaces.

A NodePort or LoadBalancer flow whose backend is on another node leaves the way it came,
with XDP_TX, to the next hop whose link-layer address bpf_fib_lookup() gives
(bpf/nodeport.h). An XDP program cannot resolve a neighbour: without an entry — a node
that has not talked to that next hop yet, or one the kernel's neighbour GC removed, as it
does to unused entries once a table holds more than gc_thresh1 (128) — the lookup answers
NO_NEIGH, and the frame, already source-NATed to the node's own address, would go to the
stack, which drops it as a martian (unless accept_local is set) without ever sending the
ARP request: every retransmission met the same. Such frames now go out through the tc
handoff (bpf/handoff.h), which resolves the address on the way; managed entries keep
the gateways' frames on XDP_TX from the first one.

Managed entries (NTF_EXT_MANAGED, Linux 5.16, made for this case) are resolved by the
kernel ahead of need and kept reachable, never collected. The agent marks the gateway of
every IPv4 route in the main table that leaves by an external interface (other nodes'
pod CIDRs, the default route) as managed: at start, whenever the routes or neighbours
of that namespace change, and every REFRESH_S. An entry the agent makes carries its
protocol number (NEIGH_PROTOCOL), so a restarted agent knows it: when its route goes, it
is deleted (one that was there before and only got the flag stays), and `svcctl agent
--uninstall` deletes them all. Static entries (PERMANENT, NOARP) are valid for good and
left as they are, and so is everything else.
"""
from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWROUTE, RTMGRP_IPV4_ROUTE, RTMGRP_NEIGH
from pyroute2.netlink.rtnl.ndmsg import NUD_NOARP, NUD_NONE, NUD_PERMANENT

from controlplane.dataplane.attach import NLMSGHDR, event_socket, open_ipr

log = logging.getLogger("svcxdp.nexthops")

NTF_EXT_MANAGED = 1            # NDA_FLAGS_EXT: the kernel keeps the entry resolved
# NDA_PROTOCOL of the entries the agent makes (route protocol numbers; unassigned in
# iproute2's rt_protos): who made an entry survives the agent, so a restarted one, and
# `svcctl agent --uninstall`, know which are theirs.
NEIGH_PROTOCOL = 201
NUD_STATIC = NUD_PERMANENT | NUD_NOARP   # valid for good, not ours to touch
MAIN_TABLE = 254
REFRESH_S = 30.0               # a full pass, whatever the events said
SETTLE_S = 0.2                 # events closer together than this make one pass

NextHop = tuple[str, int]      # (gateway address, ifindex)


def route_next_hops(routes: Iterable, ifindexes: frozenset[int]) -> set[NextHop]:
    """The gateways of these IPv4 routes that leave by one of `ifindexes` (each path of a
    multipath route too)."""
    out: set[NextHop] = set()
    for r in routes:
        if r.get_attr("RTA_TABLE", r["table"]) != MAIN_TABLE:
            continue
        gw, oif = r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")
        if gw and oif in ifindexes:
            out.add((gw, oif))
        for nh in r.get_attr("RTA_MULTIPATH") or ():
            gw = nh.get_attr("RTA_GATEWAY")
            if gw and nh["oif"] in ifindexes:
                out.add((gw, nh["oif"]))
    return out


def _made_here(n) -> bool:
    return n.get_attr("NDA_PROTOCOL") == NEIGH_PROTOCOL


def forget(netns: str | None) -> list[str]:
    """Delete every neighbour entry an agent made in `netns` (`--uninstall`); the
    addresses deleted."""
    with open_ipr(netns) as ipr:
        made = [n for n in ipr.get_neighbours(family=socket.AF_INET) if _made_here(n)]
        for n in made:
            ipr.neigh("del", dst=n.get_attr("NDA_DST"), ifindex=n["ifindex"])
    return [n.get_attr("NDA_DST") for n in made]


def _matters(data: bytes) -> bool:
    """A route came or went, or a neighbour entry was deleted, among the messages of one
    read. (Neighbours change state all the time — a managed one too, as the kernel probes
    it — which changes nothing.)"""
    at = 0
    while at + NLMSGHDR.size <= len(data):
        length, kind = NLMSGHDR.unpack_from(data, at)[:2]
        if kind in (RTM_NEWROUTE, RTM_DELROUTE, RTM_DELNEIGH):
            return True
        if length < NLMSGHDR.size:
            break
        at += (length + 3) & ~3
    return False


def _read_matters(events: socket.socket) -> bool:
    """Read the socket's next messages: whether they matter (_matters). Events that
    overflowed the socket (ENOBUFS) matter: what changed is unknown."""
    try:
        return _matters(events.recv(1 << 16))
    except OSError as exc:
        if exc.errno != errno.ENOBUFS:
            raise
        return True


@dataclass
class NextHopNeighbours:
    """One namespace's managed next hops (`netns` None: this process's), for the external
    interfaces `ifindexes()` names at each pass."""
    netns: str | None
    ifindexes: Callable[[], frozenset[int]]

    def reconcile(self) -> tuple[set[NextHop], set[NextHop]]:
        """One pass: (next hops made managed, entries deleted)."""
        with open_ipr(self.netns) as ipr:
            wanted = route_next_hops(ipr.get_routes(family=socket.AF_INET), self.ifindexes())
            current = {(n.get_attr("NDA_DST"), n["ifindex"]): n for n in ipr.get_neighbours(family=socket.AF_INET)}
            added = set()
            for hop in wanted:
                n = current.get(hop)
                if n is not None and (n["state"] & NUD_STATIC or n.get_attr("NDA_FLAGS_EXT", 0) & NTF_EXT_MANAGED):
                    continue
                # (replace keeps a resolved entry's address and state: no moment without it;
                # an entry the agent makes says so in its protocol)
                mine = {} if n is not None else {"NDA_PROTOCOL": NEIGH_PROTOCOL}
                ipr.neigh("replace", dst=hop[0], ifindex=hop[1], state=NUD_NONE, NDA_FLAGS_EXT=NTF_EXT_MANAGED,
                          **mine)
                added.add(hop)
            # Entries the agent made whose route went; one that was there before and only
            # got the managed flag stays.
            gone = {hop for hop, n in current.items() if hop not in wanted and _made_here(n)}
            for gw, ifindex in gone:
                ipr.neigh("del", dst=gw, ifindex=ifindex)
        return added, gone

    def run(self, stop: threading.Event) -> None:
        """Reconcile now, after each burst of route or neighbour changes, and every
        REFRESH_S, until `stop`. A failed pass is logged and tried again at the next."""
        while not stop.is_set():
            try:
                self._follow(stop)
            except OSError as exc:   # the event socket failed: a pass every REFRESH_S meanwhile
                log.warning("managed next-hop neighbours: route/neighbour events lost (%s); "
                            "reopening the watch", exc)
                self._pass()
                stop.wait(REFRESH_S)

    def _follow(self, stop: threading.Event) -> None:
        with event_socket(self.netns, RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH) as events:
            due = 0.0
            while not stop.is_set():
                if time.monotonic() >= due:
                    self._pass()
                    due = time.monotonic() + REFRESH_S
                if select.select([events], [], [], 1.0)[0] and _read_matters(events):
                    stop.wait(SETTLE_S)         # the rest of a burst: one pass reads it all
                    while select.select([events], [], [], 0)[0]:
                        _read_matters(events)
                    due = 0.0

    def _pass(self) -> None:
        try:
            added, gone = self.reconcile()
        except Exception:  # noqa: BLE001 - keep the agent serving; the next pass tries again
            log.exception("managed next-hop neighbours: a pass failed")
            return
        for gw, ifindex in sorted(added):
            log.info("next hop %s (ifindex %d) is a managed neighbour: the kernel keeps it resolved", gw, ifindex)
        for gw, ifindex in sorted(gone):
            log.info("next hop %s (ifindex %d) has no route any more: its managed neighbour removed", gw, ifindex)
