"""Backend selection per service: every algorithm in the XDP program, checked
through BPF_PROG_TEST_RUN against what the control plane predicts or requires.

Hash-based choices (maglev, sh, dh) are compared with controlplane.dataplane.predict
for PREDICTION_TUPLES random tuples each; the rest by their defining property
(wrr proportions per cycle, lc family by the connection counts)."""
from __future__ import annotations

import random
import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.predict import predict
from controlplane.dataplane.program import Dataplane, reset
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.writer import MapWriter, maglev_table
from controlplane.maglev import MaglevBackend, build_table

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness

PREDICTION_TUPLES = 100_000
SEED = 20240505
TCP_P, UDP_P = socket.IPPROTO_TCP, socket.IPPROTO_UDP
MANY = tuple(f"10.244.{2 + i // 200}.{10 + i % 200}" for i in range(40))


def state(algorithm: str, backends=BACKENDS, weights=None, vip=VIP, port=80, protocol="TCP",
          affinity=0, m=None, states=None) -> ServiceState:
    weights = weights or {}
    states = states or {}
    bs = tuple(Backend(ip, 8080, states.get(ip, "active"), weights.get(ip, 1)) for ip in backends)
    return ServiceState(Frontend(vip, port, protocol), bs, algorithm, affinity, m)


def tcp(sport=40000, flags="S", src=CLIENT, dst=VIP, dport=80):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def reply(backend: str, sport=40000, flags="A", client=CLIENT):
    return Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=backend, dst=client) / TCP(sport=8080, dport=sport, flags=flags)


def backend_of(xdp: Harness, pkt) -> str:
    out = xdp.send(pkt)
    assert out.verdict == "XDP_PASS", out.verdict
    return out.pkt[IP].dst


class Frames:
    """Raw frames from a template, patched in place (no checksums: the datapath
    updates them incrementally and never checks them), fast enough for 10^5."""

    def __init__(self, proto: int) -> None:
        l4 = TCP(sport=1, dport=80, flags="S") if proto == TCP_P else UDP(sport=1, dport=80)
        self.t = bytearray(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src="1.1.1.1", dst=VIP) / l4))

    def make(self, src: str, sport: int, dst: str, dport: int) -> bytes:
        t = self.t
        t[26:30] = socket.inet_aton(src)
        t[30:34] = socket.inet_aton(dst)
        t[34:38] = struct.pack("!HH", sport, dport)
        return bytes(t)


def run_predictions(xdp: Harness, states: list[ServiceState], n: int, proto: int = TCP_P) -> int:
    """n random tuples to random frontends of `states`; every one must land where
    predict() says. Returns how many were checked."""
    for s in states:
        xdp.writer.upsert(s)
    tables = {s.frontend: xdp.writer.maglev_table(s.frontend) for s in states}
    ids = {s.frontend: {b.address: xdp.writer.backend_id(s.frontend, b.ip, b.port) for b in s.backends}
           for s in states}
    rng = random.Random(SEED)
    frames = Frames(proto)
    run = xdp.runner.run
    seen: dict[tuple, str] = {}
    mismatches = []
    for i in range(n):
        s = states[i % len(states)] if len(states) > 1 else states[0]
        src = socket.inet_ntoa(struct.pack("!I", rng.getrandbits(32)))
        sport = rng.randrange(1, 65536)
        fe = s.frontend
        out = run(frames.make(src, sport, fe.vip, fe.port))
        got = socket.inet_ntoa(out.data[30:34])
        want = predict(s, src, sport, fe.vip, fe.port, proto, tables[fe], ids[fe]).ip
        key = (src, sport, fe.vip)
        if key in seen:  # a repeated tuple is an established flow: same backend
            want = seen[key]
        seen[key] = got
        if out.verdict_name != "XDP_PASS" or got != want:
            mismatches.append((src, sport, fe.vip, got, want, out.verdict_name))
    assert not mismatches, f"{len(mismatches)} of {n} differ, first: {mismatches[:3]}"
    return n


# ---- prediction = datapath -------------------------------------------------------------
def test_maglev_table_in_the_map_is_the_c_build(xdp: Harness):
    s = state("maglev", MANY[:7], weights={MANY[0]: 3}, m=4093)
    xdp.writer.upsert(s)
    table = xdp.writer.maglev_table(s.frontend)
    want = build_table([MaglevBackend((b.ip, b.port), xdp.writer.backend_id(s.frontend, b.ip, b.port),
                                      b.weight) for b in s.backends], 4093)
    assert len(table) == 4093 and table == list(want)
    assert set(table) == {xdp.writer.backend_id(s.frontend, b.ip, b.port) for b in s.backends}


def test_maglev_prediction_equals_datapath(xdp: Harness):
    assert run_predictions(xdp, [state("maglev", MANY[:10])], PREDICTION_TUPLES) == PREDICTION_TUPLES


def test_maglev_affinity_prediction_leaves_source_port_out(xdp: Harness):
    s = state("maglev", MANY[:10], affinity=10800, protocol="UDP", m=8191)
    run_predictions(xdp, [s], PREDICTION_TUPLES // 10, UDP_P)
    # and one client's ports all meet one backend
    got = {backend_of(xdp, Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=p, dport=80)) for p in range(5000, 5050)}
    assert len(got) == 1


def test_sh_prediction_equals_datapath(xdp: Harness):
    run_predictions(xdp, [state("sh", MANY[:10])], PREDICTION_TUPLES)


def test_dh_prediction_equals_datapath(xdp: Harness):
    # dh hashes the address the client addressed: one frontend sends every flow to
    # one backend, so the tuples go to 64 frontends of the same backends.
    states = [state("dh", MANY[:10], vip=f"10.96.1.{i}") for i in range(1, 65)]
    run_predictions(xdp, states, PREDICTION_TUPLES)
    chosen = {predict(s, CLIENT, 1, s.frontend.vip, 80, TCP_P).ip for s in states}
    assert len(chosen) > 5


# ---- defining properties --------------------------------------------------------------
def test_wrr_3_to_1_is_exact_per_cycle(xdp: Harness):
    a, b = BACKENDS[:2]
    xdp.writer.upsert(state("wrr", (a, b), weights={a: 3, b: 1}))
    got = [backend_of(xdp, tcp(sport=42000 + i)) for i in range(40)]
    for c in range(10):
        cycle = got[4 * c:4 * c + 4]
        assert cycle.count(a) == 3 and cycle.count(b) == 1, cycle
    assert got[:4] == [a, a, b, a]  # interleaved, not bunched


def test_wrr_weights_5_3_2(xdp: Harness):
    a, b, c = BACKENDS
    xdp.writer.upsert(state("wrr", weights={a: 5, b: 3, c: 2}))
    got = [backend_of(xdp, tcp(sport=43000 + i)) for i in range(30)]
    for k in range(3):
        cycle = got[10 * k:10 * k + 10]
        assert (cycle.count(a), cycle.count(b), cycle.count(c)) == (5, 3, 2)


def test_sh_sends_one_client_to_one_backend(xdp: Harness):
    xdp.writer.upsert(state("sh", MANY[:10]))
    for client in ("10.244.1.10", "10.244.7.3", "192.168.5.5"):
        got = {backend_of(xdp, tcp(sport=p, src=client)) for p in range(20000, 20100)}
        assert len(got) == 1, (client, got)
    spread = {backend_of(xdp, tcp(sport=1000, src=f"10.1.{i}.1")) for i in range(100)}
    assert len(spread) >= 6


def test_lc_new_flow_goes_to_fewest_active_connections(xdp: Harness):
    a, b, c = BACKENDS
    s = state("lc")
    xdp.writer.upsert(s)
    fe = s.frontend
    # Ties go to the earliest slot, so fresh flows fill a, b, c in turn.
    opened = {p: backend_of(xdp, tcp(sport=p)) for p in range(44000, 44006)}
    assert list(opened.values()) == [a, b, c, a, b, c]
    assert xdp.writer.active_connections(fe) == {(a, 8080): 2, (b, 8080): 2, (c, 8080): 2}
    # Close both of b's flows (one by the client's FIN, one by the backend's RST).
    b_ports = [p for p, ip in opened.items() if ip == b]
    backend_of(xdp, tcp(sport=b_ports[0], flags="FA"))
    assert xdp.send(reply(b, sport=b_ports[1], flags="R")).verdict == "XDP_PASS"
    assert xdp.writer.active_connections(fe)[(b, 8080)] == 0
    # A second FIN of the same flow must not count again.
    backend_of(xdp, tcp(sport=b_ports[0], flags="FA"))
    assert xdp.writer.active_connections(fe)[(b, 8080)] == 0
    assert backend_of(xdp, tcp(sport=44100)) == b
    assert backend_of(xdp, tcp(sport=44101)) == b
    assert backend_of(xdp, tcp(sport=44102)) == a   # all at 2 again: earliest slot
    # Established packets do not count.
    for _ in range(5):
        backend_of(xdp, tcp(sport=44100, flags="A"))
    assert xdp.writer.active_connections(fe)[(b, 8080)] == 2


def _lc_model(alg: str, members: list[tuple[str, int]], conns: dict[str, int]) -> str:
    """IPVS's choice: lowest (conns + k) / w, ties to the first; nq: first idle."""
    best = None
    for ip, w in members:
        c = conns[ip]
        if alg == "nq" and c == 0:
            return ip
        cost = {"lc": (c, 1), "wlc": (c, w), "sed": (c + 1, w), "nq": (c + 1, w)}[alg]
        if best is None or cost[0] * best[1][1] < best[1][0] * cost[1]:
            best = (ip, cost)
    return best[0]


@pytest.mark.parametrize("alg", ["lc", "wlc", "sed", "nq"])
def test_counted_family_matches_ipvs_model(xdp: Harness, alg: str):
    weights = {BACKENDS[0]: 1, BACKENDS[1]: 3, BACKENDS[2]: 2}
    s = state(alg, weights=weights)
    xdp.writer.upsert(s)
    members = [(b.ip, b.weight) for b in s.slot_backends()]
    conns = dict.fromkeys(BACKENDS, 0)
    open_flows: dict[int, str] = {}
    rng = random.Random(SEED)
    port = 45000
    for _ in range(300):
        if open_flows and rng.random() < 0.4:
            p = rng.choice(sorted(open_flows))
            ip = open_flows.pop(p)
            if rng.random() < 0.5:
                backend_of(xdp, tcp(sport=p, flags="FA"))
            else:
                xdp.send(reply(ip, sport=p, flags="R"))
            conns[ip] -= 1
        else:
            want = _lc_model(alg, members, conns)
            got = backend_of(xdp, tcp(sport=port))
            assert got == want, (alg, conns, got, want)
            open_flows[port] = got
            conns[got] += 1
            port += 1
    assert xdp.writer.active_connections(s.frontend) == {(ip, 8080): n for ip, n in conns.items()}


def test_lc_udp_counts_until_the_flow_expires():
    """UDP has no close: a flow's count is returned when the datapath finds its
    entry expired (here after a 1 s timeout)."""
    import time
    cfg = DataplaneConfig(instance="pytest-lc-udp", ct_size=1024, max_services=16, max_backends=16,
                          max_slots=64, udp_timeout_s=1, pin=False)
    dp = Dataplane.load(cfg)
    try:
        w = MapWriter(dp)
        s = state("lc", protocol="UDP")
        w.upsert(s)
        run = TestRunner(dp.prog_fd)
        frame = bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=80))
        first = socket.inet_ntoa(run.run(frame).data[30:34])
        assert w.active_connections(s.frontend)[(first, 8080)] == 1
        time.sleep(2.2)
        again = socket.inet_ntoa(run.run(frame).data[30:34])
        assert again == first   # counts equal again: the earliest slot
        assert w.active_connections(s.frontend)[(first, 8080)] == 1
    finally:
        dp.close()


def test_lc_large_service_samples_a_window_and_reaches_every_backend(xdp: Harness):
    many = tuple(f"10.245.{i // 250}.{1 + i % 250}" for i in range(100))
    xdp.writer.upsert(state("lc", many))
    got = [backend_of(xdp, tcp(sport=1000 + i, src=f"10.9.{i // 250}.{1 + i % 250}")) for i in range(3000)]
    counts = {ip: got.count(ip) for ip in many}
    assert min(counts.values()) >= 1
    assert max(counts.values()) - min(counts.values()) <= 40


# ---- changes -----------------------------------------------------------------------------
def test_algorithm_switch_keeps_existing_flows_and_applies_to_new_ones(xdp: Harness):
    xdp.writer.upsert(state("rr", MANY[:8]))
    before = {p: backend_of(xdp, tcp(sport=p)) for p in range(46000, 46016)}
    new = state("maglev", MANY[:8])
    xdp.writer.upsert(new)
    for p, ip in before.items():
        assert backend_of(xdp, tcp(sport=p, flags="A")) == ip
    table = xdp.writer.maglev_table(new.frontend)
    ids = {b.address: xdp.writer.backend_id(new.frontend, b.ip, b.port) for b in new.backends}
    for p in range(47000, 47100):
        want = predict(new, CLIENT, p, VIP, 80, TCP_P, table, ids).ip
        assert backend_of(xdp, tcp(sport=p)) == want
    # and back: the table goes, the existing flows stay
    xdp.writer.upsert(state("random", MANY[:8]))
    assert xdp.writer.maglev_table(new.frontend) is None
    for p, ip in before.items():
        assert backend_of(xdp, tcp(sport=p, flags="A")) == ip


def test_maglev_service_losing_all_backends_has_no_table_and_rejects(xdp: Harness):
    s = state("maglev")
    xdp.writer.upsert(s)
    assert xdp.writer.maglev_table(s.frontend) is not None
    xdp.writer.upsert(state("maglev", ()))
    assert xdp.writer.maglev_table(s.frontend) is None
    assert xdp.send(tcp(sport=48000)).verdict == "XDP_TX"  # RST: no endpoints
    xdp.writer.upsert(s)
    assert len(xdp.writer.maglev_table(s.frontend)) == 16381
    xdp.writer.delete(s.frontend)
    assert xdp.writer.maglev.svc_ids() == []


def test_maglev_table_size_change_swaps_a_table_of_the_new_size(xdp: Harness):
    s = state("maglev", MANY[:5], m=8191)
    xdp.writer.upsert(s)
    for m in (251, 65537, 8191):
        s = state("maglev", MANY[:5], m=m)
        xdp.writer.upsert(s)
        table = xdp.writer.maglev_table(s.frontend)
        assert len(table) == m
        ids = {b.address: xdp.writer.backend_id(s.frontend, b.ip, b.port) for b in s.backends}
        assert table == list(maglev_table(s, ids))
        for p in range(49000, 49020):
            assert backend_of(xdp, tcp(sport=p + m % 997)) == predict(s, CLIENT, p + m % 997, VIP, 80, TCP_P, table, ids).ip
    c = xdp.counters()
    assert c["maglev_fallback"] == 0 and c["slot_miss"] == 0


def test_maglev_backend_removal_moves_only_its_flows(xdp: Harness):
    s = state("maglev", MANY[:20])
    xdp.writer.upsert(s)
    t1 = xdp.writer.maglev_table(s.frontend)
    gone = MANY[7]
    gone_id = xdp.writer.backend_id(s.frontend, gone, 8080)
    xdp.writer.upsert(state("maglev", tuple(ip for ip in MANY[:20] if ip != gone)))
    t2 = xdp.writer.maglev_table(s.frontend)
    moved = sum(1 for x, y in zip(t1, t2) if x != y and x != gone_id)
    assert gone_id in t1 and gone_id not in t2
    assert moved <= 0.02 * len(t1)   # csrc/README.md: 1.2 % measured at N=50


def test_restarted_writer_adopts_maglev_tables(tmp_path):
    cfg = DataplaneConfig(instance="pytest-maglev-adopt", ct_size=1024, max_services=16, max_backends=64,
                          max_slots=256, pin=True)
    reset(cfg)
    try:
        dp = Dataplane.load(cfg)
        w = MapWriter(dp)
        s = state("maglev", MANY[:6], m=4093)
        w.upsert(s)
        table = w.maglev_table(s.frontend)
        inner = w.maglev._inner_id(w.svc_id(s.frontend))
        flows = {p: socket.inet_ntoa(TestRunner(dp.prog_fd).run(bytes(tcp(sport=p))).data[30:34])
                 for p in range(50000, 50010)}
        dp.close()

        dp2 = Dataplane.load(cfg)
        w2 = MapWriter(dp2)
        assert w2.installed()[s.frontend] == s
        assert w2.adoption_drift == 0
        # The very inner map survived the restart: a rebuilt table would be equal
        # (Maglev is deterministic) but a new map.
        assert w2.maglev._inner_id(w2.svc_id(s.frontend)) == inner
        assert w2.maglev_table(s.frontend) == table
        assert w2.sync([s]).unchanged == 1
        assert w2.maglev._inner_id(w2.svc_id(s.frontend)) == inner
        assert dp2.service_stats(w2.svc_id(s.frontend))["new_flows"] == len(flows)
        run = TestRunner(dp2.prog_fd)
        before = dp2.counters()
        for p, ip in flows.items():
            assert socket.inet_ntoa(run.run(bytes(tcp(sport=p, flags="A"))).data[30:34]) == ip
        # conntrack kept every flow (the same backends alone would not show it:
        # new flows would hash to them again)
        assert dp2.counters()["ct_hit"] - before["ct_hit"] == len(flows)
        assert dp2.counters()["ct_new"] == before["ct_new"]
        dp2.close()
    finally:
        reset(cfg)
