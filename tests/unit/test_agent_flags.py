"""The agent command refuses a bad interval or table size before it loads anything, naming
the flag."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv, message", [
    (["--ct-gc-interval", "-1"], "--ct-gc-interval -1.0: must be a number of seconds >= 0"),
    (["--socket-reap-interval", "-5"], "--socket-reap-interval -5.0: must be a number of seconds >= 0"),
    (["--socket-reap-interval", "nan"], "--socket-reap-interval nan: must be a number of seconds >= 0"),
    (["--ct-size", "-1"], "--ct-size -1: must be a positive integer"),
    (["--ct-unconfirmed-size", "0"], "--ct-unconfirmed-size 0: must be a positive integer"),
    (["--ct-unconfirmed-pod-size", "-2"], "--ct-unconfirmed-pod-size -2: must be a positive integer"),
    (["--ct-unconfirmed-size", "1000"], "--ct-unconfirmed-size 1000: must be a power of two of at least 8"),
    (["--ct-unconfirmed-pod-size", "4"], "--ct-unconfirmed-pod-size 4: must be a power of two of at least 8"),
    (["--udp-timeout", "0"], "--udp-timeout 0: must be a positive integer"),
])
def test_a_bad_interval_is_refused_before_loading_anything(argv, message):
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "agent", "--node", "n1",
                          "--healthz-port", "0", "--metrics-bind-address", "127.0.0.1:0", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "dataplane loaded" not in out.stderr
