"""Flow behaviour over several packets: conntrack, reverse NAT, selection order,
backend changes mid-flow, fragments, ICMP errors, capacity and adoption."""
from __future__ import annotations

import collections
import ctypes as ct
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane import flowsets
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane, reset
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.writer import CapacityError, MapWriter

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta

pytestmark = pytest.mark.root


def tcp(sport=40000, flags="S", dst=VIP, dport=80, src=CLIENT, payload=b""):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / Raw(payload)


def udp(sport=40000, dst=VIP, dport=53, src=CLIENT, payload=b"q"):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def backend_of(h: Harness, pkt) -> str:
    out = h.send(pkt)
    assert out.verdict == "XDP_PASS"
    return out.pkt[IP].dst


def test_established_flow_sticks_to_its_backend(xdp: Harness):
    xdp.service()
    first = backend_of(xdp, tcp(flags="S"))
    before = xdp.counters()
    for _ in range(50):
        assert backend_of(xdp, tcp(flags="A", payload=b"x")) == first
    assert delta(before, xdp.counters()) == {"ct_hit": 50}


def test_reply_is_reverse_nated_to_the_vip(xdp: Harness):
    xdp.service(backend_port=8080)
    b = backend_of(xdp, tcp(sport=41000))
    reply = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=b, dst=CLIENT, ttl=63) / TCP(sport=8080, dport=41000, flags="SA") / Raw(b"hello")
    out = xdp.send(reply)
    assert out.verdict == "XDP_PASS"
    expected = reply.copy()
    expected[IP].src = VIP
    expected[TCP].sport = 80
    del expected[IP].chksum
    del expected[TCP].chksum
    assert out.raw == bytes(Ether(bytes(expected)))
    # A reply of no flow we know is left alone.
    stray = reply.copy()
    stray[TCP].dport = 41001
    assert xdp.send(stray).raw == bytes(stray)


def test_udp_reply_reverse_nat(xdp: Harness):
    xdp.service(port=53, protocol="UDP", backend_port=5353)
    b = backend_of(xdp, udp(sport=42000))
    out = xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=b, dst=CLIENT) / UDP(sport=5353, dport=42000) / Raw(b"answer"))
    assert (out.pkt[IP].src, out.pkt[UDP].sport) == (VIP, 53)
    assert out.pkt[UDP].chksum == UDP(bytes(out.pkt[UDP])).chksum  # parsed back
    p = out.pkt.copy(); del p[UDP].chksum; del p[IP].chksum
    assert bytes(Ether(bytes(p))) == out.raw


def test_round_robin_is_exactly_1_2_3(xdp: Harness):
    xdp.service(algorithm="rr")
    order = [backend_of(xdp, tcp(sport=43000 + i)) for i in range(9)]
    assert order == list(BACKENDS) * 3


def test_random_spreads_over_all_backends(xdp: Harness):
    xdp.service(algorithm="random")
    counts = collections.Counter(backend_of(xdp, tcp(sport=20000 + i)) for i in range(600))
    assert set(counts) == set(BACKENDS)
    # Uniform: each backend gets 200 ± a wide margin (p of failing < 1e-6).
    assert all(120 < n < 280 for n in counts.values()), counts


def test_removed_backend_flows_are_reselected_never_sent_to_it(xdp: Harness):
    fe = xdp.service(algorithm="rr")
    flows = {sport: backend_of(xdp, tcp(sport=sport)) for sport in range(44000, 44006)}
    gone = BACKENDS[0]
    xdp.writer.upsert(ServiceState(fe, tuple(Backend(ip, 8080) for ip in BACKENDS[1:]), "rr"))
    before = xdp.counters()
    for sport, old in flows.items():
        now = backend_of(xdp, tcp(sport=sport, flags="A"))
        assert now != gone
        if old != gone:
            assert now == old  # untouched flows keep their backend
    moved = sum(1 for b in flows.values() if b == gone)
    assert delta(before, xdp.counters()) == {"ct_hit": len(flows) - moved, "ct_new": moved, "ct_stale": moved}


def test_terminating_backend_drains_but_takes_no_new_flows(xdp: Harness):
    xdp.service(algorithm="rr")
    flows = {sport: backend_of(xdp, tcp(sport=sport)) for sport in range(45000, 45003)}
    draining = BACKENDS[1]
    xdp.service(algorithm="rr", states={draining: "terminating"})
    for sport, b in flows.items():
        assert backend_of(xdp, tcp(sport=sport, flags="A")) == b
    new = {backend_of(xdp, tcp(sport=46000 + i)) for i in range(20)}
    assert draining not in new and new == {BACKENDS[0], BACKENDS[2]}


def test_only_terminating_backends_left_still_serve(xdp: Harness):
    xdp.service(states={ip: "terminating" for ip in BACKENDS})
    assert backend_of(xdp, tcp(sport=47000)) in BACKENDS


def test_service_losing_all_backends_rejects_new_flows_keeps_none(xdp: Harness):
    fe = xdp.service(backends=(BACKENDS[0],))
    backend_of(xdp, tcp(sport=47100))
    xdp.writer.upsert(ServiceState(fe, ()))
    # the old flow's backend is gone: its next packet is answered with a RST
    assert xdp.send(tcp(sport=47100, flags="A")).verdict == "XDP_TX"


def test_fin_then_syn_reuses_tuple_with_a_new_selection(xdp: Harness):
    xdp.service(algorithm="rr")
    first = backend_of(xdp, tcp(sport=48000, flags="S"))
    backend_of(xdp, tcp(sport=48000, flags="FA"))
    again = backend_of(xdp, tcp(sport=48000, flags="S"))
    assert again != first  # rr moved on: a new flow, not the closing one


def test_fragments_follow_the_first_fragment(xdp: Harness):
    xdp.service(port=53, protocol="UDP", backend_port=5353, backends=(BACKENDS[0],))
    datagram = IP(src=CLIENT, dst=VIP, id=777) / UDP(sport=49000, dport=53) / Raw(b"F" * 64)
    frags = [Ether(src=CLIENT_MAC, dst=NODE_MAC) / f for f in
             __import__("scapy.layers.inet", fromlist=["fragment"]).fragment(datagram, fragsize=32)]
    assert len(frags) == 3
    outs = [xdp.send(f) for f in frags]
    assert all(o.verdict == "XDP_PASS" for o in outs)
    assert all(o.pkt[IP].dst == BACKENDS[0] for o in outs)
    assert outs[0].pkt[UDP].dport == 5353
    # Later fragments: only the address changed, IP checksum right.
    for f, o in zip(frags[1:], outs[1:]):
        exp = f.copy(); exp[IP].dst = BACKENDS[0]; del exp[IP].chksum
        assert o.raw == bytes(Ether(bytes(exp)))
    # Reassembled, the datagram's UDP checksum verifies at the backend.
    from scapy.layers.inet import defragment
    whole = defragment([o.pkt[IP] for o in outs])[0]
    assert whole[UDP].dport == 5353
    check = whole.copy(); del check[UDP].chksum
    assert IP(bytes(check))[UDP].chksum == whole[UDP].chksum


def test_unknown_later_fragment_passes_untouched(xdp: Harness):
    xdp.service(port=53, protocol="UDP")
    frag = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP, id=999, frag=4, proto=17) / Raw(b"z" * 16)
    before = xdp.counters()
    assert xdp.send(frag).raw == bytes(frag)
    assert delta(before, xdp.counters()) == {"frag_unknown": 1}


def test_icmp_error_from_backend_is_translated_for_the_client(xdp: Harness):
    xdp.service(port=53, protocol="UDP", backend_port=5353, backends=(BACKENDS[0],))
    fwd = xdp.send(udp(sport=50000))
    b = fwd.pkt[IP].dst
    # The backend has no listener and answers "port unreachable" about what it got.
    err = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=b, dst=CLIENT) / ICMP(type=3, code=3) / bytes(fwd.pkt[IP])[:28]
    before = xdp.counters()
    out = xdp.send(err)
    assert out.verdict == "XDP_PASS"
    got = out.pkt
    assert got[IP].src == VIP
    assert got[IPerror].dst == VIP and got[UDPerror].dport == 53
    assert got[IPerror].src == CLIENT and got[UDPerror].sport == 50000
    # Every checksum the client's kernel checks is right.
    exp = got.copy(); del exp[IP].chksum; del exp[ICMP].chksum; del exp[IPerror].chksum
    assert bytes(Ether(bytes(exp))) == out.raw
    assert delta(before, xdp.counters()) == {"icmp_nat": 1}


def test_an_icmp_error_quoting_a_later_fragment_is_not_taken_for_a_flow(xdp: Harness):
    """What follows a later fragment's quoted header is payload, not ports: bytes that
    happen to read as a tracked flow's ports were translated as an error about it."""
    xdp.service(port=53, protocol="UDP", backend_port=5353, backends=(BACKENDS[0],))
    fwd = xdp.send(udp(sport=50000))
    quote = bytearray(bytes(fwd.pkt[IP])[:28])
    quote[6:8] = (0x0004).to_bytes(2, "big")          # fragment offset 4 (its checksum left: not checked)
    err = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=fwd.pkt[IP].dst, dst=CLIENT) / ICMP(type=3, code=3) / bytes(quote)
    before = xdp.counters()
    out = xdp.send(err)
    assert (out.verdict, out.raw) == ("XDP_PASS", bytes(err))
    assert delta(before, xdp.counters()) == {"pass_non_service": 1}


def test_icmp_error_from_client_about_a_reply_reaches_the_backend(xdp: Harness):
    xdp.service(port=53, protocol="UDP", backend_port=5353, backends=(BACKENDS[0],))
    xdp.send(udp(sport=50001))
    reply = xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=BACKENDS[0], dst=CLIENT) / UDP(sport=5353, dport=50001) / Raw(b"a"))
    err = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / ICMP(type=3, code=3) / bytes(reply.pkt[IP])[:28]
    out = xdp.send(err)
    assert out.pkt[IP].dst == BACKENDS[0]
    assert (out.pkt[IPerror].src, out.pkt[UDPerror].sport) == (BACKENDS[0], 5353)


def test_per_service_counters(xdp: Harness):
    fe = xdp.service(backends=(BACKENDS[0],))
    svc_id = xdp.writer.svc_id(fe)
    p = tcp(sport=51000)
    for flags in ("S", "A", "A"):
        xdp.send(tcp(sport=51000, flags=flags))
    xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=BACKENDS[0], dst=CLIENT) / TCP(sport=8080, dport=51000, flags="A"))
    stats = xdp.dp.service_stats(svc_id)
    assert stats == {"packets": 4, "bytes": 4 * len(bytes(p)), "new_flows": 1, "rejects": 0}
    empty = xdp.service(vip="10.96.0.200", backends=())
    xdp.send(tcp(dst="10.96.0.200"))
    assert xdp.dp.service_stats(xdp.writer.svc_id(empty))["rejects"] == 1


def test_full_backend_map_is_refused_with_nothing_written(xdp: Harness):
    limit = xdp.dp.config.max_backends - 1
    fe = Frontend("10.96.9.9", 80)
    too_many = tuple(Backend(f"10.{240 + i // 65536}.{(i // 256) % 256}.{i % 256}", 80) for i in range(limit + 1))
    before_services = len(list(xdp.dp.table("services").keys()))
    with pytest.raises(CapacityError, match="max_backends"):
        xdp.writer.upsert(ServiceState(fe, too_many))
    assert len(list(xdp.dp.table("services").keys())) == before_services
    assert xdp.writer.svc_id(fe) is None
    assert xdp.send(tcp(dst="10.96.9.9")).verdict == "XDP_PASS"  # still no such service


def test_max_services_is_the_number_of_services_held():
    """max_services=4 holds four services (ids 1..4, id 0 means none), each
    working and counted; a fifth is refused naming the limit, nothing written."""
    dp = Dataplane.load(DataplaneConfig(instance="pytest-svc-cap", pin=False, ct_size=1024,
                                        max_services=4, max_backends=64, max_slots=64))
    try:
        h = Harness(dp)
        vips = [f"10.96.7.{i}" for i in range(1, 5)]
        fronts = [h.service(vip=v) for v in vips]
        assert sorted(h.writer.svc_id(fe) for fe in fronts) == [1, 2, 3, 4]
        for v, fe in zip(vips, fronts):
            assert h.send(tcp(dst=v)).pkt[IP].dst in BACKENDS
            assert dp.service_stats(h.writer.svc_id(fe))["new_flows"] == 1
        with pytest.raises(CapacityError, match="max_services=4"):
            h.service(vip="10.96.7.5")
        assert len(list(dp.table("services").keys())) == 4
        assert h.send(tcp(dst="10.96.7.5")).verdict == "XDP_PASS"

        # A restarted writer adopts the ids in the maps' (hash) order; once the
        # fresh ids are used up it may reuse only the one really free (issue 14:
        # it used to hand out live ids, and over-report what was left).
        for gone in range(4):
            h.writer.delete(fronts[gone])
            w = MapWriter(dp)
            assert w.upsert(ServiceState(fronts[gone], (Backend(BACKENDS[0], 8080),))) == gone + 1
            assert sorted(w.svc_id(fe) for fe in fronts) == [1, 2, 3, 4]
            with pytest.raises(CapacityError, match="max_services=4"):
                w.upsert(ServiceState(Frontend("10.96.7.5", 80), (Backend(BACKENDS[0], 8080),)))
            h.writer = w
    finally:
        dp.close()


def test_conntrack_idle_timeout_then_new_selection():
    """A dataplane with a 1 s UDP timeout: after 2 s idle a flow is new again."""
    dp = Dataplane.load(DataplaneConfig(instance="pytest-timeout", pin=False, ct_size=4096,
                                        max_services=64, max_backends=64, max_slots=64,
                                        udp_timeout_s=1))
    try:
        h = Harness(dp)
        h.service(port=53, protocol="UDP", algorithm="rr")
        first = backend_of(h, udp(sport=52000))
        assert backend_of(h, udp(sport=52000)) == first
        time.sleep(2.2)
        assert backend_of(h, udp(sport=52000)) != first
    finally:
        dp.close()


def test_the_unconfirmed_tables_take_the_sizes_they_are_given():
    """`ct_unconfirmed_pod` (--ct-unconfirmed-pod-size) sizes the table of pods' one-packet
    flows apart from conntrack and from ct_unconfirmed (--ct-unconfirmed-size, external
    clients'): the maps have exactly those sizes, older one-packet flows from pods make
    room for new ones there, and a flow still held is kept on its backend by its second
    packet."""
    from controlplane.dataplane.libbpf import map_info
    dp = Dataplane.load(DataplaneConfig(instance="pytest-unconfirmed", pin=False, ct_size=4096,
                                        ct_unconfirmed=512, ct_unconfirmed_pod=64, max_services=64,
                                        max_backends=64, max_slots=64))
    try:
        table = dp.table("ct_unconfirmed_pod")   # 64 entries in sets of WAYS (flowsets.py)
        assert (map_info(dp.raw_table("ct_unconfirmed_pod").map_fd).max_entries, table.max_entries) == \
            (64 // flowsets.WAYS, 64)
        assert (map_info(dp.raw_table("ct_unconfirmed").map_fd).max_entries,
                dp.table("ct_unconfirmed").max_entries) == (512 // flowsets.WAYS, 512)
        assert map_info(dp.table("conntrack").map_fd).max_entries == 4096
        h = Harness(dp)
        h.service(port=53, protocol="UDP", algorithm="rr")
        firsts = [backend_of(h, udp(sport=sport)) for sport in range(50000, 50300)]
        assert 0 < len(table) <= 64
        # rr hands the next new flow the next backend: the newest flow's second packet
        # returns to its own only if its entry is still there
        assert backend_of(h, udp(sport=50299)) == firsts[-1]
    finally:
        dp.close()


def test_restarted_loader_adopts_pinned_maps_without_flushing():
    cfg = DataplaneConfig(instance="pytest-adopt", ct_size=4096, max_services=64, max_backends=64,
                          max_slots=64)
    reset(cfg)
    dp = Dataplane.load(cfg)
    try:
        h = Harness(dp)
        fe = h.service(algorithm="rr")
        # 4 flows: not a whole rr cycle of 3, so a reset cursor would be seen
        flows = {s: backend_of(h, tcp(sport=s)) for s in range(53000, 53004)}
        assert list(flows.values()) == [*BACKENDS, BACKENDS[0]]
        dp.close()
        # "Agent restart": a new process state, the same pins.
        dp = Dataplane.load(cfg)
        w = MapWriter(dp)
        assert w.installed()[fe].backends == tuple(Backend(ip, 8080) for ip in BACKENDS)
        assert dp.service_stats(w.svc_id(fe))["new_flows"] == 4   # counters kept
        run = TestRunner(dp.prog_fd)
        before = dp.counters()
        for s, b in flows.items():
            out = run.run(bytes(tcp(sport=s, flags="A")))
            assert Ether(out.data)[IP].dst == b
        # every ACK found its flow: conntrack was not flushed (an ACK of an unknown
        # tuple would have opened a new flow, and rr would have moved on)
        assert delta(before, dp.counters()) == {"ct_hit": 4}
        # rr continues where it was (the 5th flow is the 2nd backend), ids continue
        out = run.run(bytes(tcp(sport=53010)))
        assert Ether(out.data)[IP].dst == BACKENDS[1]
        assert w.upsert(ServiceState(Frontend("10.96.0.77", 80), (Backend("10.244.9.9", 80),))) == 2
    finally:
        dp.close()
        reset(cfg)
