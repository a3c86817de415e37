"""The FIB result cache (bpf/fib.h) and the watcher that keeps its generation
(controlplane/dataplane/fibwatch.py), with real netlink in a node namespace
(tests/packet/nodenet.py) and frames through BPF_PROG_TEST_RUN: a frame for a backend
seen before is redirected with the remembered next hop; a changed neighbour, route or MTU
is followed by the very next frame once the watcher has seen the change; policy rules
and multipath routes turn the cache off; with no watcher left a slot lives at most the
TTL; a slot another destination or ingress device shares answers only for its own."""
from __future__ import annotations

import ctypes
import os
import socket
import time
from contextlib import contextmanager

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from controlplane._csrc import lib
from controlplane.dataplane import fibwatch
from controlplane.dataplane.layout import const
from controlplane.dataplane.model import Backend, Frontend, ServiceState, be32_to_ip, ip_to_be32
from controlplane.dataplane.testrun import TestRunner
from controlplane.lab import netns

from . import nodenet
from .harness import VIP, Harness

CLIENT, CLIENT_MAC = next(iter(nodenet.CLIENTS.items()))
NEW_MAC = "02:00:00:00:02:99"
TTL_S = const("FIB_CACHE_TTL_MS") / 1000
CPU = min(os.sched_getaffinity(0))   # the cache is per CPU: every frame runs on this one


@pytest.fixture
def node(xdp: Harness):
    n = nodenet.create()
    xdp.writer.upsert(ServiceState(Frontend(VIP, 53, "UDP"), (Backend(nodenet.LOCAL_POD, 5353),), "random"))
    xdp.dp.allow_redirect(n.pod_ifindex, n.name)
    xdp.dp.allow_redirect(n.ext_ifindex, n.name)
    try:
        yield n
    finally:
        xdp.dp.forbid_redirect(n.pod_ifindex)
        xdp.dp.forbid_redirect(n.ext_ifindex)
        nodenet.delete(n)


@pytest.fixture
def watch(xdp: Harness, node):
    w = fibwatch.start(xdp.dp.table(fibwatch.MAP), node.name)
    try:
        yield w
    finally:
        w.stop()
        assert not w.thread.is_alive()


def _send(xdp: Harness, node, sport: int, size: int = 0) -> tuple[str, Ether]:
    pkt = (Ether(src=CLIENT_MAC, dst=node.ext_mac) / IP(src=CLIENT, dst=VIP) /
           UDP(sport=sport, dport=53) / (b"q" * size))

    def on_one_cpu():
        os.sched_setaffinity(0, {CPU})
        return xdp.runner.run(bytes(pkt), 1, node.ext_ifindex)
    res = node.call(on_one_cpu)
    return res.verdict_name, Ether(res.data)


def _cached(xdp: Harness) -> int:
    return xdp.counters()["fib_cached"]


def _settled(w: fibwatch.FibWatch, before: int, timeout: float = 5.0) -> None:
    """Wait until the watcher has handed out a generation after `before` changes."""
    deadline = time.monotonic() + timeout
    while w.changes <= before:
        assert time.monotonic() < deadline, "the watcher saw no change"
        time.sleep(0.01)


def _gen(xdp: Harness) -> int:
    return int(xdp.dp.table(fibwatch.MAP)[0].gen)


def test_a_second_frame_to_the_same_backend_uses_the_cached_next_hop(xdp: Harness, node, watch):
    assert _gen(xdp) > 0
    before = _cached(xdp)
    verdict, first = _send(xdp, node, 40000)
    assert verdict == "XDP_REDIRECT" and _cached(xdp) == before
    verdict, second = _send(xdp, node, 40001)   # another flow, same backend
    assert verdict == "XDP_REDIRECT" and _cached(xdp) == before + 1
    assert (second.dst, second.src, second[IP].ttl, second[IP].dst) == \
        (first.dst, first.src, 63, nodenet.LOCAL_POD) == (nodenet.LOCAL_POD_MAC, first.src, 63, nodenet.LOCAL_POD)


def test_a_neighbour_with_a_new_mac_is_followed_by_the_next_frame(xdp: Harness, node, watch):
    _send(xdp, node, 40000)
    assert _send(xdp, node, 40001)[1].dst == nodenet.LOCAL_POD_MAC
    seen = watch.changes
    nodenet._ip(node.name, "neigh", "replace", nodenet.LOCAL_POD, "lladdr", NEW_MAC, "dev", "pod0",
                "nud", "permanent")
    _settled(watch, seen)
    verdict, out = _send(xdp, node, 40002)
    assert verdict == "XDP_REDIRECT" and out.dst == NEW_MAC


def test_a_moved_route_is_followed_by_the_next_frame(xdp: Harness, node, watch):
    _send(xdp, node, 40000)
    seen = watch.changes
    nodenet._ip(node.name, "route", "replace", "10.244.1.0/24", "via", nodenet.NODE2_IP, "dev", "ext0")
    _settled(watch, seen)
    verdict, out = _send(xdp, node, 40001)
    assert verdict == "XDP_REDIRECT" and (out.dst, out.src) == (nodenet.NODE2_MAC, node.ext_mac)


def test_a_frame_larger_than_the_cached_one_is_checked_against_the_mtu(xdp: Harness, node):
    nodenet._ip(node.name, "link", "set", "pod0", "mtu", "1000")
    w = fibwatch.start(xdp.dp.table(fibwatch.MAP), node.name)   # after the MTU change
    try:
        assert _send(xdp, node, 40000, size=900)[0] == "XDP_REDIRECT"
        verdict, out = _send(xdp, node, 40001, size=1200)   # above pod0's MTU: the stack's
        assert verdict == "XDP_PASS" and out[IP].ttl == 64
        before = _cached(xdp)
        assert _send(xdp, node, 40002, size=500)[0] == "XDP_REDIRECT" and _cached(xdp) == before + 1
    finally:
        w.stop()


@pytest.mark.parametrize("routing", ["rule", "multipath"])
def test_policy_rules_and_multipath_routes_turn_the_cache_off(xdp: Harness, node, watch, routing):
    seen = watch.changes
    if routing == "rule":   # the client's frames to local pods leave by node2
        nodenet._ip(node.name, "route", "add", "10.244.1.0/24", "via", nodenet.NODE2_IP, "dev", "ext0",
                    "table", "100")
        nodenet._ip(node.name, "rule", "add", "from", CLIENT, "lookup", "100", "priority", "100")
    else:
        nodenet._ip(node.name, "route", "add", "10.244.9.0/24", "nexthop", "via", nodenet.NODE2_IP,
                    "nexthop", "via", next(iter(nodenet.CLIENTS)))
    _settled(watch, seen)
    deadline = time.monotonic() + 5
    while _gen(xdp) != 0:
        assert time.monotonic() < deadline, "the cache stayed on"
        time.sleep(0.01)
    before = _cached(xdp)
    for sport in (40000, 40001, 40002):
        verdict, out = _send(xdp, node, sport)
        assert verdict == "XDP_REDIRECT"
        assert out.dst == (nodenet.NODE2_MAC if routing == "rule" else nodenet.LOCAL_POD_MAC)
    assert _cached(xdp) == before
    seen = watch.changes
    if routing == "rule":
        nodenet._ip(node.name, "rule", "del", "priority", "100")
    else:
        nodenet._ip(node.name, "route", "del", "10.244.9.0/24")
    _settled(watch, seen)
    assert _gen(xdp) > 0


def test_closing_the_watcher_turns_the_cache_off_and_generations_are_never_reused(xdp: Harness, node):
    w = fibwatch.start(xdp.dp.table(fibwatch.MAP), node.name)
    first = _gen(xdp)
    w.stop()
    assert not w.thread.is_alive() and _gen(xdp) == 0
    w = fibwatch.start(xdp.dp.table(fibwatch.MAP), node.name)
    try:
        assert _gen(xdp) > first
    finally:
        w.stop()


@contextmanager
def _cache_on_without_a_watcher(xdp: Harness):
    """The cache on under a generation no watcher moves (a slot then lives its TTL, as
    after a watcher died), and off again after."""
    table = xdp.dp.table(fibwatch.MAP)
    leaf = table[0]
    leaf.gen = leaf.reserved = int(leaf.reserved) + 1
    table[0] = leaf
    try:
        yield
    finally:
        leaf.gen = 0
        table[0] = leaf


def test_without_a_watcher_a_slot_lives_at_most_the_ttl(xdp: Harness, node):
    """A watcher that died leaves its generation in the map: the TTL bounds how long a
    change goes unseen."""
    with _cache_on_without_a_watcher(xdp):
        _send(xdp, node, 40000)
        nodenet._ip(node.name, "neigh", "replace", nodenet.LOCAL_POD, "lladdr", NEW_MAC, "dev", "pod0",
                    "nud", "permanent")
        assert _send(xdp, node, 40001)[1].dst == nodenet.LOCAL_POD_MAC   # the stale slot, as documented
        time.sleep(TTL_S + 0.1)
        assert _send(xdp, node, 40002)[1].dst == NEW_MAC


def test_forwarding_turned_off_on_the_ingress_device_is_followed_by_the_next_frame(xdp: Harness, node, watch):
    """The lookup refuses frames from a device that does not forward (FWD_DISABLED): a
    cached answer must not outlive the sysctl (an RTM_NEWNETCONF message)."""
    _send(xdp, node, 40000)
    assert _send(xdp, node, 40001)[0] == "XDP_REDIRECT"
    seen = watch.changes
    netns.sysctl(node.name, {"net.ipv4.conf.ext0.forwarding": 0})
    _settled(watch, seen)
    verdict, out = _send(xdp, node, 40002)
    assert verdict == "XDP_PASS" and out[IP].ttl == 64


# Two frames whose keys share a slot: the slot answers only for the key it holds. The
# slot is the program's own hash (csrc/flowhash.h, through cffi); the addresses below
# are found by trying them, and that they share a slot is read back from the cache.
FAR = "10.250.0.0/16"          # routed via node2 by the tests below


def _slot(ip: str, ifindex: int) -> int:
    return lib.svcxdp_ffi_fib_cache_slot(ip_to_be32(ip), ifindex, const("FIB_CACHE_BITS"))


def _far(want) -> str:
    """The first address of FAR for which `want(ip)` holds."""
    base = int.from_bytes(socket.inet_aton(FAR.split("/")[0]), "big")
    for n in range(base, base + (1 << 16)):
        ip = socket.inet_ntoa(n.to_bytes(4, "big"))
        if want(ip):
            return ip
    raise AssertionError(f"no address of {FAR} found")


def _held(xdp: Harness, slot: int) -> tuple[str, int, str]:
    """(destination, ingress ifindex, source address or 0.0.0.0) this CPU's slot holds."""
    entry = xdp.dp.table("fib_cache")[ctypes.c_uint32(slot)][CPU]
    return be32_to_ip(int(entry.dst)), int(entry.iif), be32_to_ip(int(entry.src))


def _far_service(xdp: Harness, node, watch, backend: str) -> None:
    seen = watch.changes
    nodenet._ip(node.name, "route", "add", FAR, "via", nodenet.NODE2_IP, "dev", "ext0")
    _settled(watch, seen)
    xdp.writer.upsert(ServiceState(Frontend(VIP, 54, "UDP"), (Backend(backend, 5353),), "random"))


def _send_to(xdp: Harness, node, dport: int, ifindex: int) -> tuple[str, Ether]:
    pkt = Ether(src=CLIENT_MAC, dst=node.ext_mac) / IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=dport)

    def on_one_cpu():
        os.sched_setaffinity(0, {CPU})
        return xdp.runner.run(bytes(pkt), 1, ifindex)
    res = node.call(on_one_cpu)
    return res.verdict_name, Ether(res.data)


def test_a_slot_answers_only_for_its_own_destination(xdp: Harness, node, watch):
    slot = _slot(nodenet.LOCAL_POD, node.ext_ifindex)
    far = _far(lambda ip: _slot(ip, node.ext_ifindex) == slot)
    _far_service(xdp, node, watch, far)
    assert _send_to(xdp, node, 53, node.ext_ifindex)[1].dst == nodenet.LOCAL_POD_MAC
    assert _held(xdp, slot)[:2] == (nodenet.LOCAL_POD, node.ext_ifindex)
    before = _cached(xdp)
    verdict, out = _send_to(xdp, node, 54, node.ext_ifindex)   # same slot, another next hop
    assert verdict == "XDP_REDIRECT" and (out.dst, out[IP].dst) == (nodenet.NODE2_MAC, far)
    assert _cached(xdp) == before and _held(xdp, slot)[:2] == (far, node.ext_ifindex)


def test_a_slot_answers_only_for_its_own_ingress_device(xdp: Harness, node, watch):
    """The same destination from a device that does not forward: the lookup refuses
    it, whatever the slot remembers of the device that does."""
    # The slot hash keeps an ifindex's low 12 bits: this device shares every slot with ext0
    other = node.ext_ifindex + (1 << 12)
    nodenet._ip(node.name, "link", "add", "fwdoff0", "index", str(other), "type", "veth", "peer", "name", "fwdoff0p")
    for dev in ("fwdoff0", "fwdoff0p"):
        nodenet._ip(node.name, "link", "set", dev, "up")
    netns.sysctl(node.name, {"net.ipv4.conf.fwdoff0.forwarding": 0})
    far = _far(lambda ip: _slot(ip, node.ext_ifindex) == _slot(ip, other))
    slot = _slot(far, other)
    _far_service(xdp, node, watch, far)
    assert _send_to(xdp, node, 54, node.ext_ifindex)[0] == "XDP_REDIRECT"
    assert _held(xdp, slot)[:2] == (far, node.ext_ifindex)
    before = _cached(xdp)
    verdict, out = _send_to(xdp, node, 54, other)
    assert verdict == "XDP_PASS" and out[IP].ttl == 64 and _cached(xdp) == before


# NodePort to a backend on another node (nodeport.h): the tail looks the route up twice
# per new flow (is the backend behind the interface the client came in on, and with
# which source address; then where the frame goes), both through the cache.
NODE_PORT = 30053
NEW_NODE_IP = "192.168.1.41"


def _send_external(xdp: Harness, node, sport: int) -> tuple[str, Ether]:
    pkt = (Ether(src=CLIENT_MAC, dst=node.ext_mac) / IP(src=CLIENT, dst=nodenet.NODE_IP) /
           UDP(sport=sport, dport=NODE_PORT))
    runner = TestRunner(xdp.dp.external_prog_fd)

    def on_one_cpu():
        os.sched_setaffinity(0, {CPU})
        return runner.run(bytes(pkt), 1, node.ext_ifindex)
    res = node.call(on_one_cpu)
    return res.verdict_name, Ether(res.data)


@pytest.fixture
def node_port(xdp: Harness, node) -> None:
    fe = Frontend(nodenet.NODE_IP, NODE_PORT, "UDP", "external")
    xdp.writer.upsert(ServiceState(fe, (Backend(nodenet.REMOTE_POD, 5353),), "random"))


def test_a_nodeport_flow_to_another_node_takes_its_route_and_source_from_the_cache(xdp: Harness, node,
                                                                                    node_port):
    """No watcher: the slot lives its TTL, so a frame sent after the neighbour and the
    node's address changed shows what the NodePort path took from the cache."""
    with _cache_on_without_a_watcher(xdp):
        verdict, out = _send_external(xdp, node, 40000)
        assert verdict == "XDP_TX" and (out.dst, out[IP].src, out[IP].dst) == \
            (nodenet.NODE2_MAC, nodenet.NODE_IP, nodenet.REMOTE_POD)
        assert _held(xdp, _slot(nodenet.REMOTE_POD, node.ext_ifindex)) == \
            (nodenet.REMOTE_POD, node.ext_ifindex, nodenet.NODE_IP)
        nodenet._ip(node.name, "neigh", "replace", nodenet.NODE2_IP, "lladdr", NEW_MAC, "dev", "ext0",
                    "nud", "permanent")
        nodenet._ip(node.name, "addr", "add", f"{NEW_NODE_IP}/24", "dev", "ext0")
        nodenet._ip(node.name, "route", "replace", "10.244.2.0/24", "via", nodenet.NODE2_IP, "dev", "ext0",
                    "src", NEW_NODE_IP)
        verdict, out = _send_external(xdp, node, 40001)   # a new flow: both lookups cached
        assert verdict == "XDP_TX" and (out.dst, out[IP].src) == (nodenet.NODE2_MAC, nodenet.NODE_IP)
        time.sleep(TTL_S + 0.1)
        verdict, out = _send_external(xdp, node, 40002)
        assert verdict == "XDP_TX" and (out.dst, out[IP].src) == (NEW_MAC, NEW_NODE_IP)


def test_nodeport_frames_sent_on_from_the_cache_are_counted(xdp: Harness, node, node_port):
    """`fib_cached` counts the NodePort path's frames too: a new flow's (its SNAT lookup
    filled the slot its next hop is then read from) and its next frame's; none while the
    cache is off."""
    with _cache_on_without_a_watcher(xdp):
        before = _cached(xdp)
        assert _send_external(xdp, node, 40000)[0] == "XDP_TX"
        assert _cached(xdp) == before + 1
        assert _send_external(xdp, node, 40000)[0] == "XDP_TX"   # the flow's next frame
        assert _cached(xdp) == before + 2
    assert _send_external(xdp, node, 40000)[0] == "XDP_TX"
    assert _cached(xdp) == before + 2


def test_a_nodeport_flow_follows_a_new_node_address_with_the_next_frame(xdp: Harness, node, watch,
                                                                         node_port):
    """The SNAT address is the FIB's source for the route: an address change (an
    RTM_NEWADDR/DELADDR message) moves the generation like a route change."""
    assert _send_external(xdp, node, 40000)[1][IP].src == nodenet.NODE_IP
    assert _send_external(xdp, node, 40001)[1][IP].src == nodenet.NODE_IP
    seen = watch.changes
    netns.sysctl(node.name, {"net.ipv4.conf.ext0.promote_secondaries": 1})
    nodenet._ip(node.name, "addr", "add", f"{NEW_NODE_IP}/24", "dev", "ext0")
    nodenet._ip(node.name, "addr", "del", f"{nodenet.NODE_IP}/24", "dev", "ext0")
    _settled(watch, seen)
    verdict, out = _send_external(xdp, node, 40002)
    assert verdict == "XDP_TX" and (out[IP].src, out.dst) == (NEW_NODE_IP, nodenet.NODE2_MAC)


def test_a_slot_the_pods_path_filled_gives_nodeport_no_source_address(xdp: Harness, node, watch, node_port):
    """The pods' path looks up without asking for the source and fills the slot with
    none: the NodePort path looks up again rather than source-NAT to 0.0.0.0."""
    xdp.writer.upsert(ServiceState(Frontend(VIP, 55, "UDP"), (Backend(nodenet.REMOTE_POD, 5353),), "random"))
    assert _send_to(xdp, node, 55, node.ext_ifindex)[0] == "XDP_REDIRECT"
    slot = _slot(nodenet.REMOTE_POD, node.ext_ifindex)
    assert _held(xdp, slot) == (nodenet.REMOTE_POD, node.ext_ifindex, "0.0.0.0")
    verdict, out = _send_external(xdp, node, 40000)   # as long as the pods' frame: the slot is fresh for it
    assert verdict == "XDP_TX" and out[IP].src == nodenet.NODE_IP
    assert _held(xdp, slot) == (nodenet.REMOTE_POD, node.ext_ifindex, nodenet.NODE_IP)
