"""Conntrack and fragment state as time and other CPUs leave it: an entry another
CPU refreshed a moment "in the future", a fragment record past the reassembly
timeout, and flows whose backend id was handed to another backend.

Entries are aged or moved forward by writing them from user space on the
datapath's own clock (CLOCK_MONOTONIC_COARSE = bpf_ktime_get_coarse_ns), so
nothing here waits or depends on timing."""
from __future__ import annotations

import ipaddress
import mmap
import os
import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane.affinity_maps import coarse_now_ns as datapath_clock_ns
from controlplane.dataplane.config import FLOW_TABLES, DataplaneConfig
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.testrun import TestRunner

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta
from .reference_model import FRAG_TIMEOUT_NS, ReferenceDatapath
from .test_differential import run_packet

pytestmark = pytest.mark.root

SEC = 10**9


def tcp(sport, flags, src=CLIENT, dst=VIP, dport=80):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def set_ct_last_seen(xdp: Harness, last_seen: int) -> int:
    """Stamp every conntrack entry (confirmed or not) with `last_seen`; returns how
    many there were."""
    n = 0
    for name in FLOW_TABLES:
        table = xdp.dp.table(name)
        for k, v in list(table.items()):
            v.last_seen = last_seen
            table[k] = v
            n += 1
    return n


def test_entry_refreshed_by_another_cpu_a_moment_later_is_alive(xdp: Harness):
    """Another CPU's refresh can leave last_seen a little after this CPU's clock
    read. As unsigned, `now - last_seen` wrapped to a huge idle time: the live
    flow's reply left un-NATed and its next packet was sent to another backend."""
    xdp.service(algorithm="rr")
    syn = xdp.send(tcp(41000, "S"))
    backend = syn.pkt[IP].dst
    assert set_ct_last_seen(xdp, datapath_clock_ns() + 2 * SEC) == 1

    before = xdp.counters()
    reply = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=CLIENT) / TCP(sport=8080, dport=41000, flags="SA")
    out = xdp.send(reply)
    assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP, 80)
    ack = xdp.send(tcp(41000, "A"))
    assert ack.pkt[IP].dst == backend
    assert delta(before, xdp.counters()) == {"revnat": 1, "ct_hit": 1}


def test_entry_idle_past_its_timeout_is_still_expired(xdp: Harness):
    """The signed comparison keeps real expiry: idle past the UDP timeout, a
    flow is chosen afresh."""
    xdp.service(port=53, protocol="UDP", backend_port=5353, algorithm="rr")
    pkt = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=42000, dport=53) / Raw(b"q")
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
    for key, (nat_ip, peer, direction, _) in model.fragments.items():
        model.fragments[key] = (nat_ip, peer, direction, created)


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


# ---- a flow's first packets on two CPUs at once -------------------------------------------
def _race(prog_fd: int, frames: list[bytes], cpu: int, me: int, flags: mmap.mmap, wfd: int) -> None:
    """Child process: pinned to one CPU, run frame i as soon as the other child is
    ready for frame i too (a spin barrier in shared memory), report each output's
    destination address."""
    code = 1
    try:
        os.sched_setaffinity(0, {cpu})
        runner = TestRunner(prog_fd)
        mine, theirs = me * 8, (1 - me) * 8
        dsts = bytearray()
        give_up = time.monotonic() + 120  # the other child died: do not spin forever
        for i, f in enumerate(frames, 1):
            struct.pack_into("Q", flags, mine, i)
            while struct.unpack_from("Q", flags, theirs)[0] < i:
                if time.monotonic() > give_up:
                    return
            dsts += runner.run(f).data[30:34]
        os.write(wfd, bytes(dsts))
        code = 0
    finally:
        os._exit(code)


def _run_on_two_cpus(prog_fd: int, frames: list[bytes]) -> list[list[str]]:
    flags = mmap.mmap(-1, 16)
    pids, pipes = [], []
    for me in (0, 1):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _race(prog_fd, frames, me, me, flags, w)
        os.close(w)
        pids.append(pid)
        pipes.append(r)
    outs = []
    for pid, r in zip(pids, pipes):
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        outs.append([str(ipaddress.IPv4Address(data[i:i + 4])) for i in range(0, len(data), 4)])
    return outs


@pytest.mark.skipif(len(os.sched_getaffinity(0) & {0, 1}) < 2, reason="needs CPUs 0 and 1")
def test_first_packets_of_a_flow_on_two_cpus_agree_on_the_backend(xdp: Harness):
    """Two CPUs take the same new flow's first packet at the same moment (a spin
    barrier per flow). With round robin they choose different backends; the flow
    must still have one: the CPU that finds the entry already recorded follows it
    (BPF_NOEXIST insert), so both packets and the entry name the same backend.
    With a blind overwrite the two packets went to two backends."""
    xdp.service(algorithm="rr", backends=tuple(f"10.244.3.{i}" for i in range(1, 9)))
    frames = [bytes(tcp(20000 + i, "S")) for i in range(400)]  # main split ~2/3 of them
    a, b = _run_on_two_cpus(xdp.dp.prog_fd, frames)
    split = [i for i in range(len(frames)) if a[i] != b[i]]
    assert not split, f"{len(split)} of {len(frames)} flows sent to two backends"
    recorded = {socket.ntohs(k.sport): str(ipaddress.IPv4Address(socket.ntohl(v.nat_ip)))
                for table in FLOW_TABLES for k, v in xdp.dp.table(table).items()}
    assert [recorded[20000 + i] for i in range(len(frames))] == a


# ---- backend ids handed to another backend ----------------------------------------------------
@pytest.fixture(scope="module")
def small_dataplane():
    """A dataplane with backend ids 1 and 2 only, so the writer reuses a freed id at
    once, and a conntrack of 1024 entries (256 unconfirmed) that a test can flood."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    dp = Dataplane.load(DataplaneConfig(instance="pytest-idreuse", pin=False, ct_size=1024,
                                        frag_size=64, max_services=8, max_backends=3,
                                        max_slots=16, affinity_size=64))
    yield Harness(dp)
    dp.close()


def test_stale_flow_of_a_reused_backend_id_leaves_the_new_owner_count_alone(small_dataplane):
    """lc counts connections per backend id. A flow whose backend was removed, and
    whose id the writer then gave to another service's backend, must not give its
    connection back to the new owner when it ends: the new owner's count would
    drop below its real connections (here from 1 to 0) and lc would overload it."""
    h = small_dataplane
    h.reset()
    a = h.service(vip="10.96.1.1", algorithm="lc", backends=("10.244.4.1",))
    assert h.send(tcp(44000, "S", dst="10.96.1.1")).pkt[IP].dst == "10.244.4.1"
    old_id = h.writer.backend_id(a, "10.244.4.1", 8080)
    h.service(vip="10.96.1.1", algorithm="lc", backends=("10.244.4.2",))  # 4.1 leaves, id freed
    b = h.service(vip="10.96.1.2", algorithm="lc", backends=("10.244.4.3",))
    assert h.writer.backend_id(b, "10.244.4.3", 8080) == old_id  # the freed id, reused
    assert h.send(tcp(44001, "S", dst="10.96.1.2")).pkt[IP].dst == "10.244.4.3"
    assert h.writer.active_connections(b) == {("10.244.4.3", 8080): 1}

    # The old flow closes; its backend is gone, so it is re-chosen and its count
    # goes nowhere — in particular not to 10.244.4.3.
    h.send(tcp(44000, "FA", dst="10.96.1.1"))
    assert h.writer.active_connections(b) == {("10.244.4.3", 8080): 1}
    h.send(tcp(44001, "FA", dst="10.96.1.2"))
    assert h.writer.active_connections(b) == {("10.244.4.3", 8080): 0}
    h.reset()


# ---- floods of spoofed first packets --------------------------------------------------------------
def test_spoofed_syn_flood_cannot_evict_established_flows(small_dataplane):
    """Policy (bpf/conntrack.h): a flow's first packet records it as unconfirmed, its
    second forward packet (TCP: ACK without SYN) confirms it. A flood of 10x the
    conntrack size in spoofed SYNs — each tuple sent twice, as a SYN retransmit —
    churns only the unconfirmed table: every established flow keeps its backend
    and its replies are still reverse-NATed. (Before: one table for all, about
    half of them were evicted.)"""
    h = small_dataplane
    h.reset()
    vip = "10.96.2.1"
    h.service(vip=vip, algorithm="rr", backends=("10.244.5.1", "10.244.5.2"))
    established = {}
    for i in range(100):
        client, cport = f"10.244.6.{1 + i}", 30000 + i
        backend = h.send(tcp(cport, "S", src=client, dst=vip)).pkt[IP].dst
        h.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=client) / TCP(sport=8080, dport=cport, flags="SA"))
        h.send(tcp(cport, "A", src=client, dst=vip))
        established[(client, cport)] = backend
    assert len(h.dp.table("conntrack")) == 100

    ct_size = h.dp.config.ct_size
    for i in range(10 * ct_size // 2):
        spoofed = tcp(1024 + i % 60000, "S", src=f"10.{i % 251}.{i // 251 % 251}.{i % 7 + 1}", dst=vip)
        h.send(spoofed)
        h.send(spoofed)  # a retransmitted SYN confirms nothing

    for (client, cport), backend in established.items():
        out = h.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=client) / TCP(sport=8080, dport=cport, flags="PA"))
        assert (out.pkt[IP].src, out.pkt[TCP].sport) == (vip, 80)
        assert h.send(tcp(cport, "A", src=client, dst=vip)).pkt[IP].dst == backend
    assert len(h.dp.table("conntrack")) == 100  # the flood confirmed nothing
    h.reset()


def test_a_second_udp_datagram_confirms_a_flow(small_dataplane):
    h = small_dataplane
    h.reset()
    h.service(vip="10.96.2.2", port=53, protocol="UDP", backend_port=5353, backends=("10.244.5.3",))
    q = Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst="10.96.2.2") / UDP(sport=45000, dport=53) / Raw(b"q")
    h.send(q)
    assert (len(h.dp.table("ct_unconfirmed_pod")), len(h.dp.table("conntrack"))) == (1, 0)
    h.send(q)
    assert (len(h.dp.table("ct_unconfirmed_pod")), len(h.dp.table("conntrack"))) == (0, 1)
    h.reset()


# ---- a bare SYN does not look in conntrack (bpf/conntrack.h, top) ---------------------------------
def handshake(xdp: Harness, cport: int) -> str:
    """SYN, the backend's SYN-ACK (checked reverse-NATed), the client's ACK; returns
    the backend."""
    backend = xdp.send(tcp(cport, "S")).pkt[IP].dst
    out = xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=CLIENT) / TCP(sport=8080, dport=cport, flags="SA"))
    assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP, 80)
    assert xdp.send(tcp(cport, "A")).pkt[IP].dst == backend
    return backend


def test_a_tuple_reused_after_its_flow_expired_keeps_the_new_backend(xdp: Harness):
    """The new connection's SYN skips conntrack, so the expired entry of the old one
    is still there: the new one must still be answered, confirmed (overwriting the
    expired entry) and kept on its own backend."""
    xdp.service(algorithm="rr")
    first = handshake(xdp, 41100)
    assert len(xdp.dp.table("conntrack")) == 1
    set_ct_last_seen(xdp, datapath_clock_ns() - xdp.dp.config.tcp_timeout_s * SEC - 2 * SEC)
    second = handshake(xdp, 41100)
    assert second != first  # rr moved on: a new connection
    for _ in range(3):
        assert xdp.send(tcp(41100, "PA")).pkt[IP].dst == second
    assert (len(xdp.dp.table("conntrack")), len(xdp.dp.table("ct_unconfirmed_pod"))) == (1, 0)


def test_a_tuple_reused_after_a_close_keeps_the_new_backend(xdp: Harness):
    xdp.service(algorithm="rr")
    first = handshake(xdp, 41200)
    xdp.send(tcp(41200, "FA"))                    # both sides close (TIME_WAIT reuse)
    xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=first, dst=CLIENT) / TCP(sport=8080, dport=41200, flags="FA"))
    second = handshake(xdp, 41200)
    assert second != first
    # Past the close timeout: the new connection's entry is not the closing one.
    set_ct_last_seen(xdp, datapath_clock_ns() - (xdp.dp.config.tcp_close_timeout_s + 2) * SEC)
    for _ in range(3):
        assert xdp.send(tcp(41200, "PA")).pkt[IP].dst == second


def test_a_spoofed_syn_on_an_established_tuple_moves_nothing(xdp: Harness):
    """A SYN with an established flow's tuple is recorded as a new unconfirmed flow
    (it does not look in conntrack), but the established entry stays in charge of
    the flow's packets and replies."""
    xdp.service(algorithm="rr")
    backend = handshake(xdp, 41300)
    xdp.send(tcp(41300, "S"))
    for _ in range(3):
        assert xdp.send(tcp(41300, "PA")).pkt[IP].dst == backend
        out = xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=CLIENT) / TCP(sport=8080, dport=41300, flags="PA"))
        assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP, 80)
