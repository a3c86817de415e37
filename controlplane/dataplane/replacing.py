"""The flag that tells the datapath the writer is replacing entries it looks up.

A BPF hash map replaces an element by linking the new one at its bucket's head and then
unlinking the old one, so a lookup of that very key that runs meanwhile can find neither:
a packet to a service would leave the program untranslated, as if the service did not
exist, and a backend's reply would reach its client from the pod's address. The datapath
looks a missed `services` or `rev_nat` key up a second time while the map `replacing` is
set (bpf/maps.h writer_replacing); the writer sets it before it replaces entries of
either (writer.py step 3, revnat.py) and clears it once no lookup that overlapped a
replacement can still be running.

"Once no lookup can still be running" is an RCU grace period: XDP and tc programs and the
socket hooks run inside RCU read-side sections, and membarrier(MEMBARRIER_CMD_GLOBAL)
returns only after one has passed (about 8 ms here). The writer does not wait for it:
a thread clears the flag after the grace period that follows the last replacement, so
a change reaches the maps as fast as before and misses pay the second lookup only in
the few milliseconds after one.
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


def grace_period() -> None:
    """Return once every RCU read-side section running at the call has ended."""
    if _SYS_MEMBARRIER is not None and _libc.syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) == 0:
        return
    err = ctypes.get_errno() if _SYS_MEMBARRIER is not None else errno.ENOSYS
    if not getattr(grace_period, "warned", False):
        grace_period.warned = True   # type: ignore[attr-defined]
        log.warning("membarrier(MEMBARRIER_CMD_GLOBAL) unavailable (%s): the service-replacement flag "
                    "is cleared %.1f s after the last replacement instead of after a grace period",
                    os.strerror(err), FALLBACK_WAIT_S)
    time.sleep(FALLBACK_WAIT_S)


class ReplacingFlag:
    """The `replacing` map of one dataplane, for every writer of this process.

    `raised()` brackets the writes that replace existing entries; windows may
    overlap or follow one another, the flag stays set until a grace period has passed
    with none open. `close()` waits for a pending clear (at most a grace period).
    `grace`: what waits for a grace period (tests end their own)."""

    def __init__(self, map_fd: int, grace: Callable[[], None] = grace_period) -> None:
        self._fd = map_fd
        self.grace = grace
        self._lock = threading.Lock()
        self._opened = 0          # windows opened so far
        self._open = 0            # windows not yet ended
        self._clearing: threading.Thread | None = None
        # A writer before this one (a stopped agent) may have left it set: cleared
        # after a grace period like any other.
        self._set = u32_array_read(map_fd, 1)[0] != 0
        if self._set:
            with self._lock:
                self._clear_later()

    @contextmanager
    def raised(self) -> Iterator[None]:
        """Set for the writes inside (and a grace period after the last window ends)."""
        with self._lock:
            self._opened += 1
            self._open += 1
            if not self._set:
                u32_update(self._fd, 0, 1)
                self._set = True
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                self._clear_later()

    def _clear_later(self) -> None:
        """(Under the lock.) A running clearer sees later windows by itself."""
        if self._clearing is None:
            self._clearing = threading.Thread(target=self._clear, name="svcxdp-replacing", daemon=True)
            self._clearing.start()

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
            log.exception("clearing the service-replacement flag failed: it stays set (lookups of no "
                          "service look twice) until the next replacement")
            with self._lock:
                self._clearing = None

    def close(self) -> None:
        """Wait for a pending clear; call with no window open, before the map's fd closes."""
        with self._lock:
            clearing = self._clearing
        if clearing is not None:
            clearing.join()
