"""SampleLines (controlplane/agent/samples.py, csrc/samples.c): a family's sample lines
kept without their values and filled in bulk; what comes out must be what formatting
each line in Python gives."""
from __future__ import annotations

import numpy as np
import pytest

from controlplane.agent.samples import SampleLines


def test_fill_writes_the_chosen_lines_in_order_with_their_values():
    heads = ['a_total{x="1"} ', 'a_total{x="é\\"q"} ', "b_total "]   # UTF-8, escaped quote
    lines = SampleLines.of([head.encode() for head in heads])
    chosen = [2, 0, 2, 1]
    values = [0, 2**64 - 1, 42, 10**19]
    got = lines.fill(np.array(chosen), np.array(values, np.uint64))
    assert got == "".join(f"{heads[i]}{v}\n" for i, v in zip(chosen, values)).encode()
    assert lines.fill(np.array([], np.uint32), np.array([], np.uint64)) == b""
    assert len(lines) == 3 and len(SampleLines.of([])) == 0


def test_a_line_beyond_the_family_or_a_missing_value_is_refused():
    lines = SampleLines.of([b"a "])
    with pytest.raises(IndexError):
        lines.fill(np.array([1]), np.array([5], np.uint64))
    with pytest.raises(ValueError):
        lines.fill(np.array([0, 0]), np.array([5], np.uint64))


def test_many_lines_match_python_formatting():
    rng = np.random.default_rng(7)
    heads = [f'svcxdp_backend_new_flows_total{{backend="10.244.{i // 256}.{i % 256}:8080"}} ' for i in range(5000)]
    chosen = rng.integers(0, len(heads), 3000)
    values = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    got = SampleLines.of([head.encode() for head in heads]).fill(chosen, values)
    assert got == "".join(f"{heads[i]}{int(v)}\n" for i, v in zip(chosen, values)).encode()
