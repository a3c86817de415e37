"""Two map writes at once, where no order binds them.

The kernel's batch writes of a full sync at 10,000 x 10 take ~0.13 s, and a syscall
runs without the GIL: so where the writer's order (writer.py) leaves two writes free,
a second thread makes one of them beside the other, on another CPU (measured at
10,000 x 10 on two CPUs: the writer's 0.24 s down to 0.20 s). A thread costs ~0.1 ms,
so only from BESIDE_MIN entries on (MapWriter.beside_min).
"""
from __future__ import annotations

import threading
from typing import Callable

BESIDE_MIN = 8192


class Beside:
    """`with Beside(on, fn, *args):` runs fn(*args) on a second thread while the block
    runs, and waits for it at the block's end (re-raising what it raised, unless the
    block raised first); with `on` false, fn(*args) runs after the block, on this one."""

    def __init__(self, on: bool, fn: Callable[..., object], *args: object) -> None:
        self._call = (fn, args)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="svcxdp-writer", daemon=True) if on else None

    def _run(self) -> None:
        fn, args = self._call
        try:
            fn(*args)
        except BaseException as exc:   # noqa: BLE001 - re-raised by __exit__
            self._failed = exc

    def __enter__(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            if exc_type is None:
                self._run()
        else:
            self._thread.join()
        if exc_type is None and self._failed is not None:
            raise self._failed
