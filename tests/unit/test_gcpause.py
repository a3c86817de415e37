"""paused_gc: the collector waits during the block and resumes after it; what the block
made goes straight to the oldest generation (no young-generation walks of it later)."""
from __future__ import annotations

import gc
import weakref

from controlplane.gcpause import paused_gc


class Thing:
    pass


def test_survivors_of_a_block_land_in_the_oldest_generation_and_the_collector_resumes():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():              # nested: still paused at the inner end
            made = [Thing() for _ in range(10)]
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(t) in oldest for t in made) and id(made) in oldest


def test_cycles_made_in_a_block_are_still_collected():
    with paused_gc():
        a, b = Thing(), Thing()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
    assert ref() is not None          # a cycle: reference counting alone cannot free it
    gc.collect()
    assert ref() is None


def test_a_collector_disabled_by_the_caller_stays_disabled():
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
