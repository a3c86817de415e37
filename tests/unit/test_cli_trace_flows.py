"""`svcctl trace` and `svcctl get flows`: bad input is refused with a message naming the
argument, before any map is read (the dataplane side is tested in tests/packet/test_trace.py)."""
from __future__ import annotations

import pytest

from controlplane.cli import main


@pytest.mark.parametrize("argv, message", [
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1"], "DST '10.96.0.1': a port is required"),
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1:80/sctp"], "protocol 'sctp' is not served"),
    (["trace", "--node", "n1", "10.0.0.300", "10.96.0.1:80"], "SRC '10.0.0.300': '10.0.0.300' is not an IPv4"),
    (["trace", "--node", "n1", "10.0.0.1:0", "10.96.0.1:80"], "SRC '10.0.0.1:0': port '0' must be 1-65535"),
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1:80", "--tcp-flags", "SX"], "--tcp-flags 'SX'"),
    (["get", "flows", "--node", "n1", "--client", "10.0.0"], "--client '10.0.0'"),
    (["get", "flows", "--node", "n1", "--backend", "10.0.0.1:70000"], "--backend '10.0.0.1:70000': port"),
    (["get", "flows"], "--node"),
    (["get", "svc", "--client", "10.0.0.1"], "--client: for `get flows` only"),
])
def test_bad_input_is_refused_naming_the_argument(argv, message, tmp_path, capsys):
    assert main([*argv, "--state-dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
