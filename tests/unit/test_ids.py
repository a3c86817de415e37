"""IdAllocator against a model: a set of live ids.

Whatever the order of claims (adoption reads the maps in hash order), allocations
and releases, an allocated id is never live, `available` is exactly what is left,
and the allocator refuses only when every id is live. Released ids are reused only
after every fresh one, oldest first."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controlplane.dataplane.ids import CapacityError, IdAllocator

LIMIT = 12  # ids 1..11: small, so sequences reach "full" and reuse often


class AllocatorModel(RuleBasedStateMachine):
    @initialize(claimed=st.lists(st.integers(1, LIMIT - 1), unique=True))
    def adopt(self, claimed):
        """A restarted writer claims what the maps hold, in the maps' order."""
        self.alloc = IdAllocator(LIMIT, "test")
        self.live: set[int] = set()
        self.released: list[int] = []          # model of the reuse order
        for i in claimed:
            self.alloc.claim(i)
            self.live.add(i)
        # ids never seen: above every claimed one
        self.fresh = list(range(max(claimed, default=0) + 1, LIMIT))
        self.released = sorted(set(range(1, LIMIT)) - self.live - set(self.fresh))

    @rule()
    def allocate(self):
        if len(self.live) == LIMIT - 1:
            with pytest.raises(CapacityError):
                self.alloc.allocate()
            return
        ident = self.alloc.allocate()
        assert ident not in self.live, f"id {ident} handed out while live"
        assert 0 < ident < LIMIT
        # fresh ids first, then freed ones oldest-first
        want = self.fresh.pop(0) if self.fresh else self.released.pop(0)
        assert ident == want
        self.live.add(ident)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data):
        ident = data.draw(st.sampled_from(sorted(self.live)))
        self.alloc.release(ident)
        self.live.discard(ident)
        self.released.append(ident)

    @rule(ident=st.integers(1, LIMIT - 1))
    def release_unknown_is_ignored(self, ident):
        if ident not in self.live:
            self.alloc.release(ident)

    @invariant()
    def capacity_is_exact(self):
        assert self.alloc.available == LIMIT - 1 - len(self.live)
        for i in range(1, LIMIT):
            assert self.alloc.in_use(i) == (i in self.live)


TestAllocatorModel = AllocatorModel.TestCase
TestAllocatorModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(1, LIMIT))), st.integers(0, LIMIT - 1))
def test_claims_in_any_order_leave_exactly_the_rest(order, n):
    """Claim any n ids in any order: the allocator then hands out exactly the
    other ids, each once, and refuses after that."""
    claimed = order[:n]
    a = IdAllocator(LIMIT, "test")
    for i in claimed:
        a.claim(i)
    assert a.available == LIMIT - 1 - n
    got = [a.allocate() for _ in range(LIMIT - 1 - n)]
    assert sorted(got) == sorted(set(range(1, LIMIT)) - set(claimed))
    assert a.available == 0
    with pytest.raises(CapacityError):
        a.allocate()


def test_the_bug_of_issue_14():
    """Adoption in hash order: claim 5, then 3. The old allocator put 3 on the
    free list with 5's claim and handed it out again once fresh ids ran out."""
    a = IdAllocator(7, "test")
    a.claim(5)
    a.claim(3)
    assert a.available == 4
    assert sorted(a.allocate() for _ in range(4)) == [1, 2, 4, 6]
    with pytest.raises(CapacityError):
        a.allocate()


def test_claims_outside_the_range_are_refused():
    a = IdAllocator(8, "backends map")
    for bad in (0, 8, -1):
        with pytest.raises(ValueError, match="backends map"):
            a.claim(bad)


def test_large_adoption_is_linear():
    """65,536 ids claimed in random order: the free list is filled once and
    emptied by the claims (a list scan per claim would take minutes)."""
    ids = list(range(1, 65537))
    random.Random(1).shuffle(ids)
    a = IdAllocator(65537, "test")
    for i in ids[:-10]:
        a.claim(i)
    assert sorted(a.allocate() for _ in range(10)) == sorted(ids[-10:])
    assert a.available == 0


def test_allocate_many_hands_out_what_allocate_would():
    a, b = IdAllocator(6, "x"), IdAllocator(6, "x")
    for alloc in (a, b):
        alloc.allocate(), alloc.allocate()
        alloc.release(1)
    assert a.allocate_many(4) == [b.allocate() for _ in range(4)] == [3, 4, 5, 1]
    assert a.available == b.available == 0
    with pytest.raises(CapacityError):
        a.allocate_many(1)


def test_an_unbounded_allocator_costs_what_it_holds_not_its_limit():
    """A limit far above the ids in use (a large map's, or 1 << 32 as readout.py once
    passed): the bitmap grows with the ids taken; a 4 GiB bytearray per call made a
    scrape take 20 s."""
    import tracemalloc
    tracemalloc.start()
    try:
        ids = IdAllocator(1 << 32, "services")
        for ident in (3, 70_000, 5):
            ids.claim(ident)
        fresh = ids.allocate_many(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert fresh == list(range(70_001, 70_011))
    assert ids.in_use(70_000) and not ids.in_use(4) and not ids.in_use(1 << 31)
    assert ids.available == (1 << 32) - 1 - 13


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(1, LIMIT))), st.integers(0, LIMIT - 1), st.integers(0, 3))
def test_claim_many_is_claim_of_each(order, n, allocated):
    """claim_many (adoption's bulk claim) leaves the allocator exactly as claim() of
    each id would, after some ids were already handed out: same count, same ids
    handed out next, in the same order."""
    a, b = IdAllocator(LIMIT, "test"), IdAllocator(LIMIT, "test")
    for alloc in (a, b):
        for _ in range(allocated):
            alloc.allocate()
    claimed = [i for i in order[:n] if i > allocated]
    for i in claimed:
        a.claim(i)
    b.claim_many(claimed)
    assert a.available == b.available
    assert [a.in_use(i) for i in range(LIMIT)] == [b.in_use(i) for i in range(LIMIT)]
    assert [a.allocate() for _ in range(a.available)] == [b.allocate() for _ in range(b.available)]


def test_claim_many_refuses_ids_outside_the_range():
    for bad in ([0, 3], [3, 8]):
        with pytest.raises(ValueError, match="backends map"):
            IdAllocator(8, "backends map").claim_many(bad)
