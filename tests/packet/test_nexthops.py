"""Managed neighbours for the next hops behind the external interfaces
(controlplane/agent/nexthops.py), in two namespaces of their own: a node (ext0
192.168.1.31/24, other0 10.99.0.1/24) and the other node behind ext0 (192.168.1.32).
The kernel resolves a managed entry by itself — what an XDP_TX to another node's backend
needs, since the program cannot."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from controlplane.agent.nexthops import NextHopNeighbours
from controlplane.lab import netns

pytestmark = pytest.mark.root

NODE, PEER = f"svcxdp-pt-nh{os.getpid()}", f"svcxdp-pt-nh{os.getpid()}-peer"


def ip(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, text=True).stdout


def neighbour(address: str) -> str:
    """`ip -d neigh` of the node's entry for `address` ('' when there is none)."""
    return ip(NODE, "-d", "neigh", "show", address).strip()


def wait_for(what: str, check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def node():
    for ns in (NODE, PEER):
        if netns.exists(ns):
            netns.delete(ns)
        netns.create(ns)
    try:
        ip(NODE, "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p", "netns", PEER)
        ip(NODE, "link", "add", "other0", "type", "veth", "peer", "name", "other0p")
        for dev in ("lo", "ext0", "other0", "other0p"):
            ip(NODE, "link", "set", dev, "up")
        ip(PEER, "link", "set", "ext0p", "up")
        ip(NODE, "addr", "add", "192.168.1.31/24", "dev", "ext0")
        ip(NODE, "addr", "add", "10.99.0.1/24", "dev", "other0")
        ip(PEER, "addr", "add", "192.168.1.32/24", "dev", "ext0p")
        ip(NODE, "route", "add", "10.244.2.0/24", "via", "192.168.1.32", "dev", "ext0")    # another node's pods
        ip(NODE, "route", "add", "10.244.3.0/24", "via", "192.168.1.34", "dev", "ext0")    # its next hop static
        ip(NODE, "neigh", "replace", "192.168.1.34", "lladdr", "02:00:00:00:01:34", "dev", "ext0", "nud", "permanent")
        ip(NODE, "route", "add", "10.244.9.0/24", "via", "10.99.0.2", "dev", "other0")      # not external
        ext0 = int(ip(NODE, "-o", "link", "show", "ext0").split(":")[0])
        yield NextHopNeighbours(NODE, lambda: frozenset({ext0}))
    finally:
        for ns in (NODE, PEER):
            netns.delete(ns)


def test_the_gateways_behind_the_external_interface_become_managed_and_resolved(node):
    added, gone = node.reconcile()
    assert {gw for gw, _ in added} == {"192.168.1.32"} and not gone
    assert "managed" in neighbour("192.168.1.32")
    # the kernel resolves it by itself: nothing was ever sent to that address
    wait_for("resolved", lambda: "lladdr" in neighbour("192.168.1.32"))
    # a static entry is left as it was, and a next hop behind another interface is none of ours
    assert "PERMANENT" in neighbour("192.168.1.34") and "managed" not in neighbour("192.168.1.34")
    assert neighbour("10.99.0.2") == ""
    assert node.reconcile() == (set(), set())              # nothing more to do
    # a restarted agent knows what an agent made (its protocol): the route goes, the entry too
    restarted = NextHopNeighbours(NODE, node.ifindexes)
    ip(NODE, "route", "del", "10.244.2.0/24")
    assert {gw for gw, _ in restarted.reconcile()[1]} == {"192.168.1.32"}
    assert neighbour("192.168.1.32") == ""


def test_uninstall_deletes_what_an_agent_made_and_only_that(node):
    from controlplane.agent.nexthops import forget
    ip(NODE, "route", "add", "10.244.4.0/24", "via", "192.168.1.35", "dev", "ext0")
    ip(NODE, "neigh", "replace", "192.168.1.35", "lladdr", "02:00:00:00:01:35", "dev", "ext0", "nud", "reachable")
    node.reconcile()                                       # .32 made, .35 only flagged
    assert "managed" in neighbour("192.168.1.32") and "managed" in neighbour("192.168.1.35")
    assert netns.call_in(NODE, forget, None) == ["192.168.1.32"]
    assert neighbour("192.168.1.32") == "" and "192.168.1.35" in neighbour("192.168.1.35")


def test_an_entry_already_resolved_is_made_managed_without_losing_its_address(node):
    ip(NODE, "neigh", "replace", "192.168.1.32", "lladdr", "02:00:00:00:01:32", "dev", "ext0", "nud", "reachable")
    node.reconcile()
    entry = neighbour("192.168.1.32")
    assert "managed" in entry and "02:00:00:00:01:32" in entry
    # it was not the agent's to begin with: when its route goes, it stays
    ip(NODE, "route", "del", "10.244.2.0/24")
    assert node.reconcile() == (set(), set()) and "192.168.1.32" in neighbour("192.168.1.32")


def test_the_keeper_puts_a_deleted_entry_back_at_once(node):
    stop = threading.Event()
    keeper = threading.Thread(target=node.run, args=(stop,), daemon=True)
    keeper.start()
    try:
        wait_for("managed", lambda: "managed" in neighbour("192.168.1.32"))
        ip(NODE, "neigh", "del", "192.168.1.32", "dev", "ext0")
        wait_for("managed again", lambda: "managed" in neighbour("192.168.1.32"), timeout_s=5)
        ip(NODE, "route", "add", "10.244.4.0/24", "via", "192.168.1.35", "dev", "ext0")   # a node joins
        wait_for("the new next hop managed", lambda: "managed" in neighbour("192.168.1.35"), timeout_s=5)
    finally:
        stop.set()
        keeper.join(5)
