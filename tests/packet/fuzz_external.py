"""Fuzzing the external entry point (svcxdp_external): what comes in from outside the cluster.

    .venv/bin/python -m tests.packet.fuzz_external [--frames 300000] [--seed N]   (root; `make fuzz`)

fuzz.py checks the pods' entry point against a reference model of it. The external
entry point has no such model (its SNAT port choice, route lookups and tail call
would need one of their own), and it is the one that meets traffic nobody in the
cluster vouches for. So here every frame is held to rules that any correct answer
obeys, whatever the datapath chose:

- the program never aborts, and never sends a frame back out unchanged;
- a frame it changes is IPv4, and its header checksum and its TCP, UDP or ICMP
  checksum are right whenever the frame's were (unfragmented datagrams: the program
  updates checksums and does not check them, so a wrong one stays wrong);
- a changed frame goes somewhere a rule explains, and nowhere else (no misforward):
  * to a backend of the frontend the frame was sent to (the backend's address and
    port; the source kept, or SNATed to the node's address on a port of the SNAT
    range, or to the hairpin address when the sender is that backend);
  * back to a client, from a frontend that client sent to from that address and
    port (a reply translated, a reset or port-unreachable for a frontend without
    endpoints); a reply to a SNAT port the program handed out goes to exactly the
    client and frontend of the flow it handed it to, and a local pod's answer to a
    client it was sent with the client's own address leaves as that flow's frontend;
  * a later fragment the way its datagram's first fragment went; fragments and ICMP
    errors otherwise by address; an ICMP error translated (its quote, its source to a
    frontend's address) to where it was addressed;
- one sent back out of the interface (XDP_TX) goes to a neighbour's MAC (the other
  node, a client), or to the sender's;
- one handed to tc (noted in handoff_notes, bpf/handoff.h) is passed, noted under its
  own header, names one of the node's interfaces, and either carries the node's address or leaves
  by the interface it came in on (a frame to another device keeping the client's
  address goes to the stack);
- at each round's end, every lc backend's active-connection count equals the flows
  holding one (MapWriter.recount_connections finds none to correct).

Rounds of a few thousand frames, each from empty maps with a few random external
frontends (NodePort on the node's address, a LoadBalancer IP, an external IP), some
beside a ClusterIP frontend sharing their backends, some without endpoints, with
source ranges, a Local policy, affinity, any algorithm; backends on this node (a pod
behind pod0) and on another (reached back out of ext0, SNATed). Every 500 frames one
changes (its backends replaced, a frontend removed or back), as the agent would. Frames: clients'
packets to the frontends and elsewhere, backends' answers to the SNAT ports handed
out, ICMP errors about those flows from either side, later fragments, and mutations
and random bytes as in fuzz.py, through ext0's entry point; and through pod0's (the
pods' entry point, svcxdp_main) a local pod's answers to the clients it was sent and
errors about those flows, its own packets to the ClusterIP. The frames run in the
node's namespace (nodenet.py), whose routes and neighbours the program's FIB lookups
read.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from controlplane.dataplane.layout import const
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.trace import HAIRPIN_IP   # the source of a flow whose client is its backend

from . import nodenet
from .fuzz import Disagreement, Stats, l2_frame, churn, ipv4, mutate, random_frame, tcp_seg, udp_dgram
from .harness import Harness, handoff_key
from .reference_model import csum
from .test_differential import checksums_ok

NODE = nodenet.NODE_IP
LB_IP = "192.168.1.240"
EXTERNAL_IP = "203.0.113.250"
CLUSTER_IP = "10.96.0.77"
VIPS = (NODE, LB_IP, EXTERNAL_IP)
VPORTS = (30080, 30053, 80)
LOCAL_PODS = (nodenet.LOCAL_POD, "10.244.1.12")      # behind pod0 (.12 has no neighbour entry)
REMOTE_PODS = (nodenet.REMOTE_POD, "10.244.2.12")    # on node2, back out of ext0
BACKEND_PORTS = (80, 8080)
# two clients with neighbour entries, one without, one off the node's subnet
CLIENTS = (*nodenet.CLIENTS, "192.168.1.150", "198.51.100.7")
ADDRESSES = (*VIPS, CLUSTER_IP, *LOCAL_PODS, *REMOTE_PODS, *CLIENTS, nodenet.NODE2_IP)
PORTS = (*VPORTS, *BACKEND_PORTS, 40000, 40001, 5353, 0, 65535)
SNAT_MIN = const("SNAT_PORT_MIN")
TCP_FLAGS = (0x02, 0x10, 0x18, 0x12, 0x11, 0x01, 0x04, 0x14, 0x00, 0x03, 0x06, 0x29)
ROUND_FRAMES = 2000
# Ethernet headers (destination, source) of the frames from a client and from node2
CLIENT_ETH = bytes.fromhex("0200000000ff" + nodenet.CLIENTS[CLIENTS[0]].replace(":", ""))
NODE2_ETH = bytes.fromhex("0200000000ff" + nodenet.NODE2_MAC.replace(":", ""))
POD_ETH = bytes.fromhex("0200000000fe" + nodenet.LOCAL_POD_MAC.replace(":", ""))   # a local pod's, on pod0
EXTERNAL, POD = "external", "pod"   # the entry point a frame comes in through (ext0, pod0)
# the MACs an XDP_TX may send to: the other node and the clients with a neighbour entry
NEIGHBOUR_MACS = {bytes.fromhex(m.replace(":", "")) for m in (nodenet.NODE2_MAC, *nodenet.CLIENTS.values())}
COUNTED = ("snat_new", "snat_reply", "reject", "icmp_nat", "frag_nat", "drop_source_range",
           "drop_no_local", "drop_malformed", "ct_new", "ct_hit", "xdp_tx", "revnat", "hairpin", "neigh_noted")


@dataclass
class Parsed:
    """What the rules read of an Ethernet/IPv4 frame."""
    eth_dst: bytes
    eth_src: bytes
    src: str
    dst: str
    proto: int
    ident: int
    first: bool                  # no fragment offset: the L4 header (if any) is here
    fragment: bool               # a fragment (first or later)
    sport: int | None = None     # TCP/UDP ports, when the header is whole
    dport: int | None = None


def parse(raw: bytes) -> Parsed | None:
    l3 = 18 if raw[12:14] in (b"\x81\x00", b"\x88\xa8") else 14
    if len(raw) < l3 + 20 or raw[l3] >> 4 != 4 or (raw[l3] & 0xF) < 5:
        return None
    ihl = (raw[l3] & 0xF) * 4
    if len(raw) < l3 + ihl:
        return None
    frag = int.from_bytes(raw[l3 + 6:l3 + 8], "big")
    p = Parsed(raw[0:6], raw[6:12], socket.inet_ntoa(raw[l3 + 12:l3 + 16]),
               socket.inet_ntoa(raw[l3 + 16:l3 + 20]), raw[l3 + 9],
               int.from_bytes(raw[l3 + 4:l3 + 6], "big"), first=frag & 0x1FFF == 0, fragment=frag & 0x3FFF != 0)
    l4 = l3 + ihl
    if p.first and p.proto in (6, 17) and len(raw) >= l4 + (20 if p.proto == 6 else 8):
        p.sport, p.dport = struct.unpack_from("!HH", raw, l4)
    return p


@dataclass
class Round:
    """One round's frontends, and what the frames so far told about flows."""
    # (frontend vip, port, proto) -> its backends' (address, port) pairs
    backends: dict[tuple[str, int, int], set[tuple[str, int]]] = field(default_factory=dict)
    # (frontend vip, port, proto) -> the (address, port) pairs that sent to it
    talkers: dict[tuple[str, int, int], set[tuple[str, int]]] = field(default_factory=dict)
    # (backend, bport, snat port, proto) -> (client, cport, vip, vport): flows SNATed so far
    snat: dict[tuple[str, int, int, int], tuple[str, int, str, int]] = field(default_factory=dict)
    # (backend, bport, client, cport, proto) -> the frontends (vip, vport) of the flows
    # sent to the backend with the client's own address: its answers leave as one of them
    local: dict[tuple[str, int, str, int, int], set[tuple[str, int]]] = field(default_factory=dict)
    # first fragments sent: (src, dst, ident, proto)
    fragments: list[tuple[str, str, int, int]] = field(default_factory=list)
    # (src, dst, ident, proto) of a first fragment -> the (src, dst) it left with: the
    # datagram's later fragments follow it (even past a change to its frontend)
    fragment_ways: dict[tuple[str, str, int, int], set[tuple[str, str]]] = field(default_factory=dict)
    # every frontend address the round has had: a flow outlives its frontend's removal
    # (its answers are still translated, as Linux conntrack's are; only new packets the
    # other way stop)
    frontend_ips: set[str] = field(default_factory=set)
    backend_ips_seen: set[str] = field(default_factory=set)   # likewise, every backend's

    def backend_ips(self, vip: str | None = None) -> set[str]:
        return {ip for (v, _, _), bs in self.backends.items() if vip in (None, v) for ip, _ in bs}

    def talker_ips(self, vip: str | None = None) -> set[str]:
        return {ip for (v, _, _), ts in self.talkers.items() if vip in (None, v) for ip, _ in ts}


_POOL = [(ip, p) for ip in (*LOCAL_PODS, *REMOTE_PODS) for p in BACKEND_PORTS]


def _random_backends(rng: random.Random) -> tuple[Backend, ...]:
    addrs = rng.sample(_POOL, rng.choice((0, 1, 1, 2, 3)))
    return tuple(Backend(ip, p, rng.choice(("active", "active", "active", "terminating"))) for ip, p in addrs)


def random_services(rng: random.Random) -> list[ServiceState]:
    out: list[ServiceState] = []
    seen: set[Frontend] = set()
    for _ in range(rng.randint(1, 5)):
        vip = rng.choice(VIPS)
        fe = Frontend(vip, rng.choice(VPORTS), rng.choice(("TCP", "UDP")), "external")
        if fe in seen:
            continue
        seen.add(fe)
        bs = _random_backends(rng)
        algorithm = rng.choice(("random", "rr", "maglev", "lc"))
        ranges: tuple[str, ...] = ()
        if vip != NODE and rng.random() < 0.3:
            ranges = rng.choice((("192.168.1.100/32",), ("192.168.1.0/24", "198.51.100.0/24"), ("10.0.0.0/8",)))
        out.append(ServiceState(fe, bs, algorithm, affinity_timeout=rng.choice((0, 0, 0, 60)),
                                source_ranges=ranges, local_drop=not bs and rng.random() < 0.3))
        if bs and rng.random() < 0.3:   # a ClusterIP sharing its backends: rev_nat shared
            cfe = Frontend(CLUSTER_IP, fe.port, fe.protocol)
            if cfe not in seen:
                seen.add(cfe)
                out.append(ServiceState(cfe, bs, "random"))
    return out


# ---- seeds ------------------------------------------------------------------------------------
def _segment(rng: random.Random, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    payload = rng.randbytes(rng.choice((0, 0, 1, 7, 40)))
    if proto == 6:
        return tcp_seg(src, dst, sport, dport, rng.choice(TCP_FLAGS), rng.getrandbits(32),
                       rng.getrandbits(32), payload)
    return udp_dgram(src, dst, sport, dport, payload, rng.random() < 0.2)


def _datagram(rng: random.Random, r: Round, src: str, dst: str, proto: int, l4: bytes) -> bytes:
    ident = rng.randint(0, 3)
    first_fragment = rng.random() < 0.1
    if first_fragment:
        r.fragments.append((src, dst, ident, proto))
    return ipv4(src, dst, proto, l4, ident=ident, ttl=rng.choice((64, 64, 1)),
                frag=0x2000 if first_fragment else 0,
                options=b"\x94\x04\x00\x00" if rng.random() < 0.1 else b"")


def _icmp_error(rng: random.Random, src: str, dst: str, qsrc: str, qdst: str, proto: int,
                qs: int, qd: int) -> bytes:
    """An ICMP error from src to dst quoting qsrc:qs -> qdst:qd (cut as routers cut it)."""
    l4 = tcp_seg(qsrc, qdst, qs, qd, 0x12, 1, 0, b"") if proto == 6 else udp_dgram(qsrc, qdst, qs, qd, b"q", False)
    quote = ipv4(qsrc, qdst, proto, l4)[:rng.choice((28, 28, 20, 24, 40))]
    itype, icode = rng.choice(((3, 3), (3, 4), (11, 0), (12, 0), (0, 0)))
    msg = struct.pack("!BBHI", itype, icode, 0, 0) + quote
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    return ipv4(src, dst, 1, msg)


def seed_frames(rng: random.Random, states: list[ServiceState], r: Round) -> list[tuple[str, bytes]]:
    """Well-formed frames, each with the entry point it comes in through."""
    seeds = []
    frontends = [s.frontend for s in states]
    for _ in range(12):   # clients to the frontends, or anywhere
        if rng.random() < 0.8:
            fe = rng.choice(frontends)
            dst, dport, proto = fe.vip, fe.port, 6 if fe.protocol == "TCP" else 17
        else:
            dst, dport, proto = rng.choice(ADDRESSES), rng.choice(PORTS), rng.choice((6, 17))
        src, sport = rng.choice(CLIENTS), rng.choice((40000, 40001, 5353, rng.randrange(1, 65536)))
        seeds.append((EXTERNAL, l2_frame(rng, _datagram(rng, r, src, dst, proto,
                                                   _segment(rng, src, dst, proto, sport, dport)), CLIENT_ETH)))
    flows = sorted(r.snat.items())
    for _ in range(min(len(flows), 12)):   # the other node's answers, and errors about the flows
        (backend, bport, port, proto), (client, cport, vip, vport) = rng.choice(flows)
        if rng.random() < 0.6:
            sport = bport + (rng.random() < 0.1)
            l4 = _segment(rng, backend, NODE, proto, sport, port)
            seeds.append((EXTERNAL, l2_frame(rng, _datagram(rng, r, backend, NODE, proto, l4), NODE2_ETH)))
        elif rng.random() < 0.5:   # node2 about node -> backend, or the client about vip -> client
            error = _icmp_error(rng, rng.choice((nodenet.NODE2_IP, backend)), NODE, NODE, backend, proto, port, bport)
            seeds.append((EXTERNAL, l2_frame(rng, error, NODE2_ETH)))
        else:
            error = _icmp_error(rng, client, vip, vip, client, proto, vport, cport)
            seeds.append((EXTERNAL, l2_frame(rng, error, CLIENT_ETH)))
    local = sorted(k for k in r.local if k[0] in LOCAL_PODS)
    for _ in range(min(len(local), 8)):   # a local pod answers a client, or errs about its flow
        pod, pport, client, cport, proto = rng.choice(local)
        if rng.random() < 0.7:
            sport = pport + (rng.random() < 0.1)
            l4 = _segment(rng, pod, client, proto, sport, cport)
            seeds.append((POD, l2_frame(rng, _datagram(rng, r, pod, client, proto, l4), POD_ETH)))
        else:
            seeds.append((POD, l2_frame(rng, _icmp_error(rng, pod, client, client, pod, proto, cport, pport), POD_ETH)))
    for _ in range(2):   # a local pod to a frontend (the ClusterIP's, if any) or anywhere
        fe = rng.choice(frontends)
        dst = CLUSTER_IP if rng.random() < 0.7 else rng.choice(ADDRESSES)
        proto, sport = 6 if fe.protocol == "TCP" else 17, rng.choice((41000, 80, 8080))
        seeds.append((POD, l2_frame(rng, _datagram(rng, r, nodenet.LOCAL_POD, dst, proto,
                                              _segment(rng, nodenet.LOCAL_POD, dst, proto, sport, fe.port)),
                               POD_ETH)))
    for src, dst, ident, proto in r.fragments[-4:]:   # later fragments of datagrams sent
        frag = rng.randint(1, 3) | (0x2000 if rng.random() < 0.5 else 0)
        entry, eth = (POD, POD_ETH) if src in LOCAL_PODS else \
            (EXTERNAL, NODE2_ETH if src in REMOTE_PODS else CLIENT_ETH)
        seeds.append((entry, l2_frame(rng, ipv4(src, dst, proto, bytes(16), ident=ident, frag=frag), eth)))
    return seeds


# ---- the rules --------------------------------------------------------------------------------
def _explained(r: Round, i: Parsed, o: Parsed) -> str | None:
    """Why output o of input i is allowed (None: no rule allows it)."""
    if i.fragment and not i.first:
        ways = r.fragment_ways.get((i.src, i.dst, i.ident, i.proto))
        if ways is not None and (o.src, o.dst) in ways:
            return "a later fragment, the way its first went"
    why = _explained_packet(r, i, o)
    if why is not None and i.fragment and i.first:
        r.fragment_ways.setdefault((i.src, i.dst, i.ident, i.proto), set()).add((o.src, o.dst))
    return why


def _explained_packet(r: Round, i: Parsed, o: Parsed) -> str | None:
    if o.sport is not None and i.sport is not None:   # (a first fragment's too)
        want = r.backends.get((i.dst, i.dport, i.proto), set())
        if (o.dst, o.dport) in want:   # forward, to a backend of the frontend addressed
            if (o.src, o.sport) == (i.src, i.sport):
                r.local.setdefault((o.dst, o.dport, i.src, i.sport, i.proto), set()).add((i.dst, i.dport))
                return "forward"
            if (o.src, o.sport, o.dst) == (HAIRPIN_IP, i.sport, i.src):   # the client is the backend
                return "forward, hairpin"
            if o.src == NODE and o.sport >= SNAT_MIN:
                r.snat[(o.dst, o.dport, o.sport, o.proto)] = (i.src, i.sport, i.dst, i.dport)
                return "forward, SNAT"
            return None
        flow = r.snat.get((i.src, i.sport, i.dport, i.proto)) if i.dst == NODE else None
        if flow is not None:   # an answer to a SNAT port handed out: exactly its flow
            return "SNAT reply" if (o.dst, o.dport, o.src, o.sport) == flow else None
        frontends = r.local.get((i.src, i.sport, i.dst, i.dport, i.proto))
        if frontends is not None and (o.dst, o.dport) == (i.dst, i.dport):   # a backend answers
            return "reply" if (o.src, o.sport) in frontends else None
        if (o.dst, o.dport) in r.talkers.get((o.src, o.sport, o.proto), ()):
            return "to a client of the frontend"
        return None
    if o.proto == 1 and o.dst == i.dst and (o.src == i.src or o.src in r.frontend_ips):
        return "an ICMP error translated, sent where it was addressed"
    # later fragments, ICMP, and anything without whole ports: by address
    if o.dst in r.backend_ips(i.dst) and o.src in (i.src, NODE, HAIRPIN_IP):
        return "forward (by address)"
    if o.dst in r.talker_ips(o.src) or (o.proto == 1 and o.dst in r.talker_ips() | r.backend_ips_seen):
        return "to a talker or backend (by address)"
    return None


def check(r: Round, raw: bytes, verdict: str, out: bytes, notes: dict[bytes, tuple[int, int]] | None = None,
          ifindexes: tuple[int, ...] = (), ingress: int = 0) -> None:
    """Raises AssertionError when the program's answer breaks a rule. `notes`: the handoff
    notes the frame left (Harness.handoff_notes)."""
    if verdict not in ("XDP_PASS", "XDP_DROP", "XDP_TX", "XDP_REDIRECT"):
        raise AssertionError(f"verdict {verdict}")
    if notes:
        o = parse(out)
        ifindex, _ = notes.get(handoff_key(out), (None, 0)) if len(notes) == 1 else (None, 0)
        if verdict != "XDP_PASS" or ifindex not in ifindexes or o is None or (o.src != NODE and ifindex != ingress):
            raise AssertionError(f"{verdict} with the notes {notes} of a frame from {o and o.src}")
    if verdict == "XDP_DROP":
        return
    if out == raw:
        if verdict != "XDP_PASS":
            raise AssertionError(f"{verdict} of the frame unchanged")
        return
    o, i = parse(out), parse(raw)
    if o is None:
        raise AssertionError(f"{verdict} of a changed frame that is no IPv4")
    after = checksums_ok(out)
    for name, ok in checksums_ok(raw).items():
        if ok and name in after and not after[name]:
            raise AssertionError(f"{name} checksum broken")
    if i is None:
        raise AssertionError("a frame that is no IPv4 came out changed")
    why = _explained(r, i, o)
    if why is None:
        raise AssertionError(f"{verdict} to {o.dst}:{o.dport} from {o.src}:{o.sport} (proto {o.proto}): "
                             f"no rule sends {i.src}:{i.sport} -> {i.dst}:{i.dport} there")
    if verdict == "XDP_TX" and o.eth_dst not in NEIGHBOUR_MACS and o.eth_dst != i.eth_src:
        raise AssertionError(f"XDP_TX to MAC {o.eth_dst.hex(':')}, no neighbour's ({why})")


def _note_talker(r: Round, raw: bytes) -> None:
    p = parse(raw)
    if p is None:
        return
    if p.sport is not None and p.dport is not None:
        r.talkers.setdefault((p.dst, p.dport, p.proto), set()).add((p.src, p.sport))
    else:   # no ports to go by: its address talked to whatever it addressed
        r.talkers.setdefault((p.dst, -1, p.proto), set()).add((p.src, -1))


# ---- the run ----------------------------------------------------------------------------------
def _installed(r: Round, states: list[ServiceState]) -> None:
    """The rules' picture of the frontends: what the maps hold now."""
    r.backends = {(s.frontend.vip, s.frontend.port, 6 if s.frontend.protocol == "TCP" else 17):
                  {b.address for b in s.backends} for s in states}
    r.frontend_ips.update(s.frontend.vip for s in states)
    r.backend_ips_seen.update(b.ip for s in states for b in s.backends)


def _round(h: Harness, runners: dict[str, tuple[TestRunner, int]], rng: random.Random, n: int,
           addrs: list[bytes], ports: list[bytes], seed: int, round_no: int) -> None:
    states = random_services(rng)
    for s in states:
        h.writer.upsert(s)
    r = Round()
    _installed(r, states)
    ifindexes = tuple(ifindex for _, ifindex in runners.values())   # the node's interfaces
    notes = h.dp.table("handoff_notes")
    gone: list[ServiceState] = []
    seeds: list[tuple[str, bytes]] = []
    last = None
    for k in range(n):
        if k % 500 == 499:
            churn(rng, h, states, gone, _random_backends)
            _installed(r, states)
        if k % 200 == 0:
            seeds = seed_frames(rng, states, r)
        x = rng.random()
        if x < 0.35:
            entry, raw = rng.choice(seeds)
        elif x < 0.9:
            entry, raw = rng.choice(seeds)
            raw = mutate(rng, raw, addrs, ports)
        elif x < 0.95 and last is not None:
            entry, raw = last
        else:
            entry, raw = EXTERNAL, random_frame(rng)
        last = entry, raw
        _note_talker(r, raw)
        runner, ifindex = runners[entry]
        res = runner.run(raw, 1, ifindex)
        noted = h.handoff_notes()
        if noted:
            notes.clear()
        try:
            check(r, raw, res.verdict_name, res.data, noted, ifindexes, ifindex)
        except AssertionError as exc:
            raise Disagreement(f"seed {seed}, round {round_no}, frame {k} (the {entry} entry point): {exc}\n"
                               f"  in  {raw.hex()}\n  out {res.data.hex()}") from None


def fuzz_external(h: Harness, node: nodenet.NodeNet, frames: int, seed: int,
                  round_frames: int = ROUND_FRAMES, progress: bool = False) -> Stats:
    """Run `frames` frames, most through the external entry point; raises Disagreement
    (with the seed and round) on the first that breaks a rule."""
    addrs = [socket.inet_aton(a) for a in ADDRESSES]
    ports = [struct.pack("!H", p) for p in PORTS]
    runners = {EXTERNAL: (TestRunner(h.dp.external_prog_fd), node.ext_ifindex),
               POD: (h.runner, node.pod_ifindex)}
    stats = Stats(verdicts={})
    start = time.monotonic()
    while stats.frames < frames:
        rng = random.Random(f"external-{seed}-{stats.rounds}")
        h.reset()
        before = h.counters()
        n = min(round_frames, frames - stats.frames)
        node.call(_round, h, runners, rng, n, addrs, ports, seed, stats.rounds)
        wrong = h.writer.recount_connections()
        if wrong:
            raise Disagreement(f"seed {seed}, round {stats.rounds}: {wrong} backends' active-connection "
                               f"counts differ from their flows (lc)")
        after = h.counters()
        for name in COUNTED:
            stats.verdicts[name] = stats.verdicts.get(name, 0) + after[name] - before[name]
        stats.frames += n
        stats.rounds += 1
        if progress and stats.rounds % 25 == 0:
            rate = stats.frames / (time.monotonic() - start)
            print(f"fuzz-external: {stats.frames:,} frames, {stats.rounds} rounds, {rate:,.0f} frames/s", flush=True)
    h.reset()
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("fuzz-external: needs root (BPF, a network namespace)", file=sys.stderr)
        return 2
    from controlplane.dataplane.program import Dataplane

    from .conftest import TEST_CONFIG
    dp = Dataplane.load(TEST_CONFIG)
    node = nodenet.create()
    start = time.monotonic()
    try:
        stats = fuzz_external(Harness(dp), node, args.frames, args.seed, progress=True)
    except Disagreement as exc:
        print(f"fuzz-external: BROKEN RULE after {time.monotonic() - start:.0f} s\n{exc}", file=sys.stderr)
        return 1
    finally:
        nodenet.delete(node)
        dp.close()
    took = time.monotonic() - start
    print(f"fuzz-external: {stats.frames:,} frames in {stats.rounds} rounds, {took:.0f} s "
          f"({stats.frames / took:,.0f} frames/s), seed {args.seed}: 0 crashes, 0 broken rules")
    print("fuzz-external: paths taken " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.verdicts.items()) if v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
