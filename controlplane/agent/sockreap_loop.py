"""The agent's socket reaper thread (controlplane/dataplane/sockreaper.py): connected
UDP sockets translated by the socket hooks to a backend that left its service are
aborted right after the sync that took the backend out, looking only at sockets
connected to the addresses that left; a whole sweep runs at start (backends removed
while no agent ran) and every `sweep_every_s` (`--socket-reap-interval`; None: never
again), for a connect() that read the slots a moment before the sync wrote them and
recorded its socket after the reaper looked. (It swept every second before: with
10,000 connected UDP sockets in the namespace a whole sweep took 36 ms of CPU, 3.6 % of
a core all the time; one limited to the addresses that left, 14 ms, the dump itself.)"""
from __future__ import annotations

import logging
import threading
import time

from controlplane.dataplane.sockreaper import reap

Address = tuple[str, int]   # a backend's (ip, port)


class SocketReaper:
    def __init__(self, dp, log: logging.Logger, sweep_every_s: float | None = 30.0) -> None:
        self.dp = dp
        self.log = log
        self.sweep_every_s = sweep_every_s
        self._pending: set[Address] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def left(self, addresses: set[Address]) -> None:
        """UDP backend addresses a sync took out of some frontend (Agent.udp_backends_left;
        called from the agent's thread): their sockets are looked at next."""
        with self._lock:
            self._pending |= addresses
        self._wake.set()

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Until `stop` is set: a whole sweep now and every sweep_every_s, and the
        addresses handed to left() as soon as they come."""
        self._reap(None)
        every = self.sweep_every_s
        next_sweep = time.monotonic() + every if every else float("inf")
        while not stop.is_set():
            if self._wake.wait(poll_s):
                self._wake.clear()
                with self._lock:
                    only, self._pending = self._pending, set()
                self._reap(only)
            if time.monotonic() >= next_sweep:
                self._reap(None)
                next_sweep = time.monotonic() + every

    def _reap(self, only: set[Address] | None) -> None:
        try:
            n = reap(self.dp, only)
        except Exception:  # keep the agent serving; the next sweep tries again
            self.log.exception("socket reaper failed")
            return
        if n:
            self.log.info("aborted %d connected UDP socket(s) of removed backends", n)
