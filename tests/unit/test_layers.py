"""The agent and the dataplane know no lab and no CLI (issue 15): their attach points come
through `svcctl agent --attach-points FILE`, which the lab (or anything else) keeps current."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from controlplane.agent.attach_sources import FileAttachPoints, Target

PKG = Path(__file__).resolve().parents[2] / "controlplane"


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", ["agent", "dataplane"])
def test_agent_and_dataplane_import_neither_lab_nor_cli(package: str) -> None:
    offenders = {f"{path.name}: {mod}" for path in (PKG / package).glob("*.py") for mod in imported_modules(path)
                 if mod.startswith(("controlplane.lab", "controlplane.cli", "controlplane.kubectl"))}
    assert offenders == set()


def test_no_layer_imports_the_cli_entry_point() -> None:
    """controlplane.cli only assembles commands; what they share (CommandError) lives in
    controlplane.errors, so no module imports the entry point, at top level or in a function."""
    offenders = {str(path.relative_to(PKG)) for path in PKG.rglob("*.py")
                 if path.name != "cli.py" and "controlplane.cli" in imported_modules(path)}
    assert offenders == set()


def test_errors_module_imports_nothing_of_the_project() -> None:
    assert not {m for m in imported_modules(PKG / "errors.py") if m.startswith("controlplane")}


def test_attach_points_file_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "node1.json"
    source = FileAttachPoints(path)
    assert source() == []                                   # not written yet
    path.write_text(json.dumps([{"netns": "n1", "ifname": "eth0", "ifindex": 2,
                                 "peer_netns": "out", "peer_ifname": "veth0"}]))
    assert source() == [Target("n1", "eth0", 2, "out", "veth0")]
    path.write_text("[{broken")                             # a bad write keeps the last good list
    assert source() == [Target("n1", "eth0", 2, "out", "veth0")]
    path.write_text(json.dumps([]))
    assert source() == []


def test_a_command_imports_only_its_own_modules(tmp_path: Path) -> None:
    """`svcctl get svc` must not pay for the lab, pyroute2 or the dataplane's loader: the
    CLI imports only the modules that provide the subcommand asked for."""
    import os
    import subprocess
    import sys
    from controlplane.store.paths import open_store
    open_store(tmp_path).close()   # `get` on a folder without a store is an error
    check = ("import sys; from controlplane.cli import main; rc = main(['get', 'svc']); "
             "heavy = sorted(m for m in ('pyroute2', 'bcc', 'controlplane.lab.topology', 'controlplane.dns') "
             "if m in sys.modules); print(heavy, file=sys.stderr); sys.exit(3 if heavy else rc)")
    proc = subprocess.run([sys.executable, "-c", check], cwd=PKG.parent, text=True, capture_output=True,
                          env={**os.environ, "SVCXDP_STATE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
