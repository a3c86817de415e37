"""The agent's idle-flow GC thread: a bounded sweep of the conntrack tables every few
seconds (controlplane/dataplane/ctgc.py, bpf/ctgc.h), so dead flows leave the LRU tables
before new flows would have to evict them."""
from __future__ import annotations

import logging
import threading

from controlplane.dataplane.ctgc import ConntrackGC


def gc_loop(gc: ConntrackGC, stop: threading.Event, log: logging.Logger, every_s: float) -> None:
    """Sweep a slice of each table every `every_s` seconds until `stop` is set; a sweep
    that fails is logged and the next one tried (the dataplane keeps serving: without the
    GC the LRU evicts, as before)."""
    while not stop.wait(every_s):
        try:
            s = gc.sweep()
        except Exception:  # keep the agent serving
            log.exception("conntrack GC sweep failed")
            continue
        if s.total_deleted:
            log.debug("conntrack GC: %d entries past their timeout removed (%s scanned, %.3f s)",
                      s.total_deleted, sum(s.scanned.values()), s.seconds)
