"""The lab kubelet outlives a store outage: every etcd member down makes the store's
wait raise EtcdUnavailable, which must be logged once and retried with backoff, not end
the loop (a dead kubelet starts and stops no pod until someone runs `lab up`)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from controlplane.api.pod import Pod
from controlplane.lab.kubelet import Kubelet
from controlplane.store import SqliteStore
from controlplane.store.etcd_client import EtcdUnavailable


class OutageStore:
    """A real store whose first `failures` waits fail as etcd's do with no member up."""

    def __init__(self, inner: SqliteStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def wait_for_change(self, resource_version: int, timeout: float) -> int:
        if self.failures:
            self.failures -= 1
            raise EtcdUnavailable("etcd at http://192.0.2.1:2379 is unavailable (connection refused)")
        return self.inner.wait_for_change(resource_version, timeout)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class NoNodes:
    """The lab as the kubelet sees it when there is nothing to run."""

    def nodes(self) -> list:
        return []


def wait_until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_the_kubelet_survives_a_store_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = OutageStore(SqliteStore(tmp_path / "s.db"), failures=3)
    kubelet = Kubelet(store, NoNodes())   # type: ignore[arg-type]
    syncs: list[int] = []
    real_sync = kubelet.sync_once
    kubelet.sync_once = lambda: syncs.append(1) or real_sync()   # type: ignore[method-assign]
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="svcxdp.kubelet")
    thread = threading.Thread(target=kubelet.run, args=(stop,), kwargs={"poll_s": 0.05}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: syncs), "the kubelet never synced after the store came back"
        assert thread.is_alive(), "the kubelet's loop ended on a store outage"
        assert store.list(Pod) == []   # the store answers again, and the loop follows it
    finally:
        stop.set()
        thread.join(timeout=10)
        store.inner.close()
    assert not thread.is_alive()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "EtcdUnavailable" in caplog.text   # once, then one line per retry
    assert "kubelet recovered after 3 failed attempts" in caplog.text
