"""What the svcctl command tests share: a state directory of the test's own (the store
svcctl opens), and svcctl run in-process with its exit code and output."""
from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Autouse in every module that imports it: svcctl's store lives under tmp_path."""
    monkeypatch.setenv("SVCXDP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`svcctl argv...`: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
