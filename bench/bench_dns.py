"""Issue 12: the cluster DNS server (`svcctl dns`) against dnsmasq, same names, same run.

Both servers answer the same N service names (`svc-<i>.default.svc.cluster.local`): ours
from the store (N Services applied through the registry), dnsmasq from a hosts file with
the same names and ClusterIPs. Each runs pinned to one core (taskset), dnsperf (Debian) to
the other, in a `svcxdp-bench-dns` network namespace on loopback; the two are measured
back to back in REPEATS pairs, the first of each pair alternating (svcxdp first in the
first, third, ... pair), and each pair's ratio is reported beside the ratio of medians:

- throughput: dnsperf unthrottled (100 outstanding, random in-cluster names), queries/s;
- latency: dnsperf at a fixed rate (LATENCY_QPS, the published per-replica sizing of
  CoreDNS), p50/p99 of its per-query latencies (-v);
- apply -> resolvable: a new Service written through the registry while N exist, then a
  UDP query every millisecond until our server answers it; p50/p99 over ROUNDS.

Nothing is asserted; numbers go to extra_info and the report. Quick mode: N = 1,000,
short windows, one repetition.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import pytest

from controlplane.api import Service
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import Manifest, Registry
from controlplane.lab import netns
from controlplane.store.paths import open_store

QUICK = os.environ.get("SVCXDP_BENCH_QUICK") == "1"
SERVICES = 1_000 if QUICK else 10_000
SECONDS = 3 if QUICK else 15
REPEATS = 1 if QUICK else 3
ROUNDS = 10 if QUICK else 100
LATENCY_QPS = 5_000
NS = "svcxdp-bench-dns"
OURS, DNSMASQ = "127.0.0.1", "127.0.0.2"
SERVER_CPU, CLIENT_CPU = "1", "0"
SUITE = "dns"
ZONE = "default.svc.cluster.local"


def _service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def _in_ns(argv: list[str], cpu: str | None = None) -> list[str]:
    return (["taskset", "-c", cpu] if cpu else []) + netns.command(NS, argv)


def _answers(server: str, name: str) -> bool:
    def ask() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            q = dns.message.make_query(name, "A")
            try:
                s.sendto(q.to_wire(), (server, 53))
                r = dns.message.from_wire(s.recv(4096))
                return r.id == q.id and bool(r.answer)
            except OSError:
                return False
    return netns.call_in(NS, ask)


def _wait(server: str, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(server, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server} does not answer {name}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def servers():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    state = Path(tempfile.mkdtemp(prefix="svcxdp-bench-dns-"))
    procs: list[subprocess.Popen] = []
    if netns.exists(NS):
        netns.delete(NS)
    netns.create(NS)
    try:
        with netns.iproute(NS) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        store = open_store(state)
        registry = Registry(store)
        t0 = time.perf_counter()
        docs = [Manifest(_service(f"svc-{i}")) for i in range(SERVICES)]
        for i in range(0, len(docs), 2000):
            registry.apply(docs[i:i + 2000])
        reconcile(store)
        fill_s = time.perf_counter() - t0
        ips = {s.name: s.spec.cluster_ip for s in store.list(Service, "default") if s.name.startswith("svc-")}
        hosts = state / "hosts"
        hosts.write_text("".join(f"{ip} {name}.{ZONE}\n" for name, ip in ips.items()))
        names = list(ips)
        random.Random(12).shuffle(names)
        queries = state / "queries.txt"
        queries.write_text("".join(f"{n}.{ZONE} A\n" for n in names))
        log = open(state / "servers.log", "wb")
        procs.append(subprocess.Popen(_in_ns([sys.executable, "-m", "controlplane.cli", "dns", "--state-dir",
                                              str(state), "--listen", OURS, "--metrics-port", "0",
                                              "--resolv-conf", "/dev/null"], SERVER_CPU),
                                      stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(_in_ns(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                                              "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                                              f"--listen-address={DNSMASQ}", "--bind-interfaces", "--port=53",
                                              "--pid-file=", "--user=root", "--local=/cluster.local/"],
                                             SERVER_CPU), stdout=log, stderr=subprocess.STDOUT))
        probe = f"{names[0]}.{ZONE}"
        _wait(OURS, probe)
        _wait(DNSMASQ, probe)
        yield {"store": store, "registry": registry, "queries": queries, "fill_s": fill_s, "state": state}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        netns.delete(NS)
        shutil.rmtree(state, ignore_errors=True)


def _dnsperf(server: str, queries: Path, seconds: float, qps: int | None = None) -> dict:
    argv = ["dnsperf", "-s", server, "-d", str(queries), "-l", str(seconds), "-c", "4", "-q", "100", "-t", "2"]
    if qps:
        argv += ["-Q", str(qps), "-v"]
    p = subprocess.run(_in_ns(argv, CLIENT_CPU), capture_output=True, text=True, timeout=seconds + 60)
    out = p.stdout
    stats: dict = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries per second:"):
            stats["qps"] = float(line.split()[-1])
        elif line.startswith("Queries lost:"):
            stats["lost"] = int(line.split()[2])
        elif line.startswith("Queries completed:"):
            stats["completed"] = int(line.split()[2])
    if qps:
        lat = sorted(float(line.split()[-1]) * 1000 for line in out.splitlines()
                     if line.startswith("> ") and line.split()[-1].replace(".", "", 1).isdigit())
        if lat:
            stats["p50_ms"] = round(lat[len(lat) // 2], 3)
            stats["p99_ms"] = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3)
    if "qps" not in stats:
        raise RuntimeError(f"dnsperf gave no result: {p.stderr.strip() or out[-500:]}")
    return stats


def test_dns_queries_per_second_vs_dnsmasq(benchmark, servers):
    results: dict[str, list[dict]] = {"svcxdp": [], "dnsmasq": []}
    order: list[str] = []
    pairs = (("svcxdp", OURS), ("dnsmasq", DNSMASQ))

    def run():
        for k in range(REPEATS):
            # one pair per repetition, the first server alternating (svcxdp first in even
            # pairs): neither always runs on the machine as the other left it
            pair = pairs if k % 2 == 0 else pairs[::-1]
            order.append(pair[0][0])
            for label, ip in pair:
                r = _dnsperf(ip, servers["queries"], SECONDS)
                r.update({f"at_{LATENCY_QPS}_{k}": v for k, v in
                          _dnsperf(ip, servers["queries"], max(2, SECONDS // 2), LATENCY_QPS).items()
                          if k in ("p50_ms", "p99_ms", "lost")})
                results[label].append(r)

    benchmark.pedantic(run, rounds=1, iterations=1)
    summary = {}
    for label, runs in results.items():
        summary[label] = {
            "qps_median": round(statistics.median(r["qps"] for r in runs)),
            "qps_all": [round(r["qps"]) for r in runs],
            "lost": sum(r.get("lost", 0) for r in runs),
            "p50_ms": statistics.median(r[f"at_{LATENCY_QPS}_p50_ms"] for r in runs),
            "p99_ms": statistics.median(r[f"at_{LATENCY_QPS}_p99_ms"] for r in runs),
        }
    # ratio_qps: the ratio of the medians (unpaired); pair_ratios: each pair's own ratio, taken
    # back to back (the figure to judge by: a target is met only if every pair meets it)
    ratio = summary["svcxdp"]["qps_median"] / max(1, summary["dnsmasq"]["qps_median"])
    pair_ratios = [round(a["qps"] / max(1.0, b["qps"]), 3) for a, b in zip(results["svcxdp"], results["dnsmasq"])]
    benchmark.extra_info.update({
        "suite": SUITE, "case": "qps", "services": SERVICES, "seconds": SECONDS, "repeats": REPEATS,
        "latency_qps": LATENCY_QPS, "quick": QUICK, "loadavg_1m": round(os.getloadavg()[0], 2),
        "ratio_qps": round(ratio, 2), "pair_ratios": pair_ratios, "pair_first": order,
        "pair_ratio_median": round(statistics.median(pair_ratios), 3), **summary,
    })
    print(f"\n[dns] {SERVICES:,} names: svcxdp {summary['svcxdp']} / dnsmasq {summary['dnsmasq']} "
          f"-> {ratio:.2f}x dnsmasq's queries/s (ratio of medians); per pair "
          + ", ".join(f"{r:.2f}x ({first} first)" for r, first in zip(pair_ratios, order)))


def test_dns_apply_to_resolvable(benchmark, servers):
    registry, store = servers["registry"], servers["store"]
    latencies: list[float] = []
    counter = iter(range(10**6))

    def one():
        name = f"lat-{next(counter)}"
        t0 = time.perf_counter()
        registry.apply([Manifest(_service(name))])
        fqdn = f"{name}.{ZONE}"

        def poll() -> float:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(0.05)
                    try:
                        s.sendto(dns.message.make_query(fqdn, "A").to_wire(), (OURS, 53))
                        if dns.message.from_wire(s.recv(4096)).answer:
                            return time.perf_counter()
                    except OSError:
                        pass
                time.sleep(0.001)
            raise TimeoutError(fqdn)
        latencies.append((netns.call_in(NS, poll) - t0) * 1000)

    benchmark.pedantic(one, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    del latencies[:1]
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    benchmark.extra_info.update({
        "suite": SUITE, "case": "apply_to_resolvable", "services": SERVICES + len(lat) + 1, "quick": QUICK,
        "rounds": len(lat), "p50_ms": round(statistics.median(lat), 1), "p99_ms": round(p99, 1),
        "max_ms": round(lat[-1], 1), "store_fill_s": round(servers["fill_s"], 1),
        "what": "registry apply of a new Service -> first A answer from svcctl dns",
    })
    print(f"\n[dns] apply -> resolvable at {SERVICES:,} services: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms over {len(lat)}")
    del store
