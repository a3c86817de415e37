"""Scenario 3 for node-local clients: connections/s to a ClusterIP through the socket
hooks (bpf/sock.h) vs through the XDP path vs kube-proxy's iptables rules, same run.

The chains of bench_stack.py (client -> node -> backend; chain "x" with the XDP
program on the node's veths, chain "i" with kube-proxy's iptables ruleset). The
same client (bench/tcpload.py: short TCP connections, RST on close) runs three ways:
  sock      in chain x's client namespace and in a cgroup the socket hooks are
            attached to (`svcxdp-bench-sock`, made and removed here): connect()
            goes straight to a backend, the XDP program only sees non-service
            packets;
  xdp       in chain x, outside that cgroup: the XDP program DNATs every packet;
  iptables  in chain i.
Per connection CPU: the machine's busy time over the measured window (all cores,
every process, /proc/stat) / connections: an upper bound, the same bound for all.
Sides alternate order per repetition; medians over repetitions. Target: sock >=
1.5x xdp connections/s.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_stack  # noqa: E402
import kubeproxy  # noqa: E402
import netlab  # noqa: E402
from bench_stack import QUICK, REPS, TCP_PORT, TCP_SECONDS, WARMUP, Stack, _summary  # noqa: E402

SERVICES = (1, 100) if QUICK else (1, 10_000)
SIDES = ("sock", "xdp", "iptables")
SUITE = "socklb"
CGROUP = "svcxdp-bench-sock"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = bench_stack._root()
    if reason:
        pytest.skip(reason)
    from controlplane import cgroups
    s = Stack(tmp_path_factory.mktemp("socklb"))
    cg = None
    try:
        s.up()
        cg = cgroups.create(CGROUP)
        s.dp.sock_hooks.attach(cg)
        s.dp.set_sock_client_ip(netlab.CLIENT_IP)
        s.sock_cgroup = cg
        yield s
    finally:
        if cg is not None:
            cgroups.remove(CGROUP)   # detaches the hooks with it
        s.down()


def forget_xdp_flows(stack: Stack) -> None:
    """Empty chain x's conntrack before the socket side runs. Here one client address
    takes both paths, so a closed XDP flow (client:port -> VIP, kept 10 s after its RST)
    can share its tuple with a socket-path connection (client:port -> the same backend)
    and the node would reverse-NAT that connection's SYN-ACK to the VIP. A node's own
    sockets never send to a VIP through XDP, so this never happens outside the bench."""
    for name in ("conntrack", "ct_unconfirmed"):
        try:
            table = stack.dp.table(name)
        except KeyError:
            continue
        for k in list(table.keys()):
            try:
                del table[k]
            except KeyError:
                pass


def run_client(stack: Stack, side: str, n: int) -> dict:
    from controlplane import cgroups
    topo = stack.use("iptables" if side == "iptables" else "xdp")
    cgroup = stack.sock_cgroup if side == "sock" else None
    if side == "sock":
        forget_xdp_flows(stack)
    argv = ["ip", "netns", "exec", topo.client, sys.executable, str(HERE / "tcpload.py"), "client",
            kubeproxy.vip(0), str(n), str(TCP_PORT), str(TCP_SECONDS), str(WARMUP)]
    r = netlab.sh(*cgroups.command(cgroup, argv), timeout=TCP_SECONDS + WARMUP + 30)
    res = json.loads(r.stdout)
    lat = sorted(res["latencies_us"])
    n_ok = len(lat)
    return {"cps": n_ok / res["elapsed_s"] if n_ok else 0.0, "errors": res["errors"],
            "cpu_us_per_conn": res["busy_s"] * 1e6 / n_ok if n_ok else None,
            "lat_p50_us": lat[n_ok // 2] if lat else None,
            "lat_p99_us": lat[int(0.99 * (n_ok - 1))] if lat else None}


@pytest.mark.parametrize("services", SERVICES, ids=[f"tcp-svc{n}" for n in SERVICES])
def test_socket_lb(benchmark, stack, services):
    benchmark.group = "socket lb tcp"
    setup = stack.program(services, "tcp")
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    loads = [os.getloadavg()[0]]

    def measure():
        for rep in range(REPS):
            for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
                runs[side].append(run_client(stack, side, services))
        loads.append(os.getloadavg()[0])

    benchmark.pedantic(measure, rounds=1, iterations=1)
    entry = {side: {k: _summary([r[k] for r in rs]) for k in rs[0]} for side, rs in runs.items()}
    for other in ("xdp", "iptables"):
        entry[f"sock_vs_{other}"] = _summary([a["cps"] / b["cps"] for a, b in zip(runs["sock"], runs[other])
                                              if b["cps"]])
    errors = sum(r["errors"] for rs in runs.values() for r in rs)
    benchmark.extra_info.update({
        "suite": SUITE, "scenario": "tcp-socket-lb", "services": services, "reps": REPS,
        "seconds": TCP_SECONDS, "warmup_s": WARMUP, "quick": QUICK,
        "loadavg_1m": [round(x, 2) for x in loads], "results": entry,
        **{f"setup_{k}": v for k, v in setup.items()}})
    cps = {side: entry[side]["cps"]["median"] for side in SIDES}
    print(f"\n  tcp @ {services} services: " + ", ".join(f"{s} {v:.0f}" for s, v in cps.items())
          + f" conn/s; sock/xdp {entry['sock_vs_xdp']['median']:.2f}")
    assert all(v > 0 for v in cps.values()), f"a side completed no connection: {cps}"
    assert errors == 0, f"{errors} connections failed"
