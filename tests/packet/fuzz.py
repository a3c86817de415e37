"""Fuzzing the XDP program against the reference model, fast enough for millions of frames.

    .venv/bin/python -m tests.packet.fuzz [--frames 1000000] [--seed N]    (root; `make fuzz`)

Rounds of a few thousand frames. Each round starts from empty maps, installs a few
random services (random or round robin, shared backend addresses, some without
endpoints) through the real map writer, changes one every 500 frames (backends
replaced, a service removed or back; the model reloads what the writer holds), and
runs frames of four kinds:

- seeds: well-formed frames (right checksums) — to a service (TCP with any flags,
  UDP, first fragments, IP options, VLAN tags, padding), replies from a backend to a
  tracked flow, later fragments of recorded datagrams, ICMP errors quoting a flow;
- mutations of seeds: 1-3 of bit flips, random or boundary bytes, truncation,
  trailing bytes, and field-aware changes (IHL, version, total length, fragment
  bits, protocol, TCP flags and data offset, UDP length, ports and addresses
  swapped for the ones the maps know, so mutated frames still reach deep paths);
- random bytes behind an Ethernet (+VLAN) header with the IPv4 ethertype;
- the same frame twice (a retransmit: hits, confirms).

Every frame goes through BPF_PROG_TEST_RUN and through the model
(run_packet, test_differential.py): the program's verdict and bytes must be one of
the model's outcomes, checksums right before stay right, and at the end of each
round the counters, per-service stats and both conntrack tables must match the
model. A disagreement stops the run with the frame, the round and the seed that
reproduces it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable

from controlplane.dataplane.model import Backend, Frontend, ServiceState

from .harness import Harness
from .reference_model import ReferenceDatapath, csum
from .test_differential import ct_keys, run_packet

VIPS = ("10.96.0.1", "10.96.0.2", "10.96.0.3")
SVC_PORTS = (80, 53, 443)
BACKEND_IPS = ("10.244.1.1", "10.244.1.2", "10.244.1.3", "10.244.1.4")
BACKEND_PORTS = (8080, 80)
CLIENTS = ("10.244.9.1", "10.244.9.2", "10.244.1.1")  # the last is also a backend
ADDRESSES = VIPS + BACKEND_IPS + CLIENTS + ("192.0.2.1", "10.244.0.1")
PORTS = SVC_PORTS + BACKEND_PORTS + (40000, 40001, 0, 65535)
# S, A, PA, SA, FA, F, R, RA, none, SF, SR, FPU
TCP_FLAGS = (0x02, 0x10, 0x18, 0x12, 0x11, 0x01, 0x04, 0x14, 0x00, 0x03, 0x06, 0x29)
ROUND_FRAMES = 2000


@dataclass
class Stats:
    frames: int = 0
    rounds: int = 0
    verdicts: dict | None = None


# ---- map states ----------------------------------------------------------------------------
def _random_backends(rng: random.Random) -> tuple[Backend, ...]:
    addrs = rng.sample([(ip, p) for ip in BACKEND_IPS for p in BACKEND_PORTS], rng.randint(0, 4))
    return tuple(Backend(ip, p, rng.choice(("active", "active", "active", "terminating"))) for ip, p in addrs)


def random_services(rng: random.Random) -> list[ServiceState]:
    out, seen = [], set()
    for _ in range(rng.randint(1, 5)):
        fe = Frontend(rng.choice(VIPS), rng.choice(SVC_PORTS), rng.choice(("TCP", "UDP")))
        if fe in seen:
            continue
        seen.add(fe)
        out.append(ServiceState(fe, _random_backends(rng), rng.choice(("random", "rr"))))
    return out


def churn(rng: random.Random, h: Harness, states: list[ServiceState], gone: list[ServiceState],
          new_backends: Callable[[random.Random], tuple[Backend, ...]] = _random_backends) -> None:
    """One change while flows run, as the agent makes them: a service's backends replaced
    by `new_backends` (its flows to a backend that left choose again), a service removed
    (its flows stop), or a removed one back. `states`, `gone`: what is installed, what
    was removed (both kept up to date)."""
    x = rng.random()
    if gone and x < 0.2:
        back = gone.pop(rng.randrange(len(gone)))
        h.writer.upsert(back)
        states.append(back)
    elif len(states) > 1 and x < 0.4:
        left = states.pop(rng.randrange(len(states)))
        h.writer.delete(left.frontend)
        gone.append(left)
    else:
        i = rng.randrange(len(states))
        states[i] = dataclasses.replace(states[i], backends=new_backends(rng))
        h.writer.upsert(states[i])


# ---- seeds (built from bytes: scapy per frame would cost more than the test-run) ----------------
ETH = bytes.fromhex("020000000002" "020000000001")  # dst NODE_MAC, src CLIENT_MAC
ROUTER_ALERT = b"\x94\x04\x00\x00"


def l2_frame(rng: random.Random, ip_pkt: bytes, eth: bytes = ETH) -> bytes:
    """ip_pkt behind the addresses `eth`, sometimes with a VLAN tag, padding or trailing bytes."""
    if rng.random() < 0.15:
        raw = eth + struct.pack("!HHH", 0x8100, rng.randint(1, 4094), 0x0800) + ip_pkt
    else:
        raw = eth + b"\x08\x00" + ip_pkt
    r = rng.random()
    if r < 0.1 and len(raw) < 60:
        raw += b"\0" * (60 - len(raw))
    elif r < 0.15:
        raw += rng.randbytes(rng.randint(1, 8))
    return raw


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0, ttl: int = 64,
         frag: int = 0, options: bytes = b"") -> bytes:
    """An IPv4 header (right checksum) and its payload."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0, 20 + len(options) + len(payload),
                      ident, frag, ttl, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def _with_l4_csum(src: str, dst: str, proto: int, seg: bytes, at: int) -> bytes:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return seg[:at] + struct.pack("!H", csum(pseudo + seg)) + seg[at + 2:]


def tcp_seg(src, dst, sport, dport, flags, seq, ack, payload: bytes) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 8192, 0, 0) + payload
    return _with_l4_csum(src, dst, 6, seg, 16)


def udp_dgram(src, dst, sport, dport, payload: bytes, zero_csum: bool) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if zero_csum:
        return seg
    seg = _with_l4_csum(src, dst, 17, seg, 6)
    return seg if seg[6:8] != b"\0\0" else seg[:6] + b"\xff\xff" + seg[8:]


def _packet(rng: random.Random, src: str, dst: str, proto: str, sport: int, dport: int) -> bytes:
    payload = rng.randbytes(rng.choice((0, 0, 1, 7, 40)))
    if proto == "TCP":
        l4 = tcp_seg(src, dst, sport, dport, rng.choice(TCP_FLAGS), rng.getrandbits(32),
                     rng.getrandbits(32), payload)
    else:
        l4 = udp_dgram(src, dst, sport, dport, payload, rng.random() < 0.2)
    return _ip(rng, src, dst, 6 if proto == "TCP" else 17, l4)


def _ip(rng: random.Random, src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return ipv4(src, dst, proto, payload, ident=rng.randint(0, 3), ttl=rng.choice((64, 1)),
                frag=0x2000 if rng.random() < 0.1 else 0,
                options=ROUTER_ALERT if rng.random() < 0.1 else b"")


def seed_frames(rng: random.Random, states: list[ServiceState], model: ReferenceDatapath) -> list[bytes]:
    seeds = []
    for _ in range(12):  # to services, or anywhere
        if states and rng.random() < 0.8:
            fe = rng.choice(states).frontend
            dst, dport, proto = fe.vip, fe.port, fe.protocol
        else:
            dst, dport, proto = rng.choice(ADDRESSES), rng.choice(PORTS), rng.choice(("TCP", "UDP"))
        seeds.append(l2_frame(rng, _packet(rng, rng.choice(CLIENTS), dst, proto, rng.choice(PORTS[4:7]), dport)))
    flows = sorted(model.forward_flows(), key=lambda kv: kv[0])
    for _ in range(min(len(flows), 12)):
        (client, vip, cport, vport, proto, _), flow = rng.choice(flows)
        pname = "TCP" if proto == 6 else "UDP"
        kind = rng.random()
        if kind < 0.4:  # the backend answers (sometimes from the wrong port)
            bport = flow.nat_port + (rng.random() < 0.1)
            seeds.append(l2_frame(rng, _packet(rng, flow.nat_ip, client, pname, bport, cport)))
        elif kind < 0.7:  # the client again
            seeds.append(l2_frame(rng, _packet(rng, client, vip, pname, cport, vport)))
        else:  # an ICMP error about the flow, from either side
            if rng.random() < 0.5:
                qsrc, qdst, qs, qd = client, flow.nat_ip, cport, flow.nat_port
                osrc, odst = rng.choice((flow.nat_ip, "10.244.0.1")), client
            else:
                qsrc, qdst, qs, qd = vip, client, vport, cport
                osrc, odst = client, vip
            l4 = (tcp_seg(qsrc, qdst, qs, qd, 0x02, 1, 0, b"") if proto == 6
                  else udp_dgram(qsrc, qdst, qs, qd, b"quoted", False))
            quote = ipv4(qsrc, qdst, proto, l4,
                         options=ROUTER_ALERT if rng.random() < 0.1 else b"")[:rng.choice((28, 28, 20, 24, 40))]
            itype, icode = rng.choice(((3, 3), (3, 4), (11, 0), (12, 0), (4, 0), (0, 0), (8, 0)))
            msg = struct.pack("!BBHI", itype, icode, 0, 0) + quote
            msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
            seeds.append(l2_frame(rng, ipv4(osrc, odst, 1, msg, ttl=64)))
    for key in sorted(model.fragments)[:4]:  # later fragments of recorded datagrams
        src, dst, ident, proto = key
        frag = rng.randint(1, 3) | (0x2000 if rng.random() < 0.5 else 0)
        seeds.append(l2_frame(rng, ipv4(src, dst, proto, bytes(16), ident=ident, frag=frag)))
    return seeds


# ---- mutations (bytes only: microseconds each) -----------------------------------------------
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x45, 0x46, 0x4F, 0x06, 0x11, 0x01, 0x20, 0x3F, 0x50)


def _l3_offset(f: bytearray) -> int:
    return 18 if f[12:14] in (b"\x81\x00", b"\x88\xa8") else 14


def mutate(rng: random.Random, frame: bytes, addrs: list[bytes], ports: list[bytes]) -> bytes:
    f = bytearray(frame)
    for _ in range(rng.choice((1, 1, 2, 3))):
        if len(f) <= 14:
            break
        l3 = _l3_offset(f)
        l4 = l3 + (f[l3] & 0xF) * 4 if len(f) > l3 else l3
        op = rng.randrange(14)
        if op == 0:
            i = rng.randrange(14, len(f))
            f[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            f[rng.randrange(14, len(f))] = rng.choice(INTERESTING)
        elif op == 2:
            f = f[:rng.randint(14, len(f))]
        elif op == 3:
            f += rng.randbytes(rng.randint(1, 40))
        elif op == 4 and len(f) > l3:
            f[l3] = rng.choice((0x45, 0x46, 0x44, 0x4F, 0x65, 0x55, rng.getrandbits(8)))
        elif op == 5 and len(f) >= l3 + 4:
            tot = struct.unpack_from("!H", f, l3 + 2)[0]
            struct.pack_into("!H", f, l3 + 2, max(0, min(0xFFFF, tot + rng.randint(-30, 30))))
        elif op == 6 and len(f) >= l3 + 8:
            struct.pack_into("!H", f, l3 + 6, rng.choice((0x2000, 0x0001, 0x2003, 0x4000, 0, rng.getrandbits(16))))
        elif op == 7 and len(f) >= l3 + 10:
            f[l3 + 9] = rng.choice((6, 17, 1, 0, 47, rng.getrandbits(8)))
        elif op == 8 and len(f) >= l4 + 14:
            f[l4 + 13] = rng.getrandbits(8)  # TCP flags (if TCP)
        elif op == 9 and len(f) >= l4 + 13:
            f[l4 + 12] = (rng.randrange(16) << 4) | (f[l4 + 12] & 0xF)  # TCP data offset
        elif op == 10 and len(f) >= l4 + 6:
            struct.pack_into("!H", f, l4 + 4, rng.choice((0, 7, 8, 9, 0xFFFF, rng.getrandbits(16))))
        elif op == 11 and len(f) >= l4 + 4:
            at = l4 + rng.choice((0, 2))
            f[at:at + 2] = rng.choice(ports)
        elif op == 12 and len(f) >= l3 + 20:
            at = l3 + rng.choice((12, 16))
            f[at:at + 4] = rng.choice(addrs)
        elif op == 13 and len(f) >= l3 + 20:
            at = l3 + 16 + rng.choice((12, 16))  # an ICMP quote's addresses (ihl 5 outer)
            if len(f) >= at + 4:
                f[at:at + 4] = rng.choice(addrs)
    return bytes(f)


def random_frame(rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        head = ETH + struct.pack("!HHH", 0x8100, rng.randint(1, 4094), 0x0800)
    else:
        head = ETH + b"\x08\x00"
    body = bytearray(rng.randbytes(rng.randint(0, 120)))
    if body and rng.random() < 0.7:
        body[0] = 0x45
    return bytes(head + body)


# ---- the run ---------------------------------------------------------------------------------
class Disagreement(AssertionError):
    pass


def fuzz(h: Harness, frames: int, seed: int, round_frames: int = ROUND_FRAMES,
         progress: bool = False) -> Stats:
    """Run `frames` frames; raises Disagreement (with the seed and round) on the first
    frame the program and the model disagree on."""
    addrs = [socket.inet_aton(a) for a in ADDRESSES]
    ports = [struct.pack("!H", p) for p in PORTS]
    stats = Stats(verdicts={})
    start = time.monotonic()
    while stats.frames < frames:
        rng = random.Random(f"{seed}-{stats.rounds}")
        h.reset()
        states = random_services(rng)
        for s in states:
            h.writer.upsert(s)
        model = ReferenceDatapath()
        model.load(h.writer)
        counters_before = h.counters()
        seeds: list[bytes] = []
        gone: list[ServiceState] = []
        last = None
        n = min(round_frames, frames - stats.frames)
        for i in range(n):
            if i % 500 == 499:
                churn(rng, h, states, gone)
                model.load(h.writer)
            if i % 200 == 0:
                seeds = seed_frames(rng, states, model)
            r = rng.random()
            if r < 0.35:
                raw = rng.choice(seeds)
            elif r < 0.9:
                raw = mutate(rng, rng.choice(seeds), addrs, ports)
            elif r < 0.95 and last is not None:
                raw = last
            else:
                raw = random_frame(rng)
            last = raw
            try:
                run_packet(raw, h, model)
            except AssertionError as exc:
                raise Disagreement(f"seed {seed}, round {stats.rounds}, frame {i}: {exc}") from None
        stats.frames += n
        after = h.counters()
        delta = {k: after[k] - counters_before[k] for k in model.counters}
        if delta != model.counters:
            raise Disagreement(f"seed {seed}, round {stats.rounds}: counters {delta} != model {model.counters}")
        for s in states:
            svc_id = h.writer.svc_id(s.frontend)
            if h.dp.service_stats(svc_id) != model.svc_stats[svc_id]:
                raise Disagreement(f"seed {seed}, round {stats.rounds}: stats of {s.frontend}")
        if ct_keys(h, "conntrack") != set(model.conntrack) or \
                ct_keys(h, "ct_unconfirmed_pod") != set(model.unconfirmed):
            raise Disagreement(f"seed {seed}, round {stats.rounds}: conntrack tables differ")
        for k, v in model.counters.items():
            stats.verdicts[k] = stats.verdicts.get(k, 0) + v
        stats.rounds += 1
        if progress and stats.rounds % 50 == 0:
            rate = stats.frames / (time.monotonic() - start)
            print(f"fuzz: {stats.frames:,} frames, {stats.rounds} rounds, {rate:,.0f} frames/s", flush=True)
    h.reset()
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("fuzz: needs root (BPF)", file=sys.stderr)
        return 2
    from controlplane.dataplane.program import Dataplane

    from .conftest import TEST_CONFIG
    dp = Dataplane.load(TEST_CONFIG)
    start = time.monotonic()
    try:
        stats = fuzz(Harness(dp), args.frames, args.seed, progress=True)
    except Disagreement as exc:
        print(f"fuzz: DISAGREEMENT after {time.monotonic() - start:.0f} s\n{exc}", file=sys.stderr)
        return 1
    finally:
        dp.close()
    took = time.monotonic() - start
    print(f"fuzz: {stats.frames:,} frames in {stats.rounds} rounds, {took:.0f} s "
          f"({stats.frames / took:,.0f} frames/s), seed {args.seed}: 0 crashes, 0 disagreements")
    print("fuzz: paths taken " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.verdicts.items()) if v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
