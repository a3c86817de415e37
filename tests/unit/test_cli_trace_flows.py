"""`svcctl trace` and `svcctl get flows`: bad input is refused with a message naming the
argument, before any map is read (the dataplane side is tested in tests/packet/test_trace.py)."""
from __future__ import annotations

import json

import pytest

from controlplane.cli import main
from controlplane.store.paths import open_store


@pytest.fixture(autouse=True)
def _store(tmp_path):
    """An empty store in the state folder: read-only commands refuse a folder without one."""
    open_store(tmp_path).close()


@pytest.mark.parametrize("argv, message", [
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1"], "DST '10.96.0.1': a port is required"),
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1:80/sctp"], "protocol 'sctp' is not served"),
    (["trace", "--node", "n1", "10.0.0.300", "10.96.0.1:80"], "SRC '10.0.0.300': '10.0.0.300' is not an IPv4"),
    (["trace", "--node", "n1", "10.0.0.1:0", "10.96.0.1:80"], "SRC '10.0.0.1:0': port '0' must be 1-65535"),
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1:80", "--tcp-flags", "SX"], "--tcp-flags 'SX'"),
    # nothing written is dropped or taken for a default
    (["trace", "--node", "n1", "10.244.1.3/TCP", "10.96.0.1:80"], "SRC '10.244.1.3/TCP': a source has no protocol"),
    (["trace", "--node", "n1", "10.244.1.3:", "10.96.0.1:80"], "SRC '10.244.1.3:': port '' must be 1-65535"),
    (["trace", "--node", "n1", "10.0.0.1", "10.96.0.1:80/"], "DST '10.96.0.1:80/': no protocol after '/'"),
    (["trace", "--node", "n1", "10.0.0.1", ":80/"], "DST ':80/': no protocol after '/'"),
    (["trace", "--node", "n1", "10.0.0.1", ":80"], "DST ':80': the address is missing"),
    (["trace", "--node", "n1", "10.0.0.1", "::1:80"], "DST '::1:80': '::1:80' is not an IPv4 address"),
    (["trace", "--node", "n1", "fe80::1", "10.96.0.1:80"], "SRC 'fe80::1': 'fe80::1' is not an IPv4 address"),
    (["get", "flows", "--node", "n1", "--client", "10.0.0"], "--client '10.0.0'"),
    (["get", "flows", "--node", "n1", "--backend", "10.0.0.1:70000"], "--backend '10.0.0.1:70000': port"),
    (["get", "flows"], "--node"),
    (["get", "svc", "--client", "10.0.0.1"], "--client: for `get flows` only"),
])
def test_bad_input_is_refused_naming_the_argument(argv, message, tmp_path, capsys):
    assert main([*argv, "--state-dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err


def test_a_node_the_lab_does_not_have_is_named_with_the_nodes_it_has(tmp_path, capsys):
    """--node node9 in a state folder whose lab records node1 and node2 (instances.json):
    the missing pin is still named, and the nodes that exist with it."""
    (tmp_path / "instances.json").write_text(json.dumps({"node1": "svcxdp-trfix-node1",
                                                         "node2": "svcxdp-trfix-node2"}))
    for argv in (["trace", "--node", "node9", "10.0.0.1", "10.96.0.1:80"], ["dataplane", "stats", "--node", "node9"]):
        assert main([*argv, "--state-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "no dataplane pinned at /sys/fs/bpf/svcxdp/node9" in err, err
        assert "has no node node9; its nodes: node1, node2" in err, err
    # a node of the lab whose pins are missing: its agent is not running, as before
    assert main(["trace", "--node", "node1", "10.0.0.1", "10.96.0.1:80", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no dataplane pinned at /sys/fs/bpf/svcxdp/svcxdp-trfix-node1 (is the agent running?)" in err, err
