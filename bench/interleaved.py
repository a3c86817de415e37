"""New-flow rounds that measure several cases side by side (bench_algorithms.py,
bench_affinity.py).

One round: a batch through the floor (empty XDP program), a batch through the
cold-line ruler (bench_datapath.py), then a batch of new flows for every case,
starting one case later each round so that a case's place in the round (what the
cache holds) is spread over all cases. Interleaving keeps every case at the same
conntrack fill; cases measured one after the other drifted by 30 % as the table
filled. Each figure is the median over rounds; ratios pair a round with its floor.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from bench_datapath import NewFlowFrames, _quartiles, load_cold_line_program, on_one_cpu

Run = Callable[[bytes], int]   # one test-run call: frame in, kernel ns out


def ruler_summary(ruler_rounds: list[float], floor_rounds: list[float]) -> tuple[dict, str]:
    """Median ns and ratio of the cold_line ruler over rounds paired with the floor's."""
    _, med, _ = _quartiles(ruler_rounds)
    _, ratio, _ = _quartiles([x / y for x, y in zip(ruler_rounds, floor_rounds)])
    info = {"ruler_ns_median": round(med, 1), "ruler_ratio_to_floor": round(ratio, 2)}
    return info, (f"ruler, one cold cache line (no per-flow table can pay less for a "
                  f"never-seen flow here): {med:.1f} ns/pkt, {ratio:.2f}x floor")


@dataclass
class BenchDataplane:
    """A freshly loaded, unpinned dataplane, with the floor and the ruler beside it,
    this thread pinned to one CPU (test-run runs on the caller's CPU)."""
    dp: object        # controlplane.dataplane.program.Dataplane
    writer: object    # its MapWriter
    run: Run
    floor: Run
    ruler: Run
    cpu: int


@contextlib.contextmanager
def bench_dataplane(config) -> Iterator[BenchDataplane]:
    from controlplane.dataplane.program import Dataplane
    from controlplane.dataplane.testrun import TestRunner
    from controlplane.dataplane.writer import MapWriter
    with on_one_cpu() as (cpu, _floor_bpf, floor_fd):
        dp = Dataplane.load(config)
        ruler_bpf, ruler_fd = load_cold_line_program(config.ct_size)
        try:
            yield BenchDataplane(dp, MapWriter(dp), TestRunner(dp.prog_fd).duration_ns,
                                 TestRunner(floor_fd).duration_ns, TestRunner(ruler_fd).duration_ns, cpu)
        finally:
            dp.close()
            ruler_bpf.cleanup()


@dataclass
class InterleavedRounds:
    run: Run                          # the dataplane under test
    floor: Run
    ruler: Run
    cases: dict[str, NewFlowFrames]   # each case's never-seen tuples
    spare: NewFlowFrames              # tuples for the floor and the ruler (they never reach the dataplane)
    packets: int
    per_case: dict[str, list[float]] = field(init=False)
    floor_rounds: list[float] = field(default_factory=list)
    ruler_rounds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.per_case = {c: [] for c in self.cases}

    @classmethod
    def of(cls, bench: BenchDataplane, cases: dict[str, NewFlowFrames], spare: NewFlowFrames,
           packets: int) -> "InterleavedRounds":
        return cls(bench.run, bench.floor, bench.ruler, cases, spare, packets)

    @staticmethod
    def _mean(run: Run, frames: list[bytes]) -> float:
        return sum(run(f) for f in frames) / len(frames)

    def one_round(self) -> None:
        self.floor_rounds.append(self._mean(self.floor, self.spare.take(self.packets)))
        self.ruler_rounds.append(self._mean(self.ruler, self.spare.take(self.packets)))
        order = list(self.cases)
        start = len(self.floor_rounds) % len(order)
        for case in order[start:] + order[:start]:
            self.per_case[case].append(self._mean(self.run, self.cases[case].take(self.packets)))

    def summary(self, warmup: int, base: str, target: float, width: int) -> tuple[dict, list[str]]:
        """extra_info for the JSON (floor, ruler, per case: median, p25-p75, ratio to
        the floor, ns over the `base` case, target met) and the lines to print."""
        f = self.floor_rounds[warmup:]
        _, fmed, _ = _quartiles(f)
        ruler_info, ruler_line = ruler_summary(self.ruler_rounds[warmup:], f)
        base_rounds = self.per_case[base][warmup:]
        results, lines = {}, [ruler_line]
        for case, rounds in self.per_case.items():
            a = rounds[warmup:]
            p25, med, p75 = _quartiles(a)
            _, ratio, _ = _quartiles([x / y for x, y in zip(a, f)])
            _, extra, _ = _quartiles([x - y for x, y in zip(a, base_rounds)])
            results[case] = {"ns_per_pkt_median": round(med, 1), "ns_per_pkt_p25": round(p25, 1),
                             "ns_per_pkt_p75": round(p75, 1), "ratio_to_floor": round(ratio, 2),
                             f"ns_over_{base}": round(extra, 1), "target_met": ratio <= target}
            lines.append(f"{case:>{width}}: {med:7.1f} ns/pkt  {ratio:5.2f}x floor  {extra:+7.1f} ns vs {base}  "
                         f"(<= {target}x: {'met' if ratio <= target else 'not met'})")
        info = {"floor_ns_median": round(fmed, 1), "target_ratio": target, **ruler_info,
                "cases": results, "packets_per_round": self.packets}
        return info, lines
