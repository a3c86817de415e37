"""The writer's flag that makes the datapath look a missed service up again
(controlplane/dataplane/replacing.py, bpf/lb.h svc_read): set before service entries
are replaced, cleared only after a grace period with no replacement under way.

The grace periods here are the test's own (a semaphore each), so what happens before
and after one is certain; test_map_reuse.py races real lookups with the real one."""
from __future__ import annotations

import os
import threading

import pytest

from controlplane.dataplane.libbpf import u32_array_map_create, u32_array_read, u32_update
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.replacing import ReplacingFlag, grace_period

from .harness import Harness

pytestmark = pytest.mark.root


class Graces:
    """A grace period that lasts until the test ends it: `end()` lets one through."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self._ends = threading.Semaphore(0)
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.started.release()
        assert self._ends.acquire(timeout=10), "a grace period nobody ended"

    def end(self) -> None:
        assert self.started.acquire(timeout=10), "no grace period began"
        self._ends.release()


@pytest.fixture
def flag_map():
    fd = u32_array_map_create("svcxdp_t_repl", 1)
    yield fd
    os.close(fd)


def is_set(fd: int) -> bool:
    return u32_array_read(fd, 1)[0] != 0


def test_set_for_the_window_and_cleared_a_grace_period_after(flag_map):
    graces = Graces()
    flag = ReplacingFlag(flag_map, graces)
    assert not is_set(flag_map)
    with flag.raised():
        assert is_set(flag_map)
    assert is_set(flag_map)          # a lookup that overlapped may still be running
    graces.end()
    flag.close()
    assert not is_set(flag_map) and graces.count == 1


def test_a_window_during_the_grace_period_needs_one_after_it(flag_map):
    graces = Graces()
    flag = ReplacingFlag(flag_map, graces)
    with flag.raised():
        pass
    assert graces.started.acquire(timeout=10)      # the clearer waits in its grace period
    graces.started.release()
    with flag.raised():              # begins and ends inside that grace period
        pass
    graces.end()                     # the first ends: not enough for the second window
    graces.end()
    flag.close()
    assert not is_set(flag_map) and graces.count == 2


def test_a_window_open_across_the_grace_period_keeps_the_flag(flag_map):
    graces = Graces()
    flag = ReplacingFlag(flag_map, graces)
    with flag.raised():
        pass
    with flag.raised():
        graces.end()                 # ends while the second window is still open
        threading.Event().wait(0.05)
        assert is_set(flag_map)
    graces.end()                     # the grace period after the second window
    flag.close()
    assert not is_set(flag_map)


def test_a_flag_left_set_by_an_earlier_writer_is_cleared(flag_map):
    u32_update(flag_map, 0, 1)       # an agent stopped before its clear
    graces = Graces()
    flag = ReplacingFlag(flag_map, graces)
    graces.end()
    flag.close()
    assert not is_set(flag_map)


def test_the_kernel_grace_period_returns():
    grace_period()                   # membarrier(MEMBARRIER_CMD_GLOBAL) on this kernel


@pytest.fixture
def writer_flag(xdp: Harness):
    """The harness's dataplane's flag, its grace periods ended by the test."""
    flag = xdp.dp.replacing_flag
    flag.close()                     # (a clear pending from an earlier test)
    graces = Graces()
    flag.grace = graces
    yield graces, xdp.dp.raw_table("replacing").map_fd
    flag.close()
    flag.grace = grace_period


def state(alg: str) -> ServiceState:
    return ServiceState(Frontend("10.96.8.1", 80), (Backend("10.100.8.1", 8080),), alg, 0, None)


def test_the_writer_raises_it_only_to_replace_entries(xdp: Harness, writer_flag):
    graces, fd = writer_flag
    xdp.writer.upsert_many([state("random")])     # a new entry: inserted, nothing replaced
    assert not is_set(fd) and graces.count == 0
    xdp.writer.upsert_many([state("sh")])         # its entry replaced
    assert is_set(fd)
    graces.end()
    xdp.dp.replacing_flag.close()   # (the clear done)
    assert not is_set(fd)
    xdp.writer.delete(state("sh").frontend)       # a deletion replaces nothing
    assert not is_set(fd) and graces.count == 1


def test_the_writer_raises_it_to_replace_a_rev_nat_entry(xdp: Harness, writer_flag):
    graces, fd = writer_flag
    backend = (Backend("10.100.8.1", 8080),)
    xdp.writer.upsert_many([ServiceState(Frontend("10.96.8.1", 80), backend, "random", 0, None)])
    assert not is_set(fd)            # its address's entry inserted
    # a second service of the same pod: the address's entry is rewritten, marked shared
    xdp.writer.upsert_many([ServiceState(Frontend("10.96.8.2", 80), backend, "random", 0, None)])
    assert is_set(fd)
    graces.end()
    xdp.dp.replacing_flag.close()
    assert not is_set(fd)
