"""NodePort from outside to a backend on the other node: XDP against kube-proxy's iptables
rules, same topology, same run (issue 11).

Two identical LANs (bench/nplab.py): client, node1, node2 (every backend address). In LAN
"x" node1's eth0 carries the XDP external entry point (`svcxdp_external`, as the agent
attaches it); a packet to a NodePort is translated to a backend on node2, source-NATed to
node1's address and sent back out with XDP_TX without entering node1's stack. In LAN "i"
node1 has no XDP and the ruleset kube-proxy writes (bench/kubeproxy.py: KUBE-SERVICES,
its last rule -> KUBE-NODEPORTS -> KUBE-EXT-* -> KUBE-MARK-MASQ + KUBE-SVC-* -> KUBE-SEP-*
DNAT, then MASQUERADE --random-fully in POSTROUTING); the kernel forwards the packet out of
the same interface. N services (1, 1,000, 10,000) have ClusterIPs; the first 2,768 (the
whole NodePort range) are of type NodePort. Endpoints: 2 per service, 12 at 1 service.

UDP, trafgen on one core, 60-byte frames:
  new flows    client address random in 10.128.0.0/10, source port random, destination
               node1:30000+k walking every NodePort: nearly every packet is a new flow
               (a new SNAT port on both sides), none answered (the sink counts, drops);
  established  one flow.
Delivered packets/s = the sink's count on node2's eth0; softirq = machine-wide softirq
time per delivered packet (an upper bound, as in bench_stack.py). Repetitions alternate
the order (XDP, iptables, then iptables, XDP); ratios compare back-to-back measurements.
The bound, measured after each repetition's new flows: in LAN "x" a program that does
nothing but send the frame on to node2's sink with XDP_TX (the sink's port and the MACs
set; no lookup, no NAT, no state) replaces the external entry point — what the lab itself
costs per packet, the ceiling of any XDP NodePort here (floor / iptables: how far the
ratio could go).

Valid new-flow measurements, both sides. A flood of unanswered new flows fills state:
iptables keeps each one in conntrack for nf_conntrack_udp_timeout (30 s) and MASQUERADE
holds its port as long, one port range (1024-65535) per node address and backend
address:port; XDP keeps it in ct_unconfirmed (sets) and reuses the port of an unconfirmed
flow (bpf/nodeport.h). With 2 endpoints at 1 service the 129,024 MASQUERADE tuples ran
out within a second and iptables fell to 0-15k packets/s (the XDP side, before its ports
of unanswered flows were reclaimable, to 0), which measures the exhaustion, not the path.
So: 12 endpoints at 1 service (774,144 MASQUERADE tuples, 393,216 XDP SNAT ports, both
far above what one window creates); before every measurement node1's conntrack table
(iptables side, in its namespace: pyroute2's Conntrack) and the XDP conntrack maps are
emptied; the window (WARMUP + SECONDS, 1 s) times the rate stays below nf_conntrack_max,
which is read (never changed; the root namespace's value bounds every namespace). Each
measurement records its drops: XDP snat_exhausted (no free port; snat_reclaimed, ports
taken from unanswered flows, is shown too), iptables conntrack drop, insert_failed
(NAT clashes: no free tuple) and early_drop (the table full), and the table's fill at
the end. A run with any of these is marked exhausted and left out of the ratio; with none
left, the ratio is None and the output says which side ran out.
SVCXDP_BENCH_QUICK=1: 1 and 1,000 services, one repetition (a smoke check).
"""
from __future__ import annotations

import ipaddress
import os
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
import flowtables  # noqa: E402
from controlplane.dataplane.config import FLOW_TABLES  # noqa: E402

QUICK = bench_stack.QUICK
SERVICES = (1, 1_000) if QUICK else (1, 1_000, 10_000)
SECONDS = 0.8     # with WARMUP, 1 s of new flows: below nf_conntrack_max (262,144 here) up to
WARMUP = 0.2      # ~250,000 packets/s on the iptables side (checked per run, see above)
REPS = 1 if QUICK else 3
ENDPOINTS = {1: 12}     # per service, by service count; 2 otherwise
DEFAULT_ENDPOINTS = 2
XDP_DROPS = ("snat_exhausted",)
IPT_DROPS = ("drop", "insert_failed", "early_drop")
SVC_PORT = 53
SUITE = "nodeport"
SIDES = ("xdp", "iptables")
SPAN = kubeproxy.NODE_PORT_MAX - kubeproxy.NODE_PORT_MIN + 1


def _int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def endpoints(n: int) -> int:
    return ENDPOINTS.get(n, DEFAULT_ENDPOINTS)


def conntrack_max() -> int:
    """nf_conntrack_max: read from the root namespace (it bounds every namespace's table);
    never written."""
    return int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())


def conntrack_stats(ns: str) -> dict[str, int]:
    """node1's conntrack counters (summed over CPUs) and entries, in its namespace."""
    text = netlab.in_ns(ns, "cat", "/proc/net/stat/nf_conntrack",
                        "/proc/sys/net/netfilter/nf_conntrack_count").stdout
    lines = text.split("\n")
    names = lines[0].split()
    out = {n: 0 for n in IPT_DROPS}
    for row in lines[1:]:
        vals = row.split()
        if len(vals) != len(names):
            continue
        for n, v in zip(names, vals):
            if n in out:
                out[n] += int(v, 16)
    out["entries"] = int([x for x in lines[1:] if x.strip() and len(x.split()) == 1][-1])
    return out


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
        self.tx_floor_fd: int | None = None
        self.fib_watch = None

    def up(self) -> None:
        from controlplane.dataplane import fibwatch
        from controlplane.dataplane.attach import attach_xdp
        from controlplane.dataplane.config import DataplaneConfig
        from controlplane.dataplane.program import Dataplane, load_floor_program
        from controlplane.dataplane.writer import MapWriter
        for t in (self.x, self.i):
            for ns in t.namespaces():
                netlab.delete_ns(ns)   # left by a crashed earlier run (exact names)
            t.up()
        t0 = time.perf_counter()
        self.dp = Dataplane.load(DataplaneConfig(instance="bench-nodeport", pin=False,
                                                 **flowtables.unconfirmed_config()))
        self.setup["xdp_load_s"] = round(time.perf_counter() - t0, 3)
        self.setup.update(flowtables.unconfirmed_sizes(self.dp))
        self.writer = MapWriter(self.dp)
        # the agent's FIB result cache, kept by its route watcher in node1's namespace
        self.fib_watch = fibwatch.start(self.dp.table(fibwatch.MAP), self.x.node)
        self.setup["fib_cache_generation"] = self.fib_watch.gen
        floor_bpf, floor_fd = load_floor_program()
        self.bpfs.append(floor_bpf)
        # the bound: node1 sends each frame straight back out to node2's sink
        tx_floor_bpf, self.tx_floor_fd = netlab.load_tx_floor(nplab.NODE2_MAC, nplab.NODE1_MAC)
        self.bpfs.append(tx_floor_bpf)
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
        if self.fib_watch is not None:
            self.fib_watch.stop()
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
        svcs = kubeproxy.services(n, endpoints(n), "UDP", SVC_PORT, netlab.BACKEND_PORT, node_ports=True)
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

    def floor(self, n: int) -> dict:
        """The bound: the new-flow frames through LAN x with node1's program replaced by
        netlab.load_tx_floor's, then the external entry point attached again."""
        from controlplane.dataplane.attach import attach_xdp
        attach_xdp(self.tx_floor_fd, "eth0", self.x.node, "native")
        try:
            return self.udp(self.x, n, "new", side="floor")
        finally:
            self.dp.attach("eth0", self.x.node, "native", external=True)

    def udp(self, topo: nplab.NodePortTopology, n: int, flows: str, side: str | None = None) -> dict:
        cfg = self.workdir / f"trafgen-{n}-{flows}.cfg"
        if not cfg.exists():
            trafgen_conf(cfg, n, flows)
        sink = self.sinks[topo.tag]
        side = side or ("xdp" if topo is self.x else "iptables")
        xdp = side == "xdp"
        if side != "floor":   # the floor keeps no state
            self.empty_tables(xdp)
        before = self.dp.counters() if xdp else conntrack_stats(topo.node) if side == "iptables" else None
        p = bench_stack.start_trafgen(topo.client, cfg, int(bench_stack.TRAFGEN_MAX_PPS * (SECONDS + WARMUP + 5)),
                                      WARMUP)
        try:
            c0, d0, t0 = netlab.cpu_times(), netlab.sink_delivered(sink), time.perf_counter()
            time.sleep(SECONDS)
            d1, t1, c1 = netlab.sink_delivered(sink), time.perf_counter(), netlab.cpu_times()
        finally:
            bench_stack._stop_group(p)
        dt, delivered = t1 - t0, d1 - d0
        soft = (c1["softirq"] - c0["softirq"]) / netlab.USER_HZ
        run = {"pps": delivered / dt,
               "softirq_ns_per_pkt": soft * 1e9 / delivered if delivered else None}
        # the whole run's drops (warm-up, window, the tail until trafgen stopped)
        if side == "floor":   # keeps no state: nothing to run out of
            run["drops"], run["exhausted"] = {}, False
            return run
        if xdp:
            after = self.dp.counters()
            run["drops"] = {k: after[k] - before[k] for k in XDP_DROPS}
            run["snat_reclaimed"] = after["snat_reclaimed"] - before["snat_reclaimed"]
        else:
            after = conntrack_stats(topo.node)
            run["drops"] = {k: after[k] - before[k] for k in IPT_DROPS}
            run["entries"], run["entries_max"] = after["entries"], conntrack_max()
        run["exhausted"] = any(run["drops"].values()) or run.get("entries", 0) >= run.get("entries_max", 1 << 62)
        return run

    def empty_tables(self, xdp: bool) -> None:
        """Every measurement starts from empty flow state, on both sides."""
        if not xdp:
            netlab.flush_conntrack(self.i.node)
            return
        for name in FLOW_TABLES:
            t = self.dp.table(name)
            try:
                t.items_delete_batch()
            except Exception:   # an older bcc without batch ops
                t.clear()


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
    floors: list[dict] = []

    def measure():
        for rep in range(REPS):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for f in ("new", "established"):
                for side in order:
                    topo = nodeport_bench.x if side == "xdp" else nodeport_bench.i
                    runs[(side, f)].append(nodeport_bench.udp(topo, services, f))
                if f == "new":
                    floors.append(nodeport_bench.floor(services))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    summary = bench_stack._summary

    def ratios(tops: list[dict], bottoms: list[dict]) -> dict:
        """Of back-to-back runs, pairwise, where neither side ran out of state."""
        return summary([a["pps"] / b["pps"] if not (a["exhausted"] or b["exhausted"]) and b["pps"] > 0
                        else None for a, b in zip(tops, bottoms)])

    results = {}
    for f in ("new", "established"):
        x, i = runs[("xdp", f)], runs[("iptables", f)]
        results[f] = {"xdp": summary([r["pps"] for r in x]), "iptables": summary([r["pps"] for r in i]),
                      "ratio": ratios(x, i),
                      "exhausted": {"xdp": [r["drops"] for r in x if r["exhausted"]],
                                    "iptables": [{**r["drops"], "entries": r["entries"]}
                                                 for r in i if r["exhausted"]]},
                      "snat_reclaimed": [r["snat_reclaimed"] for r in x],
                      "conntrack_entries": [r["entries"] for r in i],
                      "nf_conntrack_max": conntrack_max(),
                      "softirq_ns_per_pkt": {"xdp": summary([r["softirq_ns_per_pkt"] for r in x]),
                                             "iptables": summary([r["softirq_ns_per_pkt"] for r in i])}}
    # the bound, against the iptables run of the same repetition
    results["new"]["floor"] = summary([r["pps"] for r in floors])
    results["new"]["ratio_floor"] = ratios(floors, runs[("iptables", "new")])
    benchmark.extra_info.update({"suite": SUITE, "services": services, "endpoints": endpoints(services),
                                 "reps": REPS, "seconds": SECONDS, "warmup": WARMUP, "quick": QUICK,
                                 "loadavg_1m": round(os.getloadavg()[0], 2),
                                 **{f"setup_{k}": v for k, v in {**nodeport_bench.setup, **setup}.items()},
                                 "results": results})
    fl = results["new"]["ratio_floor"]["median"]
    print(f"\n  nodeport udp bound (XDP_TX only) @ {services} services: {results['new']['floor']['median']:.0f} pps"
          + (f", {fl:.2f}x iptables" if fl is not None else ""))
    for f, e in results.items():
        r = e["ratio"]["median"]
        ratio = f"ratio {r:.2f}" if r is not None else "no valid ratio"
        print(f"\n  nodeport udp {f} @ {services} services x {endpoints(services)} endpoints: "
              f"xdp {e['xdp']['median']:.0f} iptables {e['iptables']['median']:.0f} pps, {ratio}; "
              f"exhausted runs: xdp {e['exhausted']['xdp'] or 'none'}, "
              f"iptables {e['exhausted']['iptables'] or 'none'}; "
              f"xdp ports reclaimed {e['snat_reclaimed']}, iptables conntrack entries "
              f"{e['conntrack_entries']} of {e['nf_conntrack_max']}")
