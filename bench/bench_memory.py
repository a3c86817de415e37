"""Memory (issue 7 scenario 5): BPF map bytes per service, backend, conntrack entry, and
the agent's resident memory at N services.

Map bytes are the kernel's own accounting, `memlock` in /proc/<pid>/fdinfo/<map fd> (what
`bpftool map show` prints), for a dataplane loaded with the production sizes. Hash and LRU
maps are preallocated, so the bytes are paid at load whatever the fill; per entry =
memlock / max_entries. A service costs one entry in `services`, `rr_state` and `svc_stats`
(per-CPU); a backend one in `backends` and (while it takes new flows) one in `slots`; a
flow one or two conntrack entries (depending on the build).

Agent RSS: a child process does what `svcctl agent` does at start (controlplane.agent:
Dataplane.open — the program compiled by a short-lived grandchild with bcc and owned by its
pins, so the agent holds no bcc/LLVM; Agent(store, node, dp).full_sync("start")) against a
store of N Services x 10 endpoints, and reports VmRSS after the load and after the sync, and
VmHWM (peak). The health server thread and the interface manager are not started. It runs
twice: a first start (pins absent: the build runs; its time is `open_s`) and a restart with
the same build (nothing compiled, the maps adopted as they are). A start is `open_s` +
`adopt_s` (Agent(): its MapWriter reads the maps) + `sync_ms` (the start sync).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

QUICK = os.environ.get("SVCXDP_BENCH_QUICK", "") not in ("", "0")
AGENT_SERVICES = 1_000 if QUICK else 10_000
SUITE = "memory"
INSTANCE = "bench-mem-agent"   # pinned under /sys/fs/bpf/svcxdp/, removed after the run


def fdinfo(fd: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


CHILD = textwrap.dedent("""
    import json, sys, time
    def status():
        d = {}
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                d[k] = int(v.split()[0]) * 1024
        return d
    from controlplane.store import SqliteStore
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.program import Dataplane
    from controlplane.agent.agent import Agent
    from controlplane.agent.desired import NodeConfig
    out = {"start": status()}
    t = time.perf_counter()
    dp = Dataplane.open(DataplaneConfig(instance=sys.argv[2]))
    out["open_s"] = time.perf_counter() - t
    out["built"] = dp.built
    out["bcc_loaded"] = "bcc" in sys.modules
    out["after_load"] = status()
    store = SqliteStore(sys.argv[1])
    t = time.perf_counter()
    agent = Agent(store, NodeConfig("node1"), dp)   # its MapWriter adopts the maps
    out["adopt_s"] = time.perf_counter() - t
    rep = agent.full_sync("start")
    out["after_sync"] = status()
    out["frontends"] = len(agent.writer.installed())
    out["sync_ms"] = rep.took_ms
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def root():
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc is not importable (use the project venv)")


def test_map_memory(benchmark, root):
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.program import MAP_NAMES, Dataplane
    benchmark.group = "memory"
    dp = benchmark.pedantic(lambda: Dataplane.load(DataplaneConfig(instance="bench-mem", pin=False)),
                            rounds=1, iterations=1)
    try:
        maps = {}
        for name in MAP_NAMES:
            info = fdinfo(dp.raw_table(name).map_fd)
            maps[name] = {"type": int(info["map_type"]), "max_entries": int(info["max_entries"]),
                          "key_size": int(info["key_size"]), "value_size": int(info["value_size"]),
                          "memlock": int(info["memlock"]), "map_id": int(info.get("map_id", 0))}
            maps[name]["bytes_per_entry"] = maps[name]["memlock"] / maps[name]["max_entries"]
        per = {name: m["bytes_per_entry"] for name, m in maps.items()}
        ncpu = os.cpu_count()
        info = {
            "suite": SUITE, "kind": "maps", "maps": maps, "cpus": ncpu,
            "total_memlock": sum(m["memlock"] for m in maps.values()),
            "per_service": per["services"] + per["rr_state"] + per["svc_stats"],
            "per_backend": sum(per.get(n, 0) for n in ("backends", "slots", "rev_nat", "backend_conns")),
            "per_ct_entry": per["conntrack"],
            "maglev": next((n for n in maps if "maglev" in n), None),
        }
    finally:
        dp.close()
    benchmark.extra_info.update(info)
    print(f"\n  maps: {info['total_memlock'] / 2**20:.1f} MiB preallocated; per service "
          f"{info['per_service']:.0f} B, per backend {info['per_backend']:.0f} B, per conntrack "
          f"entry {info['per_ct_entry']:.0f} B")


def test_agent_rss(benchmark, root, tmp_path):
    from bench_control import populate
    benchmark.group = "memory"
    store = populate(tmp_path, AGENT_SERVICES)
    store.close()
    env = dict(os.environ)

    def child():
        r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "store.db"), INSTANCE], env=env,
                           capture_output=True, text=True, timeout=600, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.program import reset
    config = DataplaneConfig(instance=INSTANCE)
    reset(config)
    try:
        out = benchmark.pedantic(child, rounds=1, iterations=1)   # first start: built
        restart = child()                                          # same build: adopted
    finally:
        reset(config)
    benchmark.extra_info.update({"suite": SUITE, "kind": "agent", "services": AGENT_SERVICES,
                                 "endpoints": 10, **out, "restart": restart})
    print(f"\n  agent at {AGENT_SERVICES} services: RSS {out['after_sync']['VmRSS'] / 2**20:.0f} MiB "
          f"(after load {out['after_load']['VmRSS'] / 2**20:.0f} MiB, peak {out['after_sync']['VmHWM'] / 2**20:.0f} MiB); "
          f"open {out['open_s']:.2f} s (built: {out['built']}), start sync {out['sync_ms'] / 1e3:.2f} s; "
          f"restart: open {restart['open_s']:.3f} s (built: {restart['built']}), sync "
          f"{restart['sync_ms'] / 1e3:.2f} s, RSS {restart['after_sync']['VmRSS'] / 2**20:.0f} MiB")
