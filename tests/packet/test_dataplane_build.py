"""Dataplane.open (build.py): the program compiled and loaded by a child process with
bcc, then owned through its pins by a process that never imports bcc; an unchanged
build is adopted without compiling, a changed one rebuilt over the same maps."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from controlplane.agent.agent import Agent
from controlplane.agent.desired import NodeConfig
from controlplane.dataplane.build import build_stamp, read_stamp
from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.program import Dataplane, reset

from .agent_kit import Client, add_service, set_endpoints

pytestmark = pytest.mark.root

CONFIG = DataplaneConfig(instance="pytest-dp-build", ct_size=1024, max_services=64, max_backends=256,
                         max_slots=1024)
A = ["10.244.1.1", "10.244.1.2", "10.244.1.3"]
B = ["10.244.2.1"]


@pytest.fixture
def clean():
    reset(CONFIG)
    yield
    reset(CONFIG)


def test_built_once_then_adopted_from_the_pins_without_bcc(store, clean):
    dp = Dataplane.open(CONFIG)
    try:
        assert dp.built and read_stamp(CONFIG.pin_dir) == build_stamp(CONFIG)
        prog = dp.prog_id
        add_service(store, "a", A)
        agent = Agent(store, NodeConfig("node1"), dp)
        assert agent.full_sync("start").writes > 0
        assert Client(agent).backends_of("a") == set(A)
        set_endpoints(store, "a", A[:1])        # the writer's per-change path on pinned maps
        agent.incremental_sync()
        assert Client(agent).backends_of("a") == set(A[:1])
    finally:
        dp.close()

    dp = Dataplane.open(CONFIG)   # a restarted agent, same build: nothing compiled or flushed
    try:
        assert not dp.built and dp.prog_id == prog
        agent = Agent(store, NodeConfig("node1"), dp)
        assert agent.full_sync("start").writes == 0
        assert Client(agent).backends_of("a") == set(A[:1])
        frontends = len(agent.writer.installed())
    finally:
        dp.close()

    # ... and the process that owns it never loads bcc (nor LLVM)
    child = textwrap.dedent(f"""
        import json, sys
        from controlplane.dataplane.config import DataplaneConfig
        from controlplane.dataplane.program import Dataplane
        from controlplane.dataplane.writer import MapWriter
        dp = Dataplane.open(DataplaneConfig(**json.loads(sys.argv[1])))
        print(json.dumps([dp.built, len(MapWriter(dp).installed()), dp.counters()["ct_new"] > 0,
                          "bcc" in sys.modules]))
    """)
    fields = {k: v for k, v in dataclasses.asdict(CONFIG).items() if k != "pin_root"}
    out = subprocess.run([sys.executable, "-c", child, json.dumps(fields)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, frontends, True, False]


def test_an_open_that_fails_late_leaves_no_descriptor_open(clean, monkeypatch):
    """Dataplane.open holds the programs' and maps' fds before it asks whether an earlier
    replacement is unfinished; when that check fails (the pin directory unreadable),
    everything it opened is closed again: an agent that retries leaks nothing."""
    import os

    from controlplane.dataplane import program
    Dataplane.open(CONFIG).close()          # built: the next open only adopts
    fds = set(os.listdir("/proc/self/fd"))

    def unreadable(config):
        raise PermissionError(f"{config.pin_dir}: permission denied")
    monkeypatch.setattr(program, "unfinished_replacement", unreadable)
    with pytest.raises(PermissionError):
        Dataplane.open(CONFIG)
    assert set(os.listdir("/proc/self/fd")) - fds == set()


def test_a_changed_build_is_rebuilt_over_the_same_maps(store, clean):
    dp = Dataplane.open(CONFIG)
    try:
        add_service(store, "b", B)
        agent = Agent(store, NodeConfig("node1"), dp)
        agent.full_sync("start")
        prog = dp.prog_id
    finally:
        dp.close()
    changed = dataclasses.replace(CONFIG, udp_timeout_s=CONFIG.udp_timeout_s + 1)
    assert build_stamp(changed) != build_stamp(CONFIG)
    dp = Dataplane.open(changed)
    try:
        assert dp.built and dp.prog_id != prog
        agent = Agent(store, NodeConfig("node1"), dp)
        assert Client(agent).backends_of("b") == set(B)   # the maps were kept, not flushed
        assert agent.full_sync("start").writes == 0
    finally:
        dp.close()


def test_a_resized_dataplane_is_replaced_and_written_again(store, clean, caplog):
    """A changed size flag (--ct-size here) makes the pinned maps another layout's: the
    child replaces the dataplane (the agent's --stale-dataplane replace), the process that
    asked says so in its own log, and the first sync writes every service into the new
    maps. Until the agent's takeover (finish_replacement) the old maps stay pinned aside,
    and an agent restarted before it is told so (it holds its interfaces again)."""
    from controlplane.dataplane.program import UNFINISHED
    dp = Dataplane.open(CONFIG)
    try:
        add_service(store, "a", A)
        assert Agent(store, NodeConfig("node1"), dp).full_sync("start").writes > 0
    finally:
        dp.close()
    resized = dataclasses.replace(CONFIG, ct_size=2 * CONFIG.ct_size, replace_stale=True)
    dp = Dataplane.open(resized)
    try:
        assert dp.built and any(line.startswith(f"conntrack: max_entries {CONFIG.ct_size} != {resized.ct_size}")
                                for line in dp.replaced), dp.replaced
        assert f"dataplane {CONFIG.instance}: its pinned maps were made by a build of another layout" in caplog.text
        agent = Agent(store, NodeConfig("node1"), dp)
        assert not agent.writer.installed()   # nothing adopted
        assert agent.full_sync("start").writes > 0
        assert Client(agent).backends_of("a") == set(A)
    finally:
        dp.close()
    dp = Dataplane.open(resized)   # an agent restarted before its takeover: told, nothing built
    try:
        assert not dp.built and dp.replaced == (UNFINISHED,)
        assert dp.finish_replacement() > 0
    finally:
        dp.close()
    dp = Dataplane.open(resized)   # and then it is this build's own: adopted, nothing replaced
    try:
        assert not dp.built and dp.replaced == ()
        assert not [p for p in CONFIG.pin_dir.iterdir() if p.name.endswith("_stale")]
    finally:
        dp.close()
