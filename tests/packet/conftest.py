"""Packet tests: the real XDP program, loaded once, fed scapy packets through
BPF_PROG_TEST_RUN. Root only."""
from __future__ import annotations

import os

import pytest

from controlplane.dataplane.config import MAX_REJECT_RATE, DataplaneConfig
from controlplane.store import SqliteStore

from .harness import Harness

pytestmark = pytest.mark.root

# Small conntrack keeps loading quick; unpinned so nothing outlives the run. The answer
# budget (bpf/reject.h) out of reach: a test's or the fuzz's rejects are all answered
# (test_reject_limit.py builds its own with a small one).
TEST_CONFIG = DataplaneConfig(instance="pytest", ct_size=65536, frag_size=1024,
                              max_services=4096, max_backends=16384, max_slots=16384, pin=False,
                              reject_rate=MAX_REJECT_RATE, reject_burst=10**6)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def loaded_dataplane():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from controlplane.dataplane.program import Dataplane
    dp = Dataplane.load(TEST_CONFIG)
    yield dp
    dp.close()


@pytest.fixture
def xdp(loaded_dataplane) -> Harness:
    h = Harness(loaded_dataplane)
    h.reset()
    yield h
    h.reset()


@pytest.fixture
def store(tmp_path):
    """An empty store of the test's own (a module needing other store settings defines its
    own `store`, as test_agent_feed does)."""
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()
