"""wrr slot expansion and the algorithm fields of ServiceState (no root)."""
from __future__ import annotations

import pytest

from controlplane.dataplane import wrr
from controlplane.dataplane.model import Backend, Frontend, ModelError, ServiceState

FE = Frontend("10.96.0.1", 80)


@pytest.mark.parametrize("weights", [[3, 1], [5, 3, 2], [1, 1, 1], [7], [100, 1, 50], [6, 4]])
def test_cycle_gives_each_backend_its_reduced_weight(weights):
    ws = wrr.reduced_weights(weights)
    c = wrr.cycle(weights)
    assert len(c) == sum(ws)
    assert [c.count(i) for i in range(len(weights))] == ws


def test_cycle_interleaves():
    assert wrr.cycle([3, 1]) == [0, 0, 1, 0]
    assert wrr.cycle([6, 4]) == wrr.cycle([3, 2])
    assert wrr.cycle([1, 1, 1]) == [0, 1, 2]


def test_long_cycles_are_scaled_to_the_cap():
    ws = wrr.reduced_weights([60000, 1, 30000], max_cycle=4096)
    assert sum(ws) == 4096 and min(ws) == 1
    assert abs(ws[0] / ws[2] - 2) < 0.01


def test_zero_weight_refused():
    with pytest.raises(ValueError):
        wrr.cycle([1, 0])


def test_slot_sequence_expands_only_for_wrr():
    bs = (Backend("10.0.0.1", 80, weight=3), Backend("10.0.0.2", 80), Backend("10.0.0.3", 80, weight=0))
    w = ServiceState(FE, bs, "wrr")
    assert [b.ip for b in w.slot_sequence()] == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"]
    assert [b.ip for b in ServiceState(FE, bs, "rr").slot_sequence()] == ["10.0.0.1", "10.0.0.2"]


def test_maglev_table_size_defaults_and_is_normalised_for_others():
    assert ServiceState(FE, (), "maglev").maglev_table_size == 16381
    assert ServiceState(FE, (), "maglev", 0, 65537).maglev_table_size == 65537
    assert ServiceState(FE, (), "rr", 0, 65537).maglev_table_size == 0
    assert ServiceState(FE, (), "rr", 0, 65537) == ServiceState(FE, (), "rr")
    with pytest.raises(ModelError, match="not prime"):
        ServiceState(FE, (), "maglev", 0, 16000)
