"""`svcctl trace`'s prediction (controlplane.dataplane.trace over the pinned maps) against
what the real program does with the same packet (BPF_PROG_TEST_RUN of the pinned
program, trace.run): thousands of random tuples per algorithm, with and without ClientIP
affinity, new flows mixed with packets of known flows (ACKs, FINs, RSTs, reopening SYNs)."""
from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path

import pytest

from controlplane.dataplane.config import PROGRAM_PINS
from controlplane.dataplane.libbpf import lib
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.pinned import PinnedMaps
from controlplane.dataplane.trace import Packet, run, trace

from .harness import Harness

PIN_ROOT = Path("/sys/fs/bpf/svcxdp")
MAPS = ("services", "slots", "backends", "rev_nat", "conntrack", "ct_unconfirmed", "rr_state",
        "backend_conns", "maglev", "affinity", "source_ranges")
ALGORITHMS = ("random", "rr", "wrr", "sh", "dh", "maglev", "lc", "wlc", "sed", "nq")
VIP = "10.96.7.1"
BACKENDS = tuple(f"10.244.3.{10 + i}" for i in range(5))
TUPLES = 2000
S, A, F, R = 0x02, 0x10, 0x01, 0x04


def pin_dataplane(xdp: Harness, instance: str) -> Path:
    pins = PIN_ROOT / instance
    pins.mkdir(parents=True, exist_ok=True)
    for name in MAPS:
        assert lib().bpf_obj_pin(xdp.dp.table(name).map_fd, str(pins / name).encode()) == 0, name
    for entry, fd in (("pod", xdp.dp.prog_fd), ("external", xdp.dp.external_prog_fd)):
        assert lib().bpf_obj_pin(fd, str(pins / PROGRAM_PINS[entry]).encode()) == 0
    return pins


def unpin(pins: Path) -> None:
    for entry in pins.iterdir():
        entry.unlink()
    pins.rmdir()


@pytest.fixture
def maps(xdp: Harness):
    pins = pin_dataplane(xdp, f"pytest-trace-{os.getpid()}")
    m = PinnedMaps(pins)
    try:
        yield m
    finally:
        m.close()
        unpin(pins)


def clear(xdp: Harness, name: str) -> None:
    table = xdp.dp.table(name)
    for k in list(table.keys()):
        try:
            del table[k]
        except KeyError:
            pass


def service(algorithm: str, affinity: int = 0, protocol: str = "TCP") -> ServiceState:
    weights = {ip: 1 + i % 3 for i, ip in enumerate(BACKENDS)} if algorithm in ("wrr", "wlc", "sed", "nq") else {}
    return ServiceState(Frontend(VIP, 80, protocol), tuple(Backend(ip, 8080, weight=weights.get(ip, 1))
                                                            for ip in BACKENDS), algorithm, affinity)


def compare(maps: PinnedMaps, packets) -> dict[str, int]:
    """Trace then run each packet; every run must land where its trace said. Returns how
    many traces each way of choosing made."""
    by: dict[str, int] = {}
    mismatches = []
    for p in packets:
        t = trace(maps, p)
        r = run(maps, t)
        by[t.choice.by if t.choice else t.reason] = by.get(t.choice.by if t.choice else t.reason, 0) + 1
        if t.choice is not None and not t.choice.exact:
            ok = r.dst in t.choice.candidates
        else:
            ok = t.rewrite is not None and r.dst == t.rewrite.dst and r.src == t.rewrite.src
        if not ok or r.verdict != t.verdict:
            mismatches.append((p, t.choice, t.rewrite, t.verdict, r))
    assert not mismatches, f"{len(mismatches)} of {len(packets)} differ, first: {mismatches[:2]}"
    return by


def random_packets(rng: random.Random, n: int, protocol: str, clients: list[str] | None = None) -> list[Packet]:
    """New flows from random (or pooled) clients, and every fifth packet one of a flow
    seen before, with ACK, FIN, RST or a SYN (which reopens a closed flow)."""
    seen: list[tuple[str, int]] = []
    out = []
    for i in range(n):
        if seen and i % 5 == 4:
            src, sport = rng.choice(seen)
            flags = rng.choice((A, A, F, R, S)) if protocol == "TCP" else None
        else:
            src = rng.choice(clients) if clients else socket.inet_ntoa(struct.pack("!I", rng.getrandbits(32)))
            sport = rng.randrange(1024, 65536)
            seen.append((src, sport))
            flags = S if protocol == "TCP" else None
        out.append(Packet(src, sport, VIP, 80, protocol, flags))
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_trace_predicts_what_the_program_does(xdp: Harness, maps: PinnedMaps, algorithm: str):
    rng = random.Random(f"trace-{algorithm}")
    for protocol in ("TCP", "UDP"):
        xdp.reset()
        xdp.writer.upsert(service(algorithm, protocol=protocol))
        by = compare(maps, random_packets(rng, TUPLES // 2, protocol))
        assert by.get("conntrack", 0) > TUPLES // 20 and by.get(algorithm, 0) > TUPLES // 4, by


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_trace_predicts_client_ip_affinity(xdp: Harness, maps: PinnedMaps, algorithm: str):
    clear(xdp, "affinity")
    rng = random.Random(f"affinity-{algorithm}")
    xdp.writer.upsert(service(algorithm, affinity=600))
    clients = [f"10.1.{i // 250}.{1 + i % 250}" for i in range(60)]
    by = compare(maps, random_packets(rng, TUPLES, "TCP", clients))
    assert by.get("affinity", 0) > TUPLES // 2 and by.get(algorithm, 0) >= 30, by
    clear(xdp, "affinity")
