"""BPF-only per-packet cost of the XDP datapath, via BPF_PROG_TEST_RUN, in one run.

What is measured: the kernel's own `duration` of one test-run call per packet
(`repeat=1`), summed over a round of packets and divided by their number. That is
the in-kernel cost of the program on one core, *timer overhead included* (each
call brackets one program run with two clock reads); it is not NIC line rate.
The floor is an empty XDP program measured exactly the same way, beside every
configuration, and every ratio divides by the floor of its own configuration.

Every round also interleaves one floor call after each path call and records
their ratio ("paired ratio"): a second, drift-robust view of the same number.

Why repeat=1: with repeat=N the kernel runs the program N times on the same
buffer, so the second run sees an already-DNATed packet and takes another path
(the "repeat trap", DESIGN.md). One call per packet hands the program a fresh
copy of the frame every time.

Paths (each a TCP packet, Ethernet + IPv4 + TCP, 54 bytes):
  floor        empty XDP program, the established frame
  non_service  pod-to-pod packet: services lookup misses, reply lookup misses
  node_traffic the external entry point (svcxdp_external, every other row is the pod-facing
               one): an answer to one of the node's own connections (a host outside
               :443 -> the node's address:40000, a port in the SNAT range), no frontend
               and from no service's backend: it passes
  established  ACK of a tracked flow: conntrack hit, DNAT
  reply        backend -> client of a tracked flow: reverse NAT
  cold_line    a ruler, not svcxdp: an XDP program that only increments one
               random 64-byte line of a table of ct_size lines (64 MiB at the
               default 1,048,576), indexed by a hash of the new-flow frame's
               source. A flow never seen before has state in no cache, so this
               is the least any datapath keeping per-flow state pays for it on
               this machine (the conntrack map itself is larger: ~104 MiB).
  new_flow     SYN from a tuple never seen before: backend pick, one insert into
               the pods' unconfirmed table (ct_unconfirmed_pod), DNAT (every packet
               of every round is a distinct tuple)
  new_flow_udp the same for a UDP datagram (54 bytes, no UDP checksum) to the same VIP
               and port over UDP: a datagram cannot say it is a flow's first, so it
               looks in conntrack unless ct_udp_recent is sure the tuple has no entry
               there (bpf/conntrack.h). In the empty configuration nothing has stamped
               the filter (it skips); in the full one the filter is filled with "maybe",
               as a conntrack full of live UDP flows leaves it (it looks: the worst case)
  confirm      the ACK that confirms such a flow: its entry moves from
               ct_unconfirmed_pod into conntrack (on a full conntrack that insert
               evicts). Each round first sends PACKETS new SYNs, unmeasured, then
               measures their ACKs. A new flow's in-kernel cost is new_flow +
               confirm; issue 17's full-table target is taken on that sum.
  bound_paired not a path: issue 17's empty-table target, new flow / (ruler +
               established - floor), measured interleaved (empty conntrack only).
               Each round runs PACKETS calls of each of the four programs in
               slices of PAIRED_SLICE calls, the four slices' order rotating from
               slice to slice, so the four means of a round are taken within the
               same milliseconds; the round's ratio is computed from them, and the
               figure is the median over rounds (p25-p75, min-max beside it). The
               rows above it are measured minutes apart, and the ruler alone moved
               ~25 % between configurations of one run (machine drift), which
               moved the ratio as much. Same programs and frames as the rows: the
               new-flow calls insert fresh entries, on a dataplane loaded afresh
               for this case, removed after each round as the new_flow row's are.
               A fifth program runs in the same rounds, a second ruler for reference
               (COLD_BUCKET_PROGRAM: a bucket, then the line it leads to, two
               dependent misses as in any hash lookup of a never-seen key), and the
               ratio to it is reported beside the target's.

Configurations: services x conntrack state. Services are written with the
project's MapWriter (its time is recorded in extra_info). The default dataplane
holds max_services = 65,536 services (ids 1..65,536), so the largest row fills
the production-sized maps completely. Conntrack is either empty (0) or full
(CT_FULL = the map's 1,048,576 entries): every conntrack table is filled (conntrack
written past its capacity with BPF_MAP_UPDATE_BATCH, so its LRU free lists are empty;
the unconfirmed tables' sets until every slot is used: flowsets.py), so every new
flow's insert evicts, as on a node whose tables are full.
The program measured is the pod-facing one: its new flows go to ct_unconfirmed_pod
(32,768 entries in 8-way sets by default, which stays in cache), and the confirm row
measures their move into conntrack. In the empty configuration the new_flow rounds
delete their entries from ct_unconfirmed_pod after each round
(Env.forget_new_flows), as the flows' confirmations would: that table holds only
16 rounds, and past them every insert would evict. (Before, 1,000,000 entries went
into conntrack only, and new flows landed in an empty ct_unconfirmed: nothing was
evicted.)
Every configuration starts from a freshly loaded dataplane, so none inherits
another's map history.

Besides per-round means, every row reports the per-call mean, p50, p99 and
p99.9: on a full table the LRU refills its free list in batches, so a few calls
cost tens of microseconds (issue 17 asks for p99 beside the means).

Caveat: every measured packet goes to the same service and flow, so the lookups
are cache-hot; what grows with the tables is the hash work and bucket walk, not
cache misses. New flows are the exception: each inserts a fresh entry, whose
bucket and element are in no cache (compare cold_line).

Run:
  .venv/bin/python -m pytest bench/bench_datapath.py --benchmark-only \
      --benchmark-json=bench/results/datapath.json
  .venv/bin/python bench/report.py bench/results/datapath.json
Quick: SVCXDP_BENCH_QUICK=1 (services 1 and 65,536, fewer packets and rounds, and a
65,536-entry conntrack instead of 1,048,576 in every configuration, the idle-GC case
included: a smoke run of the code paths, not figures to quote).
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import os
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field
from itertools import repeat

import pytest

from controlplane.dataplane import udprecent
from controlplane.dataplane.affinity_maps import count_entries  # (a set table too: flowsets.py)
from controlplane.dataplane.config import FLOW_TABLES, UNCONFIRMED_TABLES
from controlplane.dataplane.frames import csum

import flowtables  # bench/ (pytest puts it on the path)

QUICK = os.environ.get("SVCXDP_BENCH_QUICK", "") not in ("", "0")
SERVICES = (1, 65_536) if QUICK else (1, 1_000, 10_000, 65_536)
# The default conntrack size, filled. Quick mode (a smoke run) builds every dataplane of this
# suite with a 65,536-entry conntrack instead: filling 1,048,576 entries (and sweeping them
# with the GC in test_new_flow_idle_gc) took most of a quick run's time.
CT_FULL = 65_536 if QUICK else 1_048_576
CT_ENTRIES = (0, CT_FULL)
RULER_BUCKETS = 262_144                    # the second ruler's bucket array (below)
CT_OVERFILL = 8                            # write 1/8 more than a table holds: free lists empty
PACKETS = 500 if QUICK else 2_000          # test-run calls per round
ROUNDS = 10 if QUICK else 50               # measured rounds per benchmark
WARMUP = 1 if QUICK else 2                 # unmeasured rounds first
PAIRED = "bound_paired"
PATHS = ("floor", "non_service", "node_traffic", "established", "reply", "cold_line", "new_flow", "new_flow_udp", "confirm",
         PAIRED)
NEW_FLOW_PATHS = ("new_flow", "new_flow_udp", "cold_line", "confirm")   # a distinct tuple per packet
PAIRED_SLICE = 50                          # consecutive calls of one program in a paired round
# Every configuration gets a freshly loaded dataplane (services written, conntrack
# filled). Within one, new_flow and confirm run last because they add (and, at 1M,
# evict) entries; the paired case (empty conntrack only) loads its own.
CASES = [(s, c, p) for s in SERVICES for c in CT_ENTRIES for p in PATHS if p != PAIRED or c == 0]
SUITE = "datapath"
LABEL = ("in-kernel cost on one core via BPF_PROG_TEST_RUN (repeat=1 per packet, kernel "
         "duration summed), timer overhead included; not NIC line rate")

CLIENT_MAC, NODE_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLIENT, CLIENT_PORT = "10.244.1.10", 40000
VIP, VPORT = "10.96.0.100", 80
BACKENDS = ("10.244.2.11", "10.244.2.12", "10.244.2.13")
BACKEND_PORT = 8080
OTHER_POD = "10.244.3.3"  # non-service destination
NODE_IP, OUTSIDE_HOST = "192.168.1.31", "198.51.100.7"   # node_traffic: outside:443 -> node:40000
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)  # bpf_ktime_get_coarse_ns
CT_FILL_CHUNK = 100_000

# The cold_line ruler (see the module docstring). Its index mixes the frame's
# source address and port, which every new-flow frame varies.
COLD_LINE_PROGRAM = r"""
struct line { __u64 word[8]; };
BPF_ARRAY(lines, struct line, COLD_LINES);

int cold_line(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + 36 > end)
		return XDP_PASS;
	__u64 src = *(__u32 *)(data + 26), sport = *(__u16 *)(data + 34);
	__u32 i = (__u32)(((src << 16 | sport) * 0x9E3779B97F4A7C15ULL) >> 32) & (COLD_LINES - 1);
	struct line *l = lines.lookup(&i);
	if (l)
		l->word[0] += 1;
	return XDP_PASS;
}
"""


# A second ruler, beside the paired measurement only: a hash table reads a never-seen
# key's bucket and then, through what it read, the element; so this one reads one
# 16-byte "bucket" of an array of RULER_BUCKETS (ct_unconfirmed's bucket array was
# 262,144 x 16 bytes when it was an LRU hash; kept at that size since, so the ruler
# stays comparable across runs), then increments
# the line of the cold_line table that the bucket's content (always 0) chooses
# together with the hash: the second miss waits for the first, as in a hash lookup,
# instead of overlapping it.
COLD_BUCKET_PROGRAM = r"""
struct line { __u64 word[8]; };
struct bkt { __u64 head, lock; };
BPF_ARRAY(lines, struct line, COLD_LINES);
BPF_ARRAY(bkts, struct bkt, COLD_BUCKETS);

int cold_bucket(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + 36 > end)
		return XDP_PASS;
	__u64 src = *(__u32 *)(data + 26), sport = *(__u16 *)(data + 34);
	__u64 h = (src << 16 | sport) * 0x9E3779B97F4A7C15ULL;
	__u32 j = (__u32)(h >> 20) & (COLD_BUCKETS - 1);
	struct bkt *b = bkts.lookup(&j);
	if (!b)
		return XDP_PASS;
	b->lock += 1;
	__u32 i = ((__u32)(h >> 32) ^ (__u32)b->head) & (COLD_LINES - 1);
	struct line *l = lines.lookup(&i);
	if (l)
		l->word[0] += 1;
	return XDP_PASS;
}
"""


def _root_and_bcc() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BPF_PROG_TEST_RUN)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (use the project venv)"
    return None


# ---- frames -------------------------------------------------------------------------
_csum = csum   # RFC 1071 (controlplane/dataplane/frames.py)


def default_client(i: int) -> tuple[int, int]:
    """Sources 10.244.128.0/17, ports 2000-61999: 60,000 ports per address."""
    return (10 << 24 | 244 << 16 | 128 << 8) + i // NewFlowFrames.PORTS, 2000 + i % NewFlowFrames.PORTS


class NewFlowFrames:
    """Distinct SYN frames from a template: every packet a tuple never used in this
    session (client address and port from `client(i)`), checksums valid."""

    PORTS = 60_000

    def __init__(self, template: bytes, client=default_client, l4_checksum=None) -> None:
        self.template = bytearray(template)
        self.client = client
        self.l4_checksum = l4_checksum or _tcp_checksum
        self.next = 0

    def take(self, n: int) -> list[bytes]:
        out = []
        t = self.template
        for i in range(self.next, self.next + n):
            addr, sport = self.client(i)
            t[26:30] = struct.pack("!I", addr)
            t[34:36] = struct.pack("!H", sport)
            t[24:26] = b"\0\0"
            t[24:26] = struct.pack("!H", _csum(bytes(t[14:34])))
            self.l4_checksum(t)
            out.append(bytes(t))
        self.next += n
        return out


def _tcp_checksum(t: bytearray) -> None:
    """Set the TCP checksum of an Ethernet + 20-byte IPv4 + TCP frame."""
    t[50:52] = b"\0\0"
    seg = bytes(t[34:])
    pseudo = bytes(t[26:34]) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(seg))
    t[50:52] = struct.pack("!H", _csum(pseudo + seg))


def _no_udp_checksum(t: bytearray) -> None:
    """A UDP datagram over IPv4 may carry no checksum (0): nothing to set."""


def confirming(syn: bytes) -> bytes:
    """The ACK of a new-flow SYN's tuple: the packet that confirms the flow."""
    t = bytearray(syn)
    t[47] = 0x10   # TCP flags: ACK
    _tcp_checksum(t)
    return bytes(t)


@contextlib.contextmanager
def on_one_cpu():
    """Pin this thread to one CPU (test-run executes on the caller's CPU) and load
    the floor program; yields (cpu, floor bpf, floor prog fd)."""
    from controlplane.dataplane.program import load_floor_program
    old = os.sched_getaffinity(0)
    cpu = max(old)
    os.sched_setaffinity(0, {cpu})
    floor_bpf, floor_fd = load_floor_program()
    try:
        yield cpu, floor_bpf, floor_fd
    finally:
        os.sched_setaffinity(0, old)
        floor_bpf.cleanup()


def load_cold_bucket_program(lines: int, buckets: int):
    """The two-line ruler (COLD_BUCKET_PROGRAM); both sizes powers of two."""
    from bcc import BPF
    assert lines & (lines - 1) == 0 and buckets & (buckets - 1) == 0, (lines, buckets)
    bpf = BPF(text=COLD_BUCKET_PROGRAM.encode(),
              cflags=[f"-DCOLD_LINES={lines}", f"-DCOLD_BUCKETS={buckets}"])
    return bpf, bpf.load_func(b"cold_bucket", BPF.XDP).fd


def load_cold_line_program(lines: int):
    """The cold_line ruler with a table of `lines` 64-byte lines (a power of two)."""
    from bcc import BPF
    assert lines & (lines - 1) == 0, lines
    bpf = BPF(text=COLD_LINE_PROGRAM.encode(), cflags=[f"-DCOLD_LINES={lines}"])
    return bpf, bpf.load_func(b"cold_line", BPF.XDP).fd


# ---- conntrack fill -------------------------------------------------------------------
def _ct_fill_arrays(table, entries: int, idle_s: int = 0):
    """`entries` live forward conntrack entries (a flow's replies are matched through
    it), as ctypes arrays of the map's own Key/Leaf types: the rows are packed by
    packing.Packer, whose formats come from bcc's types (bpf/svcxdp.h). `idle_s`: last
    seen that long ago (idle flows, for the GC scenario)."""
    from controlplane.dataplane.layout import const
    from controlplane.dataplane.packing import Packer
    keys = Packer(table.Key, ("src", "dst", "sport", "dport", "proto", "dir"))
    values = Packer(table.Leaf, ("last_seen", "nat_ip", "nat_port", "backend_id", "svc_id"))
    fwd = const("CT_DIR_FORWARD")
    # modulo 2^64: a clock younger than idle_s wraps, as the datapath's u64 arithmetic does
    now = (time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE) - idle_s * 1_000_000_000) % (1 << 64)
    vport, bport = socket.htons(80), socket.htons(8080)

    def be32(a: int, b: int, c: int, d: int) -> int:  # address bytes as the u32 in memory
        return int.from_bytes(bytes((a, b, c, d)), "little")

    krows, vrows = [], []
    for f in range(entries):
        client = be32(172, 16 + (f >> 22), (f >> 14) & 255, (f >> 6) & 255)  # 172.16.0.0/12
        cport = socket.htons(10000 + (f & 63))
        vip, backend = be32(10, 100, (f >> 8) & 255, f & 255), be32(10, 245, (f >> 8) & 255, f & 255)
        krows.append((client, vip, cport, vport, socket.IPPROTO_TCP, fwd))
        vrows.append((now, backend, bport, 1, 1))
    return keys.array(krows), values.array(vrows)


def batch_fill(table, keys, values, chunk: int = CT_FILL_CHUNK) -> None:
    """Write ctypes arrays of keys and values with BPF_MAP_UPDATE_BATCH, `chunk` at a time."""
    n = len(keys)
    ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    chunk = min(chunk, table.max_entries)   # bcc refuses a batch longer than the map
    for off in range(0, n, chunk):
        c = min(chunk, n - off)
        table.items_update_batch((table.Key * c).from_buffer(keys, off * ksz),
                                 (table.Leaf * c).from_buffer(values, off * vsz))


def fill_unconfirmed(dp, arrays) -> None:
    """Fill each unconfirmed table with the first rows of conntrack's fill (other maps:
    the keys do not meet): sets (flowsets.py), placed until every slot is used."""
    for name in UNCONFIRMED_TABLES:
        dp.table(name).fill(*arrays)


def table_counts(dp) -> dict[str, int]:
    """Entries in each flow table of a dataplane."""
    return {name: count_entries(dp.table(name)) for name in FLOW_TABLES}


# ---- the environment: one dataplane, one floor, brought to each configuration ----------
def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


@dataclass
class Env:
    config: object
    floor_bpf: object
    floor_runner: object
    ruler_runner: object
    states: list
    frames: dict[str, bytes]
    new_flows: NewFlowFrames
    new_udp_flows: NewFlowFrames
    cpu: int | None
    dp: object = None
    runner: object = None
    ext_runner: object = None                      # the external entry point (node_traffic)
    key: tuple | None = None
    setup: dict = field(default_factory=dict)
    floor_ns: dict = field(default_factory=dict)   # (services, ct) -> floor median
    bucket_runner: object = None                   # the two-line ruler (paired case only)
    _ct_arrays: tuple | None = None

    def ensure(self, services: int, ct_entries: int, fresh: bool = False) -> None:
        """A freshly loaded dataplane per configuration, so no configuration inherits
        another's map history (an LRU emptied by a bulk delete keeps its free list
        scattered over memory, which made later new flows slower: see report).
        `fresh`: load it again even if it is this configuration's already."""
        if self.key == (services, ct_entries) and not fresh:
            return
        from controlplane.dataplane.program import Dataplane
        from controlplane.dataplane.testrun import TestRunner
        from controlplane.dataplane.writer import MapWriter
        self.close()
        info: dict = {}
        t = time.perf_counter()
        self.dp = Dataplane.load(self.config)
        info["load_s"] = round(time.perf_counter() - t, 3)
        info.update(flowtables.unconfirmed_sizes(self.dp))
        self.runner = TestRunner(self.dp.prog_fd)
        self.ext_runner = TestRunner(self.dp.external_prog_fd)
        t = time.perf_counter()
        # (1 service: the measured frontend over TCP and over UDP)
        result = MapWriter(self.dp).sync(self.states[:max(services, 2)])
        info["writer_sync_s"] = round(time.perf_counter() - t, 3)
        info["writer_sync_added"] = result.added
        conntrack = self.dp.table("conntrack")
        if ct_entries:
            assert ct_entries == self.config.ct_size, (ct_entries, self.config.ct_size)
            total = ct_entries + ct_entries // CT_OVERFILL
            if self._ct_arrays is None or len(self._ct_arrays[0]) != total:
                t = time.perf_counter()
                self._ct_arrays = _ct_fill_arrays(conntrack, total)
                info["ct_build_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            batch_fill(conntrack, *self._ct_arrays)
            fill_unconfirmed(self.dp, self._ct_arrays)
            # A conntrack full of live UDP flows leaves every slot "maybe" (the fill
            # above wrote the entries without the program's stamps).
            udprecent.fill_maybe(self.dp.table(udprecent.MAP), self.config.udp_timeout_s)
            info["ct_fill_s"] = round(time.perf_counter() - t, 3)
        self._make_test_flow()
        present = table_counts(self.dp)
        info["ct_present_at_start"] = present["conntrack"]
        for name in UNCONFIRMED_TABLES:
            info[f"{name}_present_at_start"] = present[name]
        if ct_entries:
            # Full: within a free-list batch (the LRU's per-CPU caches) of capacity.
            for name, cap in self.config.flow_table_sizes().items():
                assert present[name] >= cap * 0.99, f"{name} holds {present[name]} of {cap}: not full"
        self.key = (services, ct_entries)
        self.setup = info

    def forget_new_flows(self, frames: list[bytes]) -> None:
        """Delete these new-flow SYNs' entries from ct_unconfirmed_pod, in the order they
        came, as their flows' confirmations would (unmeasured). The empty-table rows do it
        after every round: 32,768 entries hold 16 rounds, and past them every insert would
        evict — the full rows' case, not the empty one's."""
        table = self.dp.table("ct_unconfirmed_pod")
        keys = (table.Key * len(frames))()
        for k, f in zip(keys, frames):
            (k.src, k.dst), (k.sport, k.dport) = struct.unpack("=II", f[26:34]), struct.unpack("=HH", f[34:38])
            k.proto = f[23]
        table.items_delete_batch(keys)

    def close(self) -> None:
        if self.dp is not None:
            self.dp.close()
            self.dp = self.runner = self.ext_runner = self.key = None

    def _make_test_flow(self) -> None:
        """The established and reply frames' flow: created by a SYN, answered by its backend."""
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether
        out = self.runner.run(self.frames["syn"])
        assert out.verdict_name == "XDP_PASS", out
        pkt = Ether(out.data)
        backend_ip, backend_port = pkt[IP].dst, pkt[TCP].dport
        assert backend_ip in BACKENDS and backend_port == BACKEND_PORT, pkt.summary()
        reply = (Ether(src=NODE_MAC, dst=CLIENT_MAC)
                 / IP(src=backend_ip, dst=CLIENT, ttl=64, id=2)
                 / TCP(sport=backend_port, dport=CLIENT_PORT, flags="SA", seq=5000, ack=1001))
        self.frames["reply"] = bytes(reply)
        # Sanity: each path does what its name says (verdict and rewrite).
        est = Ether(self.runner.run(self.frames["established"]).data)
        assert (est[IP].dst, est[TCP].dport) == (backend_ip, backend_port), est.summary()
        rep = Ether(self.runner.run(self.frames["reply"]).data)
        assert (rep[IP].src, rep[TCP].sport) == (VIP, VPORT), rep.summary()
        ns = self.runner.run(self.frames["non_service"])
        assert ns.verdict_name == "XDP_PASS" and ns.data == self.frames["non_service"]
        node = self.ext_runner.run(self.frames["node_traffic"])
        assert node.verdict_name == "XDP_PASS" and node.data == self.frames["node_traffic"]


def _service_states():
    from controlplane.dataplane.model import Backend, Frontend, ServiceState
    backends = tuple(Backend(ip, BACKEND_PORT) for ip in BACKENDS)
    target = ServiceState(Frontend(VIP, VPORT, "TCP"), backends, "random")
    udp_target = ServiceState(Frontend(VIP, VPORT, "UDP"), backends, "random")
    fillers = [ServiceState(Frontend(f"10.100.{i >> 8}.{i & 255}", 80, "TCP"),
                            (Backend(f"10.245.{i >> 8}.{i & 255}", 8080),
                             Backend(f"10.246.{i >> 8}.{i & 255}", 8080)), "random")
               for i in range(1, max(SERVICES) - 1)]
    # the measured frontends are written first: svc_ids 1 (TCP) and 2 (UDP) throughout
    return [target, udp_target] + fillers


def _frames() -> dict[str, bytes]:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    def fwd(flags, src=CLIENT, dst=VIP, sport=CLIENT_PORT):
        return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=src, dst=dst, ttl=64, id=1)
                     / TCP(sport=sport, dport=VPORT, flags=flags, seq=1000, ack=0 if flags == "S" else 1))

    udp = bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src="10.244.128.0", dst=VIP, ttl=64, id=1)
                / UDP(sport=2000, dport=VPORT, chksum=0) / Raw(b"q" * 12))
    node_traffic = bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=OUTSIDE_HOST, dst=NODE_IP, ttl=64, id=1)
                         / TCP(sport=443, dport=40000, flags="A", seq=1000, ack=1))
    return {"syn": fwd("S"), "established": fwd("A"), "non_service": fwd("A", dst=OTHER_POD),
            "node_traffic": node_traffic,
            "new_flow_template": fwd("S", src="10.244.128.0", sport=2000), "new_udp_flow_template": udp}


@pytest.fixture(scope="module")
def env():
    reason = _root_and_bcc()
    if reason:
        pytest.skip(reason)
    from scapy.layers.l2 import Ether

    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.testrun import TestRunner

    # production sizes (SVCXDP_BENCH_CT_UNCONFIRMED*: flowtables.py), nothing pinned; in
    # quick mode a conntrack of CT_FULL entries (its unconfirmed tables follow from it)
    config = DataplaneConfig(instance="bench", pin=False, **({"ct_size": CT_FULL} if QUICK else {}),
                             **flowtables.unconfirmed_config())
    assert config.ct_size == CT_FULL and config.max_services >= max(SERVICES)
    with on_one_cpu() as (cpu, floor_bpf, floor_fd):
        frames = _frames()
        new_flows = NewFlowFrames(frames["new_flow_template"])
        probe = new_flows.take(1)[0]
        check = Ether(probe)
        del check["IP"].chksum, check["TCP"].chksum
        assert bytes(check) == probe, "new-flow frame checksums are wrong"
        ruler_bpf, ruler_fd = load_cold_line_program(config.ct_size)
        bucket_bpf, bucket_fd = load_cold_bucket_program(config.ct_size, RULER_BUCKETS)
        e = Env(config=config, floor_bpf=floor_bpf, floor_runner=TestRunner(floor_fd),
                ruler_runner=TestRunner(ruler_fd), states=_service_states(), frames=frames,
                new_flows=new_flows, cpu=cpu, bucket_runner=TestRunner(bucket_fd),
                new_udp_flows=NewFlowFrames(frames["new_udp_flow_template"], l4_checksum=_no_udp_checksum))
        try:
            yield e
        finally:
            e.close()
            ruler_bpf.cleanup()
            bucket_bpf.cleanup()


# ---- the benchmark -------------------------------------------------------------------
EXPECTED_COUNTER = {"non_service": "pass_non_service", "node_traffic": "pass_non_service", "established": "ct_hit",
                    "reply": "revnat", "new_flow": "ct_new", "new_flow_udp": "ct_new", "confirm": "ct_hit"}


def _case_id(case) -> str:
    s, c, p = case
    return f"{p}-svc{s}-ct{c}"


@pytest.mark.benchmark(disable_gc=True)
@pytest.mark.parametrize("services,ct_entries,path", CASES, ids=[_case_id(c) for c in CASES])
def test_datapath(benchmark, env, services, ct_entries, path):
    if path == PAIRED:
        return _paired_bound(benchmark, env, services)
    env.ensure(services, ct_entries)
    benchmark.group = f"datapath services={services} conntrack={ct_entries}"
    runner = {"floor": env.floor_runner, "cold_line": env.ruler_runner,
              "node_traffic": env.ext_runner}.get(path, env.runner)
    duration = runner.duration_ns
    total_rounds = ROUNDS + WARMUP

    if path in NEW_FLOW_PATHS:
        flows = env.new_udp_flows if path == "new_flow_udp" else env.new_flows
        batches = iter([flows.take(PACKETS) for _ in range(total_rounds)])
    else:
        frame = env.frames["established" if path == "floor" else path]
        batches = repeat([frame] * PACKETS)
    per_round: list[float] = []
    per_packet: list[int] = []
    paired_ratio: list[float] = []
    floor_duration, floor_frame = env.floor_runner.duration_ns, env.frames["established"]

    def one_round():
        # Each path packet is followed by one floor packet, so every round also
        # yields a ratio against a floor measured at the same moment (robust to
        # the drift of a shared machine). The floor calls are not in `ds`.
        ds, fs = [], []
        frames = next(batches)
        if path == "confirm":   # the flows' first packets, unmeasured; then their ACKs
            for f in frames:
                env.runner.run(f)
            frames = [confirming(f) for f in frames]
        for f in frames:
            ds.append(duration(f))
            fs.append(floor_duration(floor_frame))
        if path in ("new_flow", "new_flow_udp") and not ct_entries:
            env.forget_new_flows(frames)
        per_packet.extend(ds)
        per_round.append(sum(ds) / len(ds))
        paired_ratio.append(sum(ds) / sum(fs))

    load_before = os.getloadavg()[0]
    before = env.dp.counters()
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    after = env.dp.counters()

    # Correctness, not timing: every packet of every round took the path named.
    if path in EXPECTED_COUNTER:
        name = EXPECTED_COUNTER[path]
        got = after[name] - before[name]
        assert got == PACKETS * total_rounds, f"{path}: {name} rose by {got}, expected {PACKETS * total_rounds}"
        for other in ("ct_stale", "slot_miss", "drop_malformed", "reject"):
            assert after[other] == before[other], f"{path}: unexpected {other}"

    measured = per_round[WARMUP:]
    p25, med, p75 = _quartiles(measured)
    r25, rmed, r75 = _quartiles(paired_ratio[WARMUP:])
    pp = sorted(per_packet[WARMUP * PACKETS:])
    info = {
        "suite": SUITE, "path": path, "services": services, "ct_entries": ct_entries,
        "ns_per_pkt_median": round(med, 2), "ns_per_pkt_p25": round(p25, 2),
        "ns_per_pkt_p75": round(p75, 2), "mpps_one_core": round(1000.0 / med, 3),
        "paired_ratio_median": round(rmed, 3), "paired_ratio_p25": round(r25, 3),
        "paired_ratio_p75": round(r75, 3),
        "per_call_ns_mean": round(statistics.fmean(pp), 1), "per_call_ns_p50": pp[len(pp) // 2],
        "per_call_ns_p99": pp[int(0.99 * (len(pp) - 1))],
        "per_call_ns_p999": pp[int(0.999 * (len(pp) - 1))], "ct_full": bool(ct_entries),
        "packets_per_round": PACKETS, "rounds": ROUNDS, "warmup_rounds": WARMUP,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "frame_bytes": len(env.frames["syn"]), "cpu": env.cpu, "quick": QUICK,
        "method": LABEL, **{f"setup_{k}": v for k, v in env.setup.items()},
    }
    if path == "floor":
        env.floor_ns[(services, ct_entries)] = med
    else:
        floor = env.floor_ns.get((services, ct_entries))
        if floor:
            info["floor_ns_median"] = round(floor, 2)
            info["ratio_to_floor"] = round(med / floor, 3)
    benchmark.extra_info.update(info)


# ---- full of idle flows, the GC run ahead (issue 17 target 1) ----------------------------
# Beside the "full, every insert evicts" row (live flows: the LRU must evict), a node's
# table is mostly full of idle and closed flows, which the agent's GC (bpf/ctgc.h,
# controlplane/dataplane/ctgc.py) removes before new flows need their room. Three fresh
# dataplanes side by side, 1 service each: empty; full of live flows (written past
# capacity: every insert evicts, as the row above); full of flows idle past the TCP
# timeout, then swept by the GC. Rounds of new flows rotate between them, so the ratios
# share the noise of the moment. A new flow here is both of its packets, the SYN (into
# ct_unconfirmed_pod) and the ACK that confirms it (into conntrack, where a full table
# evicts), timed call by call and summed: the SYN alone no longer touches conntrack.
GC_SUITE = "datapath_gc"
GC_VARIANTS = ("empty", "full_live", "idle_gc")


def _gc_dataplane(env, variant: str) -> tuple[object, object, dict]:
    from controlplane.dataplane.ctgc import ConntrackGC
    from controlplane.dataplane.program import Dataplane
    from controlplane.dataplane.testrun import TestRunner
    from controlplane.dataplane.writer import MapWriter
    info: dict = {}
    dp = Dataplane.load(env.config)
    MapWriter(dp).sync(env.states[:1])
    if variant != "empty":
        conntrack = dp.table("conntrack")
        total = env.config.ct_size + env.config.ct_size // CT_OVERFILL
        idle_s = env.config.tcp_timeout_s + 60 if variant == "idle_gc" else 0
        arrays = _ct_fill_arrays(conntrack, total, idle_s=idle_s)
        batch_fill(conntrack, *arrays)
        fill_unconfirmed(dp, arrays)
        info["filled"] = table_counts(dp)
    if variant == "idle_gc":
        t = time.perf_counter()
        stats = ConntrackGC(dp).sweep_all()
        info["gc_sweep_s"] = round(time.perf_counter() - t, 3)
        info["gc_scanned"], info["gc_deleted"] = stats.scanned, stats.deleted
        info["after_gc"] = table_counts(dp)
    return dp, TestRunner(dp.prog_fd), info


def _call_stats(xs: list[int]) -> dict:
    pp = sorted(xs)
    return {"mean": round(statistics.fmean(pp), 1), "p50": pp[len(pp) // 2],
            "p99": pp[int(0.99 * (len(pp) - 1))], "p999": pp[int(0.999 * (len(pp) - 1))]}


@pytest.mark.benchmark(disable_gc=True)
def test_new_flow_idle_gc(benchmark, env):
    env.close()   # memory: three production-sized dataplanes follow
    dps, runners, setup = {}, {}, {}
    try:
        for v in GC_VARIANTS:
            dps[v], run, setup[v] = _gc_dataplane(env, v)
            runners[v] = run.duration_ns
        benchmark.group = "datapath new flows: empty / full, every insert evicts / full of idle flows, GC run ahead"
        calls: dict[str, list[int]] = {v: [] for v in GC_VARIANTS}
        means: dict[str, list[float]] = {v: [] for v in GC_VARIANTS}
        n_round = [0]

        def one_round():
            n_round[0] += 1
            k = n_round[0] % len(GC_VARIANTS)
            for v in GC_VARIANTS[k:] + GC_VARIANTS[:k]:   # each variant first in turn
                ds = [runners[v](f) + runners[v](confirming(f)) for f in env.new_flows.take(PACKETS)]
                if n_round[0] > WARMUP:
                    calls[v].extend(ds)
                    means[v].append(sum(ds) / len(ds))

        load_before = os.getloadavg()[0]
        before = {v: dps[v].counters() for v in GC_VARIANTS}
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
        for v in GC_VARIANTS:
            after = dps[v].counters()
            for name in ("ct_new", "ct_hit"):   # every SYN a new flow, every ACK confirmed it
                got = after[name] - before[v][name]
                assert got == PACKETS * (ROUNDS + WARMUP), f"{v}: {name} rose by {got}"
        st = {v: _call_stats(calls[v]) for v in GC_VARIANTS}
        med = {v: statistics.median(means[v]) for v in GC_VARIANTS}
        info = {"suite": GC_SUITE, "services": 1, "ct_size": env.config.ct_size,
                "per_flow": "SYN + confirming ACK, two test-run calls summed"}
        for v in GC_VARIANTS:
            info[f"{v}_per_call_ns"] = st[v]
            info[f"{v}_round_mean_ns_median"] = round(med[v], 1)
        for v in ("full_live", "idle_gc"):
            info[f"{v}_vs_empty_mean"] = round(st[v]["mean"] / st["empty"]["mean"], 3)
            info[f"{v}_vs_empty_round_median"] = round(med[v] / med["empty"], 3)
            info[f"{v}_vs_empty_p99"] = round(st[v]["p99"] / st["empty"]["p99"], 3)
        info.update({
            "packets_per_round": PACKETS, "rounds": ROUNDS, "warmup_rounds": WARMUP,
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpu": env.cpu,
            "quick": QUICK, "method": LABEL,
            **{f"setup_{v}_{k}": x for v in GC_VARIANTS for k, x in setup[v].items()},
        })
        benchmark.extra_info.update(info)
    finally:
        for d in dps.values():
            d.close()


# ---- the empty-table target, interleaved ------------------------------------------------
PAIRED_PARTS = ("floor", "established", "cold_line", "cold_bucket", "new_flow")


def paired_round(calls: dict, frames: dict, n: int, slice_: int, rotation: int) -> dict[str, list[int]]:
    """One round of the paired measurement: n calls of each program in `calls`
    (name -> one test-run call), in slices of `slice_` consecutive calls of one
    program, the slices' order rotating by one from slice to slice (starting at
    `rotation`). frames[name] is the list of n frames that program is given, in
    order. Returns each program's per-call kernel durations."""
    names = list(calls)
    out: dict[str, list[int]] = {p: [] for p in names}
    for k, start in enumerate(range(0, n, slice_)):
        r = (rotation + k) % len(names)
        for p in names[r:] + names[:r]:
            run, fs, ds = calls[p], frames[p], out[p]
            for i in range(start, min(start + slice_, n)):
                ds.append(run(fs[i]))
    return out


def bound_ratio(means: dict[str, float], ruler: str = "cold_line") -> float:
    """new flow / (ruler + established - floor), from one round's means."""
    return means["new_flow"] / (means[ruler] + means["established"] - means["floor"])


def _paired_bound(benchmark, env, services: int) -> None:
    """The empty-table target's ratio from interleaved rounds (module docstring,
    bound_paired). A freshly loaded dataplane, whose new flows leave the table as the
    new_flow row's do (Env.forget_new_flows)."""
    env.ensure(services, 0, fresh=True)
    benchmark.group = f"datapath services={services} conntrack=0"
    established = env.frames["established"]
    calls = {"floor": env.floor_runner.duration_ns, "established": env.runner.duration_ns,
             "cold_line": env.ruler_runner.duration_ns, "cold_bucket": env.bucket_runner.duration_ns,
             "new_flow": env.runner.duration_ns}
    rounds: list[dict[str, list[int]]] = []

    def one_round():
        frames = {"floor": [established] * PACKETS, "established": [established] * PACKETS,
                  "cold_line": env.new_flows.take(PACKETS), "cold_bucket": env.new_flows.take(PACKETS),
                  "new_flow": env.new_flows.take(PACKETS)}
        rounds.append(paired_round(calls, frames, PACKETS, PAIRED_SLICE, len(rounds)))
        env.forget_new_flows(frames["new_flow"])

    load_before = os.getloadavg()[0]
    before = env.dp.counters()
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    after = env.dp.counters()
    total = PACKETS * (ROUNDS + WARMUP)
    # Correctness: every new-flow call recorded a new flow, every established call hit.
    assert after["ct_new"] - before["ct_new"] == total, "bound_paired: not every new-flow call was new"
    assert after["ct_hit"] - before["ct_hit"] == total, "bound_paired: not every established call hit"
    for other in ("ct_stale", "slot_miss", "drop_malformed", "reject"):
        assert after[other] == before[other], f"bound_paired: unexpected {other}"

    measured = rounds[WARMUP:]
    means = [{p: statistics.fmean(r[p]) for p in PAIRED_PARTS} for r in measured]
    ratios = [bound_ratio(m) for m in means]
    r25, rmed, r75 = _quartiles(ratios)
    b25, bmed, b75 = _quartiles([bound_ratio(m, "cold_bucket") for m in means])
    info = {
        "suite": SUITE, "path": PAIRED, "services": services, "ct_entries": 0,
        "bound_ratio_median": round(rmed, 3), "bound_ratio_p25": round(r25, 3),
        "bound_ratio_p75": round(r75, 3), "bound_ratio_min": round(min(ratios), 3),
        "bound_ratio_max": round(max(ratios), 3),
        "bucket_bound_ratio_median": round(bmed, 3), "bucket_bound_ratio_p25": round(b25, 3),
        "bucket_bound_ratio_p75": round(b75, 3),
        **{f"{p}_ns_median": round(statistics.median(m[p] for m in means), 1) for p in PAIRED_PARTS},
        "excess_ns_median": round(statistics.median(
            m["new_flow"] - (m["cold_line"] + m["established"] - m["floor"]) for m in means), 1),
        "packets_per_round": PACKETS, "rounds": ROUNDS, "warmup_rounds": WARMUP,
        "slice_calls": PAIRED_SLICE,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu": env.cpu, "quick": QUICK, "method": LABEL,
        **{f"setup_{k}": v for k, v in env.setup.items()},
    }
    benchmark.extra_info.update(info)
    env.close()   # the next configuration loads its own
