"""Shared by every bench suite: machine info stamped into the pytest-benchmark JSON,
after a run that measured the datapath its table with the targets checked, and the
dataplane's pin root removed when the session created it.

Only hooks live here (no fixtures), so suites that do not need root or bcc
(bench_maglev.py, bench_store.py) are unaffected.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# The dataplane's pin root, as the tests keep it: removed at the end of a session that
# created it and left it empty (the memory and flows benches pin, then reset, instances).
sys.path.insert(0, str(HERE.parent))
from tests.conftest import pytest_sessionfinish, pytest_sessionstart  # noqa: E402,F401


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _bcc_version() -> str | None:
    try:
        import bcc
    except Exception:  # not installed, or no kernel headers: not this hook's business
        return None
    return getattr(bcc, "__version__", "unknown")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["kernel"] = platform.release()
    machine_info["kernel_version"] = platform.version()
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["clocksource"] = _read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    machine_info["bpf_jit_enable"] = _read("/proc/sys/net/core/bpf_jit_enable")
    machine_info["bcc_version"] = _bcc_version()
    machine_info["python_version"] = platform.python_version()
    machine_info["python_executable"] = sys.executable


def _load_report():
    spec = importlib.util.spec_from_file_location("svcxdp_bench_report", HERE / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return
    entries = [{"name": b.name, "extra_info": dict(b.extra_info)} for b in session.benchmarks
               if b.extra_info.get("suite") == "datapath"]
    if not entries:
        return
    report = _load_report()
    terminalreporter.write_sep("-", "svcxdp datapath: per-packet cost and targets")
    terminalreporter.write_line(report.render(entries, machine=None))
