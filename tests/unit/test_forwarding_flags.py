"""The forwarding mode: redirect past the node's stack where a device can be a redirect
target, `--no-fib-redirect` for the stack path; the agent's choice reaches the build's cflags
(bpf/fib.h)."""
from __future__ import annotations

import argparse

from controlplane.agent import commands
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.layout import const


def _agent_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    return parser.parse_args(["agent", "--node", "node1", *argv])


def test_the_redirect_is_the_default_build():
    assert DataplaneConfig().fib_redirect
    assert "-DSVCXDP_STACK_FORWARD=1" not in DataplaneConfig().cflags()
    assert "-DSVCXDP_STACK_FORWARD=1" in DataplaneConfig(fib_redirect=False).cflags()


def test_agent_flag_turns_the_redirect_off_and_keeps_the_old_spelling():
    assert _agent_args().fib_redirect is None          # chosen from the interfaces, below
    assert _agent_args("--fib-redirect").fib_redirect is True
    assert _agent_args("--no-fib-redirect").fib_redirect is False


def test_redirect_is_built_only_where_a_device_can_be_a_target():
    """Only --attach-points entries in native mode make redirect targets (veth peers the
    agent gives a program); a real node's --interfaces/--discover never does, so there
    the lookup would be paid per packet for nothing."""
    choice = commands.fib_redirect_choice
    assert choice(_agent_args("--attach-points", "/x.json"))[0] is True
    assert choice(_agent_args("--interfaces", "eth0"))[0] is False
    assert choice(_agent_args("--discover"))[0] is False
    assert choice(_agent_args())[0] is False
    assert choice(_agent_args("--attach-points", "/x.json", "--xdp-mode", "generic"))[0] is False
    # the flag, either way, overrides the choice
    assert choice(_agent_args("--interfaces", "eth0", "--fib-redirect"))[0] is True
    assert choice(_agent_args("--attach-points", "/x.json", "--no-fib-redirect"))[0] is False


def test_redirect_map_bound_comes_from_the_shared_header():
    from controlplane.dataplane.program import TX_PORTS_SIZE
    assert TX_PORTS_SIZE == const("TX_PORTS_SIZE") == 65536
