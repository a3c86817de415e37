"""Emptying the maps after N services x 10 endpoints: one delete() per frontend (the
sync before delete_many) beside MapWriter.sync([]) (delete_many: batched per map),
interleaved in one run. Root; loads its own unpinned dataplane.
Usage: python -m bench.delete_compare [rounds]"""
from __future__ import annotations

import statistics
import sys
import time

from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import MapWriter
from controlplane.gcpause import paused_gc


def states(n: int) -> list[ServiceState]:
    return [ServiceState(Frontend(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}", 80),
                         tuple(Backend(f"10.{128 + (i * 10 + j) // 65536}.{(i * 10 + j) // 256 % 256}."
                                       f"{(i * 10 + j) % 256}", 8080) for j in range(10)))
            for i in range(n)]


def one_by_one(w: MapWriter) -> None:
    with paused_gc():
        for fe in list(w.installed()):
            w.delete(fe)
    w.sync([])


def batched(w: MapWriter) -> None:
    w.sync([])


def main(rounds: int) -> None:
    dp = Dataplane.load(DataplaneConfig(instance="svcxdp-bulkdel-bench", pin=False))
    try:
        for n in (1000, 10000):
            want = states(n)
            times: dict[str, list[float]] = {"one_by_one": [], "batched": []}
            loads = []
            for _ in range(rounds):
                for name, fn in (("one_by_one", one_by_one), ("batched", batched)):
                    w = MapWriter(dp)
                    w.sync(want)
                    loads.append(open("/proc/loadavg").read().split()[0])
                    t0 = time.perf_counter()
                    fn(w)
                    times[name].append(time.perf_counter() - t0)
                    assert not MapWriter(dp).installed()
            for name, xs in times.items():
                print(f"{n} x 10 {name:10s} median {statistics.median(xs):.3f} s "
                      f"(min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})")
            print(f"{n} x 10 load 1-min at each round: {' '.join(loads)}", flush=True)
    finally:
        dp.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
