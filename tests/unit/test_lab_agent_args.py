"""`svcctl lab up --agent-arg`: more arguments for the lab's agents, checked by the agent's
own parser before the lab is touched, never a setting the lab gives its agents itself."""
from __future__ import annotations

import argparse

import pytest

from controlplane.cli import main
from controlplane.lab import hooks
from controlplane.lab.commands import agent_args_problem, node_process_provider
from controlplane.lab.hooks import ProcessSpec


def test_arguments_the_agent_takes_pass() -> None:
    assert agent_args_problem([]) is None
    assert agent_args_problem(["--lb-algorithm=maglev", "--node-zone=zone-a", "--ct-size=32768"]) is None
    assert agent_args_problem(["--no-fib-cache"]) is None


@pytest.mark.parametrize("extra,said", [
    (["--lb-algorithm=bogus"], "argument --lb-algorithm: invalid choice: 'bogus'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--node=node9"], "the lab gives its agents --node itself"),
    (["--inst=other"], "the lab gives its agents --instance itself"),          # abbreviated
    (["--state-dir=/elsewhere"], "the lab gives its agents --state-dir itself"),
    (["--source=kubernetes"], "the lab gives its agents --source itself"),
])
def test_what_the_agent_refuses_or_the_lab_sets_is_refused(extra, said) -> None:
    problem = agent_args_problem(extra)
    assert problem is not None and said in problem, problem


def test_lab_up_refuses_them_before_anything_is_made(tmp_path, capsys) -> None:
    state = tmp_path / "state"
    assert main(["lab", "up", "--agent-arg=--lb-algorithm=bogus", "--state-dir", str(state)]) == 2
    assert "error: --agent-arg --lb-algorithm=bogus: " in capsys.readouterr().err
    assert not state.exists()


def test_only_the_agents_get_them(monkeypatch) -> None:
    made = [ProcessSpec("agent", ["svcctl", "agent", "--node", "node1"]), ProcessSpec("kubelet", ["svcctl", "lab"])]
    monkeypatch.setattr(hooks, "node_processes", lambda node, lab: list(made))
    args = argparse.Namespace(no_node_processes=False, agent_arg=["--lb-algorithm=rr", "--node-zone=zone-a"])
    specs = node_process_provider(args)(None, None)
    assert [p.argv for p in specs] == [["svcctl", "agent", "--node", "node1", "--lb-algorithm=rr",
                                        "--node-zone=zone-a"], ["svcctl", "lab"]]
    assert node_process_provider(argparse.Namespace(no_node_processes=False, agent_arg=[])) is hooks.node_processes
    assert node_process_provider(argparse.Namespace(no_node_processes=True, agent_arg=["--no-fib-cache"])) is None
