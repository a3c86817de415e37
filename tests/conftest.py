"""Shared test policy: root-only tests run as root; under CI=true a skipped root test fails."""
from __future__ import annotations

import os

import pytest

from controlplane.dataplane.config import PIN_ROOT, remove_pin_root_if_empty


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip_root = pytest.mark.skip(reason="needs root (BPF, network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip_root)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too; only real skips count.
    if (os.environ.get("CI") == "true" and report.skipped and "root" in item.keywords
            and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        report.longrepr = f"root-only test skipped under CI=true: {item.nodeid}"


# The dataplane's pin root: tests pin their instances under it and remove them; the root
# itself goes too when the session created it and left it empty.
_pin_root_existed = True


def pytest_sessionstart(session):
    global _pin_root_existed
    _pin_root_existed = PIN_ROOT.is_dir()


def pytest_sessionfinish(session, exitstatus):
    if not _pin_root_existed:
        remove_pin_root_if_empty()
