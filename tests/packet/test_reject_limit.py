"""The rejects the program answers itself are rate-limited (bpf/reject.h reject_allowed), as
the kernel limits its ICMP errors: without a limit, a flood with spoofed sources to a
service without endpoints made the node answer every frame at line rate, a reflector;
kube-proxy's REJECT rules answer within the kernel's ICMP limits.

A dataplane built with a budget of 2 rejects a second and a burst of 5, per CPU; the tests
run on one CPU (test-run executes on the caller's), so one bucket is spent. A token
earned while a test runs (a stalled machine) is allowed for, never required."""
from __future__ import annotations

import dataclasses
import math
import os
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from controlplane.dataplane import readout
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane

from . import nodenet
from .conftest import TEST_CONFIG
from .harness import CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta

BURST = 5
RATE = 2          # a token every 0.5 s
TOKEN_S = 1 / RATE
LIMITED = dataclasses.replace(TEST_CONFIG, instance="pytest-rejects", reject_rate=RATE, reject_burst=BURST)


@pytest.fixture(scope="module")
def limited():
    dp = Dataplane.load(LIMITED)
    try:
        yield Harness(dp)
    finally:
        dp.close()


@pytest.fixture
def one_cpu():
    """This thread (and the helper threads it starts, nodenet.call) on one CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture
def h(limited: Harness, one_cpu):
    limited.reset()
    limited.service(backends=())
    limited.service(port=53, protocol="UDP", backends=())
    time.sleep(BURST * TOKEN_S + 0.05)   # the bucket full again, whatever spent it
    yield limited
    limited.reset()


def _syn(sport: int) -> Ether:
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S")


def _earnable(since: float) -> int:
    """Tokens the bucket may have earned since `since` (monotonic): 0 unless it stalled."""
    return math.ceil((time.monotonic() - since) / TOKEN_S)


def test_rejects_beyond_the_burst_are_dropped_unanswered_and_still_counted_as_rejects(h: Harness):
    before = h.counters()
    start = time.monotonic()
    verdicts = [h.send(_syn(40000 + i)).verdict for i in range(BURST + 7)]
    # a UDP reject spends from the same budget
    verdicts.append(h.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) /
                           UDP(sport=5000, dport=53)).verdict)
    extra = _earnable(start)
    answered = verdicts.count("XDP_TX")
    assert verdicts[:BURST] == ["XDP_TX"] * BURST
    assert set(verdicts) == {"XDP_TX", "XDP_DROP"} and BURST <= answered <= BURST + extra
    moved = delta(before, h.counters())
    assert moved["reject"] == answered and moved["reject_limited"] == len(verdicts) - answered
    # refused all the same: the service counts every frame it could not serve
    svc_id = h.writer.svc_id(Frontend(VIP, 80, "TCP"))
    assert readout.all_service_stats(h.dp)[svc_id][3] == BURST + 7   # (packets, bytes, new flows, rejects)


def test_the_budget_refills_a_token_at_a_time_keeping_fractions(h: Harness):
    """A token every 1/RATE s, its fraction kept across answers: 1.5 tokens' time, one
    answer; 0.6 more, and the half kept makes another one."""
    for i in range(BURST):
        assert h.send(_syn(41000 + i)).verdict == "XDP_TX"
    spent = time.monotonic()
    if h.send(_syn(41100)).verdict == "XDP_TX":   # only if a token came meanwhile
        assert _earnable(spent) >= 1
    time.sleep(1.5 * TOKEN_S)
    out = h.send(_syn(41200))
    assert out.verdict == "XDP_TX" and out.pkt[TCP].flags == "RA"
    after_one = time.monotonic()
    follow = h.send(_syn(41201)).verdict
    assert follow == "XDP_DROP" or _earnable(after_one) >= 1
    time.sleep(0.6 * TOKEN_S)
    assert h.send(_syn(41300)).verdict == "XDP_TX"   # lost with the fraction: DROP


@pytest.fixture
def node():
    with nodenet.created() as n:
        yield n


def test_fragmentation_needed_is_not_limited(h: Harness, node):
    """The kernel never limits "fragmentation needed" (path MTU discovery must not
    stall), nor does the program: with the reject budget spent, it is still answered."""
    for i in range(BURST):
        h.send(_syn(42000 + i))
    assert h.send(_syn(42100)).verdict == "XDP_DROP"
    h.writer.upsert(ServiceState(Frontend(VIP, 8443, "TCP"), (Backend(nodenet.LOCAL_POD, 8443),), "random"))
    nodenet._ip(node.name, "link", "set", "pod0", "mtu", "1000")
    client, client_mac = next(iter(nodenet.CLIENTS.items()))
    big = (Ether(src=client_mac, dst="02:00:00:00:00:02") / IP(src=client, dst=VIP, flags="DF") /
           TCP(sport=40000, dport=8443, flags="S") / (b"x" * 1200))
    before = h.counters()
    outs = [node.call(h.runner.run, bytes(big), 1, node.ext_ifindex) for _ in range(BURST + 2)]
    assert [o.verdict_name for o in outs] == ["XDP_TX"] * (BURST + 2)
    assert all((Ether(o.data)[ICMP].type, Ether(o.data)[ICMP].code) == (3, 4) for o in outs)
    moved = delta(before, h.counters())
    assert moved["frag_needed"] == BURST + 2 and "reject_limited" not in moved
