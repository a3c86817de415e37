"""NodePort from outside to a backend on the other node: XDP against kube-proxy's iptables
rules, same topology, same run (issue 11).

Two identical LANs (bench/nplab.py): client, node1, node2 (every backend address). In LAN
"x" node1's eth0 carries the XDP external entry point (`svcxdp_external`, as the agent
attaches it); a packet to a NodePort is translated to a backend on node2, source-NATed to
node1's address and sent back out with XDP_TX without entering node1's stack. In LAN "i"
node1 has no XDP and the ruleset kube-proxy writes (bench/kubeproxy.py: KUBE-SERVICES,
its last rule -> KUBE-NODEPORTS -> KUBE-EXT-* -> KUBE-MARK-MASQ + KUBE-SVC-* -> KUBE-SEP-*
DNAT, then MASQUERADE --random-fully in POSTROUTING); the kernel forwards the packet out of
the same interface. N services (1, 1,000, 10,000) with 2 endpoints each have ClusterIPs;
the first 2,768 (the whole NodePort range) are of type NodePort.

UDP, trafgen on one core, 60-byte frames:
  new flows    client address random in 10.128.0.0/10, source port random, destination
               node1:30000+k walking every NodePort: nearly every packet is a new flow
               (a new SNAT port on both sides);
  established  one flow.
Delivered packets/s = the sink's count on node2's eth0; softirq = machine-wide softirq
time per delivered packet (an upper bound, as in bench_stack.py). Repetitions alternate
the order (XDP, iptables, then iptables, XDP); ratios compare back-to-back measurements.
SVCXDP_BENCH_QUICK=1: 1 and 1,000 services, one short repetition (a smoke check).
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_stack  # noqa: E402  (trafgen runner, root check, process-group stop)
import kubeproxy  # noqa: E402
import netlab  # noqa: E402
import nplab  # noqa: E402

QUICK = bench_stack.QUICK
SERVICES = (1, 1_000) if QUICK else (1, 1_000, 10_000)
SECONDS = 1.0 if QUICK else 3.0
WARMUP = 0.5 if QUICK else 1.0
REPS = 1 if QUICK else 3
ENDPOINTS = 2
SVC_PORT = 53
SUITE = "nodeport"
SIDES = ("xdp", "iptables")
SPAN = kubeproxy.NODE_PORT_MAX - kubeproxy.NODE_PORT_MIN + 1


def _int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def trafgen_conf(path: Path, n: int, flows: str) -> None:
    eth = f"eth(da={nplab.NODE1_MAC}, sa={nplab.CLIENT_MAC})"
    ports = min(n, SPAN)
    if flows == "new":
        lo, hi = _int("10.128.0.0"), _int("10.191.255.255")
        dp = (f"dinc({kubeproxy.NODE_PORT_MIN}, {kubeproxy.NODE_PORT_MIN + ports - 1})" if ports > 1
              else str(kubeproxy.NODE_PORT_MIN))
        ip = f"ipv4(sa=drnd({lo:#x}, {hi:#x}), da={nplab.NODE1_IP}, ttl=64)"
        udp = f"udp(sp=drnd(1024, 65535), dp={dp})"
    else:
        ip = f"ipv4(sa={nplab.CLIENT_IP}, da={nplab.NODE1_IP}, ttl=64)"
        udp = f"udp(sp=40000, dp={kubeproxy.NODE_PORT_MIN + ports // 2})"
    path.write_text("{ " + ", ".join((eth, ip, udp, "fill(0x41, 18)")) + " }\n")


class NodePortBench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.x = nplab.NodePortTopology("x")
        self.i = nplab.NodePortTopology("i")
        self.dp = self.writer = None
        self.bpfs = []
        self.sinks = {}
        self.programmed: int | None = None
        self.setup: dict = {}

    def up(self) -> None:
        from controlplane.dataplane.attach import attach_xdp
        from controlplane.dataplane.config import DataplaneConfig
        from controlplane.dataplane.program import Dataplane, load_floor_program
        from controlplane.dataplane.writer import MapWriter
        for t in (self.x, self.i):
            for ns in t.namespaces():
                netlab.delete_ns(ns)   # left by a crashed earlier run (exact names)
            t.up()
        t0 = time.perf_counter()
        self.dp = Dataplane.load(DataplaneConfig(instance="bench-nodeport", pin=False))
        self.setup["xdp_load_s"] = round(time.perf_counter() - t0, 3)
        self.writer = MapWriter(self.dp)
        floor_bpf, floor_fd = load_floor_program()
        self.bpfs.append(floor_bpf)
        for t in (self.x, self.i):
            sink_bpf, sink_fd = netlab.load_sink()
            self.bpfs.append(sink_bpf)
            self.sinks[t.tag] = sink_bpf
            attach_xdp(sink_fd, "eth0", t.backend, "native")
            for port in ("p-cl", "p-n1", "p-n2"):
                attach_xdp(floor_fd, port, t.lan, "native")
            attach_xdp(floor_fd, "cl0", t.client, "native")
        self.dp.attach("eth0", self.x.node, "native", external=True)

    def down(self) -> None:
        for t in (self.x, self.i):
            t.down()   # XDP programs and iptables rules go with the namespaces
        netlab.wait_gone(self.x.namespaces() + self.i.namespaces())
        if self.dp is not None:
            self.dp.close()
        for b in self.bpfs:
            b.cleanup()

    def program(self, n: int) -> dict:
        if self.programmed == n:
            return {}
        from controlplane.dataplane.model import Backend, Frontend, ServiceState
        svcs = kubeproxy.services(n, ENDPOINTS, "UDP", SVC_PORT, netlab.BACKEND_PORT, node_ports=True)
        states = []
        for s in svcs:
            backends = tuple(Backend(ip, p) for ip, p in s.endpoints)
            states.append(ServiceState(Frontend(s.vip, s.port, s.protocol), backends))
            if s.node_port:
                states.append(ServiceState(Frontend(nplab.NODE1_IP, s.node_port, s.protocol, "external"),
                                           backends))
        info = {}
        t0 = time.perf_counter()
        self.writer.sync(states)
        info["xdp_writer_sync_s"] = round(time.perf_counter() - t0, 3)
        rules = self.workdir / f"rules-{n}.txt"
        rules.write_text(kubeproxy.full_ruleset(svcs, netlab.POD_CIDR))
        jumps = self.workdir / "jumps.txt"
        jumps.write_text(kubeproxy.JUMPS)
        t0 = time.perf_counter()
        netlab.in_ns(self.i.node, "iptables-restore", str(rules))
        info["iptables_restore_s"] = round(time.perf_counter() - t0, 3)
        netlab.in_ns(self.i.node, "iptables-restore", "--noflush", str(jumps))
        info["iptables_rules"] = rules.read_text().count("\n-A ")
        info["node_ports"] = sum(1 for s in svcs if s.node_port)
        self.programmed = n
        return info

    def udp(self, topo: nplab.NodePortTopology, n: int, flows: str) -> dict:
        cfg = self.workdir / f"trafgen-{n}-{flows}.cfg"
        if not cfg.exists():
            trafgen_conf(cfg, n, flows)
        sink = self.sinks[topo.tag]
        limit = int(bench_stack.TRAFGEN_MAX_PPS * (SECONDS + WARMUP + 5))
        p = subprocess.Popen(["ip", "netns", "exec", topo.client, "trafgen", "--no-sock-mem",
                              "--notouch-irq", "--dev", "cl0", "--conf", str(cfg), "-P", "1",
                              "-n", str(limit)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(WARMUP)
            if p.poll() is not None:
                raise RuntimeError(f"trafgen exited early: {p.stderr.read()[-500:]}")
            c0, d0, t0 = netlab.cpu_times(), netlab.sink_delivered(sink), time.perf_counter()
            time.sleep(SECONDS)
            d1, t1, c1 = netlab.sink_delivered(sink), time.perf_counter(), netlab.cpu_times()
        finally:
            bench_stack._stop_group(p)
        dt, delivered = t1 - t0, d1 - d0
        soft = (c1["softirq"] - c0["softirq"]) / netlab.USER_HZ
        return {"pps": delivered / dt,
                "softirq_ns_per_pkt": soft * 1e9 / delivered if delivered else None}


@pytest.fixture(scope="module")
def nodeport_bench(tmp_path_factory):
    reason = bench_stack._root()
    if reason:
        pytest.skip(reason)
    b = NodePortBench(tmp_path_factory.mktemp("nodeport"))
    try:
        b.up()
        yield b
    finally:
        b.down()


@pytest.mark.parametrize("services", SERVICES, ids=[f"udp-svc{n}" for n in SERVICES])
def test_nodeport(benchmark, nodeport_bench, services):
    benchmark.group = "nodeport udp"
    setup = nodeport_bench.program(services)
    runs: dict = {(side, f): [] for side in SIDES for f in ("new", "established")}

    def measure():
        for rep in range(REPS):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for f in ("new", "established"):
                for side in order:
                    topo = nodeport_bench.x if side == "xdp" else nodeport_bench.i
                    runs[(side, f)].append(nodeport_bench.udp(topo, services, f))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    results = {}
    for f in ("new", "established"):
        x, i = runs[("xdp", f)], runs[("iptables", f)]
        assert all(r["pps"] > 0 for r in x + i), f"nothing delivered ({f}): {x} {i}"
        summary = bench_stack._summary
        results[f] = {"xdp": summary([r["pps"] for r in x]), "iptables": summary([r["pps"] for r in i]),
                      "ratio": summary([a["pps"] / b["pps"] for a, b in zip(x, i)]),
                      "softirq_ns_per_pkt": {"xdp": summary([r["softirq_ns_per_pkt"] for r in x]),
                                             "iptables": summary([r["softirq_ns_per_pkt"] for r in i])}}
    benchmark.extra_info.update({"suite": SUITE, "services": services, "endpoints": ENDPOINTS,
                                 "reps": REPS, "seconds": SECONDS, "quick": QUICK,
                                 "loadavg_1m": round(os.getloadavg()[0], 2),
                                 **{f"setup_{k}": v for k, v in {**nodeport_bench.setup, **setup}.items()},
                                 "results": results})
    for f, e in results.items():
        print(f"\n  nodeport udp {f} @ {services} services: xdp {e['xdp']['median']:.0f} "
              f"iptables {e['iptables']['median']:.0f} pps, ratio {e['ratio']['median']:.2f}")
