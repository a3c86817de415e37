"""Progress of a long operation (lab up, make bench): one status line rewritten in place on
a terminal; plain lines when the output is not a terminal (a log, CI), one per change of
what is being waited for — never a line per tick, never control characters in a file.

    progress = Progress()
    progress.line("lab: node1 up")                 # a line that stays (both modes)
    progress.update("pods 1/2 running (12s)")      # the live line (terminal), or a line when it changed
    progress.close()

Imports nothing of the project: every layer may use it."""
from __future__ import annotations

import re
import shutil
import sys
import time
from typing import TextIO

_CLEAR = "\r\x1b[K"
_TICKS = re.compile(r"\(?\d+(?:m\d+)?s\)?|~?\d+(?:m\d+)?s left|\d+% ")   # time-like parts left out of "changed?"


def duration(seconds: float) -> str:
    """`45s`, `3m05s`, `1h02m`."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(elapsed: float, expected: float | None) -> str:
    """`~2m10s left` from an expected total (e.g. the last run's), `over the estimate` when
    past it, "" without one."""
    if not expected:
        return ""
    left = expected - elapsed
    return f"~{duration(left)} left" if left > 0 else f"{duration(-left)} over the estimate"


class Progress:
    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._live = ""          # what the live line shows now (terminal)
        self._last_plain = None  # the last plain line, with its ticking parts removed
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        """A line that stays: on a terminal it replaces the live line, which is drawn again
        below it by the next update()."""
        if self.interactive and self._live:
            self.stream.write(_CLEAR)
            self._live = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, text: str) -> None:
        """The current state. Terminal: rewrite the live line (cut to the width). Otherwise a
        plain line, only when the text changed beyond its clock (elapsed / left times)."""
        if self.interactive:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            shown = text if len(text) <= width else text[:max(0, width - 1)] + "…"
            if shown != self._live:
                self.stream.write(_CLEAR + shown)
                self.stream.flush()
                self._live = shown
            return
        key = _TICKS.sub("", text)
        if key != self._last_plain:
            self._last_plain = key
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self, text: str | None = None) -> None:
        """End the live line (with a final text, if given)."""
        if text is not None:
            self.line(text)
        elif self.interactive and self._live:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._live = ""
