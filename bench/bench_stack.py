"""Through the kernel, same topology, two dataplanes (issue 7 scenarios 2 and 3).

Two identical chains of namespaces (bench/netlab.py): client -> node (forwarding) ->
backend. In chain "x" the project's XDP program is attached natively to both veths of the
node (as the agent attaches it to every pod veth) — measured as the default build
(`xdp`: rewrite, FIB lookup, bpf_redirect_map to the egress veth, which is in tx_ports
as the agent puts every veth whose peer runs an XDP program; the backend veth's sink is
that program), as the `--no-fib-redirect` build (`xdp_stack`: rewrite, then XDP_PASS
into the node's stack, which forwards), and, for UDP, as `floor`: a program that does
no dataplane work at all (sets the sink's port and the MACs, redirects to the backend
veth) — what the lab itself costs per packet, the ceiling of any XDP dataplane here;
in chain "i" the node has no XDP and
instead the iptables ruleset kube-proxy would write for the same services
(bench/kubeproxy.py: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*, statistic --mode random),
loaded with iptables-restore in that node namespace only. Both chains carry the same pass
program on the client's veth and the same counting sink on the backend's veth. Every
service has 2 endpoints; their addresses all live in the backend namespace.

Scenario 2 (UDP, trafgen on one core, 60-byte frames, TTL 64):
  new flows    source address random in 10.128.0.0/10 and source port random in
               1024-65535, destination walking every service's ClusterIP in turn,
               so nearly every packet is a new flow and iptables walks on average half
               of KUBE-SERVICES;
  established  one flow (one source, one port, one ClusterIP).
  New-flow windows (NEW_WARMUP + NEW_SECONDS) start from empty flow state on both sides.
  Delivered packets/s = the sink's count on the backend veth over the measured window;
  offered = the client veth's tx count; softirq = machine-wide /proc/stat softirq time
  over the window / delivered packets (sampled at USER_HZ; includes everything on both
  cores, so it is an upper bound for the node's share).
Scenario 3 (TCP): a Python client (bench/tcpload.py) opening one short connection after
  another (HTTP request, `Connection: close`, RST on close) to a ClusterIP drawn at random
  from all services, a one-connection-at-a-time Python server in the backend namespace.
  Connections/s and connect-to-EOF latency p50/p99.

Order: for each service count, both chains are programmed, then repetitions alternate
the order (xdp, xdp_stack, floor, iptables, then the reverse, ...), so every ratio compares
measurements taken back to back. Medians over repetitions; the spread is min-max.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kubeproxy  # noqa: E402
import netlab  # noqa: E402
import flowtables  # noqa: E402
from controlplane.dataplane.config import FLOW_TABLES  # noqa: E402

QUICK = os.environ.get("SVCXDP_BENCH_QUICK", "") not in ("", "0")
SERVICES = (1, 1_000) if QUICK else (1, 1_000, 10_000)
SECONDS = 1.0 if QUICK else 3.0        # measured window per repetition
WARMUP = 0.5 if QUICK else 1.0
# New flows: every window starts from empty flow state on its side (nf_conntrack flushed,
# the XDP conntrack maps emptied) and is short enough that iptables' table (nf_conntrack_max
# 262,144 here) does not fill at ~150-200k new flows/s: a full table drops or evicts on
# insert, which lowered iptables' rate for another reason than its cost (drops recorded).
NEW_SECONDS = 1.0
NEW_WARMUP = 0.3
REPS = 1 if QUICK else 3
TCP_SECONDS = 1.0 if QUICK else 3.0
ENDPOINTS = 2
UDP_PORT, TCP_PORT = 53, 80
SUITE = "stack"
TRAFGEN_MAX_PPS = 3_000_000            # bounds trafgen's packet count (-n) as a safety net

# xdp: the default build (FIB lookup + redirect straight to the egress veth); xdp_stack:
# the --no-fib-redirect build (XDP_PASS to the node's stack after the rewrite); floor: no
# dataplane work, only the redirect (UDP only: it translates nothing).
SIDES = {"udp": ("xdp", "xdp_stack", "floor", "iptables"), "tcp": ("xdp", "xdp_stack", "iptables")}
CASES = [(n, kind) for n in SERVICES for kind in ("udp", "tcp")]


def _root() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, XDP, iptables)"
    for tool in ("trafgen", "iptables-restore"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"{tool} not installed"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (use the project venv)"
    return None


def _ip_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def trafgen_conf(path: Path, n: int, flows: str) -> None:
    eth = f"eth(da={netlab.NODE_CLIENT_MAC}, sa={netlab.CLIENT_MAC})"
    if flows == "new":
        lo, hi = _ip_int("10.128.0.0"), _ip_int("10.191.255.255")
        first, last = _ip_int(kubeproxy.vip(0)), _ip_int(kubeproxy.vip(n - 1))
        da = f"dinc({first:#x}, {last:#x})" if n > 1 else kubeproxy.vip(0)
        ip = f"ipv4(sa=drnd({lo:#x}, {hi:#x}), da={da}, ttl=64)"
        udp = f"udp(sp=drnd(1024, 65535), dp={UDP_PORT})"
    else:
        ip = f"ipv4(sa={netlab.CLIENT_IP}, da={kubeproxy.vip(n // 2)}, ttl=64)"
        udp = f"udp(sp=40000, dp={UDP_PORT})"
    path.write_text("{ " + ", ".join((eth, ip, udp, "fill(0x41, 18)")) + " }\n")


def _stop_group(p: subprocess.Popen) -> None:
    """Stop trafgen and the worker it forked: they are the process group of the Popen
    this bench started (start_new_session), and nothing else is in it."""
    for sig, wait in ((signal.SIGINT, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_trafgen(client_ns: str, cfg: Path, limit: int, warmup: float) -> subprocess.Popen:
    """trafgen sending `cfg` out of cl0 in `client_ns` (one CPU, at most `limit` frames),
    running after `warmup` seconds; stop it with _stop_group. trafgen sometimes gives up
    on a full TX ring at start ("Flushing TX_RING failed: Resource temporarily
    unavailable"): it is started again, at most twice."""
    for attempt in range(3):
        p = subprocess.Popen(["ip", "netns", "exec", client_ns, "trafgen", "--no-sock-mem",
                              "--notouch-irq", "--dev", "cl0", "--conf", str(cfg), "-P", "1",
                              "-n", str(limit)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(warmup)
        if p.poll() is None:
            return p
        err = p.stderr.read()[-500:]
        if attempt == 2 or "TX_RING" not in err:
            raise RuntimeError(f"trafgen exited early: {err}")
    raise AssertionError("unreachable")


class Stack:
    """Both chains, the programs on them, and what each is programmed with."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.x = netlab.Topology("x")
        self.i = netlab.Topology("i")
        self.procs: list[subprocess.Popen] = []
        self.dp = self.writer = None
        self.dp_stack = self.writer_stack = None
        self.fib_watch = None
        self.floor_fd = None
        self.on_x = None
        self.bpfs = []
        self.sinks = {}
        self.programmed: tuple | None = None
        self.setup: dict = {}

    def up(self) -> None:
        from controlplane.dataplane import fibwatch
        from controlplane.dataplane.attach import attach_xdp
        from controlplane.dataplane.config import DataplaneConfig
        from controlplane.dataplane.program import Dataplane, load_floor_program
        from controlplane.dataplane.writer import MapWriter
        self.stale = netlab.sweep_stale()
        for t in (self.x, self.i):
            t.up()
        t0 = time.perf_counter()
        self.dp = Dataplane.load(DataplaneConfig(instance="bench-stack", pin=False, **flowtables.unconfirmed_config()))
        self.setup["xdp_load_s"] = round(time.perf_counter() - t0, 3)
        self.setup.update(flowtables.unconfirmed_sizes(self.dp))
        self.writer = MapWriter(self.dp)
        for dev in ("n-cl", "n-be"):   # their peers run XDP programs (cl0: pass, be0: the sink)
            assert self.dp.allow_redirect(netlab.ifindex(self.x.node, dev), self.x.node)
        # the agent's FIB result cache, kept by its route watcher in the node's namespace
        self.fib_watch = fibwatch.start(self.dp.table(fibwatch.MAP), self.x.node)
        self.setup["fib_cache_generation"] = self.fib_watch.gen
        self.dp_stack = Dataplane.load(DataplaneConfig(instance="bench-stack-stack", pin=False,
                                                       fib_redirect=False, **flowtables.unconfirmed_config()))
        self.writer_stack = MapWriter(self.dp_stack)
        floor_redirect, self.floor_fd = netlab.load_redirect_floor(self.x.node)
        self.bpfs.append(floor_redirect)
        floor_bpf, floor_fd = load_floor_program()
        self.bpfs.append(floor_bpf)
        for t in (self.x, self.i):
            sink_bpf, sink_fd = netlab.load_sink()
            self.bpfs.append(sink_bpf)
            self.sinks[t.tag] = sink_bpf
            attach_xdp(sink_fd, "be0", t.backend, "native")
            attach_xdp(floor_fd, "cl0", t.client, "native")
        self.use("xdp")
        for t in (self.x, self.i):
            p = subprocess.Popen(["ip", "netns", "exec", t.backend, sys.executable,
                                  str(HERE / "tcpload.py"), "server", str(netlab.BACKEND_PORT)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.procs.append(p)
            assert p.stdout.readline().strip() == "ready", "tcp server did not start"

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.fib_watch is not None:
            self.fib_watch.stop()
        for t in (self.x, self.i):
            t.down()   # XDP programs and iptables rules go with the namespaces
        netlab.wait_gone([self.x.client, self.x.node, self.x.backend,
                          self.i.client, self.i.node, self.i.backend])
        for dp in (self.dp, self.dp_stack):
            if dp is not None:
                dp.close()
        for b in self.bpfs:
            b.cleanup()

    def use(self, side: str) -> netlab.Topology:
        """The chain that measures `side`; for the XDP variants, (re)attach that program to
        the node's two veths of chain x (an atomic replace; the floor only to the client's)."""
        from controlplane.dataplane.attach import attach_xdp
        if side == "iptables":
            return self.i
        if self.on_x != side:
            if side == "floor":
                attach_xdp(self.floor_fd, "n-cl", self.x.node, "native")
            else:
                dp = self.dp if side == "xdp" else self.dp_stack
                dp.attach("n-cl", self.x.node, "native")
                dp.attach("n-be", self.x.node, "native")
            self.on_x = side
        return self.x

    def program(self, n: int, kind: str, target_port: int = netlab.BACKEND_PORT) -> dict:
        """Both chains serve n services of `kind` (udp or tcp), their endpoints on
        target_port; returns set-up timings."""
        if self.programmed == (n, kind, target_port):
            return {}
        from controlplane.dataplane.model import Backend, Frontend, ServiceState
        proto, port = ("UDP", UDP_PORT) if kind == "udp" else ("TCP", TCP_PORT)
        svcs = kubeproxy.services(n, ENDPOINTS, proto, port, target_port)
        states = [ServiceState(Frontend(s.vip, s.port, s.protocol),
                               tuple(Backend(ip, p) for ip, p in s.endpoints), "random") for s in svcs]
        info = {}
        t0 = time.perf_counter()
        self.writer.sync(states)
        info["xdp_writer_sync_s"] = round(time.perf_counter() - t0, 3)
        self.writer_stack.sync(states)
        rules = self.workdir / f"rules-{n}-{kind}-{target_port}.txt"
        rules.write_text(kubeproxy.full_ruleset(svcs, netlab.POD_CIDR))
        jumps = self.workdir / "jumps.txt"
        jumps.write_text(kubeproxy.JUMPS)
        t0 = time.perf_counter()
        netlab.in_ns(self.i.node, "iptables-restore", str(rules))   # flush mode: replaces the tables
        info["iptables_restore_s"] = round(time.perf_counter() - t0, 3)
        netlab.in_ns(self.i.node, "iptables-restore", "--noflush", str(jumps))
        info["iptables_rules"] = rules.read_text().count("\n-A ")
        self.programmed = (n, kind, target_port)
        return info

    # ---- scenario 2 --------------------------------------------------------------
    def empty_flows(self, side: str) -> None:
        """Empty flow state on `side`, as a fresh node has it."""
        if side == "iptables":
            netlab.flush_conntrack(self.i.node)
            return
        dp = {"xdp": self.dp, "xdp_stack": self.dp_stack}.get(side)
        for name in FLOW_TABLES if dp else ():
            t = dp.table(name)
            try:
                t.items_delete_batch()
            except Exception:   # an older bcc without batch ops
                t.clear()

    def udp(self, topo: netlab.Topology, n: int, flows: str) -> dict:
        cfg = self.workdir / f"trafgen-{n}-{flows}.cfg"
        seconds, warmup = (NEW_SECONDS, NEW_WARMUP) if flows == "new" else (SECONDS, WARMUP)
        if not cfg.exists():
            trafgen_conf(cfg, n, flows)
        sink = self.sinks[topo.tag]
        p = start_trafgen(topo.client, cfg, int(TRAFGEN_MAX_PPS * (seconds + warmup + 5)), warmup)
        try:
            ct_drops0 = netlab.conntrack_drops(topo.node) if topo is self.i else None
            tx0 = netlab.link_stats(topo.client, "cl0")
            c0, d0, t0 = netlab.cpu_times(), netlab.sink_delivered(sink), time.perf_counter()
            time.sleep(seconds)
            d1, t1, c1 = netlab.sink_delivered(sink), time.perf_counter(), netlab.cpu_times()
            tx1 = netlab.link_stats(topo.client, "cl0")
        finally:
            _stop_group(p)
        dt = t1 - t0
        delivered = d1 - d0
        soft = (c1["softirq"] - c0["softirq"]) / netlab.USER_HZ
        busy = sum(c1[k] - c0[k] for k in ("user", "nice", "system", "irq", "softirq")) / netlab.USER_HZ
        out = {"pps": delivered / dt, "offered_pps": (tx1["tx_packets"] - tx0["tx_packets"]) / dt,
               "softirq_ns_per_pkt": soft * 1e9 / delivered if delivered else None,
               "busy_cpu_ns_per_pkt": busy * 1e9 / delivered if delivered else None,
               "softirq_cores": soft / dt, "busy_cores": busy / dt}
        if topo is self.i and flows == "new":
            out["nf_conntrack_count"] = topo.conntrack_count()
            # Fairness: a full nf_conntrack table drops (or evicts on) inserts, which
            # would lower iptables' delivered rate for another reason than its cost.
            ct_drops1 = netlab.conntrack_drops(topo.node)
            if ct_drops0 is not None and ct_drops1 is not None:
                out["nf_conntrack_drops"] = ct_drops1 - ct_drops0
        return out

    # ---- scenario 3 --------------------------------------------------------------
    def tcp(self, topo: netlab.Topology, n: int) -> dict:
        r = netlab.in_ns(topo.client, sys.executable, str(HERE / "tcpload.py"), "client",
                         kubeproxy.vip(0), str(n), str(TCP_PORT), str(TCP_SECONDS), str(WARMUP),
                         timeout=TCP_SECONDS + WARMUP + 30)
        res = json.loads(r.stdout)
        lat = sorted(res["latencies_us"])
        if not lat:
            return {"cps": 0.0, "errors": res["errors"], "lat_p50_us": None, "lat_p99_us": None}
        return {"cps": len(lat) / res["elapsed_s"], "errors": res["errors"],
                "lat_p50_us": lat[len(lat) // 2], "lat_p99_us": lat[int(0.99 * (len(lat) - 1))]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = _root()
    if reason:
        pytest.skip(reason)
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        s.up()
        yield s
    finally:
        s.down()


def _summary(values: list[float | None]) -> dict:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "values": values}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "values": [round(v, 1) if v is not None else None for v in values]}


@pytest.mark.parametrize("services,kind", CASES, ids=[f"{k}-svc{n}" for n, k in CASES])
def test_stack(benchmark, stack, services, kind):
    benchmark.group = f"stack {kind}"
    setup = stack.program(services, kind)
    flows_list = ("new", "established") if kind == "udp" else ("connections",)
    sides = SIDES[kind]
    runs: dict = {(side, f): [] for side in sides for f in flows_list}
    loads = [os.getloadavg()[0]]

    def measure():
        for rep in range(REPS):
            order = sides if rep % 2 == 0 else sides[::-1]
            for f in flows_list:
                for side in order:
                    topo = stack.use(side)
                    if kind == "udp":
                        if f == "new":
                            stack.empty_flows(side)
                        runs[(side, f)].append(stack.udp(topo, services, f))
                    else:
                        runs[(side, f)].append(stack.tcp(topo, services))
        loads.append(os.getloadavg()[0])

    benchmark.pedantic(measure, rounds=1, iterations=1)
    metric = "pps" if kind == "udp" else "cps"
    info = {"suite": SUITE, "scenario": kind, "services": services, "endpoints": ENDPOINTS,
            "reps": REPS, "seconds": SECONDS if kind == "udp" else TCP_SECONDS, "warmup_s": WARMUP,
            "new_seconds": NEW_SECONDS, "new_warmup_s": NEW_WARMUP,
            "quick": QUICK, "loadavg_1m": [round(x, 2) for x in loads],
            **{f"setup_{k}": v for k, v in {**stack.setup, **setup}.items()}}
    results = {}
    for f in flows_list:
        x, i = runs[("xdp", f)], runs[("iptables", f)]
        entry = {}
        for side in sides:
            rs = runs[(side, f)]
            entry[side] = {k: _summary([r.get(k) for r in rs]) for k in rs[0]
                           if k not in ("nf_conntrack_count", "nf_conntrack_drops")}
            for k in ("nf_conntrack_count", "nf_conntrack_drops"):
                if k in rs[0]:
                    entry[side][k] = [r[k] for r in rs]
        ratios = [a[metric] / b[metric] for a, b in zip(x, i) if b[metric]]
        entry["ratio"] = _summary(ratios)
        for side in sides:
            if side not in ("xdp", "iptables"):
                entry[f"ratio_{side}"] = _summary([a[metric] / b[metric]
                                                   for a, b in zip(runs[(side, f)], i) if b[metric]])
        if kind == "udp":
            entry["softirq_ratio"] = _summary([b["softirq_ns_per_pkt"] / a["softirq_ns_per_pkt"]
                                               for a, b in zip(x, i)
                                               if a["softirq_ns_per_pkt"] and b["softirq_ns_per_pkt"]])
        xm, im = entry["xdp"][metric]["median"], entry["iptables"][metric]["median"]
        entry["ratio_of_medians"] = xm / im if im else None
        results[f] = entry
    info["results"] = results
    benchmark.extra_info.update(info)
    for f, e in results.items():
        print(f"\n  {kind} {f} @ {services} services: "
              + " ".join(f"{side} {e[side][metric]['median']:.0f}" for side in sides)
              + f" {metric}, xdp/iptables {e['ratio']['median']:.2f}"
              + "".join(f", {k[6:]}/iptables {v['median']:.2f}" for k, v in e.items()
                        if k.startswith("ratio_") and k != "ratio_of_medians" and v["median"]))
