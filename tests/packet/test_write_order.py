"""The writer's update order, checked with packets between its steps (issue 14).

MapWriter.after_phase is called after each step of an upsert (backends, slots,
entries, shrink, flags). Here it sends new flows to every frontend being changed,
and packets of a flow opened before the change, and requires of each:
  - a new flow goes to a live member of its own service, as the state before or
    after the update has it (both are live until the shrink step retires the old);
  - it is rejected only if the service has no backend in the state it sees;
  - it passes untouched only while the service does not exist yet;
  - an established flow whose backend stays keeps it at every step.
A step that wrote the service entry before its slots, or retired backends before
the entry stopped using them, fails here."""
from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane.model import Backend, Frontend, ServiceState

from .harness import CLIENT, CLIENT_MAC, NODE_MAC, Harness

pytestmark = pytest.mark.root

FE_A = Frontend("10.96.60.1", 80)
FE_B = Frontend("10.96.60.2", 80)


def pods(*last: int, state: str = "active") -> tuple[Backend, ...]:
    return tuple(Backend(f"10.244.60.{i}", 8080, state) for i in last)


def members(state: ServiceState | None) -> set[str]:
    return {b.ip for b in state.slot_backends()} if state else set()


class Prober:
    """Sends packets at each phase and records every violation."""

    def __init__(self, xdp: Harness) -> None:
        self.xdp = xdp
        self.sport = 20000
        self.template = bytearray(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=FE_A.vip) /
                                        TCP(sport=1, dport=80, flags="S")))
        self.before: dict[Frontend, ServiceState | None] = {}
        self.after: dict[Frontend, ServiceState | None] = {}
        self.established: dict[Frontend, tuple[int, str]] = {}
        self.problems: list[str] = []
        self.probes = 0

    def send(self, fe: Frontend, sport: int, flags: int = 0x02) -> tuple[str, str]:
        t = self.template
        t[30:34] = socket.inet_aton(fe.vip)
        t[34:36] = struct.pack("!H", sport)
        t[47] = flags
        out = self.xdp.runner.run(bytes(t))
        return out.verdict_name, socket.inet_ntoa(out.data[30:34])

    def open_flow(self, fe: Frontend) -> str:
        self.sport += 1
        verdict, dst = self.send(fe, self.sport)
        assert verdict == "XDP_PASS" and dst != fe.vip
        self.established[fe] = (self.sport, dst)
        return dst

    def __call__(self, phase: str) -> None:
        for fe in self.after:
            old, new = self.before.get(fe), self.after.get(fe)
            live = members(old) | members(new)
            for _ in range(6):
                self.sport += 1
                self.probes += 1
                verdict, dst = self.send(fe, self.sport)
                what = f"after {phase}: new flow to {fe} ({old and len(old.backends)} -> " \
                       f"{new and len(new.backends)} backends)"
                if verdict == "XDP_PASS" and dst == fe.vip:
                    if old is not None and new is not None:
                        self.problems.append(f"{what} passed untranslated")
                elif verdict == "XDP_PASS":
                    if dst not in live:
                        self.problems.append(f"{what} sent to {dst}, not a live member")
                elif verdict == "XDP_TX":   # rejected
                    if (old is None or members(old)) and (new is None or members(new)):
                        self.problems.append(f"{what} rejected while it had backends")
                else:
                    self.problems.append(f"{what}: {verdict}")
            if fe in self.established:
                sport, backend = self.established[fe]
                still = any(b.ip == backend for b in new.backends) if new else False
                if still:
                    verdict, dst = self.send(fe, sport, flags=0x10)
                    if (verdict, dst) != ("XDP_PASS", backend):
                        self.problems.append(f"after {phase}: established flow of {fe} moved "
                                             f"from {backend} to {verdict} {dst}")


CHANGES = [
    # (name, states before, states after); None = absent
    ("add", {FE_A: None}, {FE_A: ServiceState(FE_A, pods(1, 2, 3))}),
    ("grow", {FE_A: ServiceState(FE_A, pods(1, 2))}, {FE_A: ServiceState(FE_A, pods(1, 2, 3, 4, 5))}),
    ("shrink", {FE_A: ServiceState(FE_A, pods(1, 2, 3, 4, 5))}, {FE_A: ServiceState(FE_A, pods(1))}),
    ("replace all", {FE_A: ServiceState(FE_A, pods(1, 2, 3))}, {FE_A: ServiceState(FE_A, pods(7, 8))}),
    ("to empty", {FE_A: ServiceState(FE_A, pods(1, 2))}, {FE_A: ServiceState(FE_A, ())}),
    ("from empty", {FE_A: ServiceState(FE_A, ())}, {FE_A: ServiceState(FE_A, pods(3, 4))}),
    ("random -> maglev", {FE_A: ServiceState(FE_A, pods(1, 2, 3))},
     {FE_A: ServiceState(FE_A, pods(1, 2, 4), "maglev", 0, 251)}),
    ("maglev -> rr", {FE_A: ServiceState(FE_A, pods(1, 2, 3), "maglev", 0, 251)},
     {FE_A: ServiceState(FE_A, pods(2, 3), "rr")}),
    ("maglev resize", {FE_A: ServiceState(FE_A, pods(1, 2, 3), "maglev", 0, 251)},
     {FE_A: ServiceState(FE_A, pods(1, 2, 3, 4), "maglev", 0, 509)}),
    ("lc shrink", {FE_A: ServiceState(FE_A, pods(1, 2, 3, 4), "lc")}, {FE_A: ServiceState(FE_A, pods(4), "lc")}),
    ("to terminating only", {FE_A: ServiceState(FE_A, pods(1, 2))},
     {FE_A: ServiceState(FE_A, pods(1, 2, state="terminating"))}),
    ("wrr weights", {FE_A: ServiceState(FE_A, pods(1, 2), "wrr")},
     {FE_A: ServiceState(FE_A, (Backend("10.244.60.1", 8080, weight=3), Backend("10.244.60.5", 8080)), "wrr")}),
    ("two services share a pod", {FE_A: ServiceState(FE_A, pods(1, 2)), FE_B: None},
     {FE_A: ServiceState(FE_A, pods(1, 2)), FE_B: ServiceState(FE_B, pods(2, 3))}),
    ("a batch: one grows, one shrinks", {FE_A: ServiceState(FE_A, pods(1)), FE_B: ServiceState(FE_B, pods(5, 6, 7))},
     {FE_A: ServiceState(FE_A, pods(1, 2, 3)), FE_B: ServiceState(FE_B, pods(7))}),
]


@pytest.mark.parametrize("name,before,after", CHANGES, ids=[c[0] for c in CHANGES])
def test_packets_between_write_steps_see_a_whole_service(xdp: Harness, name, before, after):
    probe = Prober(xdp)
    present = [s for s in before.values() if s is not None]
    xdp.writer.upsert_many(present)
    for fe, s in before.items():
        if s is not None and members(s):
            probe.open_flow(fe)
    probe.before, probe.after = before, after
    phases = []
    xdp.writer.after_phase = lambda phase: (phases.append(phase), probe(phase))
    try:
        xdp.writer.upsert_many([s for s in after.values() if s is not None])
    finally:
        xdp.writer.after_phase = None
    assert phases == ["backends", "slots", "entries", "shrink", "flags"]
    assert probe.problems == [], "\n".join(probe.problems[:10])
    assert probe.probes >= 5 * 6 * len(after)


def test_packets_between_write_steps_of_a_delete(xdp: Harness):
    """delete(): the entry goes first; packets then pass untouched (no service),
    never to a retired backend."""
    xdp.writer.upsert(ServiceState(FE_A, pods(1, 2, 3)))
    probe = Prober(xdp)
    probe.open_flow(FE_A)
    xdp.writer.delete(FE_A)
    verdict, dst = probe.send(FE_A, 30000)
    assert (verdict, dst) == ("XDP_PASS", FE_A.vip)


def test_packets_between_steps_of_a_batched_delete(xdp: Harness):
    """delete_many (what sync() deletes with): after the entries step no
    packet finds a deleted service (it passes untouched), before and after every
    later step; a service kept, sharing a pod with a deleted one, keeps its
    backends and established flow throughout."""
    fe_c = Frontend("10.96.60.3", 80)
    keep = ServiceState(FE_A, pods(1, 2))
    gone = [ServiceState(FE_B, pods(2, 3), "maglev", 0, 251), ServiceState(fe_c, pods(4, 5))]
    xdp.writer.sync([keep, *gone])
    probe = Prober(xdp)
    probe.open_flow(FE_A)
    probe.before, probe.after = {FE_A: keep}, {FE_A: keep}
    phases = []

    def check(phase: str) -> None:
        phases.append(phase)
        probe(phase)
        for s in gone:
            for _ in range(4):
                probe.sport += 1
                verdict, dst = probe.send(s.frontend, probe.sport)
                if (verdict, dst) != ("XDP_PASS", s.frontend.vip):
                    probe.problems.append(f"after {phase}: deleted {s.frontend} gave {verdict} {dst}")

    xdp.writer.after_phase = check
    try:
        assert xdp.writer.delete_many([s.frontend for s in gone]) == 2
    finally:
        xdp.writer.after_phase = None
    assert phases == ["entries", "slots", "backends", "flags"]
    assert probe.problems == [], "\n".join(probe.problems[:10])
