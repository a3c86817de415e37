"""The unconfirmed tables are arrays of sets (bpf/conntrack.h, "the unconfirmed
tables"): where a new flow's entry goes, what it evicts, and that a change to an entry,
which the program reads as a copy, is written back — mostly through the pods' table,
whose code the external one shares (one test checks its placement and ring).

Keys are steered into one set by searching client ports with the table's own hash
(flowsets.set_index, the C of csrc/flowhash.h under the map's seed)."""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from typing import Callable

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane import flowsets, readout
from controlplane.dataplane.affinity_maps import coarse_now_ns as datapath_clock_ns
from controlplane.dataplane.config import ConfigError, DataplaneConfig
from controlplane.dataplane.layout import const
from controlplane.dataplane.program import Dataplane, reset
from controlplane.dataplane.testrun import TestRunner

from . import nodenet
from .harness import CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness
from .reference_model import ReferenceDatapath
from .test_differential import ct_keys, run_packet
from .test_nodeport import CLIENT as EXT_CLIENT
from .test_nodeport import NODE, from_client
from .test_nodeport import ext, node  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root

WAYS = flowsets.WAYS
SEC = 10**9
CLOSING = const("CT_F_CLOSING")
NODE_PORT = 30080


def tcp(sport, flags, src=CLIENT, dst=VIP, dport=80):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def fwd_key(table, sport: int, src: str = CLIENT, dst: str = VIP, dport: int = 80):
    """The forward key of a TCP flow, fields as the program loads them."""
    k = table.Key()
    (k.src, k.dst), (k.sport, k.dport) = (struct.unpack("=II", socket.inet_aton(src) + socket.inet_aton(dst)),
                                         struct.unpack("=HH", struct.pack("!HH", sport, dport)))
    k.proto, k.dir = socket.IPPROTO_TCP, 0
    return k


def set_of_port(table, port: int, **key) -> int:
    """The set of the forward key of a flow from client port `port` (fwd_key's, with
    `key`'s fields)."""
    return flowsets.set_index(fwd_key(table, port, **key), table.seed, table.n_sets)


def ports_in_one_set(table, n: int, start: int = 1024, **key) -> tuple[list[int], int]:
    """n client ports whose flows' forward keys share one set (set_of_port), and that set."""
    seen: dict[int, list[int]] = {}
    for port in range(start, 65536):
        i = set_of_port(table, port, **key)
        seen.setdefault(i, []).append(port)
        if len(seen[i]) == n:
            return seen[i], i
    raise AssertionError("no set got enough ports")


def ports_in_set(table, i: int, n: int, start: int = 1024, **key) -> list[int]:
    """n client ports whose flows' forward keys fall in set i (set_of_port)."""
    found = []
    for port in range(start, 65536):
        if set_of_port(table, port, **key) == i:
            found.append(port)
            if len(found) == n:
                return found
    raise AssertionError(f"fewer than {n} ports in set {i}")


def set_bytes(table) -> list[bytes]:
    return [row.tobytes() for row in table._all()]


def test_a_pods_new_flow_is_recorded_in_the_set_its_key_hashes_to(xdp: Harness):
    xdp.service()
    table = xdp.dp.table("ct_unconfirmed_pod")
    backend = xdp.send(tcp(41000, "S")).pkt[IP].dst
    key = fwd_key(table, 41000)
    want = flowsets.set_index(key, table.seed, table.n_sets)
    holding = [i for i, row in enumerate(set_bytes(table)) if bytes(key) in row]
    assert holding == [want]
    assert len(table) == 1 and socket.inet_ntoa(struct.pack("=I", table[key].nat_ip)) == backend


def test_a_set_gives_its_slots_to_new_flows_in_turn_and_no_other_set_changes(xdp: Harness):
    """A new flow takes its set's next slot in turn (a ring): a full set gives the one
    filled longest ago; a confirmed flow leaves its slot free until the ring comes round.
    Nothing outside the set moves."""
    xdp.service()
    table = xdp.dp.table("ct_unconfirmed_pod")
    ports, i = ports_in_one_set(table, WAYS + 3)
    for p in ports[:WAYS]:
        xdp.send(tcp(p, "S"))
    assert all(fwd_key(table, p) in table for p in ports[:WAYS])
    before = set_bytes(table)
    xdp.send(tcp(ports[WAYS], "S"))                  # the set is full: the first goes
    after = set_bytes(table)
    assert [n for n in range(len(before)) if before[n] != after[n]] == [i]
    present = [p for p in ports[:WAYS + 1] if fwd_key(table, p) in table]
    assert present == ports[1:WAYS + 1]
    xdp.send(tcp(ports[WAYS + 1], "S"))              # then the second, in turn
    assert [p for p in ports[:WAYS + 2] if fwd_key(table, p) in table] == ports[2:WAYS + 2]
    # A confirmed flow moves to conntrack and frees its slot, the ring's next here: the
    # next new flow takes it and evicts nobody.
    xdp.send(tcp(ports[2], "A"))
    assert fwd_key(table, ports[2]) not in table and len(xdp.dp.table("conntrack")) == 1
    xdp.send(tcp(ports[WAYS + 2], "S"))
    assert [p for p in ports if fwd_key(table, p) in table] == ports[3:]


def test_a_pending_flow_outlives_exactly_ways_minus_one_later_new_flows(xdp: Harness):
    """The guarantee a pending handshake has: WAYS - 1 later new flows in its set cannot
    evict it, whatever slots confirmations free meanwhile, and the WAYS-th takes its slot.
    (Free slots first would break it: here a flow that took the free slot behind the
    pending one would leave the pending one next in line.)"""
    xdp.service()
    table = xdp.dp.table("ct_unconfirmed_pod")
    ports, _ = ports_in_one_set(table, 2 * WAYS + 1)
    for p in ports[:WAYS]:
        xdp.send(tcp(p, "S"))
    pending = ports[WAYS]
    xdp.send(tcp(pending, "S"))                      # takes the first flow's slot
    xdp.send(tcp(ports[WAYS - 1], "A"))              # confirmed: the slot behind it is free
    later = ports[WAYS + 1:2 * WAYS + 1]
    for p in later[:WAYS - 1]:
        xdp.send(tcp(p, "S"))
        assert fwd_key(table, pending) in table
    xdp.send(tcp(later[-1], "S"))
    assert fwd_key(table, pending) not in table
    assert [p for p in ports if fwd_key(table, p) in table] == later


def test_an_external_pending_flow_outlives_exactly_ways_minus_one_later_new_flows(ext, xdp: Harness):
    """ct_unconfirmed, where flows from outside wait, is sets too, placed and evicted as
    the pods' are: a NodePort flow's entry sits in the set its key hashes to, WAYS - 1
    later new flows in that set leave it, the WAYS-th takes its slot."""
    ext.service(NODE, NODE_PORT, [nodenet.LOCAL_POD])
    table = xdp.dp.table("ct_unconfirmed")
    flow = {"src": EXT_CLIENT, "dst": NODE, "dport": NODE_PORT}
    ports, i = ports_in_one_set(table, WAYS + 1, **flow)
    key = fwd_key(table, ports[0], **flow)
    assert ext.send(from_client(NODE, NODE_PORT, sport=ports[0], flags="S")).pkt[IP].dst == nodenet.LOCAL_POD
    assert [n for n, row in enumerate(set_bytes(table)) if bytes(key) in row] == [i]
    for p in ports[1:WAYS]:
        ext.send(from_client(NODE, NODE_PORT, sport=p, flags="S"))
        assert key in table
    ext.send(from_client(NODE, NODE_PORT, sport=ports[WAYS], flags="S"))
    assert key not in table
    assert [p for p in ports if fwd_key(table, p, **flow) in table] == ports[1:]


def test_changes_to_an_unconfirmed_pods_flow_are_written_back(xdp: Harness):
    """The program reads a slot as a copy (another CPU may hand the slot to another flow
    meanwhile), so what it changes must go back: a refresh by the client's retransmitted
    SYN and by the backend's answer, and the close a RST starts."""
    xdp.service()
    table = xdp.dp.table("ct_unconfirmed_pod")
    key = fwd_key(table, 41500)
    backend = xdp.send(tcp(41500, "S")).pkt[IP].dst

    def age() -> int:
        v = table[key]
        v.last_seen = datapath_clock_ns() - 5 * SEC
        table[key] = v
        return v.last_seen

    old = age()
    xdp.send(tcp(41500, "S"))                        # retransmitted: refreshes (idle > 1 s)
    assert table[key].last_seen > old
    old = age()
    out = xdp.send(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=CLIENT) / TCP(sport=8080, dport=41500, flags="SA"))
    assert out.pkt[IP].src == VIP
    assert table[key].last_seen > old                # the reply path refreshes it too
    assert not table[key].flags & CLOSING
    xdp.send(tcp(41500, "R"))                        # no ACK: still unconfirmed, now closing
    assert table[key].flags & CLOSING and len(xdp.dp.table("conntrack")) == 0


def _hammer(prog_fd: int, cpu: int, frames: list[bytes], allowed: set[bytes], seconds: float) -> tuple[int, int]:
    """Run `frames` in turn through the program on `cpu` for `seconds`: (runs, frames
    whose destination after DNAT is not in `allowed`)."""
    os.sched_setaffinity(0, {cpu})
    runner = TestRunner(prog_fd)
    runs = strays = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for frame in frames:
            if runner.run(frame).data[30:34] not in allowed:   # the IPv4 destination
                strays += 1
        runs += len(frames)
    return runs, strays


def _in_child(fn, *args) -> Callable[[], tuple[int, int]]:
    """fn(*args) in a forked process (its own GIL, so two run at once): a call that
    waits for it and gives what it returned (two ints)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never back into pytest
        code = 1
        try:
            os.write(wfd, struct.pack("=QQ", *fn(*args)))
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)

    def result() -> tuple[int, int]:
        _, status = os.waitpid(pid, 0)
        data = os.read(rfd, 16)
        os.close(rfd)
        assert os.waitstatus_to_exitcode(status) == 0 and len(data) == 16, f"hammer on pid {pid} failed"
        return struct.unpack("=QQ", data)
    return result


def test_two_cpus_racing_on_one_set_never_give_a_flow_another_flows_entry(xdp: Harness):
    """The sets are read without the lock until a key looks found (ctp_get), and written
    under it (ctp_put): here two CPUs race on one set for real. One process opens new
    flows to service A whose keys all fall in the set (each evicts the oldest slot), the
    other repeats one flow to service B (one backend) whose key falls there too (a hit,
    or once evicted a new entry). Every frame must go to its own service's backends: a
    hit copied without the lock while the other CPU rewrites the slot, or two inserts
    into a set without it, hand B's flow A's entry (either lock taken out: 30-150 such
    frames in 4 s on a 2-vCPU host, of ~700,000 each side)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to race on")
    a_backends = tuple(f"10.244.2.{i}" for i in range(10, 18))
    b_backend = "10.244.3.9"
    xdp.service(VIP, backends=a_backends)
    fe_b = xdp.service("10.96.0.101", backends=(b_backend,))
    table = xdp.dp.table("ct_unconfirmed_pod")
    a_ports, i = ports_in_one_set(table, 2 * WAYS)
    (b_port,) = ports_in_set(table, i, 1, dst="10.96.0.101")
    a_frames = [bytes(tcp(p, "S")) for p in a_ports]
    b_frames = [bytes(tcp(b_port, "S", dst="10.96.0.101"))]
    seconds = 4.0
    a_result = _in_child(_hammer, xdp.dp.prog_fd, cpus[0], a_frames,
                         {socket.inet_aton(ip) for ip in a_backends}, seconds)
    b_result = _in_child(_hammer, xdp.dp.prog_fd, cpus[1], b_frames, {socket.inet_aton(b_backend)}, seconds)
    (a_runs, a_strays), (b_runs, b_strays) = a_result(), b_result()
    assert (a_strays, b_strays) == (0, 0), f"frames sent to another service's backend: A {a_strays} of " \
                                           f"{a_runs}, B {b_strays} of {b_runs}"
    # they did race: B's flow was evicted by A's and made anew, many times
    b_id = xdp.writer.backend_id(fe_b, b_backend, 8080)
    assert readout.backend_new_flows(xdp.dp).get(b_id, 0) > 1000, "the two CPUs never met in the set"
    assert a_runs > 50_000 and b_runs > 50_000


@pytest.fixture(scope="module")
def tiny():
    """A pods' table of 16 entries (16 / WAYS sets): a few dozen flows overflow its sets."""
    dp = Dataplane.load(DataplaneConfig(instance="pytest-flowsets", pin=False, ct_size=1024,
                                        ct_unconfirmed_pod=16, max_services=8, max_backends=16, max_slots=64))
    try:
        yield Harness(dp)
    finally:
        dp.close()


def test_the_reference_model_evicts_what_the_program_evicts(tiny: Harness):
    """New flows, second packets (confirming, or new again after an eviction) and the
    backends' answers, each checked against the reference model, which places keys in
    sets as the program does: with rr, a flow the model kept but the program evicted
    (or the reverse) would go to another backend, and the tables' keys would differ."""
    h = tiny
    h.reset()
    h.service(algorithm="rr")
    h.service(port=53, protocol="UDP", backend_port=5353, algorithm="rr")
    model = ReferenceDatapath()
    model.load(h.writer)
    rng = random.Random(17)
    flows: list[tuple[str, int]] = []
    for _ in range(600):
        proto = rng.choice(("TCP", "UDP"))
        if flows and rng.random() < 0.4:
            proto, sport = rng.choice(flows)
            second = True
        else:
            sport = rng.randrange(20000, 60000)
            flows.append((proto, sport))
            second = False
        ip = IP(src=CLIENT, dst=VIP, ttl=64)
        l4 = (TCP(sport=sport, dport=80, flags="A" if second else "S") if proto == "TCP"
              else UDP(sport=sport, dport=53) / Raw(b"q"))
        run_packet(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / ip / l4), h, model)
        assert ct_keys(h, "ct_unconfirmed_pod") == set(model.unconfirmed)
    assert len(h.dp.table("ct_unconfirmed_pod")) == 16   # full: its sets overflowed
    h.reset()


def test_the_unconfirmed_tables_sizes_are_powers_of_two_of_whole_sets():
    for name in ("ct_unconfirmed", "ct_unconfirmed_pod"):
        with pytest.raises(ConfigError, match=f"{name}: must be a power of two"):
            DataplaneConfig(**{name: 3000})
        with pytest.raises(ConfigError, match=name):
            DataplaneConfig(**{name: 1})
    # unset sizes: a share of ct_size, and the pods' at most that, down to a power of two
    config = DataplaneConfig(ct_size=1000)
    assert (config.ct_unconfirmed_size, config.ct_unconfirmed_pod_size) == (256, 256)
    assert DataplaneConfig(ct_unconfirmed=1024).ct_unconfirmed_pod_size == 1024


def test_each_new_table_gets_a_secret_seed_and_an_adopted_table_keeps_its_own(xdp: Harness):
    """The set hash is keyed by a seed the loader writes once per dataplane (one for both
    set tables), so spoofed tuples cannot be aimed at one set; a table that outlives its
    program keeps its seed, since its entries sit where that seed put them. (Flows are
    placed with any seed, 0 or a changed one, so only this test catches a loader that
    forgets it.)"""
    cfg = DataplaneConfig(instance="pytest-flowsets-seed", ct_size=1024, ct_unconfirmed_pod=64, max_services=8,
                          max_backends=16, max_slots=64, pin=True)
    reset(cfg)
    try:
        dp = Dataplane.load(cfg)
        first = dp.table("ct_unconfirmed_pod").seed
        dp.close()
        dp = Dataplane.load(cfg)                     # adopts the pinned table
        again = dp.table("ct_unconfirmed_pod").seed
        dp.close()
    finally:
        reset(cfg)
    other = xdp.dp.table("ct_unconfirmed_pod").seed        # another dataplane's
    assert first != 0 and other != 0 and other != first
    assert again == first
