"""controlplane/progress.py: a live line on a terminal, plain lines (one per change of
state, not per tick, no control characters) otherwise."""
from __future__ import annotations

import io

from controlplane.progress import Progress, duration, eta


def test_plain_output_has_a_line_per_change_not_per_tick() -> None:
    out = io.StringIO()
    p = Progress(out, interactive=False)
    p.update("lab up: pods 0/2 ready, agents 0/2 synced (1s)")
    p.update("lab up: pods 0/2 ready, agents 0/2 synced (2s)")      # only the clock moved
    p.update("lab up: pods 1/2 ready, agents 0/2 synced (3s)")
    p.update("[bench 1/3] scenario 1: test_x (1m05s, ~2m10s left)")
    p.update("[bench 1/3] scenario 1: test_x (1m06s, ~2m09s left)")
    p.line("lab up: ready in 4s")
    p.close()
    assert out.getvalue().splitlines() == [
        "lab up: pods 0/2 ready, agents 0/2 synced (1s)",
        "lab up: pods 1/2 ready, agents 0/2 synced (3s)",
        "[bench 1/3] scenario 1: test_x (1m05s, ~2m10s left)",
        "lab up: ready in 4s"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    out = io.StringIO()
    p = Progress(out, interactive=True)
    p.update("step 1 (1s)")
    p.update("step 1 (1s)")          # unchanged: nothing written
    p.update("step 1 (2s)")
    p.line("node1 up")               # stays; the live line is cleared first
    p.update("step 2")
    p.close()
    assert out.getvalue() == ("\r\x1b[Kstep 1 (1s)" "\r\x1b[Kstep 1 (2s)" "\r\x1b[Knode1 up\n"
                              "\r\x1b[Kstep 2" "\r\x1b[K")


def test_durations_and_estimates() -> None:
    assert [duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]
    assert eta(60, 190) == "~2m10s left" and eta(200, 190) == "10s over the estimate" and eta(5, None) == ""
