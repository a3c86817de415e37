"""Scenario 7: short TCP connections to a ClusterIP through the socket hooks
(bpf/sock.h) vs through the XDP path vs kube-proxy's iptables rules, same run.

The chains of bench_stack.py (client -> node -> backend; chain "x" with the XDP
program on the node's veths, chain "i" with kube-proxy's iptables ruleset). The
client and server are bench/connload.c (compiled here with the machine's cc): the
request and response of scenario 3, SO_LINGER 0 on close, but CONCURRENCY
connections in flight from an epoll loop, so the client's own cost per connection
is a few µs rather than the ~155 µs of the Python client, which hid the paths'
difference. The same client runs four ways:
  sock      in chain x's client namespace and in a cgroup the socket hooks are
            attached to (`svcxdp-bench-sock`, made and removed here): connect()
            goes straight to a backend; the node's XDP program still runs on every
            packet but finds no service (a miss);
  xdp       in chain x, outside that cgroup: the XDP program DNATs every packet;
  iptables  in chain i;
  direct    in chain x, outside the cgroup, to the backends' own addresses: no
            service at all. The floor of every path: what the connection costs
            by itself (the TCP exchange, two veth hops, forwarding on the node).
            xdp / direct bounds what skipping the per-packet NAT can ever give.
Each run also records which path it took, from the counters of that path: the
hooks' translations (SVCXDP_CNT_SOCK_XLATE), the XDP program's new and known flows
(CT_NEW, CT_HIT), and the packets of kube-proxy's DNAT rules (iptables-save -c).
CPU per connection: the client's own (getrusage), the server's (/proc/PID/stat),
softirq and the machine's busy time (/proc/stat, every core and process: an upper
bound that includes the rest) over the measured window / connections.
After the measured repetitions one more run per side with BPF run-time stats on
(BPF_ENABLE_STATS) gives the BPF programs' own ns per connection: the XDP program
on the node, the socket hooks. Not during the measured runs: the stats add two
clock reads to every program run.
Sides alternate order per repetition; medians over repetitions. Target: sock >=
1.5x xdp connections/s.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_stack  # noqa: E402
import kubeproxy  # noqa: E402
import netlab  # noqa: E402
from controlplane.dataplane.config import FLOW_TABLES  # noqa: E402
from bench_stack import QUICK, REPS, TCP_PORT, TCP_SECONDS, WARMUP, Stack, _summary  # noqa: E402

SERVICES = (1, 100) if QUICK else (1, 10_000)
SIDES = ("sock", "xdp", "iptables", "direct")
SUITE = "socklb"
CGROUP = "svcxdp-bench-sock"
CONN_PORT = 8081          # connload's server in both backend namespaces (8080: scenario 3's)
CONCURRENCY = 32
# The XDP path's counters that say a connection went through it, and the hooks'.
PATH_COUNTERS = ("sock_xlate", "ct_new", "ct_hit", "revnat", "pass_non_service")


def build_connload(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) for bench/connload.c")
    out = workdir / "connload"
    netlab.sh(cc, "-O2", "-Wall", "-o", str(out), str(HERE / "connload.c"))
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = bench_stack._root()
    if reason:
        pytest.skip(reason)
    from controlplane import cgroups
    work = tmp_path_factory.mktemp("socklb")
    s = Stack(work)
    cg = None
    servers: list[subprocess.Popen] = []
    try:
        s.up()
        s.connload = build_connload(work)
        s.conn_servers = {}
        for t in (s.x, s.i):
            # Ports for 30,000+ connections/s without reusing a tuple within a second.
            netlab.in_ns(t.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
            p = subprocess.Popen(["ip", "netns", "exec", t.backend, str(s.connload), "server",
                                  str(CONN_PORT)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
            servers.append(p)
            assert p.stdout.readline().strip() == "ready", "connload server did not start"
            s.conn_servers[t.tag] = p.pid
        cg = cgroups.create(CGROUP)
        s.dp.sock_hooks.attach(cg)
        s.dp.set_sock_config(netlab.CLIENT_IP, 0)   # (0: every socket is the node's)
        s.sock_cgroup = cg
        yield s
    finally:
        for p in servers:
            p.terminate()
            p.wait(timeout=5)
        if cg is not None:
            cgroups.remove(CGROUP)   # detaches the hooks with it
        s.down()


def forget_xdp_flows(stack: Stack) -> None:
    """Empty chain x's conntrack before a side that does not go through the XDP NAT.
    Here one client address takes every path, so a closed XDP flow (client:port -> VIP,
    kept 10 s after its RST) can share its reply tuple with a socket-path or direct
    connection (client:port -> the same backend) and the node would reverse-NAT that
    connection's SYN-ACK to the VIP. A node's own sockets never send to a VIP through
    XDP, so this never happens outside the bench."""
    for name in FLOW_TABLES:
        try:
            stack.dp.table(name).clear()
        except KeyError:
            continue


def iptables_dnat_packets(stack: Stack) -> int:
    """Packets through kube-proxy's DNAT rules (KUBE-SEP-*) in chain i's node: one
    per connection (nat rules see a connection's first packet only)."""
    out = netlab.in_ns(stack.i.node, "iptables-save", "-c", "-t", "nat").stdout
    return sum(int(m.group(1)) for m in re.finditer(r"^\[(\d+):\d+\] -A KUBE-SEP-\S+ .*-j DNAT", out, re.M))


def path_counters(stack: Stack, side: str) -> dict[str, int]:
    c = stack.dp.counters()
    out = {k: c[k] for k in PATH_COUNTERS}
    if side == "iptables":
        out["iptables_dnat"] = iptables_dnat_packets(stack)
    return out


def bpf_run_time(prog_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(run_time_ns, run_cnt) per program, from the kernel's BPF stats."""
    out = {}
    for pid in prog_ids:
        info = json.loads(netlab.sh("bpftool", "-j", "prog", "show", "id", str(pid)).stdout)
        out[pid] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
    return out


class BpfStats:
    """BPF_ENABLE_STATS (libbpf's bpf_enable_stats): run time is counted for every
    program while the returned descriptor is open; closing it turns it off again."""

    def __enter__(self) -> "BpfStats":
        fd = ctypes.CDLL("libbpf.so.1", use_errno=True).bpf_enable_stats(0)   # BPF_STATS_RUN_TIME
        if fd < 0:
            raise OSError(-fd, f"bpf_enable_stats: {os.strerror(-fd)}")
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def run_client(stack: Stack, side: str, n: int, profile: bool = False) -> dict:
    from controlplane import cgroups
    from controlplane.dataplane.libbpf import prog_id
    topo = stack.use("iptables" if side == "iptables" else "xdp")
    cgroup = stack.sock_cgroup if side == "sock" else None
    if side in ("sock", "direct"):
        forget_xdp_flows(stack)
    if side == "direct":
        first, count = kubeproxy.backend_ip(0, 0), max(n, 2)
    else:
        first, count = kubeproxy.vip(0), n
    port = CONN_PORT if side == "direct" else TCP_PORT
    argv = ["ip", "netns", "exec", topo.client, str(stack.connload), "client", first, str(count),
            str(port), str(TCP_SECONDS), str(WARMUP), str(CONCURRENCY), str(stack.conn_servers[topo.tag])]
    hooks = {f"hook_{name}": prog_id(fd) for name, fd in stack.dp.sock_hooks.fds.items()}
    progs = {"xdp": stack.dp.prog_id, **hooks}
    before = path_counters(stack, side)
    rt0 = bpf_run_time(list(progs.values())) if profile else {}
    r = netlab.sh(*cgroups.command(cgroup, argv), timeout=TCP_SECONDS + WARMUP + 30)
    rt1 = bpf_run_time(list(progs.values())) if profile else {}
    after = path_counters(stack, side)
    res = json.loads(r.stdout)
    n_ok = res["connections"]

    def per_conn(x: float) -> float | None:
        return x * 1e6 / n_ok if n_ok and x >= 0 else None

    out = {"cps": n_ok / res["elapsed_s"] if n_ok else 0.0, "errors": res["errors"],
           "cpu_us_per_conn": per_conn(res["client_cpu_s"] + max(res["server_cpu_s"], 0) + res["softirq_s"]),
           "busy_us_per_conn": per_conn(res["busy_s"]),
           "client_us_per_conn": per_conn(res["client_cpu_s"]),
           "server_us_per_conn": per_conn(res["server_cpu_s"]),
           "softirq_us_per_conn": per_conn(res["softirq_s"]),
           "lat_p50_us": res["lat_p50_us"], "lat_p99_us": res["lat_p99_us"]}
    # Path evidence: per connect() over the whole run, warm-up included (the counters
    # are read before and after the client, not at its window's edges).
    total = res["opened_total"]
    for k in after:
        out[f"path_{k}_per_conn"] = (after[k] - before[k]) / total if total else None
    if profile and total:
        for name, pid in progs.items():
            out[f"bpf_{name}_ns_per_conn"] = (rt1[pid][0] - rt0[pid][0]) / total
            out[f"bpf_{name}_runs_per_conn"] = (rt1[pid][1] - rt0[pid][1]) / total
        out["bpf_sock_hooks_ns_per_conn"] = sum(out[f"bpf_{h}_ns_per_conn"] for h in hooks)
    return out


def check_path(side: str, r: dict) -> str | None:
    """Why a run did not take its side's path, or None. A connection through the XDP
    NAT shows as a flow (new, or a known one whose tuple came back within its 10 s
    after close); one through the hooks as a translation and no flow."""
    xlate, flows = r["path_sock_xlate_per_conn"], r["path_ct_new_per_conn"] + r["path_ct_hit_per_conn"]
    if side == "sock" and (xlate < 0.9 or r["path_ct_new_per_conn"] > 0.01):
        return f"sock: {xlate:.2f} translations and {r['path_ct_new_per_conn']:.2f} XDP new flows per connection"
    if side == "xdp" and (xlate > 0.01 or r["path_ct_new_per_conn"] < 0.01 or flows < 0.9):
        return f"xdp: {xlate:.2f} translations and {flows:.2f} XDP flow packets per connection"
    if side == "iptables" and r["path_iptables_dnat_per_conn"] < 0.9:
        return f"iptables: {r['path_iptables_dnat_per_conn']:.2f} DNAT packets per connection"
    if side == "direct" and (xlate > 0.01 or r["path_ct_new_per_conn"] > 0.01):
        return f"direct: {xlate:.2f} translations, {r['path_ct_new_per_conn']:.2f} XDP new flows per connection"
    return None


@pytest.mark.parametrize("services", SERVICES, ids=[f"tcp-svc{n}" for n in SERVICES])
def test_socket_lb(benchmark, stack, services):
    benchmark.group = "socket lb tcp"
    setup = stack.program(services, "tcp", target_port=CONN_PORT)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    profile: dict[str, dict] = {}
    loads = [os.getloadavg()[0]]

    def measure():
        for rep in range(REPS):
            for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
                runs[side].append(run_client(stack, side, services))
        loads.append(os.getloadavg()[0])
        with BpfStats():
            for side in SIDES:
                profile[side] = run_client(stack, side, services, profile=True)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    entry = {side: {k: _summary([r[k] for r in rs]) for k in rs[0]} for side, rs in runs.items()}
    for other in ("xdp", "iptables", "direct"):
        entry[f"sock_vs_{other}"] = _summary([a["cps"] / b["cps"] for a, b in zip(runs["sock"], runs[other])
                                              if b["cps"]])
    # The most any path that skips the per-packet NAT could give over XDP here.
    entry["direct_vs_xdp"] = _summary([a["cps"] / b["cps"] for a, b in zip(runs["direct"], runs["xdp"])
                                       if b["cps"]])
    entry["profile"] = {side: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                        for side, r in profile.items()}
    wrong = [why for side, rs in runs.items() for r in rs if (why := check_path(side, r))]
    wrong += [why for side, r in profile.items() if (why := check_path(side, r))]
    entry["path_checked"] = not wrong
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    benchmark.extra_info.update({
        "suite": SUITE, "scenario": "tcp-socket-lb", "services": services, "reps": REPS,
        "seconds": TCP_SECONDS, "warmup_s": WARMUP, "quick": QUICK, "client": "bench/connload.c",
        "concurrency": CONCURRENCY, "loadavg_1m": [round(x, 2) for x in loads], "results": entry,
        **{f"setup_{k}": v for k, v in setup.items()}})
    cps = {side: entry[side]["cps"]["median"] for side in SIDES}
    print(f"\n  tcp @ {services} services: " + ", ".join(f"{s} {v:.0f}" for s, v in cps.items())
          + f" conn/s; sock/xdp {entry['sock_vs_xdp']['median']:.2f}, direct/xdp {entry['direct_vs_xdp']['median']:.2f}")
    for side in SIDES:
        e, p = entry[side], profile[side]
        med = {k: e[k]["median"] or 0 for k in ("cpu_us_per_conn", "client_us_per_conn", "server_us_per_conn",
                                                "softirq_us_per_conn", "busy_us_per_conn")}
        print(f"  {side:8} µs/conn: {med['cpu_us_per_conn']:.1f} = client {med['client_us_per_conn']:.1f} + server "
              f"{med['server_us_per_conn']:.1f} + softirq {med['softirq_us_per_conn']:.1f} (machine busy "
              f"{med['busy_us_per_conn']:.1f}); BPF ns/conn: XDP {p.get('bpf_xdp_ns_per_conn') or 0:.0f}, hooks "
              f"{p.get('bpf_sock_hooks_ns_per_conn') or 0:.0f} ("
              + ", ".join(f"{k[9:-12]} {v:.0f}" for k, v in p.items() if k.startswith("bpf_hook_") and k.endswith("_ns_per_conn") and v)
              + ")")
    assert all(v > 0 for v in cps.values()), f"a side completed no connection: {cps}"
    assert not wrong, "a side did not take its path: " + "; ".join(wrong)
    assert errors == 0, f"{errors} connections failed"
