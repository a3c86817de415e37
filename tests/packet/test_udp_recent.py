"""ct_udp_recent: a UDP datagram on the pod-facing entry point skips its conntrack lookup
only where the filter is sure the tuple has no live entry (bpf/conntrack.h,
ct_udp_absent), and every write or refresh of a UDP flow's conntrack entry stamps it.

Slots are aged by writing their tags from user space on the datapath's clock
(udprecent.py computes the program's slot and tag), so nothing here waits."""
from __future__ import annotations

import dataclasses
import os
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane import udprecent
from controlplane.dataplane.affinity_maps import coarse_now_ns
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.flows import Timeouts
from controlplane.dataplane.pinned import PinnedMaps
from controlplane.dataplane.program import Dataplane, reset
from controlplane.dataplane.trace import Packet, trace

from .harness import CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta
from .test_trace import pin_dataplane, unpin

pytestmark = pytest.mark.root

SEC = 10**9
BACKEND_PORT = 5353
SURE = udprecent.SURE_AGE   # epochs (3): a slot this old says "certainly not in conntrack"
UDP_TIMEOUT_S = 240   # the pinned dataplane below (the others use the shared test dataplane's)
# its next agent's: epochs half as long (137 s against 275 s), and still long enough for the
# flow to outlive a build (~20 s here, over 30 s in a loaded CI run: 30 s, as this was, was
# too short then, as 10 s had been before it)
SHORTER_TIMEOUT_S = 120
SMALL = dict(ct_size=1024, max_services=8, max_backends=16, max_slots=64, frag_size=64, affinity_size=64,
             sock_revnat_size=64, udp_timeout_s=UDP_TIMEOUT_S)


def datagram(sport: int) -> Ether:
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=sport, dport=53) / Raw(b"q")


def udp_service(h: Harness) -> None:
    h.service(port=53, protocol="UDP", backend_port=BACKEND_PORT, algorithm="rr")


def flow_key(h: Harness, sport: int):
    """The conntrack key of CLIENT:sport -> VIP:53 (the only entry with that source port)."""
    for k in h.dp.table("conntrack").keys():
        if k.dir == 0 and socket_port(k.sport) == sport:
            return k
    raise AssertionError(f"no conntrack entry for source port {sport}")


def socket_port(be16: int) -> int:
    return ((be16 & 0xFF) << 8) | (be16 >> 8)


def tag(h: Harness, k) -> int:
    return udprecent.read(h.dp.table(udprecent.MAP), k.src, k.dst, k.sport, k.dport)


def set_age(h: Harness, k, age: int) -> None:
    """Tag the key's slot as stamped `age` epochs ago. Not within a second of the next
    epoch, so the age still holds when the test's packets run."""
    epoch_ns = 1 << udprecent.epoch_shift(h.dp.config.udp_timeout_s)
    left = epoch_ns - coarse_now_ns() % epoch_ns
    if left < SEC:
        time.sleep(left / SEC + 0.05)
    e = udprecent.epoch(coarse_now_ns(), h.dp.config.udp_timeout_s)
    set_tag(h, k, udprecent.tag_of_epoch(e - age))


def set_tag(h: Harness, k, t: int) -> None:
    udprecent.write(h.dp.table(udprecent.MAP), k.src, k.dst, k.sport, k.dport, t)


def stamped_since(h: Harness, since_ns: int) -> set[int]:
    """The tags a stamp written between `since_ns` and now may carry (two, if an epoch
    began in between)."""
    return {udprecent.tag(t, h.dp.config.udp_timeout_s) for t in (since_ns, coarse_now_ns())}


def confirmed_flow(h: Harness, sport: int):
    """Two datagrams: the flow confirmed in conntrack. Returns (its key, its backend)."""
    q = datagram(sport)
    backend = h.send(q).pkt[IP].dst
    assert h.send(q).pkt[IP].dst == backend
    return flow_key(h, sport), backend


def test_confirming_a_udp_flow_stamps_its_slot(xdp: Harness):
    t0 = coarse_now_ns()
    udp_service(xdp)
    k, _ = confirmed_flow(xdp, 46000)
    assert tag(xdp, k) in stamped_since(xdp, t0)


def test_a_datagram_skips_conntrack_only_where_the_filter_is_sure(xdp: Harness):
    """A slot SURE epochs old: the lookup is skipped (shown here against an entry kept
    current on purpose, which the program never leaves so); one epoch younger: looked up."""
    udp_service(xdp)
    k, backend = confirmed_flow(xdp, 46001)
    packet, timeouts = Packet(CLIENT, 46001, VIP, 53, "UDP"), Timeouts(udp=xdp.dp.config.udp_timeout_s)
    set_age(xdp, k, SURE - 1)                   # maybe there
    assert trace(xdp.dp, packet, timeouts=timeouts).reason == "ct_hit"
    before = xdp.counters()
    assert xdp.send(datagram(46001)).pkt[IP].dst == backend
    assert delta(before, xdp.counters()) == {"ct_hit": 1}
    set_age(xdp, k, SURE)                       # certainly not there
    t = trace(xdp.dp, packet, timeouts=timeouts)   # svcctl trace predicts the skip
    assert t.reason == "ct_new" and any("ct_udp_recent" in n for n in t.notes), t
    before = xdp.counters()
    assert xdp.send(datagram(46001)).pkt[IP].dst != backend   # rr moved on: a new flow
    assert delta(before, xdp.counters()) == {"ct_new": 1}


@pytest.mark.parametrize("age", [SURE, SURE - 1])
def test_an_expired_flow_is_replaced_whether_or_not_its_slot_is_old(xdp: Harness, age: int):
    """What the filter really meets: an entry idle past the UDP timeout. Behind an old
    slot the new flow waits in the pods' table and its second datagram replaces the
    old entry; behind a recent one the first datagram replaces it in place. Either
    way the slot is stamped when conntrack is written."""
    udp_service(xdp)
    k, backend = confirmed_flow(xdp, 46002)
    table = xdp.dp.table("conntrack")
    v = table[k]
    v.last_seen = coarse_now_ns() - (xdp.dp.config.udp_timeout_s + 2) * SEC
    table[k] = v
    set_age(xdp, k, age)   # SURE: certainly not there; less: maybe
    t0 = coarse_now_ns()
    q = datagram(46002)
    fresh = xdp.send(q).pkt[IP].dst
    assert fresh != backend
    if age == SURE:   # skipped: the old entry is left for the confirmation to replace
        assert len(xdp.dp.table("ct_unconfirmed_pod")) == 1 and socket_ip(table[k].nat_ip) == backend
        assert xdp.send(q).pkt[IP].dst == fresh
    assert len(xdp.dp.table("ct_unconfirmed_pod")) == 0
    assert socket_ip(table[k].nat_ip) == fresh
    assert tag(xdp, k) in stamped_since(xdp, t0)


def socket_ip(be32: int) -> str:
    return ".".join(str((be32 >> s) & 0xFF) for s in (0, 8, 16, 24))


@pytest.mark.parametrize("by", ["forward", "reply"])
def test_a_refresh_of_a_udp_flow_stamps_its_slot(xdp: Harness, by: str):
    """A flow kept alive by its forward datagrams, or by its backend's answers alone,
    is never skipped: the refresh (at most once a second) stamps again."""
    udp_service(xdp)
    k, backend = confirmed_flow(xdp, 46003)
    table = xdp.dp.table("conntrack")
    v = table[k]
    v.last_seen -= 2 * SEC   # due for a refresh
    table[k] = v
    set_age(xdp, k, SURE - 1)   # still looked up
    t0 = coarse_now_ns()
    if by == "forward":
        out = xdp.send(datagram(46003))
        assert out.pkt[IP].dst == backend
    else:
        answer = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=CLIENT) / UDP(sport=BACKEND_PORT, dport=46003) / Raw(b"a")
        assert xdp.send(answer).pkt[IP].src == VIP
    assert tag(xdp, k) in stamped_since(xdp, t0)


def test_tcp_packets_ignore_the_filter(xdp: Harness):
    xdp.service(algorithm="rr")
    syn = xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=46004, dport=80, flags="S"))
    backend = syn.pkt[IP].dst
    answer = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=CLIENT) / TCP(sport=8080, dport=46004, flags="SA")
    xdp.send(answer)
    ack = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=46004, dport=80, flags="A")
    xdp.send(ack)
    k = flow_key(xdp, 46004)
    set_tag(xdp, k, 0)   # never stamped: "certainly not there", were it UDP
    before = xdp.counters()
    assert xdp.send(ack).pkt[IP].dst == backend
    assert delta(before, xdp.counters()) == {"ct_hit": 1}


@pytest.mark.parametrize("restart", ["filter new", "timeout changed"])
def test_a_program_loaded_over_an_adopted_conntrack_starts_with_maybe(restart: str):
    """The next agent adopts the pinned conntrack and must not skip the UDP flows it
    finds there: not when the filter is new beside it (the agent before had none), nor
    when --udp-timeout changed (the same stamps, other epochs): program.py fills the
    filter with "maybe" (udprecent.fill_maybe)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    config = DataplaneConfig(instance="pytest-udp-recent-pins", **SMALL)
    reset(config)
    dp = Dataplane.load(config)
    try:
        h = Harness(dp)
        udp_service(h)
        k, backend = confirmed_flow(h, 46005)
        if restart == "timeout changed":
            # The same tags read as epochs of another length can say anything; leave one
            # that says "certainly not there" under the next timeout (one epoch to spare).
            e = udprecent.epoch(coarse_now_ns(), SHORTER_TIMEOUT_S)
            set_tag(h, k, udprecent.tag_of_epoch(e - SURE - 1))
    finally:
        dp.close()
    if restart == "filter new":
        (config.pin_dir / udprecent.MAP).unlink()    # as an agent without the filter left it
    else:
        config = dataclasses.replace(config, udp_timeout_s=SHORTER_TIMEOUT_S)
    t0 = coarse_now_ns()
    dp = Dataplane.load(config)
    try:
        h = Harness(dp)
        before = h.counters()
        assert h.send(datagram(46005)).pkt[IP].dst == backend
        assert delta(before, h.counters()) == {"ct_hit": 1}
        assert tag(h, k) in stamped_since(h, t0)
    finally:
        h.writer.sync([])
        dp.close()
        reset(config)


def test_trace_over_the_pins_of_a_build_without_the_filter_predicts_the_lookup(xdp: Harness):
    """`svcctl trace` against an older agent's pins (no ct_udp_recent): that program always
    looks in conntrack, and the trace says so instead of failing."""
    udp_service(xdp)
    k, backend = confirmed_flow(xdp, 46006)
    pins = pin_dataplane(xdp, f"pytest-udp-recent-old-{os.getpid()}")
    (pins / udprecent.MAP).unlink()
    maps = PinnedMaps(pins)
    try:
        set_age(xdp, k, SURE)   # what would make this build's program skip
        t = trace(maps, Packet(CLIENT, 46006, VIP, 53, "UDP"), timeouts=Timeouts(udp=xdp.dp.config.udp_timeout_s))
        assert (t.reason, t.choice.backend[0]) == ("ct_hit", backend), t
    finally:
        maps.close()
        unpin(pins)
