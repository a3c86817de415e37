"""A loaded dataplane plus everything a packet test needs: typed map writes,
one call to run a scapy packet through the real program, counter deltas."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether

from controlplane.dataplane import readout, udprecent
from controlplane.dataplane.config import UNCONFIRMED_TABLES
from controlplane.dataplane.layout import header_struct
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.writer import MapWriter

CLIENT_MAC = "02:00:00:00:00:01"
NODE_MAC = "02:00:00:00:00:02"
CLIENT = "10.244.1.10"
VIP = "10.96.0.100"
BACKENDS = ("10.244.2.11", "10.244.2.12", "10.244.2.13")

VERDICT = {"XDP_ABORTED": 0, "XDP_DROP": 1, "XDP_PASS": 2, "XDP_TX": 3, "XDP_REDIRECT": 4}


@dataclass
class Outcome:
    verdict: str
    raw: bytes

    @property
    def pkt(self) -> Ether:
        return Ether(self.raw)


def assert_frag_needed(out: Ether, sender: tuple[str, str], quoted: tuple, mtu: int) -> None:
    """`out` is ICMP "fragmentation needed" (next hop MTU `mtu`) to `sender` (address,
    MAC), from the address it sent to, quoting (src, sport, dst, dport) as it sent them
    — the IP header and 8 bytes — with valid checksums."""
    assert (out.dst, out[IP].dst, out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == \
        (sender[1], sender[0], 3, 4, mtu), out.show(dump=True)
    q = out[IPerror]
    l4 = out[TCPerror] if TCPerror in out else out[UDPerror]
    assert (q.src, l4.sport, q.dst, l4.dport) == quoted and out[IP].src == quoted[2]
    assert len(out[ICMP]) == 8 + 20 + 8
    again = Ether(bytes(out))
    del again[IP].chksum, again[ICMP].chksum, again[IPerror].chksum
    again = Ether(bytes(again))
    assert (again[IP].chksum, again[ICMP].chksum, again[IPerror].chksum) == \
        (out[IP].chksum, out[ICMP].chksum, q.chksum)


@dataclass
class Harness:
    dp: Dataplane
    writer: MapWriter = field(init=False)
    runner: TestRunner = field(init=False)

    def __post_init__(self) -> None:
        self.writer = MapWriter(self.dp)
        self.runner = TestRunner(self.dp.prog_fd)

    def send(self, pkt) -> Outcome:
        res = self.runner.run(bytes(pkt))
        return Outcome(res.verdict_name, res.data)

    def service(self, vip: str = VIP, port: int = 80, protocol: str = "TCP",
                backends=BACKENDS, backend_port: int = 8080, algorithm: str = "random",
                states: dict[str, str] | None = None) -> Frontend:
        fe = Frontend(vip, port, protocol)
        states = states or {}
        bs = tuple(Backend(ip, backend_port, states.get(ip, "active")) for ip in backends)
        self.writer.upsert(ServiceState(fe, bs, algorithm))
        return fe

    def counters(self) -> dict[str, int]:
        return self.dp.counters()

    def handoff_notes(self) -> dict[bytes, tuple[int, int]]:
        """The notes of frames handed to tc and not yet taken (bpf/handoff.h): key bytes ->
        (the device tc is to send them to, how many)."""
        return {bytes(k): (v.ifindex, v.count) for k, v in self.dp.table("handoff_notes").items()
                if 0 < v.count < 2**31}

    def reset(self) -> None:
        """Between tests: no services, no flows, no affinity entries, no per-backend counts (a new writer
        zeroes only the ids it hands out again)."""
        self.writer.sync([])
        readout.backend_rows(self.dp).grid()[:] = 0
        for name in UNCONFIRMED_TABLES:
            self.dp.table(name).clear()   # (their sets' rings too)
        for name in ("conntrack", "fragments", "affinity", "handoff_notes"):
            table = self.dp.table(name)
            keys = [k for k in table.keys()]
            for k in keys:
                try:
                    del table[k]
                except KeyError:
                    pass
        recent = self.dp.table(udprecent.MAP)   # no flows: no UDP flow stamped either
        recent[recent.Key(0)] = recent.Leaf()


# The note key's layout, from the shared header (bpf/svcxdp.h), as the datapath's own.
HANDOFF_KEY = header_struct("svcxdp_handoff_key")


def handoff_key(frame: bytes) -> bytes:
    """An untagged IPv4 frame's handoff note key, read as bpf/handoff.h handoff_key_of
    reads it: its addresses, id and protocol, then (after a header without options) its
    first four L4 bytes and, for TCP, the four after them."""
    ip = frame[14:34]
    l4 = frame[34:42] if ip[0] == 0x45 and len(frame) >= 42 else bytes(8)

    def be(field: bytes) -> int:   # (a __be field holds the frame's bytes as they are)
        return int.from_bytes(field, sys.byteorder)
    return bytes(HANDOFF_KEY(saddr=be(ip[12:16]), daddr=be(ip[16:20]), id=be(ip[4:6]), protocol=ip[9],
                             ports=be(l4[:4]), seq=be(l4[4:8]) if ip[9] == 6 else 0))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}
