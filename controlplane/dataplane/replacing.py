"""The flag that tells the datapath the writer is replacing entries it looks up.

A BPF hash map replaces an element by linking the new one at its bucket's head and then
unlinking the old one, so a lookup of that very key that runs meanwhile can find neither:
a packet to a service would leave the program untranslated, as if the service did not
exist, a backend's reply would reach its client from the pod's address, a new flow whose
slot missed would be dropped. The datapath looks a missed `services`, `rev_nat`, `slots`
or `maglev` key up a second time while the map `replacing` is set (bpf/maps.h
writer_replacing); the writer sets it before it replaces entries of any of them
(writer.py steps 2 and 3, revnat.py) and clears it once no lookup that overlapped a
replacement can still be running.

"Once no lookup can still be running" is an RCU grace period: XDP and tc programs and the
socket hooks run inside RCU read-side sections, and membarrier(MEMBARRIER_CMD_GLOBAL)
returns only after one has passed (about 8 ms here). The writer does not wait for it:
a thread clears the flag after the grace period that follows the last replacement, so
a change reaches the maps as fast as before and misses pay the second lookup only in
the few milliseconds after one.

One writer process per dataplane (the agent; its instance lock keeps a second one out):
the flag's state is this process's, and a second writer would clear it under the
first. The argument also needs loads kept in order (x86): elsewhere a lookup's miss and
its read of the flag may be reordered, and the flag narrows the race without closing it.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .libbpf import u32_array_read, u32_update

MAP = "replacing"
log = logging.getLogger("svcxdp.dataplane")

_MEMBARRIER_CMD_GLOBAL = 1                               # linux/membarrier.h
_SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283}.get(platform.machine())
# Without membarrier (an unknown architecture, nohz_full CPUs) the flag is cleared this
# long after the last replacement: far beyond a packet's time in the program, though
# not a guarantee (a stalled virtual CPU could outlast it).
FALLBACK_WAIT_S = 0.5
_libc = ctypes.CDLL(None, use_errno=True)
_warned = False


def membarrier_commands() -> int:
    """membarrier(MEMBARRIER_CMD_QUERY): the commands this kernel supports (a bit each),
    0 where there is none."""
    if _SYS_MEMBARRIER is None:
        return 0
    return max(_libc.syscall(_SYS_MEMBARRIER, 0, 0, 0), 0)


def grace_period() -> None:
    """Return once every RCU read-side section running at the call has ended."""
    global _warned
    if _SYS_MEMBARRIER is not None and _libc.syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) == 0:
        return
    err = ctypes.get_errno() if _SYS_MEMBARRIER is not None else errno.ENOSYS
    if not _warned:
        _warned = True
        log.warning("membarrier(MEMBARRIER_CMD_GLOBAL) unavailable (%s): the replacement flag is "
                    "cleared %.1f s after the last replacement instead of after a grace period",
                    os.strerror(err), FALLBACK_WAIT_S)
    time.sleep(FALLBACK_WAIT_S)


class ReplacingFlag:
    """The `replacing` map of one dataplane, for every writer of this process.

    `raised()` brackets the writes that replace existing entries; windows may
    overlap or follow one another, the flag stays set until a grace period has passed
    with none open. `wait()` waits for a pending clear (at most a grace period),
    `close()` too and then refuses windows (the map's fd is the dataplane's).
    `grace`: what waits for a grace period (tests end their own)."""

    def __init__(self, map_fd: int, grace: Callable[[], None] = grace_period) -> None:
        self._fd = map_fd
        self.grace = grace
        self._lock = threading.Lock()
        self._opened = 0          # windows opened so far
        self._open = 0            # windows not yet ended
        self._clearing: threading.Thread | None = None
        self._closed = False
        # A writer before this one (a stopped agent) may have left it set: cleared
        # after a grace period like any other.
        self._set = u32_array_read(map_fd, 1)[0] != 0
        if self._set:
            with self._lock:
                self._clear_later()

    @contextmanager
    def raised(self, when: bool = True) -> Iterator[None]:
        """Set for the writes inside (and a grace period after the last window ends);
        with `when` false, nothing (the writes inside replace nothing)."""
        if not when:
            yield
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the replacement flag of a closed dataplane")
            if not self._set:
                u32_update(self._fd, 0, 1)   # (first: a failed write counts no window)
                self._set = True
            self._opened += 1
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                self._clear_later()

    def _clear_later(self) -> None:
        """(Under the lock.) A running clearer sees later windows by itself."""
        if self._clearing is None:
            clearing = threading.Thread(target=self._clear, name="svcxdp-replacing", daemon=True)
            clearing.start()   # (it takes the lock before it reads anything)
            self._clearing = clearing

    def _clear(self) -> None:
        try:
            while True:
                with self._lock:
                    seen = self._opened
                self.grace()
                with self._lock:
                    if self._open:            # its end starts another clearer
                        self._clearing = None
                        return
                    if self._opened == seen:  # none opened meanwhile: nothing overlaps any more
                        u32_update(self._fd, 0, 0)
                        self._set = False
                        self._clearing = None
                        return
                # one opened and ended meanwhile: a grace period after it
        except Exception:   # noqa: BLE001 - a thread's end: logged, and the next window retries
            log.exception("clearing the replacement flag failed: it stays set (a lookup that misses "
                          "looks twice) until the next replacement")
            with self._lock:
                self._clearing = None

    def wait(self) -> None:
        """Wait for a pending clear; with no window open, the flag is clear after it."""
        with self._lock:
            clearing = self._clearing
        if clearing is not None:
            clearing.join()

    def close(self) -> None:
        """wait(), then refuse windows: call with none open, before the map's fd closes."""
        self.wait()
        with self._lock:
            self._closed = True
