"""Doubling delays between retries: the agent's and the lab kubelet's loops, which must
outlive any store outage (logged once, retried until the store answers)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Doubling delays between retries, from `first_s` up to `max_s`."""
    first_s: float = 0.1
    max_s: float = 5.0
    failures: int = 0

    def next(self) -> float:
        self.failures += 1
        return min(self.max_s, self.first_s * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0
