"""Idle-flow GC of the conntrack tables (bpf/ctgc.h, controlplane/dataplane/ctgc.py):
entries past their timeout (and the grace) are removed, live ones and the reply entries
a live flow still needs are kept, counts are given back, the agent's loop runs it.

Entries are aged by writing last_seen from user space on the datapath's own clock
(CLOCK_MONOTONIC_COARSE), as test_conntrack_state does: nothing waits."""
from __future__ import annotations

import logging
import socket
import threading

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controlplane.agent.ctgc_loop import gc_loop
from controlplane.dataplane.affinity_maps import coarse_now_ns
from controlplane.dataplane.ctgc import GRACE_NS, OP_LOCATE, ConntrackGC
from controlplane.dataplane.layout import const

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness, delta

pytestmark = pytest.mark.root

SEC = 10**9
DIR_FORWARD, DIR_REPLY, DIR_SNAT = const("CT_DIR_FORWARD"), const("CT_DIR_REPLY"), const("CT_DIR_SNAT")
F_SNAT = const("CT_F_SNAT")


def tcp(sport, flags, dst=VIP, src=CLIENT):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=80, flags=flags)


def udp(sport, dst=VIP):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=dst) / UDP(sport=sport, dport=80)


def be32(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "little")


def entries(xdp: Harness, table: str) -> dict[tuple, object]:
    """(client port, dir) -> value of every entry (reply/SNAT entries by their dport)."""
    return {(socket.ntohs(k.sport if k.dir == DIR_FORWARD else k.dport), k.dir): v
            for k, v in xdp.dp.table(table).items()}


def age(xdp: Harness, table: str, port: int, direction: int, idle_ns: int) -> None:
    t = xdp.dp.table(table)
    for k, v in list(t.items()):
        if k.dir == direction and socket.ntohs(k.sport if direction == DIR_FORWARD else k.dport) == port:
            v.last_seen = coarse_now_ns() - idle_ns
            t[k] = v
            return
    raise AssertionError(f"no entry ({port}, {direction}) in {table}")


def timeouts(xdp: Harness):
    c = xdp.dp.config
    return c.tcp_timeout_s * SEC, c.tcp_close_timeout_s * SEC, c.udp_timeout_s * SEC


@pytest.fixture
def gc(xdp: Harness) -> ConntrackGC:
    return ConntrackGC(xdp.dp)


def confirmed_tcp(xdp: Harness, sport: int, vip: str = VIP) -> str:
    backend = xdp.send(tcp(sport, "S", dst=vip)).pkt[IP].dst
    xdp.send(tcp(sport, "A", dst=vip))
    return backend


def test_expired_entries_are_removed_and_live_ones_kept(xdp: Harness, gc: ConntrackGC):
    tcp_to, close_to, udp_to = timeouts(xdp)
    xdp.service()
    xdp.service(protocol="UDP")
    backends = {p: confirmed_tcp(xdp, p) for p in (41000, 41001, 41002, 41003)}
    xdp.send(udp(42000))                       # one datagram: unconfirmed
    xdp.send(udp(42001))
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS + SEC)   # dead
    age(xdp, "conntrack", 41001, DIR_FORWARD, tcp_to - SEC)              # old, alive
    xdp.send(tcp(41002, "RA"))                                           # closed (a FIN alone half-closes)
    age(xdp, "conntrack", 41002, DIR_FORWARD, close_to + GRACE_NS + SEC)  # dead
    xdp.send(tcp(41003, "RA"))
    age(xdp, "conntrack", 41003, DIR_FORWARD, close_to + SEC)            # past timeout, within grace
    age(xdp, "ct_unconfirmed_pod", 42000, DIR_FORWARD, udp_to + GRACE_NS + SEC)  # dead
    before = xdp.counters()

    stats = gc.sweep_all()

    assert stats.deleted == {"conntrack": 2}, stats
    assert set(entries(xdp, "conntrack")) == {(41001, DIR_FORWARD), (41003, DIR_FORWARD)}
    # The unconfirmed tables are sets, not swept: a new flow takes its set's next slot in
    # turn at no extra cost (bpf/conntrack.h), whether the dead datagram's entry is there or not.
    assert set(entries(xdp, "ct_unconfirmed_pod")) == {(42000, DIR_FORWARD), (42001, DIR_FORWARD)}
    d = delta(before, xdp.counters())
    assert d["ct_gc_deleted"] == 2 and d.get("ct_gc_kept", 0) == 0
    # the live flow goes on to its backend
    out = xdp.send(tcp(41001, "A"))
    assert out.pkt[IP].dst == backends[41001]
    # a removed one starts afresh as a new flow
    before = xdp.counters()
    xdp.send(tcp(41000, "S"))
    assert delta(before, xdp.counters())["ct_new"] == 1


def test_the_kernel_judges_again_and_keeps_a_live_entry(xdp: Harness, gc: ConntrackGC):
    """The walk's copy is only a preselection: a key handed to the program whose entry
    is live (refreshed since the walk read it) is kept and counted as kept."""
    xdp.service()
    confirmed_tcp(xdp, 41000)
    t = xdp.dp.table("conntrack")
    key = next(k for k in t.keys())
    before = xdp.counters()
    for ordered in (False, True):   # the delete request itself, and locate-then-delete
        assert gc.delete("conntrack", bytes(key), ordered=ordered) == (0, 1)
    assert len(t.items()) == 1
    assert delta(before, xdp.counters())["ct_gc_kept"] == 2
    # past its timeout by less than the grace: a CPU may have judged it alive a moment ago
    tcp_to = timeouts(xdp)[0]
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS // 2)
    for ordered in (False, True):
        assert gc.delete("conntrack", bytes(key), ordered=ordered) == (0, 1)
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS + SEC)
    assert gc.delete("conntrack", bytes(key), ordered=False) == (1, 0)
    assert len(t.items()) == 0
    # and a key that is no longer there counts as neither
    assert gc.delete("conntrack", bytes(key)) == (0, 0)


def test_locate_reports_dead_entries_and_deletes_nothing(xdp: Harness, gc: ConntrackGC):
    """The first step of an ordered delete: the dead entries' element addresses (for the
    order of deletion, ctgc.h), 0 for a live one, and nothing removed."""
    tcp_to = timeouts(xdp)[0]
    xdp.service()
    for p in (41000, 41001, 41002):
        confirmed_tcp(xdp, p)
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS + SEC)
    age(xdp, "conntrack", 41002, DIR_FORWARD, tcp_to + GRACE_NS + SEC)
    t = xdp.dp.table("conntrack")
    keys = sorted(t.keys(), key=lambda k: socket.ntohs(k.sport))
    deleted, kept, areas = gc._run("conntrack", OP_LOCATE, b"".join(bytes(k) for k in keys))
    where = [int.from_bytes(a[i:i + 8], "little") for a in areas for i in range(0, len(a), 16)]
    assert (deleted, kept) == (0, 1)
    assert where[0] and not where[1] and where[2] and where[0] != where[2]
    assert len(t.items()) == 3
    assert gc.delete("conntrack", b"".join(bytes(k) for k in keys)) == (2, 1)
    assert set(entries(xdp, "conntrack")) == {(41001, DIR_FORWARD)}


def test_a_removed_counted_flow_gives_its_connection_back(xdp: Harness, gc: ConntrackGC):
    tcp_to = timeouts(xdp)[0]
    fe = xdp.service(algorithm="lc", backends=BACKENDS[:1])
    confirmed_tcp(xdp, 41000)
    bid = xdp.writer.backend_id(fe, BACKENDS[0], 8080)
    conns = xdp.dp.table("backend_conns")
    assert conns[conns.Key(bid)].value == 1
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS + SEC)
    assert gc.sweep_all().deleted["conntrack"] == 1
    assert conns[conns.Key(bid)].value == 0


def test_a_reply_entry_stays_while_its_flow_lives(xdp: Harness, gc: ConntrackGC):
    """A backend shared by two frontends: its flows keep a reply entry, refreshed only by
    replies. Expired while the client still sends, it is kept; both go when both are dead."""
    tcp_to = timeouts(xdp)[0]
    pod = "10.244.5.5"
    xdp.service(vip=VIP, backends=(pod,))
    xdp.service(vip="10.96.0.101", backends=(pod,))
    confirmed_tcp(xdp, 41000)
    assert set(entries(xdp, "conntrack")) == {(41000, DIR_FORWARD), (41000, DIR_REPLY)}
    age(xdp, "conntrack", 41000, DIR_REPLY, tcp_to + GRACE_NS + SEC)
    before = xdp.counters()
    stats = gc.sweep_all()
    assert stats.deleted["conntrack"] == 0 and stats.kept["conntrack"] == 1
    assert delta(before, xdp.counters())["ct_gc_kept"] == 1
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS + SEC)
    assert gc.sweep_all().deleted["conntrack"] == 2
    assert entries(xdp, "conntrack") == {}


def snat_flow(xdp: Harness, cport: int, snat_port: int, fwd_idle: int, snat_idle: int) -> None:
    """A source-NATed NodePort flow as nodeport.h records it: the client's forward entry
    (holding node:snat_port) and the SNAT reply entry that holds the port, in conntrack."""
    t = xdp.dp.table("conntrack")
    now = coarse_now_ns()
    client, vip, node, backend = be32("192.0.2.10"), be32("198.51.100.1"), be32("10.0.0.1"), be32("10.244.9.9")
    fk = t.Key(src=client, dst=vip, sport=socket.htons(cport), dport=socket.htons(30080),
               proto=socket.IPPROTO_UDP, dir=DIR_FORWARD)
    t[fk] = t.Leaf(last_seen=now - fwd_idle, nat_ip=backend, nat_port=socket.htons(8080), flags=F_SNAT,
                   peer_ip=node, peer_port=socket.htons(snat_port))
    rk = t.Key(src=backend, dst=node, sport=socket.htons(8080), dport=socket.htons(snat_port),
               proto=socket.IPPROTO_UDP, dir=DIR_SNAT)
    t[rk] = t.Leaf(last_seen=now - snat_idle, nat_ip=vip, nat_port=socket.htons(30080),
                   peer_ip=client, peer_port=socket.htons(cport))


def test_a_snat_port_is_freed_only_with_its_flow(xdp: Harness, gc: ConntrackGC):
    """A one-way flow's SNAT reply entry is refreshed by nothing: while the flow's forward
    entry lives it holds the port; once both are dead both go (the port is free). (In
    ct_unconfirmed, sets the GC does not sweep, the datapath judges such a port itself:
    test_nodeport_snat_ports.)"""
    dead = timeouts(xdp)[2] + GRACE_NS + SEC
    snat_flow(xdp, 5000, 40000, fwd_idle=0, snat_idle=dead)
    snat_flow(xdp, 5001, 40001, fwd_idle=dead, snat_idle=dead)
    stats = gc.sweep_all()
    assert stats.deleted["conntrack"] == 2 and stats.kept["conntrack"] == 1, stats
    assert set(entries(xdp, "conntrack")) == {(5000, DIR_FORWARD), (40000, DIR_SNAT)}


def test_the_agent_loop_runs_the_gc(xdp: Harness, caplog):
    """The agent's GC thread (controlplane/agent/ctgc_loop.py) sweeps on its own."""
    tcp_to = timeouts(xdp)[0]
    xdp.service()
    confirmed_tcp(xdp, 41000)
    age(xdp, "conntrack", 41000, DIR_FORWARD, tcp_to + GRACE_NS + SEC)
    stop = threading.Event()
    log = logging.getLogger("svcxdp-ctgc-test")
    before = xdp.counters()
    th = threading.Thread(target=gc_loop, args=(ConntrackGC(xdp.dp), stop, log, 0.02))
    th.start()
    try:
        for _ in range(250):
            if not entries(xdp, "conntrack"):
                break
            stop.wait(0.02)
    finally:
        stop.set()
        th.join(5)
    assert not th.is_alive()
    assert entries(xdp, "conntrack") == {}
    assert delta(before, xdp.counters())["ct_gc_deleted"] == 1


def test_a_whole_walk_counts_each_table_for_the_metrics(xdp: Harness):
    """The walks see every entry once per pass: what a complete pass found, net of what
    it removed, is each table's entry count (ConntrackGC.entry_counts), which the agent's
    /metrics serves instead of reading a full table on every scrape. No count for a
    table before its first complete pass; the gauge then shows the pass's count."""
    import numpy as np

    from controlplane.agent.metrics import DataplaneCollector
    from controlplane.dataplane.affinity_maps import count_entries
    from controlplane.dataplane.libbpf import update_batch
    from controlplane.dataplane.packing import Packer
    table = xdp.dp.table("conntrack")
    tcp_to = timeouts(xdp)[0]
    n, dead = 20_000, 1_000
    keys = np.zeros(n, dtype=Packer(table.Key, ("proto",)).dtype)
    raw = keys.view(np.uint8).reshape(n, -1)
    raw[:] = np.random.default_rng(7).integers(0, 256, size=raw.shape, dtype=np.uint8)   # distinct tuples (seeded)
    keys["proto"] = socket.IPPROTO_TCP
    values = np.zeros(n, dtype=Packer(table.Leaf, ("last_seen",)).dtype)
    values["last_seen"] = coarse_now_ns()
    values["last_seen"][:dead] -= tcp_to + GRACE_NS + SEC
    update_batch(table.map_fd, keys, values, n)
    present = count_entries(table)
    assert present == n
    # the unconfirmed tables (sets, not swept) are walked to be counted too
    set_sizes = {"ct_unconfirmed": 300, "ct_unconfirmed_pod": 200}
    for name, count in set_sizes.items():
        sets = xdp.dp.table(name)
        for row in raw[:count]:   # keys of the conntrack fill, placed by the set hash
            sets[sets.Key.from_buffer_copy(row.tobytes())] = sets.Leaf()
    gc = ConntrackGC(xdp.dp, scan=8192)   # one read batch per sweep: a pass takes three
    assert gc.entry_counts() == {}
    first = gc.sweep()
    assert not first.wrapped["conntrack"] and "conntrack" not in gc.entry_counts()
    removed = first.total_deleted
    while not (s := gc.sweep(("conntrack",))).wrapped["conntrack"]:
        removed += s.total_deleted
    removed += s.total_deleted
    assert removed >= dead
    after = count_entries(table)
    assert gc.entry_counts()["conntrack"] == after == present - removed
    for _ in range(16):   # their passes: 1,024 sets a sweep, of 4,096
        if set(set_sizes) <= set(gc.entry_counts()):
            break
        gc.sweep(("conntrack",))
    for name in set_sizes:
        held = count_entries(xdp.dp.table(name))
        assert gc.entry_counts().get(name) == held and 0.9 * set_sizes[name] <= held <= set_sizes[name]

    def gauge(collector: DataplaneCollector, name: str = "conntrack") -> int:
        line = next(x for x in collector.text().decode().splitlines() if x.startswith(f'svcxdp_map_entries{{map="{name}"}}'))
        return int(line.split()[-1])

    with_counts = DataplaneCollector(xdp.dp, entry_counts=gc.entry_counts)
    assert all(gauge(with_counts, name) == gc.entry_counts()[name] for name in set_sizes)

    update_batch(table.map_fd, keys[:dead], values[dead:2 * dead], dead)   # back after the pass
    assert gauge(DataplaneCollector(xdp.dp, entry_counts=gc.entry_counts)) == after          # the pass's count
    assert gauge(DataplaneCollector(xdp.dp)) == count_entries(table) == after + dead   # read now
