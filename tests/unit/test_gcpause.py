"""paused_gc: the collector waits during the block and resumes after it; what the block
made goes straight to the oldest generation (no young-generation walks of it later), or,
in a process that holds its long-lived heap, stays frozen until a sweep."""
from __future__ import annotations

import gc
import weakref

import pytest

from controlplane import gcpause
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


# ---- hold_long_lived: what the blocks made stays frozen until a sweep ----------------

@pytest.fixture
def held(monkeypatch):
    """A process that holds its long-lived heap (as `svcctl agent` does), the sweep due
    from the first frozen object on; released (everything unfrozen) afterwards."""
    monkeypatch.setattr(gcpause, "SWEEP_FLOOR", 0)
    gcpause.hold_long_lived()
    yield
    gcpause.hold_long_lived(False)


def _cycle() -> weakref.ref:
    a, b = Thing(), Thing()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_held_survivors_are_out_of_every_collection_until_a_sweep_frees_their_cycles(held):
    with paused_gc():
        kept = Thing()
        ref = _cycle()
    assert gcpause.holding() and gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())   # in no generation: frozen
    gc.collect()
    assert ref() is not None                               # a full collection walks none of them
    done = gcpause.sweep_if_due()
    assert done is not None and done.collected >= 2 and done.frozen > 0
    assert ref() is None
    assert not any(o is kept for o in gc.get_objects())   # the survivors are frozen again


def test_a_sweep_is_due_when_the_blocks_have_doubled_the_frozen_set(held):
    with paused_gc():
        kept = Thing()
    first = gcpause.sweep_if_due()
    assert first is not None
    assert gcpause.sweep_if_due() is None                     # nothing frozen since
    with paused_gc():
        more = [Thing() for _ in range(first.frozen // 4)]   # x1.25: not due
    assert gcpause.sweep_if_due() is None
    with paused_gc():
        more += [Thing() for _ in range(first.frozen)]        # x2.25: due
    assert gcpause.sweep_if_due() is not None
    del more, kept


def test_no_sweep_inside_a_block_nor_without_holding():
    with paused_gc():
        assert gcpause.sweep_if_due() is None
    assert not gcpause.holding() and gcpause.sweep_if_due() is None


def test_releasing_the_hold_unfreezes_everything(held):
    with paused_gc():
        kept = Thing()
    assert gc.get_freeze_count() > 0
    gcpause.hold_long_lived(False)
    assert gc.get_freeze_count() == 0 and any(o is kept for o in gc.get_objects())
