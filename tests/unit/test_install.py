"""An installed svcxdp (a wheel, not a checkout) finds the XDP program's C sources it
compiles at run time: pyproject.toml's data-files put bpf/ and csrc/ under
<prefix>/share/svcxdp, where controlplane/dataplane/source.py looks when they are not
beside the package. (A plain `pip install .` once copied only the Python package, and the
agent failed to start: deploy/Dockerfile had to install editable.)"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_installed_under_a_prefix_finds_the_program_sources(tmp_path: Path) -> None:
    wheels, prefix, src = tmp_path / "wheels", tmp_path / "prefix", tmp_path / "src"
    # A copy of what the Dockerfile copies: pip builds in the source tree, not in the checkout.
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("csrc", "bpf", "controlplane"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("svcxdp-*.whl")
    # --ignore-installed: else pip uninstalls the svcxdp of the environment it runs in (this
    # venv's editable install, which every other test uses) before installing under --prefix.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    "--prefix", str(prefix), str(wheel)], check=True, capture_output=True, cwd=tmp_path)
    (site,) = prefix.glob("lib/python3*/site-packages")
    # The system interpreter, not this venv: the venv's editable install would serve the
    # checkout's package whatever the path says.
    probe = ("from controlplane.dataplane import source; "
             "print(source.SOURCES_ROOT); print('svcxdp_main' in source.program_text())")
    out = subprocess.run(["/usr/bin/python3", "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == [str(prefix / "share" / "svcxdp"), "True"]
    # this environment's own svcxdp is still there
    assert subprocess.run([sys.executable, "-m", "pip", "show", "-q", "svcxdp"], capture_output=True).returncode == 0
