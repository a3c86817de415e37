"""Conntrack and fragment state as time and other CPUs leave it: an entry another
CPU refreshed a moment "in the future", a fragment record past the reassembly
timeout, and flows whose backend id was handed to another backend.

Entries are aged or moved forward by writing them from user space on the
datapath's own clock (CLOCK_MONOTONIC_COARSE = bpf_ktime_get_coarse_ns), so
nothing here waits or depends on timing."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane.model import Backend, Frontend, ServiceState

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta
from .reference_model import FRAG_TIMEOUT_NS, ReferenceDatapath, datapath_clock_ns
from .test_differential import run_packet

pytestmark = pytest.mark.root

SEC = 10**9


def tcp(sport, flags, src=CLIENT, dst=VIP, dport=80):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def set_ct_last_seen(xdp: Harness, last_seen: int) -> int:
    """Stamp every conntrack entry with `last_seen`; returns how many there were."""
    table = xdp.dp.table("conntrack")
    items = list(table.items())
    for k, v in items:
        v.last_seen = last_seen
        table[k] = v
    return len(items)


def test_entry_refreshed_by_another_cpu_a_moment_later_is_alive(xdp: Harness):
    """Another CPU's refresh can leave last_seen a little after this CPU's clock
    read. As unsigned, `now - last_seen` wrapped to a huge idle time: the live
    flow's reply left un-NATed and its next packet was sent to another backend."""
    xdp.service(algorithm="rr")
    syn = xdp.send(tcp(41000, "S"))
    backend = syn.pkt[IP].dst
    assert set_ct_last_seen(xdp, datapath_clock_ns() + 2 * SEC) == 1

    before = xdp.counters()
    reply = Ether() / IP(src=backend, dst=CLIENT) / TCP(sport=8080, dport=41000, flags="SA")
    out = xdp.send(reply)
    assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP, 80)
    ack = xdp.send(tcp(41000, "A"))
    assert ack.pkt[IP].dst == backend
    assert delta(before, xdp.counters()) == {"revnat": 1, "ct_hit": 1}


def test_entry_idle_past_its_timeout_is_still_expired(xdp: Harness):
    """The signed comparison keeps real expiry: idle past the UDP timeout, a
    flow is chosen afresh."""
    xdp.service(port=53, protocol="UDP", backend_port=5353, algorithm="rr")
    pkt = Ether() / IP(src=CLIENT, dst=VIP) / UDP(sport=42000, dport=53) / Raw(b"q")
    first = xdp.send(pkt).pkt[IP].dst
    timeout = xdp.dp.config.udp_timeout_s * SEC
    set_ct_last_seen(xdp, datapath_clock_ns() - timeout - 2 * SEC)
    before = xdp.counters()
    assert xdp.send(pkt).pkt[IP].dst != first  # rr moved on: a new flow
    assert delta(before, xdp.counters()) == {"ct_new": 1}


def udp_fragments(ident: int):
    datagram = IP(src=CLIENT, dst=VIP, id=ident) / UDP(sport=43000, dport=53) / Raw(b"F" * 64)
    return [bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / f) for f in fragment(datagram, fragsize=32)]


def set_frag_created(xdp: Harness, model: ReferenceDatapath, created: int) -> None:
    table = xdp.dp.table("fragments")
    items = list(table.items())
    assert len(items) == 1 and len(model.fragments) == 1
    for k, v in items:
        v.created = created
        table[k] = v
    for key, (nat_ip, direction, _) in model.fragments.items():
        model.fragments[key] = (nat_ip, direction, created)


@pytest.mark.parametrize("age_s, translated", [(FRAG_TIMEOUT_NS // SEC - 5, True),
                                               (FRAG_TIMEOUT_NS // SEC + 5, False),
                                               (-2, True)])  # recorded by another CPU "later"
def test_fragment_record_serves_only_within_the_reassembly_timeout(xdp: Harness, age_s, translated):
    """A first fragment's record translates later fragments for as long as the kernel
    keeps a reassembly queue (ipfrag_time, 30 s); after that the IP id may have been
    reused by another datagram, which must not be sent to the old one's backend.
    Program and reference model agree on every fragment."""
    xdp.service(port=53, protocol="UDP", backend_port=5353, backends=(BACKENDS[0],))
    model = ReferenceDatapath()
    model.load(xdp.writer)
    first, *later = udp_fragments(ident=901)
    run_packet(first, xdp, model)
    set_frag_created(xdp, model, datapath_clock_ns() - age_s * SEC)
    before = xdp.counters()
    for f in later:
        run_packet(f, xdp, model, check_checksums=False)
        out = xdp.send(Ether(f))
        assert (out.pkt[IP].dst == BACKENDS[0]) is translated
    assert delta(before, xdp.counters()) == {"frag_nat" if translated else "frag_unknown": 2 * len(later)}
