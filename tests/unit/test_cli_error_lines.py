"""Mistakes a user makes at the command line end in one `error: ...` line and a non-zero
exit, with nothing half-done: a busy health port, a run --rm without a lab, lab up as
non-root, a malformed kubeconfig, a state directory without a store (QA pass)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.cli import build_parser, main
from controlplane.store.paths import open_store

SVCCTL = [sys.executable, "-m", "controlplane.cli"]


def svcctl(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 60)
    return subprocess.run([*SVCCTL, *argv], capture_output=True, text=True, **kwargs)


# -- the agent's health port -------------------------------------------------------------

def test_a_busy_health_port_fails_the_agent_before_it_builds_anything(tmp_path):
    """QA: with 10256 taken (kube-proxy's), the agent built and pinned its dataplane, then
    died with a traceback ending `OSError: [Errno 98] Address already in use`."""
    from controlplane.dataplane.config import DataplaneConfig
    from controlplane.dataplane.program import reset
    instance = f"svcxdp-qaport-{os.getpid()}"
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        out = svcctl("agent", "--node", "n1", "--instance", instance, "--healthz-port", str(port),
                     "--metrics-bind-address", "127.0.0.1:0", "--state-dir", str(tmp_path))
    finally:
        taken.close()
        reset(DataplaneConfig(instance=instance))   # what an agent without the check left pinned
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert (f"error: --healthz-port {port}: cannot serve the health checks on port {port}: "
            "Address already in use (kube-proxy serves its health checks on 10256 by default") in out.stderr
    assert "dataplane loaded" not in out.stderr


def test_a_health_port_out_of_range_is_refused():
    out = svcctl("agent", "--node", "n1", "--healthz-port", "70000", "--metrics-bind-address", "127.0.0.1:0")
    assert out.returncode == 2 and "--healthz-port 70000: must be a port number" in out.stderr
    assert "Traceback" not in out.stderr


# -- errors, not tracebacks --------------------------------------------------------------

def test_run_rm_without_a_lab_is_an_error_line(tmp_path):
    out = svcctl("run", "c1", "--rm", "-it", "--image=busybox", "--state-dir", str(tmp_path / "nolab"), "--", "sh",
                 input="exit\n")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (f"error: run --rm: the lab is not up (state dir {tmp_path / 'nolab'}); "
                                  "run `svcctl lab up`")
    assert not (tmp_path / "nolab").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become nobody")
def test_lab_up_as_non_root_says_it_must_run_as_root(tmp_path):
    import controlplane
    tree = str(Path(controlplane.__file__).resolve().parents[1])   # this tree's svcctl, whatever is installed
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", f"PYTHONPATH={tree}",
                          *SVCCTL, "lab", "up", "--no-node-processes", "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: svcctl lab up must run as root (")


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nclusters: [\n  - {name: x\n",
     "not valid YAML at line 3, column 3: expected the node content, but found '-'"),
    ("- a\n- b\n", "not a kubeconfig (a YAML list, not a mapping with clusters, contexts and users)"),
    ("apiVersion: v1\nkind: Config\nclusters: 5\n", "not a valid kubeconfig (TypeError"),
])
def test_a_malformed_kubeconfig_is_named(tmp_path, text, message):
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    out = svcctl("agent", "--node", "n1", "--kubeconfig", str(path), "--healthz-port", "0",
                 "--metrics-bind-address", "127.0.0.1:0")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"error: kubeconfig {path}: {message}" in out.stderr
    assert "dataplane loaded" not in out.stderr


# -- read-only commands and a state directory without a store -----------------------------

@pytest.mark.parametrize("argv", [
    ["get", "svc"], ["get", "pods", "-A"], ["describe", "svc", "x"],
    ["trace", "--node", "node1", "10.244.1.2", "10.96.0.1:80"], ["get", "flows", "--node", "node1"],
    ["get", "affinity"],
])
def test_read_only_commands_on_a_state_dir_without_a_store_say_so_and_create_nothing(tmp_path, capsys, argv):
    """QA: `svcctl get svc --state-dir <nope>` printed `No resources found` and made the
    directory and an empty store there; trace, get flows and get affinity made the directory."""
    nope = tmp_path / "nope"
    assert main([*argv, "--state-dir", str(nope)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"error: no store in state directory {nope} (no such directory) - did you specify "
                           "the right --state-dir or $SVCXDP_STATE_DIR? (apply, create or run make a store there)")
    assert not nope.exists()


def test_get_on_an_existing_folder_without_a_store_is_an_error_and_an_empty_store_is_empty(tmp_path, capsys):
    assert main(["get", "svc", "--state-dir", str(tmp_path)]) == 1
    assert "no store in state directory" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    # trace and get flows read the dataplane: they go on without naming Services, saying so
    assert main(["get", "flows", "--node", "svcxdp-qa-none", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"note: no store in state directory {tmp_path}: Services and pods are not named" in err
    assert "no dataplane pinned" in err and list(tmp_path.iterdir()) == []
    open_store(tmp_path).close()
    assert main(["get", "svc", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().err.strip() == "No resources found in default namespace."


def test_a_writing_command_makes_the_store(tmp_path, capsys):
    state = tmp_path / "new"
    assert main(["create", "deployment", "web", "--image=nginx", "--state-dir", str(state)]) == 0
    assert (state / "store.db").is_file()
    assert capsys.readouterr().out.strip() == "deployment.apps/web created"
    assert main(["get", "deploy", "--state-dir", str(state), "-o", "name"]) == 0
    assert capsys.readouterr().out.strip() == "deployment.apps/web"


# -- flags ---------------------------------------------------------------------------------

def test_demo_takes_state_dir(monkeypatch):
    """README: commands that read the store or the lab take --state-dir; the demo's lab goes
    in <dir>/demo."""
    from controlplane.demo import walkthrough
    seen = {}
    monkeypatch.setattr(walkthrough, "run_walkthrough", lambda **kw: seen.update(kw) or 0)
    assert main(["demo", "--state-dir", "/tmp/svcxdp-qa-demo", "--nodes", "1"]) == 0
    assert seen == {"nodes": 1, "keep": False, "state_dir": "/tmp/svcxdp-qa-demo"}


def test_apply_without_api_version_offers_no_flag_svcctl_lacks(tmp_path, capsys):
    manifest = tmp_path / "svc.yaml"
    manifest.write_text("kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80}]}\n")
    assert main(["apply", "-f", str(manifest), "--state-dir", str(tmp_path / "state")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f'error: error validating "{manifest}": error validating data: [apiVersion not set]'
    assert "--validate" not in err


def test_exec_takes_its_flags_before_the_double_dash(tmp_path, capsys):
    """QA: `svcctl exec node1 --state-dir X -- true` said `unexpected arguments after --`."""
    args = build_parser("exec").parse_args(["exec", "node1", "--state-dir", str(tmp_path), "-i"])
    assert (args.host, args.state_dir, args.stdin, args.command) == ("node1", str(tmp_path), True, [])
    assert main(["exec", "node1", "--state-dir", str(tmp_path / "x"), "--", "true"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: the lab is not up (state dir {tmp_path / 'x'}); run `svcctl lab up`"
