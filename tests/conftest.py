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
    _no_mac_lookups()


def _no_mac_lookups() -> None:
    """Tests build frames with scapy only to hand them to BPF_PROG_TEST_RUN. A frame
    without a destination MAC makes scapy find one: for an IP payload it asks ARP, from
    the root namespace, about the route to that address (the machine's gateway, outside
    any lab). So no lookup is ever made: such a frame raises instead, and its test
    names both MACs. (The bench's conftest shares this hook.)"""
    import scapy.layers.l2  # noqa: F401 (makes conf.neighbor)
    from scapy.config import conf
    conf.neighbor.resolve = lambda l2, l3: None   # whatever layers register later
    conf.raise_no_dst_mac = True


def pytest_sessionfinish(session, exitstatus):
    if not _pin_root_existed:
        remove_pin_root_if_empty()
