"""The FIB result cache's generation (bpf/fib.h, map fib_gen), kept by watching the
node's routing over netlink.

The pods' XDP path remembers, per CPU, the next hop bpf_fib_lookup() gave for a
destination and ingress device, and uses it for later frames while fib_gen holds the
generation it was looked up under (and for at most SVCXDP_FIB_CACHE_TTL_MS). This
watcher moves the generation on every change that can alter a lookup's answer: routes,
rules, addresses, links (MTU, state), forwarding settings, and neighbours whose link-layer
address or validity changed (a neighbour going REACHABLE -> STALE changes no answer and
moves nothing: the lookup does not refresh neighbours).

It turns the cache off (generation 0) while the node routes in a way the cache's key
(destination, ingress device) cannot stand for:
- a policy rule other than the kernel's three (a rule can choose a table by source,
  mark, TOS or device, or suppress a prefix);
- in the tables those three consult (local, main, default), a multipath route (the
  kernel hashes each flow onto a path), a route through a nexthop object (it may be a
  group) or a route with a TOS selector.

The generation the watcher last handed out is kept in the map beside it (fib_gen.reserved),
so a restarted watcher never hands out one that slots of an earlier run may hold.
"""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_LINK,
                                   RTMGRP_NEIGH, RTNLGRP_IPV4_NETCONF)

from .attach import open_ipr

MAP = "fib_gen"
GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE |
          1 << (RTNLGRP_IPV4_NETCONF - 1))
# The tables the kernel's default rules consult: local, main, default.
DEFAULT_TABLES = (255, 254, 253)
# (priority, table) of the kernel's default IPv4 rules, and the attributes they carry.
DEFAULT_RULES = {(0, 255), (32766, 254), (32767, 253)}
_DEFAULT_RULE_ATTRS = {"FRA_TABLE", "FRA_PRIORITY", "FRA_PROTOCOL", "FRA_SUPPRESS_PREFIXLEN"}
_NO_SUPPRESS = 0xFFFFFFFF
# NUD_PERMANENT | NOARP | REACHABLE | PROBE | STALE | DELAY: a neighbour the lookup uses.
NUD_VALID = 0x80 | 0x40 | 0x02 | 0x10 | 0x04 | 0x08

log = logging.getLogger("svcxdp.fibwatch")


def default_rule(rule) -> bool:
    """Is this IPv4 rule one of the three the kernel installs, as it installs them?"""
    attrs = dict(rule["attrs"])
    table = attrs.get("FRA_TABLE", rule["table"])
    return ((attrs.get("FRA_PRIORITY", 0), table) in DEFAULT_RULES and set(attrs) <= _DEFAULT_RULE_ATTRS
            and attrs.get("FRA_SUPPRESS_PREFIXLEN", _NO_SUPPRESS) == _NO_SUPPRESS
            and rule["action"] == 1 and not (rule["src_len"] or rule["dst_len"] or rule["tos"]))


def _route_table(route, attrs: dict) -> int:
    return attrs.get("RTA_TABLE", route["table"])   # the header's field holds tables < 256 only


def route_key(route) -> tuple:
    attrs = dict(route["attrs"])
    return (_route_table(route, attrs), attrs.get("RTA_DST"), route["dst_len"], route["tos"],
            attrs.get("RTA_PRIORITY", 0))


def route_uncacheable(route) -> bool:
    """A route whose answer depends on more than the destination (see the module text)."""
    attrs = dict(route["attrs"])
    return (_route_table(route, attrs) in DEFAULT_TABLES and
            ("RTA_MULTIPATH" in attrs or "RTA_NH_ID" in attrs or route["tos"] != 0))


@dataclass
class RoutingState:
    """What the watcher knows of the namespace's routing: enough to tell whether the cache
    may be on and whether a neighbour message changed anything."""
    odd_rules: int = 0                       # rules other than the kernel's three
    uncacheable: set = field(default_factory=set)   # route_key()s of multipath/nexthop/TOS routes
    neighbours: dict = field(default_factory=dict)  # (ifindex, address) -> lladdr, None: not valid

    @property
    def cacheable(self) -> bool:
        return not self.odd_rules and not self.uncacheable

    def why_not(self) -> str:
        reasons = []
        if self.odd_rules:
            reasons.append(f"{self.odd_rules} policy rule(s) besides the kernel's three")
        if self.uncacheable:
            reasons.append(f"{len(self.uncacheable)} multipath, nexthop or TOS route(s)")
        return "; ".join(reasons)

    def route(self, msg) -> None:
        if msg["event"] == "RTM_NEWROUTE" and route_uncacheable(msg):
            self.uncacheable.add(route_key(msg))
        else:   # deleted, or replaced by a plain route
            self.uncacheable.discard(route_key(msg))

    def neighbour(self, msg) -> bool:
        """Record a neighbour message; True if a lookup could now answer differently."""
        if msg["family"] != socket.AF_INET:
            return False
        key = (msg["ifindex"], msg.get_attr("NDA_DST"))
        known = key in self.neighbours
        before = self.neighbours.get(key)
        if msg["event"] == "RTM_DELNEIGH":
            self.neighbours.pop(key, None)
            return not known or before is not None
        now = msg.get_attr("NDA_LLADDR") if msg["state"] & NUD_VALID else None
        self.neighbours[key] = now
        return not known or before != now


class FibWatch:
    """Keeps fib_gen for one namespace's routing: run() (a thread of the agent) until
    close(), which turns the cache off. `netns`: the lab namespace the program routes
    in (None: this process's)."""

    def __init__(self, table, netns: str | None = None) -> None:
        self.table = table
        self.netns = netns
        self.state = RoutingState()
        self.gen = 0
        # the last generation ever handed out, kept in the map for the next watcher; this
        # one is its only writer while it runs, so it is read once
        self._last = int(table[table.Key(0)].reserved)
        self.changes = 0         # generations handed out (tests, logs)
        self.ready = threading.Event()
        self._ipr: IPRoute | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None   # the one start() runs it in

    def _read_rules(self, ipr: IPRoute) -> None:
        self.state.odd_rules = sum(not default_rule(r) for r in ipr.get_rules(family=socket.AF_INET))

    def _read_state(self) -> None:
        """Rules and routes as they are now (after subscribing: nothing slips between), on
        a socket of their own (the subscribed one carries the events)."""
        with open_ipr(self.netns) as ipr:
            self._read_rules(ipr)
            self.state.uncacheable = {route_key(r) for r in ipr.get_routes(family=socket.AF_INET, table=0)
                                      if route_uncacheable(r)}

    def _publish(self) -> None:
        """A new generation (or 0, off), written to the map; nothing once closed."""
        with self._lock:
            if not self._closed:
                self._write_next()

    def _write_next(self) -> None:
        if self.state.cacheable:
            self._write(self._last % 0xFFFFFFFF + 1)
        else:
            if self.gen or not self.changes:
                log.info("FIB result cache off: %s", self.state.why_not())
            self._write(0)
        self.changes += 1

    def _write(self, gen: int) -> None:
        """fib_gen := this generation (0: off) and the last one ever handed out."""
        self.gen = gen
        self._last = max(self._last, gen)
        leaf = self.table.Leaf()
        leaf.gen, leaf.reserved = gen, self._last
        self.table[self.table.Key(0)] = leaf

    def _changed(self, msg) -> bool:
        event = msg["event"]
        if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
            return self.state.neighbour(msg)
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            self.state.route(msg)
        elif event in ("RTM_NEWRULE", "RTM_DELRULE"):
            with open_ipr(self.netns) as ipr:
                self._read_rules(ipr)
        return True   # links, addresses, routes, rules, netconf: anything may differ

    def run(self) -> None:
        """Until close(): publish a generation now and after every batch of messages that
        changed something."""
        # pyroute2 (0.9) delivers a bound socket's messages to the thread that made it
        self._ipr = open_ipr(self.netns)
        try:
            self._ipr.bind(groups=GROUPS)
            self._read_state()
            self._publish()
            self.ready.set()
            while not self._closed:
                try:
                    msgs = self._ipr.get()
                except Exception:  # noqa: BLE001 - closed on shutdown, or a transient error
                    if self._closed:
                        break
                    log.exception("netlink watch failed; reading the routing state again")
                    self._read_state()
                    self._publish()
                    continue
                if sum(self._changed(m) for m in msgs):
                    self._publish()
        finally:
            self.ready.set()
            self.close()

    def close(self) -> None:
        """Stop watching (from any thread) and turn the cache off: nobody watches the
        routing any more (the TTL would bound it)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._write(0)
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            ipr.close()

    def stop(self, timeout: float = 10) -> None:
        """close(), then wait for start()'s thread to end (not from that thread)."""
        self.close()
        if self.thread is not None:
            self.thread.join(timeout)


def start(table, netns: str | None = None) -> FibWatch:
    """A FibWatch running in a daemon thread of its own (`thread`), its first generation
    published. Stop it with stop()."""
    watch = FibWatch(table, netns)
    watch.thread = threading.Thread(target=watch.run, name="fibwatch", daemon=True)
    watch.thread.start()
    watch.ready.wait(30)
    return watch
