#!/usr/bin/env python3
"""`make bench`: every scenario of issue 7 in one run, one JSON, one report.

    .venv/bin/python bench/run.py [--quick] [--only 1,2,...]

Runs the pytest-benchmark suites one scenario at a time (a progress line each), merges
their JSON into bench/results/latest.json (machine info: kernel, CPU, bcc, Python; plus
iptables and trafgen versions), and writes bench/results/report.md, the PNG plots and the
control-plane profile. --quick (a smoke run at reduced sizes, not a short one: ~11 min
on the 2-vCPU development host, most of it compiling a program per configuration) writes
under bench/results/quick/ instead, so a smoke run never overwrites the last full report;
its report.md names the scenarios that failed. Namespaces named svcxdp-bench-*
(only this bench creates them) are swept before and after the run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from controlplane.progress import Progress, duration, eta  # noqa: E402

# (number, label, pytest args). Scenarios 2 and 3 share one suite file.
SCENARIOS = [
    (1, "BPF-only per-packet cost (test-run)", ["bench/bench_datapath.py"]),
    (2, "UDP through the kernel, XDP vs iptables", ["bench/bench_stack.py", "-k", "udp"]),
    (3, "TCP connections through a ClusterIP, XDP vs iptables", ["bench/bench_stack.py", "-k", "tcp"]),
    (7, "TCP connections from a node-local client: socket hooks vs XDP vs iptables", ["bench/bench_socklb.py"]),
    (4, "control plane: store to maps vs iptables-restore", ["bench/bench_control.py"]),
    (5, "memory: BPF maps and agent RSS", ["bench/bench_memory.py"]),
    (8, "NodePort from outside to a backend on the other node, XDP vs iptables",
     ["bench/bench_nodeport.py"]),
]
EXTRA = [("store and Maglev suites", ["bench/bench_store.py", "bench/bench_maglev.py"]),
         ("new flow per algorithm and with ClientIP affinity (test-run)",
          ["bench/bench_algorithms.py", "bench/bench_affinity.py"]),
         ("apply -> first packet of a new endpoint, through the lab agent", ["bench/bench_agent_latency.py"]),
         ("cluster DNS: svcctl dns vs dnsmasq (dnsperf), apply -> resolvable", ["bench/bench_dns.py"]),
         ("CPU of an idle 2-node lab (agents and kubelet)", ["bench/bench_idle.py"]),
         ("3-node lab on etcd (3 members) vs SQLite: 10,000 x 10 and one change to every node's maps",
          ["bench/bench_etcd.py"]),
         ("a Prometheus scrape of the agent's /metrics at 1 to 10,000 services", ["bench/bench_scrape.py"])]


def _version(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = (r.stdout or r.stderr).strip().splitlines()
    return line[0] if line else None


def _previous_durations(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text()).get("svcxdp", {}).get("durations_s", {})
    except (OSError, ValueError):
        return {}


def _current_test(log_path: Path) -> str:
    """The test pytest -v last named in the log (its node id, shortened)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    found = re.findall(r"^(bench/\S+::\S+)", tail, re.M)
    return found[-1].removeprefix("bench/") if found else ""


def _run_showing_progress(cmd: list[str], env: dict, log, log_path: Path, progress: Progress, what: str,
                          expected: float | None, t0: float) -> int:
    """Run one scenario's pytest; on a terminal a live line shows the step (the test
    running), the time spent and the estimate left; plain lines only when the step changes."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            log.flush()
            elapsed = time.monotonic() - t0
            step = _current_test(log_path)
            progress.update(f"{what}: {step or 'starting'} ({duration(elapsed)}"
                            + (f", {eta(elapsed, expected)})" if expected else ")"))
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run at reduced sizes (~11 min), written under bench/results/quick/")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers (default: all)")
    ap.add_argument("--no-extra", action="store_true",
                    help="skip the extra suites (store, Maglev, per algorithm, affinity, agent latency)")
    args = ap.parse_args(argv)
    only = {int(x) for x in args.only.split(",") if x.strip()}
    out_dir = HERE / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "bench.log"
    env = dict(os.environ)
    if args.quick:
        env["SVCXDP_BENCH_QUICK"] = "1"

    import netlab
    stale = netlab.sweep_stale()
    if stale:
        print(f"[bench] removed stale namespaces from an earlier run: {', '.join(stale)}", flush=True)

    runs = [(n, label, a) for n, label, a in SCENARIOS if not only or n in only]
    if not args.quick and not only and not args.no_extra:
        runs += [(None, label, a) for label, a in EXTRA]
    merged: dict | None = None
    durations: dict[str, float] = {}
    failed: list[str] = []
    start = time.monotonic()
    progress = Progress(sys.stdout)
    tags = [f"{n}" if n else f"extra {k - len(SCENARIOS)}" for k, (n, _, _) in enumerate(runs, 1)]
    previous = _previous_durations(out_dir / "latest.json")   # the estimates: the last run's times
    with tempfile.TemporaryDirectory(prefix="svcxdp-bench-json-") as tmp, open(log_path, "w") as log:
        for k, (n, label, pytest_args) in enumerate(runs, 1):
            tag = f"{n}" if n else f"extra {k - len(SCENARIOS)}"
            left = sum(previous.get(t, 0) for t in tags[k - 1:])
            progress.line(f"[bench {k}/{len(runs)}] scenario {tag}: {label} ..."
                          + (f" (last run: {duration(previous[tag])}; the rest ~{duration(left)})" if tag in previous else ""))
            jpath = Path(tmp) / f"{k}.json"
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "pytest", *pytest_args, "--benchmark-only", "-v", "-s",
                   "-p", "no:cacheprovider", f"--benchmark-json={jpath}"]
            log.write(f"\n==== {' '.join(cmd)}\n")
            log.flush()
            try:
                rc = _run_showing_progress(cmd, env, log, log_path, progress,
                                           f"[bench {k}/{len(runs)}] scenario {tag}", previous.get(tag), t0)
            finally:
                netlab.sweep_stale()
            dt = time.monotonic() - t0
            durations[tag] = dt
            status = "ok" if rc == 0 else f"FAILED (pytest exit {rc}; see {log_path})"
            if rc != 0:
                failed.append(tag)
            progress.line(f"[bench {k}/{len(runs)}] scenario {tag}: {status} in {dt:.0f} s "
                          f"(total {time.monotonic() - start:.0f} s)")
            if jpath.exists():
                data = json.loads(jpath.read_text())
                if merged is None:
                    merged = data
                else:
                    merged["benchmarks"].extend(data["benchmarks"])
    if merged is None:
        print("[bench] no results", file=sys.stderr)
        return 1
    merged["svcxdp"] = {"quick": args.quick, "durations_s": durations, "failed": failed,
                        "iptables": _version(["iptables", "--version"]),
                        "trafgen": _version(["trafgen", "-v"])}
    jpath = out_dir / "latest.json"
    jpath.write_text(json.dumps(merged, indent=1))
    import report
    md = report.write_all(jpath, out_dir)
    print(f"[bench] wrote {jpath.relative_to(ROOT)}, {md.relative_to(ROOT)} and plots in "
          f"{time.monotonic() - start:.0f} s"
          + (f"; FAILED: scenario {', '.join(failed)} (see {log_path.relative_to(ROOT)})" if failed else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
