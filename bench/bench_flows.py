#!/usr/bin/env python3
"""`svcctl get flows` on a full conntrack table, timed as whole processes (indicative).

    .venv/bin/python bench/bench_flows.py [--entries N]

Loads a dataplane of its own (instance bench-flows-<pid>, default map sizes: conntrack
1,048,576 entries), fills `conntrack` with N forward entries of 1,000 services'
frontends (batch updates from user space; the datapath's layout, from the map's BTF),
and times `svcctl get flows --node ...` with its output sent to /dev/null: the whole
table, -o json, and filtered to one client. Removes its pins afterwards.
"""
from __future__ import annotations

import argparse
import ctypes as ct
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.dataplane.affinity_maps import coarse_now_ns  # noqa: E402
from controlplane.dataplane.config import DataplaneConfig  # noqa: E402
from controlplane.dataplane.flows import ip_be32, port_be16  # noqa: E402
from controlplane.dataplane.libbpf import ffi, lib  # noqa: E402
from controlplane.dataplane.model import Backend, Frontend, ServiceState  # noqa: E402
from controlplane.dataplane.program import Dataplane, reset  # noqa: E402
from controlplane.dataplane.writer import MapWriter  # noqa: E402

SERVICES = 1000


def fill(dp: Dataplane, writer: MapWriter, n: int) -> None:
    table = dp.table("conntrack")
    fes = [Frontend(f"10.96.{i // 250}.{1 + i % 250}", 80) for i in range(SERVICES)]
    for i, fe in enumerate(fes):
        writer.upsert(ServiceState(fe, (Backend(f"10.244.{i // 250}.{1 + i % 250}", 8080),), "random"))
    ids = [(writer.svc_id(fe), writer.backend_id(fe, f"10.244.{i // 250}.{1 + i % 250}", 8080))
           for i, fe in enumerate(fes)]
    now = coarse_now_ns()
    batch = 65536
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    for start in range(0, n, batch):
        m = min(batch, n - start)
        keys, values = (table.Key * m)(), (table.Leaf * m)()
        for j in range(m):
            i = start + j
            s = i % SERVICES
            k, v = keys[j], values[j]
            k.src = ip_be32(f"10.{1 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}")
            k.dst = ip_be32(fes[s].vip)
            k.sport, k.dport, k.proto, k.dir = port_be16(1024 + i % 60000), port_be16(80), 6, 0
            v.last_seen = now
            v.nat_ip = ip_be32(f"10.244.{s // 250}.{1 + s % 250}")
            v.nat_port = port_be16(8080)
            v.svc_id, v.backend_id = ids[s]
        count = ffi.new("uint32_t *", m)
        rc = lib().bpf_map_update_batch(table.map_fd, ffi.cast("void *", ct.addressof(keys)),
                                        ffi.cast("void *", ct.addressof(values)), count, opts)
        if rc != 0:
            raise OSError(-rc, f"bpf_map_update_batch: {os.strerror(-rc)}")


def timed(argv: list[str], state_dir: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one svcctl process, output to /dev/null. Measured
    by /usr/bin/time: a child forked from this (large) process would report this
    process's RSS as its own peak."""
    with tempfile.NamedTemporaryFile("r", prefix="svcxdp-bench-flows-") as report:
        subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", str(ROOT / ".venv/bin/svcctl"),
                        *argv, "--state-dir", state_dir], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall, kib = report.read().split()[-2:]
    return float(wall), int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    config = DataplaneConfig(instance=f"bench-flows-{os.getpid()}")
    dp = Dataplane.load(config)
    try:
        fill(dp, MapWriter(dp), args.entries)
        with tempfile.TemporaryDirectory(prefix="svcxdp-bench-flows-") as state_dir:
            node = config.instance
            for label, argv in (("whole table", ["get", "flows", "--node", node]),
                                ("whole table, -o json", ["get", "flows", "--node", node, "-o", "json"]),
                                ("one client", ["get", "flows", "--node", node, "--client", "10.1.0.7"]),
                                ("trace of one flow", ["trace", "--node", node, "10.1.0.7:1031", "10.96.0.8:80"])):
                wall, rss = timed(argv, state_dir)
                print(f"{label:<24} {wall:6.2f} s  peak RSS {rss:5.0f} MiB  ({args.entries:,} entries)")
    finally:
        dp.close()
        reset(config)


if __name__ == "__main__":
    main()
