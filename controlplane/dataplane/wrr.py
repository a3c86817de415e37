"""Weighted round robin as slots: the writer expands a service's weights into one
cycle of slots and the datapath round-robins over them (exact and O(1) per packet).

The cycle interleaves backends in stride order: backend i's k-th turn sits at
virtual time (k + 1/2) / w_i, ties to the earlier backend. Over one cycle each
backend appears exactly w_i / g times (g = gcd of the weights), spread out rather
than bunched (3:1 -> A A B A, like nginx's smooth WRR).
"""
from __future__ import annotations

from fractions import Fraction
from math import gcd
from typing import Sequence

# Longest cycle written for one service. Weights whose reduced sum exceeds it are
# scaled down to fit (largest remainder, every backend keeps at least one turn):
# proportions are then approximate, to within one turn in MAX_CYCLE.
MAX_CYCLE = 4096


def reduced_weights(weights: Sequence[int], max_cycle: int = MAX_CYCLE) -> list[int]:
    """Weights divided by their gcd, scaled down if their sum exceeds max_cycle."""
    if not weights or any(w <= 0 for w in weights):
        raise ValueError(f"wrr weights must be positive, got {list(weights)}")
    g = 0
    for w in weights:
        g = gcd(g, w)
    ws = [w // g for w in weights]
    total = sum(ws)
    cap = max(max_cycle, len(ws))
    if total <= cap:
        return ws
    exact = [Fraction(w * cap, total) for w in ws]
    scaled = [max(1, int(x)) for x in exact]
    # Hand the remaining turns to the largest remainders, earlier backend first.
    spare = cap - sum(scaled)
    order = sorted(range(len(ws)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in order[:max(spare, 0)]:
        scaled[i] += 1
    return scaled


def cycle(weights: Sequence[int], max_cycle: int = MAX_CYCLE) -> list[int]:
    """Indices into `weights`, one per slot of the cycle, in stride order."""
    ws = reduced_weights(weights, max_cycle)
    turns = [(Fraction(2 * k + 1, 2 * w), i) for i, w in enumerate(ws) for k in range(w)]
    turns.sort()
    return [i for _, i in turns]
