"""The agent loop: full sync at start, then follow the store's change feed and
apply only the difference; a periodic consistency check re-reads the maps and
repairs drift. The dataplane is pinned, so a restarted agent adopts it."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from controlplane.controllers.service_view import load_service_views
from controlplane.dataplane.model import Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import MapWriter
from controlplane.store.interface import Store

from .desired import Desired, NodeConfig, desired_state
from .health import Health
from .interfaces import InterfaceManager

log = logging.getLogger("svcxdp.agent")


@dataclass
class SyncReport:
    added: list[str]
    changed: list[str]
    removed: list[str]
    writes: int
    took_ms: float


def _describe(state: ServiceState) -> str:
    active = sum(1 for b in state.backends if b.state == "active")
    return f"{active} endpoints, {state.algorithm}"


class Agent:
    def __init__(self, store: Store, node: NodeConfig, dp: Dataplane,
                 interfaces: InterfaceManager | None = None, health: Health | None = None,
                 check_every_s: float = 30.0) -> None:
        self.store = store
        self.node = node
        self.dp = dp
        self.writer = MapWriter(dp)
        self.interfaces = interfaces
        self.health = health or Health(node.name)
        self.check_every_s = check_every_s
        self._owners: dict[Frontend, str] = {}
        self._problems: tuple[str, ...] = ()
        self.resource_version = 0

    def desired(self) -> Desired:
        return desired_state(load_service_views(self.store), self.node)

    def _name(self, fe: Frontend) -> str:
        return f"{self._owners.get(fe, '?')} {fe}"

    def sync(self, reason: str) -> SyncReport:
        start = time.perf_counter()
        rv = self.store.current_resource_version()
        want = self.desired()
        self._owners.update(want.owners)
        if want.problems != self._problems:
            for p in want.problems:
                log.warning("%s", p)
            self._problems = want.problems
        before = self.writer.installed()
        desired = {s.frontend: s for s in want.states}
        writes_before = self.writer.writes
        self.writer.sync(want.states)
        report = SyncReport(
            added=[f"{self._name(fe)} ({_describe(s)})" for fe, s in desired.items() if fe not in before],
            changed=[f"{self._name(fe)}: endpoints {len(before[fe].backends)} -> {len(s.backends)}"
                     if before[fe].backends != s.backends else f"{self._name(fe)}: settings changed"
                     for fe, s in desired.items() if fe in before and before[fe] != s],
            removed=[self._name(fe) for fe in before if fe not in desired],
            writes=self.writer.writes - writes_before,
            took_ms=(time.perf_counter() - start) * 1000)
        self.resource_version = rv
        self.health.synced()
        for line in report.added:
            log.info("service added: %s", line)
        for line in report.changed:
            log.info("service changed: %s", line)
        for line in report.removed:
            log.info("service removed: %s", line)
        if report.writes or reason == "start":
            log.info("sync (%s) at resourceVersion %d: %d services, %d map writes, took %.1f ms",
                     reason, rv, len(desired), report.writes, report.took_ms)
        return report

    def check_consistency(self) -> bool:
        """Re-read the maps; if they differ from what this agent wrote, repair.
        Returns True when drift was found."""
        fresh = MapWriter(self.dp)
        if fresh.installed() == self.writer.installed():
            return False
        log.warning("dataplane drift: the maps differ from the last sync; repairing")
        self.writer = fresh
        self.sync("repair")
        return True

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        self.sync("start")
        if self.interfaces:
            self.interfaces.refresh()
        next_check = time.monotonic() + self.check_every_s
        while not stop.is_set():
            rv = self.store.wait_for_change(self.resource_version, timeout=poll_s)
            try:
                if rv != self.resource_version:
                    self.health.out_of_sync()
                    self.sync("change")
                else:
                    self.health.synced()
                if self.interfaces:
                    self.interfaces.refresh()
                if time.monotonic() >= next_check:
                    self.check_consistency()
                    next_check = time.monotonic() + self.check_every_s
            except Exception:  # keep serving; report unhealthy and retry next round
                self.health.out_of_sync()
                log.exception("sync failed; retrying")
                time.sleep(poll_s)
