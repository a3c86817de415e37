"""An agent on a node without bpffs says so in one line and exits non-zero, instead of a
traceback from the build child (`BuildError ... FileNotFoundError '/sys/fs/bpf/svcxdp'`).
Nothing is unmounted: the pin root is pointed at a temporary directory, which is no bpffs."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from controlplane.dataplane import config as dataplane_config
from controlplane.dataplane.program import DataplaneError, require_bpffs
from tests.unit.cli_kit import run, state_dir  # noqa: F401 (state_dir: an autouse fixture)


def test_a_pin_root_outside_bpffs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataplaneError, match=f"bpffs is not mounted at {tmp_path} .*mount -t bpf bpf"):
        require_bpffs(tmp_path / "svcxdp")   # not made yet: the directory it would be made in


@pytest.mark.skipif(not dataplane_config.PIN_ROOT.parent.is_mount(), reason="no bpffs at /sys/fs/bpf here")
def test_the_pin_root_on_bpffs_passes() -> None:
    require_bpffs(dataplane_config.PIN_ROOT)


def test_the_agent_without_bpffs_is_one_error_line(capsys, monkeypatch, tmp_path: Path) -> None:
    pins = tmp_path / "pins"
    monkeypatch.setattr(dataplane_config, "DataplaneConfig",
                        functools.partial(dataplane_config.DataplaneConfig, pin_root=pins))
    code, _, err = run(capsys, "agent", "--node", "n1", "--healthz-port", "0",
                       "--metrics-bind-address", "127.0.0.1:0")
    assert code == 1, err
    assert f"error: bpffs is not mounted at {tmp_path} (the dataplane pins its maps under {pins})" in err
    assert "Traceback" not in err and "dataplane loaded" not in err
    assert not pins.exists()   # nothing was made where no pin can live
