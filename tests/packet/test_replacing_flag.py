"""The writer's flag that makes the datapath look a missed service up again
(controlplane/dataplane/replacing.py, bpf/lb.h svc_read): set before service entries
are replaced, cleared only after a grace period with no replacement under way.

The grace periods here are the test's own (a semaphore each), so what happens before
and after one is certain; test_map_reuse.py races real lookups with the real one."""
from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from controlplane.dataplane.libbpf import u32_array_map_create, u32_array_read, u32_update
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane import revnat as revnat_module
from controlplane.dataplane import writer as writer_module
from controlplane.dataplane.replacing import ReplacingFlag, grace_period, membarrier_commands

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

    def end_all(self) -> None:
        """(A failed test's teardown: no clearer left waiting.)"""
        for _ in range(10):
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
    flag.wait()
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


def test_a_closed_flag_refuses_windows(flag_map):
    flag = ReplacingFlag(flag_map, Graces())
    flag.close()
    with pytest.raises(RuntimeError, match="closed"):
        with flag.raised():
            pass
    assert not is_set(flag_map)


def test_the_kernel_has_the_grace_period():
    """membarrier(MEMBARRIER_CMD_GLOBAL), bit 0 of the query, waits for one (a syscall
    number that answered 0 to anything would pass a call that merely returns)."""
    assert membarrier_commands() & 1
    grace_period()


@pytest.fixture
def writer_flag(xdp: Harness, monkeypatch):
    """The harness's dataplane's flag, its grace periods ended by the test, and the flag
    as each write of `services`, `slots` and `rev_nat` found it: [(map, set?)]."""
    flag = xdp.dp.replacing_flag
    flag.wait()                      # (a clear pending from an earlier test)
    graces = Graces()
    flag.grace = graces
    fd = xdp.dp.raw_table("replacing").map_fd
    writes: list[tuple[str, bool]] = []
    names = {id(xdp.writer.services): "services", id(xdp.writer.slots): "slots",
             id(xdp.writer.revnat.table): "rev_nat"}

    def watch(module):
        real = module.write_packed

        def write_packed(table, *args, **kwargs):
            if id(table) in names and len(args[0]):
                writes.append((names[id(table)], is_set(fd)))
            return real(table, *args, **kwargs)
        monkeypatch.setattr(module, "write_packed", write_packed)
    watch(writer_module)
    watch(revnat_module)
    yield graces, fd, writes
    graces.end_all()
    flag.wait()
    flag.grace = grace_period


def state(alg: str) -> ServiceState:
    return ServiceState(Frontend("10.96.8.1", 80), (Backend("10.100.8.1", 8080),), alg, 0, None)


def test_the_writer_raises_it_only_to_replace_entries(xdp: Harness, writer_flag):
    graces, fd, writes = writer_flag
    xdp.writer.upsert_many([state("random")])     # new entries: inserted, nothing replaced
    assert not is_set(fd) and graces.count == 0
    assert {name for name, _ in writes} == {"services", "slots", "rev_nat"} and not any(up for _, up in writes)
    writes.clear()
    xdp.writer.upsert_many([state("sh")])         # its entry replaced
    assert writes and all(up for _, up in writes), writes
    graces.end()
    xdp.dp.replacing_flag.wait()
    assert not is_set(fd)
    writes.clear()                                # another pod: its slot replaced too
    xdp.writer.upsert_many([dataclasses.replace(state("sh"), backends=(Backend("10.100.8.2", 8080),))])
    assert ("slots", True) in writes and ("services", True) in writes, writes   # (its address: inserted)
    graces.end()
    xdp.dp.replacing_flag.wait()
    xdp.writer.delete(state("sh").frontend)       # a deletion replaces nothing
    assert not is_set(fd) and graces.count == 2


def test_the_writer_raises_it_to_replace_rev_nat_entries(xdp: Harness, writer_flag):
    graces, fd, writes = writer_flag
    backend = (Backend("10.100.8.1", 8080),)
    a = ServiceState(Frontend("10.96.8.1", 80), backend, "random", 0, None)
    b = ServiceState(Frontend("10.96.8.2", 80), backend, "random", 0, None)
    xdp.writer.upsert_many([a])
    assert not is_set(fd)            # its address's entry inserted
    writes.clear()
    xdp.writer.upsert_many([b])      # a second service of the pod: the entry becomes shared
    assert ("rev_nat", True) in writes, writes
    graces.end()
    xdp.dp.replacing_flag.wait()
    writes.clear()
    xdp.writer.delete(a.frontend)    # its first frontend leaves: the entry names b's now
    assert ("rev_nat", True) in writes, writes
    graces.end()
    xdp.dp.replacing_flag.wait()
    assert not is_set(fd)
