"""Pause Python's cyclic garbage collector around bulk work.

Decoding thousands of objects, or turning them into desired state and map entries,
allocates millions of containers, none of them garbage; the collector's generation scans
then cost more than the work (measured: 10,000 Services with their EndpointSlices read in
1.8 s with the collector running, 0.8 s without; desired state for them 0.83 s vs 0.29 s,
the map writer's sync 1.73 s vs 1.24 s). Reference counting still frees everything as
usual; only cycle detection waits until the block ends. Used by every layer (store,
controllers, dataplane writer, agent), so it sits at the package root. When the block
ends, what it made is moved into the oldest generation at once (gc.freeze + unfreeze):
otherwise the next collections walk every survivor twice on its way there.

A long-running process with a large heap of long-lived objects (the agent: 10,000
services' views, states and map records, ~500,000 containers) asks for more with
`hold_long_lived()`: what its blocks made then stays frozen, out of every collection,
until a sweep. Why: the oldest generation is collected whole, and CPython decides when
by counting only what reached it through younger collections, not what a block moved in.
Measured in a 3-node etcd lab at 10,000 x 10: each agent ran a full collection about once
a second while changes arrived (the watch decodes outside any block), each 0.2-0.6 s
over every object, freeing none; one of them falling into the timed changes is the likely
cause of the 546 ms p99 of a single endpoint change in one bench run. Frozen objects are
still freed by reference counting; only a cycle among them waits for the next sweep
(`sweep_if_due`: when the blocks have doubled the frozen set since the last one, called
by the process where a pause costs nothing).
"""
from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass

_lock = threading.Lock()
_depth = 0
_was_enabled = False
_hold = False          # hold_long_lived(): survivors stay frozen until a sweep
_swept_at = 0          # frozen objects after the last sweep (0: none yet)
_grown = 0             # containers the held blocks have frozen since (net of those freed)


class _Paused:
    """The context manager paused_gc() returns: one shared, stateless object (the state
    is the module's), entered and left without a generator; the agent enters it once
    per service (10,000 times in a full sync), inside an outer block, where the
    @contextmanager form cost ~1.2 us per entry (a new generator each time), this ~0.2 us."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _was_enabled
        with _lock:
            if _depth == 0:
                _was_enabled = gc.isenabled()
                gc.disable()
            _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth, _grown
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                # What the block made survives it: moved straight into the oldest
                # generation (two list splices), not left young for the next
                # collections to traverse one by one (0.1-0.2 s per 100,000-endpoint
                # stage; ~0.6 s of a 10,000-service store-to-maps sync).
                # Cycles among them are still found by the next full collection
                # (held: by the next sweep).
                if _hold:
                    # The young generation's count is the containers made and not yet
                    # freed since it was last collected, here since the block began:
                    # what this freeze adds, known in O(1) (counting the frozen set
                    # walks it: ~36 ms at 450,000 objects).
                    _grown += gc.get_count()[0]
                gc.freeze()
                if not _hold:
                    gc.unfreeze()
                gc.enable()


_PAUSED = _Paused()


def paused_gc() -> _Paused:
    """Nestable and thread-safe: the collector resumes when the outermost block ends (and
    only if it was enabled when the first block began). Use: `with paused_gc(): ...`"""
    return _PAUSED


def pause() -> None:
    """paused_gc()'s start, for a block that begins and ends in different calls: a store
    transaction pauses the collector in its __enter__ and resumes it in its __exit__
    (applying 10,000 Services and their slices in one transaction: 2.3-3.2 s paused,
    4.4-5.0 s not). Every pause() needs its one resume()."""
    _PAUSED.__enter__()


def resume() -> None:
    """The end of the block pause() began."""
    _PAUSED.__exit__(None, None, None)


# A sweep is due when the frozen set has more than doubled since the last one (plus this
# many objects, so that a small heap is not swept for every few objects): its cost, one
# walk of every object, is then amortised over as many objects as it walks.
SWEEP_FLOOR = 10_000


@dataclass(frozen=True)
class Sweep:
    """One sweep: how long it took, the unreachable objects it found, the frozen set after."""
    seconds: float
    collected: int
    frozen: int


def hold_long_lived(on: bool = True) -> None:
    """From now on (or, with False, no longer) what a paused block made stays frozen: the
    collector never walks it again until a sweep (see the module's text). For a process's
    main, not a library: it is process-wide. Turning it off unfreezes everything."""
    global _hold, _swept_at, _grown
    with _lock:
        if _hold and not on:
            gc.unfreeze()
        _hold = on
        _swept_at = _grown = 0


def holding() -> bool:
    return _hold


def sweep_if_due() -> Sweep | None:
    """While holding: a full collection of everything, frozen or not, if the held blocks
    have more than doubled the frozen set since the last sweep (the first: once they have
    frozen more than SWEEP_FLOOR objects); then everything that survives is frozen again.
    Call it where a pause of a full collection costs nothing (the agent: when no change
    has come for a poll interval); not due, it costs a comparison. Never inside a paused
    block. None when nothing was done. (What the blocks froze is counted net of what
    they freed, as they went; objects that survived young collections outside any block
    are frozen with them uncounted: a heap that grew only that way is not swept for it.)"""
    global _swept_at, _grown
    with _lock:
        if not _hold or _depth or _grown <= _swept_at + SWEEP_FLOOR:
            return None
        _grown = 0
    # (the collection outside the lock: a finalizer it runs may enter paused_gc itself)
    start = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    with _lock:
        _swept_at = frozen
    return Sweep(time.perf_counter() - start, collected, frozen)
