"""MapWriter's Beside (dataplane/beside.py): a write made on a second thread while the block runs, waited
for at the block's end, its failure raised there; off, the same call after the block."""
from __future__ import annotations

import threading

import pytest

from controlplane.dataplane.beside import Beside


class Boom(Exception):
    pass


def test_on_runs_on_another_thread_and_is_done_when_the_block_ends() -> None:
    seen: list[int] = []
    started = threading.Event()

    def work() -> None:
        started.set()
        seen.append(threading.get_ident())

    with Beside(True, work):
        assert started.wait(5)          # it runs while the block does
    assert seen and seen[0] != threading.get_ident()


def test_off_runs_after_the_block_on_this_thread() -> None:
    order: list[str] = []
    with Beside(False, lambda: order.append(f"call {threading.get_ident()}")):
        order.append("block")
    assert order == ["block", f"call {threading.get_ident()}"]


@pytest.mark.parametrize("on", [True, False])
def test_its_failure_is_raised_at_the_block_end(on: bool) -> None:
    def fail() -> None:
        raise Boom("zeroing")

    with pytest.raises(Boom, match="zeroing"):
        with Beside(on, fail):
            pass


@pytest.mark.parametrize("on", [True, False])
def test_the_block_failure_wins_and_the_call_is_waited_for(on: bool) -> None:
    done: list[bool] = []
    with pytest.raises(KeyError):
        with Beside(on, lambda: done.append(True)):
            raise KeyError("block")
    assert done == ([True] if on else [])   # on: finished before the error left; off: never made
