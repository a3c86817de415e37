"""One agent per dataplane instance (controlplane/agent/instance_lock.py): a second holder
of the same instance is refused by name; another instance, or the same once the first
holder is gone, is not."""
from __future__ import annotations

import os

import pytest

from controlplane.agent.instance_lock import hold_instance
from controlplane.errors import CommandError


def test_a_second_agent_for_the_same_instance_is_refused_until_the_first_is_gone():
    name = f"svcxdp-test-lock-{os.getpid()}"
    first = hold_instance(name)
    try:
        with pytest.raises(CommandError, match=f"another svcctl agent runs for dataplane instance {name}"):
            hold_instance(name)
        hold_instance(name + "-other").close()
    finally:
        first.close()
    hold_instance(name).close()
