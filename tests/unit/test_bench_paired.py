"""bench_datapath's paired measurement of the empty-table target (issue 17): the
rounds' slicing and the per-round ratio, with recording stand-ins for test-run calls
(the timing itself is the benchmark's, never asserted here)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_datapath import bound_ratio, paired_round  # noqa: E402


def _recorder(log: list, name: str, cost: int):
    def run(frame):
        log.append((name, frame))
        return cost
    return run


def test_paired_round_slices_rotate_and_every_frame_runs_once_in_order():
    log: list = []
    names = ("floor", "established", "cold_line", "new_flow")
    calls = {p: _recorder(log, p, cost) for p, cost in zip(names, (1, 2, 3, 4))}
    frames = {p: [f"{p}-{i}" for i in range(10)] for p in names}
    out = paired_round(calls, frames, n=10, slice_=3, rotation=1)
    # Each program: n calls, its own frames in order, its own durations.
    for p, cost in zip(names, (1, 2, 3, 4)):
        assert [f for q, f in log if q == p] == frames[p]
        assert out[p] == [cost] * 10
    # Slices of 3 (the last one shorter), whose first program rotates by one per slice.
    runs = []
    for q, _ in log:
        if runs and runs[-1][0] == q:
            runs[-1][1] += 1
        else:
            runs.append([q, 1])
    firsts = [runs[i][0] for i in range(0, len(runs), 4)]
    assert firsts == ["established", "cold_line", "new_flow", "floor"]
    assert [r[1] for r in runs] == [3] * 12 + [1] * 4


def test_bound_ratio_is_new_over_ruler_plus_established_minus_floor():
    means = {"floor": 100.0, "established": 250.0, "cold_line": 350.0, "new_flow": 600.0}
    assert bound_ratio(means) == 600.0 / (350.0 + 250.0 - 100.0)
