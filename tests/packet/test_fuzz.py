"""A short run of the fuzzer (fuzz.py) in every `make test`; `make fuzz` runs a million
frames. A new seed each run, printed with any disagreement so it can be replayed:
    .venv/bin/python -m tests.packet.fuzz --frames N --seed S"""
from __future__ import annotations

import random

import pytest

from .fuzz import fuzz
from .harness import Harness

pytestmark = pytest.mark.root


def test_random_and_mutated_frames_match_the_reference_model(xdp: Harness):
    stats = fuzz(xdp, 4000, seed=random.randrange(2**32))
    assert stats.frames == 4000
    # The frames reached the deep paths, not only the malformed-drop at the top.
    for path in ("ct_new", "ct_hit", "revnat", "reject", "frag_nat", "icmp_nat", "drop_malformed"):
        assert stats.verdicts[path] > 0, (path, stats.verdicts)
