"""What the FIB cache's watcher makes of netlink messages (controlplane/dataplane/fibwatch.py):
which neighbour messages could change a FIB answer, which rules and routes the cache cannot
stand for. Messages built with pyroute2's own classes, as the kernel's are decoded."""
from __future__ import annotations

import socket

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from controlplane.dataplane.fibwatch import RoutingState, default_rule, route_uncacheable

REACHABLE, STALE, FAILED = 0x02, 0x04, 0x20


def _neigh(event: str, state: int, mac: str | None, ip: str = "10.244.1.11", ifindex: int = 3) -> ndmsg:
    m = ndmsg()
    m["family"], m["ifindex"], m["state"], m["event"] = socket.AF_INET, ifindex, state, event
    m["attrs"] = [("NDA_DST", ip)] + ([("NDA_LLADDR", mac)] if mac else [])
    return m


def test_only_a_new_address_or_a_lost_neighbour_moves_the_generation():
    s = RoutingState()
    assert s.neighbour(_neigh("RTM_NEWNEIGH", REACHABLE, "02:00:00:00:00:01"))       # first seen
    assert not s.neighbour(_neigh("RTM_NEWNEIGH", STALE, "02:00:00:00:00:01"))       # ageing only
    assert not s.neighbour(_neigh("RTM_NEWNEIGH", REACHABLE, "02:00:00:00:00:01"))
    assert s.neighbour(_neigh("RTM_NEWNEIGH", REACHABLE, "02:00:00:00:00:02"))       # moved
    assert s.neighbour(_neigh("RTM_NEWNEIGH", FAILED, None))                          # gone invalid
    assert not s.neighbour(_neigh("RTM_NEWNEIGH", FAILED, None))
    assert not s.neighbour(_neigh("RTM_DELNEIGH", FAILED, None))   # was not usable anyway
    assert s.neighbour(_neigh("RTM_DELNEIGH", FAILED, None, ip="10.244.1.12"))      # never seen: maybe


def _rule(priority: int, table: int, **fields) -> fibmsg:
    m = fibmsg()
    m.update({"family": socket.AF_INET, "dst_len": 0, "src_len": 0, "tos": 0, "table": table, "action": 1})
    m.update(fields)
    m["attrs"] = [("FRA_TABLE", table), ("FRA_SUPPRESS_PREFIXLEN", 0xFFFFFFFF), ("FRA_PROTOCOL", 2)]
    if priority:
        m["attrs"].append(("FRA_PRIORITY", priority))
    return m


def test_the_kernels_three_rules_are_default_and_anything_else_is_not():
    assert all(default_rule(_rule(p, t)) for p, t in ((0, 255), (32766, 254), (32767, 253)))
    assert not default_rule(_rule(100, 254))
    assert not default_rule(_rule(32766, 254, src_len=24))
    r = _rule(32766, 254)
    r["attrs"].append(("FRA_FWMARK", 1))
    assert not default_rule(r)
    r = _rule(32766, 254)
    r["attrs"][1] = ("FRA_SUPPRESS_PREFIXLEN", 0)
    assert not default_rule(r)


def _route(table: int = 254, tos: int = 0, *attrs) -> rtmsg:
    m = rtmsg()
    m.update({"family": socket.AF_INET, "dst_len": 24, "tos": tos, "table": table, "event": "RTM_NEWROUTE"})
    m["attrs"] = [("RTA_TABLE", table), ("RTA_DST", "10.244.9.0"), *attrs]
    return m


def test_multipath_nexthop_and_tos_routes_of_the_default_tables_are_uncacheable():
    assert not route_uncacheable(_route())
    assert route_uncacheable(_route(254, 0, ("RTA_MULTIPATH", [])))
    assert route_uncacheable(_route(254, 0, ("RTA_NH_ID", 7)))
    assert route_uncacheable(_route(254, 8))
    assert not route_uncacheable(_route(100, 0, ("RTA_MULTIPATH", [])))   # no rule consults table 100
    s = RoutingState()
    s.route(_route(254, 0, ("RTA_MULTIPATH", [])))
    assert not s.cacheable
    replaced = _route()
    s.route(replaced)   # the same prefix replaced by a plain route
    assert s.cacheable
