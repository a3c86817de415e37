#!/usr/bin/env python3
"""How many established flows survive a spoofed-source SYN flood, per algorithm.

    .venv/bin/python bench/bench_flood.py [--quick] [--json PATH]

One dataplane with a small conntrack (CT_SIZE entries, test-run only, nothing
leaves the machine). For each algorithm, alone in the maps with 3 backends:

1. ESTABLISHED flows complete a handshake: client SYN, the backend's SYN-ACK
   (reverse NAT), client ACK.
2. A flood of FLOOD_FACTOR x CT_SIZE SYNs from spoofed sources (a new random
   address and port each) to the same service. Two patterns:
   - idle:   the established flows send nothing during the flood (long-lived
             idle connections: the worst case for an LRU);
   - active: every established flow sends one ACK after each CT_SIZE flood SYNs;
   - blind-ack: idle, and each spoofed tuple sends a SYN then a blind ACK (the
             flood the two-table policy does not stop, bpf/conntrack.h).
3. Each established flow then answers from its backend and sends from the
   client. It survived if the backend's packet was reverse-NATed to the VIP and
   the client's packet went to the flow's backend as an established flow.

A flow whose entry was evicted is picked afresh: with a stable algorithm (sh, dh,
maglev) it usually lands on its old backend, but its backend's packet before
that pick leaves un-NATed, so it counts as broken.

Then the other side of the same defence: pending handshakes. PENDING clients send a SYN,
a flood of spoofed SYNs follows, and the clients send their ACKs. The pods' table is 8-way
sets (bpf/conntrack.h): an entry outlives exactly WAYS - 1 later new flows in its set, so
the share of entries still held after k spoofed SYNs spread over S sets is
P(Poisson((k + j) / S) < WAYS) for a flow followed by j pending ones, averaged, printed
beside what the table held; an LRU table of the same entries would hold every one until k
reaches its size, then none. Fewer handshakes complete than were held: the ACK of a flow
whose entry went is a new flow, whose entry takes another slot in turn.

The same through the external entry point, whose first packets wait in ct_unconfirmed
(the same sets, its own size): clients from outside open a NodePort flow on the node's
address, in a namespace with the node's routes (tests/packet/nodenet.py: the program's
route lookups read it), and spoofed sources from outside flood the same NodePort. Two
backends: a local pod (a first packet inserts its forward entry) and a pod on the other
node (it also inserts its SNAT port's reply entry: two inserts per flow, so the law
counts 2k + 2j + 1 inserts after a handshake's entry, its own reply entry among them).

Prints one line per algorithm and pattern; --json writes them. The lead runs the
full size; --quick (a few seconds) runs 4 algorithms and one pattern, and never writes the
full run's bench/results/flood.json (the README quotes it): asked to, it writes
bench/results/quick/flood.json, as bench/run.py --quick writes under bench/results/quick/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FULL_RUN_JSON = ROOT / "bench" / "results" / "flood.json"   # `make bench-flood`; --quick: quick/flood.json

CT_SIZE = 4096
ESTABLISHED = 1000
FLOOD_FACTOR = 10
ALGORITHMS = ("random", "rr", "wrr", "maglev", "sh", "dh", "lc", "wlc", "sed", "nq")
QUICK_ALGORITHMS = ("random", "rr", "maglev", "lc")
VIP, PORT, BACKEND_PORT = "10.96.10.1", 80, 8080
BACKENDS = ("10.244.2.1", "10.244.2.2", "10.244.2.3")
SYN, ACK, SYNACK = 0x02, 0x10, 0x12
PENDING, PENDING_ROUNDS = 100, 10
PENDING_FLOODS = (0.25, 0.5, 1.0, 2.0)   # inserts by spoofed SYNs, in units of the table's entries


@dataclass
class Result:
    algorithm: str
    pattern: str
    established: int
    flood: int
    survived: int
    ct_size: int

    @property
    def broken_pct(self) -> float:
        return 100.0 * (self.established - self.survived) / self.established


class Frames:
    """Ethernet/IPv4/TCP frames built from one template by patching addresses,
    ports and flags (the datapath checks no checksum, so none is recomputed)."""

    def __init__(self) -> None:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether
        self.template = bytearray(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                                        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2)))

    def make(self, src: str | bytes, dst: str, sport: int, dport: int, flags: int) -> bytes:
        f = self.template
        f[26:30] = src if isinstance(src, bytes) else socket.inet_aton(src)
        f[30:34] = socket.inet_aton(dst)
        struct.pack_into("!HH", f, 34, sport, dport)
        f[47] = flags
        return bytes(f)


def clients(n: int) -> list[tuple[str, int]]:
    return [(f"10.244.{1 + i // 250}.{1 + i % 250}", 30000 + i) for i in range(n)]


def run_algorithm(h, frames: Frames, algorithm: str, pattern: str, ct_size: int,
                  established: int, flood: int, rng: random.Random) -> Result:
    from controlplane.dataplane.model import Backend, Frontend, ServiceState
    h.reset()
    h.writer.upsert(ServiceState(Frontend(VIP, PORT, "TCP"),
                                 tuple(Backend(ip, BACKEND_PORT) for ip in BACKENDS), algorithm))
    run = h.runner.run
    flows = []
    for client, cport in clients(established):
        out = run(frames.make(client, VIP, cport, PORT, SYN))
        backend = socket.inet_ntoa(out.data[30:34])
        run(frames.make(backend, client, BACKEND_PORT, cport, SYNACK))
        run(frames.make(client, VIP, cport, PORT, ACK))
        flows.append((client, cport, backend))

    for i in range(flood):
        spoofed = struct.pack("!I", 0x0A000000 | rng.getrandbits(24))  # 10.x.y.z
        sport = 1024 + rng.randrange(64000)
        run(frames.make(spoofed, VIP, sport, PORT, SYN))
        if pattern == "blind-ack":
            run(frames.make(spoofed, VIP, sport, PORT, ACK))
        if pattern == "active" and (i + 1) % ct_size == 0:
            for client, cport, _ in flows:
                run(frames.make(client, VIP, cport, PORT, ACK))

    survived = 0
    for client, cport, backend in flows:
        reply = run(frames.make(backend, client, BACKEND_PORT, cport, ACK))
        natted = reply.data[26:30] == socket.inet_aton(VIP)
        fwd = run(frames.make(client, VIP, cport, PORT, ACK))
        same = fwd.data[30:34] == socket.inet_aton(backend)
        survived += natted and same
    return Result(algorithm, pattern, established, flood, survived, ct_size)


@dataclass
class PendingResult:
    entry: str         # "pods", or "external-local" / "external-remote" (the backend's node)
    flood: int
    pending: int
    held: int          # entries still in the table after the flood
    survived: int      # ACKs that found their flow's entry (ct_hit)
    table_entries: int
    sets: int
    expected_pct: float
    inserts_per_flow: int

    @property
    def lru_held_pct(self) -> int:
        """What an LRU table of as many entries would hold: every entry until the
        inserts after the first pending flow's outnumber its entries, then none."""
        return 100 if self.inserts_per_flow * (self.flood + PENDING) < self.table_entries else 0

    @property
    def survived_pct(self) -> float:
        return 100.0 * self.survived / self.pending

    @property
    def held_pct(self) -> float:
        return 100.0 * self.held / self.pending


def poisson_below(lam: float, n: int) -> float:
    """P(Poisson(lam) < n)."""
    term, total = math.exp(-lam), 0.0
    for i in range(n):
        total += term
        term *= lam / (i + 1)
    return total


def _pending_round(h, frames: Frames, rng: random.Random, table, run, state, waiting: list[tuple[str, int]],
                   flood: int, spoofed_net: tuple[int, int]) -> tuple[int, int]:
    """One round with `state` alone in the maps: the `waiting` clients send a SYN to its
    frontend, `flood` SYNs from random sources of `spoofed_net` (address, host bits)
    follow, then the clients' ACKs. Returns how many of the clients' forward entries
    `table` still held after the flood, and how many ACKs found theirs (ct_hit)."""
    from controlplane.dataplane.layout import const
    forward = const("CT_DIR_FORWARD")   # a client's own entry, not its SNAT port's
    dst, dport = state.frontend.vip, state.frontend.port
    h.reset()
    h.writer.upsert(state)
    for client, cport in waiting:
        run(frames.make(client, dst, cport, dport, SYN))
    net, bits = spoofed_net
    for _ in range(flood):
        spoofed = struct.pack("!I", net | rng.getrandbits(bits))
        run(frames.make(spoofed, dst, 1024 + rng.randrange(64000), dport, SYN))
    present = {(struct.pack("=I", k.src), socket.ntohs(k.sport)) for k in table.keys() if k.dir == forward}
    held = sum((socket.inet_aton(c), p) in present for c, p in waiting)
    before = h.dp.counters()["ct_hit"]
    for client, cport in waiting:
        run(frames.make(client, dst, cport, dport, ACK))
    return held, h.dp.counters()["ct_hit"] - before


def run_pending(h, frames: Frames, flood: int, rng: random.Random) -> PendingResult:
    """PENDING_ROUNDS rounds of PENDING handshakes held open across `flood` spoofed SYNs."""
    from controlplane.dataplane.model import Backend, Frontend, ServiceState
    table = h.dp.table("ct_unconfirmed_pod")
    state = ServiceState(Frontend(VIP, PORT, "TCP"), tuple(Backend(ip, BACKEND_PORT) for ip in BACKENDS), "random")
    held = survived = 0
    for r in range(PENDING_ROUNDS):
        waiting = [(f"10.245.{r}.{1 + i % 250}", 20000 + i) for i in range(PENDING)]
        kept, hit = _pending_round(h, frames, rng, table, h.runner.run, state, waiting, flood,
                                   (0x0A000000, 24))   # 10.x.y.z
        held += kept
        survived += hit
    return _pending_result("pods", table, flood, held, survived, inserts_per_flow=1)


def _pending_result(entry: str, table, flood: int, held: int, survived: int,
                    inserts_per_flow: int) -> PendingResult:
    """What the table held against the flood law: the j-th pending flow from the end sees
    inserts_per_flow x (flood + j) later inserts spread over the sets (and with two per
    flow, its own second one)."""
    from controlplane.dataplane import flowsets
    sets, n = table.n_sets, inserts_per_flow
    law = sum(poisson_below((n * (flood + j) + n - 1) / sets, flowsets.WAYS) for j in range(PENDING)) / PENDING
    return PendingResult(entry, flood, PENDING * PENDING_ROUNDS, held, survived, table.max_entries, sets,
                         100.0 * law, n)


NODE_PORT = 30080


def run_pending_external(h, node, frames: Frames, flood: int, rng: random.Random,
                         remote: bool) -> PendingResult:
    """run_pending through the external entry point, to a NodePort on the node's address
    whose one backend is a local pod or (remote) a pod on the other node (source NAT)."""
    from controlplane.dataplane.model import Backend, Frontend, ServiceState
    from controlplane.dataplane.testrun import TestRunner
    from tests.packet import nodenet
    table = h.dp.table("ct_unconfirmed")
    runner = TestRunner(h.dp.external_prog_fd)
    backend = nodenet.REMOTE_POD if remote else nodenet.LOCAL_POD
    state = ServiceState(Frontend(nodenet.NODE_IP, NODE_PORT, "TCP", "external"),
                         (Backend(backend, BACKEND_PORT),), "random")

    def run(frame: bytes) -> None:
        runner.run(frame, 1, node.ext_ifindex)

    held = survived = 0
    for r in range(PENDING_ROUNDS):
        waiting = [(f"198.51.{r}.{1 + i % 250}", 20000 + i) for i in range(PENDING)]
        # the whole round in the node's namespace (the route lookups read the caller's);
        # spoofed sources from outside, 198.18.0.0/15
        kept, hit = node.call(_pending_round, h, frames, rng, table, run, state, waiting, flood,
                              (0xC6120000, 17))
        held += kept
        survived += hit
    return _pending_result("external-remote" if remote else "external-local", table, flood, held, survived,
                           inserts_per_flow=2 if remote else 1)


def _print(p: PendingResult) -> PendingResult:
    table = "pods' table" if p.entry == "pods" else f"ct_unconfirmed ({p.entry.split('-')[1]} backend)"
    print(f"{p.entry:15} pending handshakes across {p.flood} spoofed SYNs: entries held {p.held_pct:5.1f} % "
          f"(law {p.expected_pct:5.1f} %; an LRU of as many entries would hold {p.lru_held_pct} %), "
          f"completed {p.survived}/{p.pending}; {table} {p.table_entries} entries in {p.sets} sets",
          flush=True)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 algorithms, idle pattern only")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.quick and args.json and args.json.resolve() == FULL_RUN_JSON:
        # the full run's file (the README quotes it): a smoke run writes beside bench/run.py's
        args.json = FULL_RUN_JSON.parent / "quick" / FULL_RUN_JSON.name
        print(f"bench_flood: --quick writes {args.json.relative_to(ROOT)}, not the full run's "
              f"{FULL_RUN_JSON.relative_to(ROOT)}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        print("bench_flood: needs root (BPF)", file=sys.stderr)
        return 2
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.program import Dataplane
    from tests.packet import nodenet
    from tests.packet.harness import Harness

    algorithms = QUICK_ALGORITHMS if args.quick else ALGORITHMS
    patterns = ("idle",) if args.quick else ("idle", "active", "blind-ack")
    dp = Dataplane.load(DataplaneConfig(instance="bench-flood", pin=False, ct_size=CT_SIZE,
                                        frag_size=64, max_services=16, max_backends=64,
                                        max_slots=256, affinity_size=64))
    h = Harness(dp)
    frames = Frames()
    results = []
    pending: list[PendingResult] = []
    start = time.monotonic()
    try:
        for pattern in patterns:
            for alg in algorithms:
                r = run_algorithm(h, frames, alg, pattern, CT_SIZE, ESTABLISHED,
                                  FLOOD_FACTOR * CT_SIZE, random.Random(alg))
                results.append(r)
                print(f"{pattern:6} {alg:7} survived {r.survived:5}/{r.established} "
                      f"({r.broken_pct:5.1f} % broken) after {r.flood} spoofed SYNs, "
                      f"conntrack {r.ct_size}", flush=True)
        shares = PENDING_FLOODS[1:3] if args.quick else PENDING_FLOODS
        entries = h.dp.table("ct_unconfirmed_pod").max_entries
        for share in shares:
            pending.append(_print(run_pending(h, frames, int(share * entries),
                                              random.Random(f"pending-{share}"))))
        node = nodenet.create()
        try:
            entries = h.dp.table("ct_unconfirmed").max_entries
            for remote in (False, True):
                for share in shares:   # of inserts: a flow to a remote backend inserts two entries
                    flood = int(share * entries) // (2 if remote else 1)
                    pending.append(_print(run_pending_external(h, node, frames, flood,
                                                               random.Random(f"external-{share}"), remote)))
        finally:
            nodenet.delete(node)
        h.reset()
    finally:
        dp.close()
    print(f"bench_flood: {time.monotonic() - start:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(
            [asdict(r) | {"broken_pct": r.broken_pct} for r in results] +
            [asdict(p) | {"pattern": "pending", "held_pct": p.held_pct, "survived_pct": p.survived_pct,
                          "lru_held_pct": p.lru_held_pct}
             for p in pending],
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
