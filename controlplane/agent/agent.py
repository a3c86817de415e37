"""The agent loop: a full sync at start, then the source's change feed drives
incremental syncs that recompute only the services a change touched; a periodic
consistency check re-reads the maps and repairs drift. The dataplane is pinned, so
a restarted agent adopts it and flushes nothing."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from controlplane.api.errors import Gone
from controlplane.backoff import Backoff
from controlplane.api.meta import parse_timestamp
from controlplane.controllers.events import WARNING, EventRecorder, Involved
from controlplane.dataplane.model import Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.writer import CapacityError, MapWriter
from controlplane.gcpause import paused_gc, sweep_if_due
from controlplane.memtrim import release_free_memory

from .cache import TEXT_KINDS, WATCHED_KINDS, ServiceCache, ServiceKey
from .desired import Claim, Desired, NodeConfig, claim_rank, conflict, desired_each, desired_served, settle
from .health import Health
from .healthcheck import ServiceHealthServers
from .interfaces import InterfaceManager
from .source import NoEvents, Source, source_takes_events

log = logging.getLogger("svcxdp.agent")


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)   # frontends that do not fit the maps
    writes: int = 0
    took_ms: float = 0.0
    # per endpoint change this sync programmed: seconds from its trigger time to the maps written
    programming_s: list[float] = field(default_factory=list)


def _endpoints(state: ServiceState) -> str:
    active = [b for b in state.backends if b.state == "active"]
    text = f"{len(active)} endpoints, {state.algorithm}"
    if log.isEnabledFor(logging.DEBUG):   # `agent -v`: which ones (the soak reads them)
        text += ": " + (" ".join(f"{b.ip}:{b.port}" for b in active) or "none")
    return text


class Agent:
    metrics = None   # agent.metrics.SyncMetrics when /metrics is served: told of every sync
    # Told the UDP backend addresses (ip, port) each sync took out of a frontend, when the
    # socket hooks serve this node: their connected sockets are aborted (agent/sockreap_loop.py).
    udp_backends_left: Callable[[set[tuple[str, int]]], None] | None = None
    # Called once the first sync has filled a dataplane that replaced one of another layout
    # (Dataplane.replaced): what else runs over its maps is attached then (the socket hooks).
    when_filled: Callable[[], None] | None = None

    def __init__(self, source: Source, node: NodeConfig, dp: Dataplane,
                 interfaces: InterfaceManager | None = None, health: Health | None = None,
                 check_every_s: float = 30.0, service_health: ServiceHealthServers | None = None,
                 retry_max_s: float = 5.0, check_max_share: float = 0.005) -> None:
        self.source = source   # svcxdp's store, or the Kubernetes API (agent/source.py)
        self.node = node
        self._zone = node.zone   # the zone set_zone was told last (run() applies it)
        self.dp = dp
        self.writer = MapWriter(dp)
        self.interfaces = interfaces
        self.health = health or Health(node.name)
        self.check_every_s = check_every_s
        self.check_max_share = check_max_share   # of the agent's time, at most (CheckSchedule)
        self.service_health = service_health   # healthCheckNodePort servers (eTP Local)
        self.retry_max_s = retry_max_s   # the longest wait between retries after a failure
        self.cache = ServiceCache()
        self._owners: dict[Frontend, str] = {}
        self.owners_version = 0   # moves when some frontend's owner changes (AgentNaming)
        self._frontends: dict[ServiceKey, set[Frontend]] = {}
        # the other way round: the services whose desired state lists a frontend (two
        # when they claim one address:port: the one _settle did not pick lists it too)
        self._listed_by: dict[Frontend, set[ServiceKey]] = {}
        self._problems: dict[ServiceKey, tuple[str, ...]] = {}
        self._unprogrammed: set[Frontend] = set()   # wanted, but they do not fit the maps
        self._held: list[ServiceState] = []   # states a sync found in adopted records (full_sync)
        # Kubernetes events for what an operator should see (written at once, never fatal),
        # into svcxdp's store; a read-only source (the Kubernetes API) gets none: the
        # same problems are in the agent's log
        self.events = EventRecorder(source, "svcxdp-agent", node.name) if source_takes_events(source) \
            else NoEvents()

    def set_zone(self, zone: str) -> None:
        """The node's zone is now `zone` (its Node got the label after the agent started:
        kubeapi/node.py follow_node_zone). Any thread may call it; run() makes every
        service's endpoints again with it, in a full sync."""
        self._zone = zone

    def owner_of(self, frontend: Frontend) -> str:
        """`namespace/name:port` of the service a frontend serves ("" if unknown)."""
        return self._owners.get(frontend, "")

    @property
    def resource_version(self) -> int:
        return self.cache.resource_version

    # ---- computing ------------------------------------------------------------------
    def _desired_for(self, keys: Iterable[ServiceKey]) -> dict[ServiceKey, Desired]:
        """Each service's desired state, apart (made in one pass: desired_each), in the
        order of `keys`: the writer hands out ids in it."""
        keys = list(keys)
        return dict(zip(keys, desired_each([self.cache.view(key) for key in keys], self.node)))

    def _note_problems(self, key: ServiceKey, problems: tuple[str, ...]) -> None:
        if problems and problems != self._problems.get(key):
            view = self.cache.view(key)
            for p in problems:
                log.warning("%s", p)
                if view is not None:
                    self.events.record(view.service, WARNING, getattr(p, "reason", "NotServed"), p)
        self._problems[key] = problems

    def _apply(self, wants: dict[ServiceKey, Desired], report: SyncReport) -> None:
        """Make these services' frontends in the maps equal what they want: removals
        first, then every addition and change in one ordered, batched pass of the
        writer (a few syscalls per map, not per service)."""
        pending: list[tuple[ServiceState, ServiceState | None, str, ServiceKey]] = []
        gone: dict[Frontend, str] = {}   # removed in one batched pass (writer.delete_many)
        left: list[tuple[ServiceState, ServiceState | None]] = []   # (old, new) for udp_backends_left
        keeps: set[ServiceKey] = set()   # services outside this batch that keep a frontend it drops
        for key, want in wants.items():
            for fe in self._frontends.get(key, set()) - {s.frontend for s in want.states}:
                # Another service that still lists it keeps it, with its own state
                # (written again below: the maps may hold this one's).
                still = [k for k in self._listed_by.get(fe, ())
                         if k != key and (k not in wants or fe in wants[k].owners)]
                if still:
                    keeps.update(k for k in still if k not in wants)
                    continue
                self._unprogrammed.discard(fe)
                if (old := self.writer.installed_state(fe)) is not None:
                    gone[fe] = f"{self._owners.get(fe, key)} {fe}"
                    left.append((old, None))
        wants.update(self._desired_for(sorted(keeps)))
        lost = self._settle(wants)
        for want in wants.values():
            self._take_owners(want)
        self.writer.delete_many(gone)
        report.removed.extend(gone.values())
        held = self._held if self.writer.unsettled else None
        for key, want in wants.items():
            new = {s.frontend: s for s in want.states}
            for fe, state in new.items():
                old = self.writer.installed_state(fe)
                if not self.writer.holds(state):
                    pending.append((state, old, f"{want.owners.get(fe)} {fe}", key))
                elif held is not None:
                    held.append(state)
            self._list(key, set(new) | lost.get(key, set()))
            self._note_problems(key, want.problems)
        failed = self._upsert([state for state, _, _, _ in pending])
        self._unprogrammed -= {state.frontend for state, _, _, _ in pending}
        self._unprogrammed |= set(failed)
        for state, old, name, key in pending:
            if state.frontend in failed:
                report.failed.append(f"{name}: {failed[state.frontend]}")
                self._record_failure(key, state.frontend, failed[state.frontend])
            elif old is None:
                report.added.append(f"{name} ({_endpoints(state)})")
            elif old.backends != state.backends:
                left.append((old, state))
                report.changed.append(f"{name}: endpoints {len(old.backends)} -> {len(state.backends)}"
                                      f" ({_endpoints(state)})")
            else:
                report.changed.append(f"{name}: settings changed ({_endpoints(state)})")
        self._udp_left(left)
        if self.service_health is not None:
            self.service_health.update(self.cache, wants)

    def _settle(self, wants: dict[ServiceKey, Desired]) -> dict[ServiceKey, set[Frontend]]:
        """A frontend two services want goes to one, by the rule desired_state applies
        within one call (desired.settle): here each service was computed apart. Every
        other service that lists a frontend one of `wants` claims is computed again and
        joins them (it may win it, or lose it and must be told); the losers' desired
        states go without it. Returns the frontends each lost: they stay listed (_list),
        so a loser takes over when the winner lets go."""
        first: dict[Frontend, ServiceKey] = {}
        contested: dict[Frontend, list[ServiceKey]] = {}
        todo = list(wants)
        while todo:
            others: set[ServiceKey] = set()
            for key in todo:
                for fe in wants[key].owners:
                    holder = first.setdefault(fe, key)
                    if holder != key:
                        contested.setdefault(fe, [holder]).append(key)
                    listed = self._listed_by.get(fe)
                    if listed is not None and (len(listed) > 1 or key not in listed):
                        others.update(k for k in listed if k not in wants)
            todo = sorted(others)
            wants.update(self._desired_for(todo))
        lost: dict[ServiceKey, set[Frontend]] = {}
        for fe, keys in contested.items():
            claims = []
            for key in keys:
                view, twin = self.cache.view(key), fe in wants[key].twins
                assert view is not None   # (a service without a view wants nothing)
                claims.append(Claim(wants[key].owners[fe], twin, claim_rank(view, twin)))
            winner = settle(claims)
            for key, claim in zip(keys, claims):
                if claim is not winner:
                    wants[key] = wants[key].without(fe, conflict(fe, claim, winner))
                    lost.setdefault(key, set()).add(fe)
        return lost

    def _take_owners(self, want: Desired) -> None:
        """Record who owns `want`'s frontends; a change of owner moves owners_version."""
        if any(self._owners.get(fe) != owner for fe, owner in want.owners.items()):
            self._owners.update(want.owners)
            self.owners_version += 1

    def _list(self, key: ServiceKey, frontends: set[Frontend]) -> None:
        """Record the frontends a service's desired state lists now."""
        before = self._frontends.get(key, set())
        for fe in before - frontends:
            listed = self._listed_by[fe]
            listed.discard(key)
            if not listed:
                del self._listed_by[fe]
        for fe in frontends - before:
            self._listed_by.setdefault(fe, set()).add(key)
        self._frontends[key] = frontends

    def _udp_left(self, changes: list[tuple[ServiceState, ServiceState | None]]) -> None:
        """Tell udp_backends_left the addresses of UDP frontends' backends that are in an
        old state and not in its new one (a removed frontend's: all of them)."""
        if self.udp_backends_left is None:
            return
        left: set[tuple[str, int]] = set()
        for old, new in changes:
            if old.frontend.protocol == "UDP":
                kept = {(b.ip, b.port) for b in new.backends} if new is not None else set()
                left.update(a for b in old.backends if (a := (b.ip, b.port)) not in kept)
        if left:
            self.udp_backends_left(left)

    def _record_failure(self, key: ServiceKey, fe: Frontend, exc: CapacityError) -> None:
        view = self.cache.view(key)
        if view is not None:   # each retry that fails again raises the event's count
            self.events.record(view.service, WARNING, "FailedProgramming",
                               f"{fe} does not fit the dataplane's maps on {self.node.name}: {exc}; "
                               "retried at the next change or consistency check")

    def _upsert(self, states: list[ServiceState]) -> dict[Frontend, CapacityError]:
        """Write `states` in one batch; if that does not fit (the writer checks all
        before writing any) or two services claim one frontend, one by one, so one
        service that does not fit blocks no other. Returns the ones that failed; they
        are retried by the next sync that touches them and by the consistency check."""
        if len({s.frontend for s in states}) == len(states):
            try:
                self.writer.upsert_many(states)
                return {}
            except CapacityError:
                pass
        failed: dict[Frontend, CapacityError] = {}
        for state in states:   # a frontend listed twice: the later state wins
            try:
                self.writer.upsert(state)
            except CapacityError as exc:
                failed[state.frontend] = exc
        # Once more for those: a later one that shrank may have made their room.
        for state in [s for s in states if s.frontend in failed]:
            try:
                self.writer.upsert(state)
                del failed[state.frontend]
            except CapacityError as exc:
                failed[state.frontend] = exc
        return failed

    def _report_health(self) -> None:
        """/healthz answers 503 while a service could not be programmed."""
        if self._unprogrammed:
            self.health.out_of_sync()
        else:
            self.health.synced()

    def _log(self, reason: str, report: SyncReport, services: int) -> None:
        if self.metrics is not None:
            self.metrics.synced(report)
        for line in report.added:
            log.info("service added: %s", line)
        for line in report.changed:
            log.info("service changed: %s", line)
        for line in report.removed:
            log.info("service removed: %s", line)
        for line in report.failed:
            log.error("service not programmed: %s", line)
        if report.writes or reason != "change":
            log.info("sync (%s) at resourceVersion %d: %d services touched, %d map writes, took %.1f ms",
                     reason, self.resource_version, services, report.writes, report.took_ms)

    # ---- syncing --------------------------------------------------------------------
    def full_sync(self, reason: str, cache: ServiceCache | None = None) -> SyncReport:
        """Make the maps equal the store: from `cache` (a fresh read) or a new read."""
        with paused_gc():
            try:
                report = self._full_sync(reason, cache)
            finally:
                self._settle_held()
        release_free_memory()   # the store's JSON, read and dropped, leaves the process
        return report

    def _full_sync(self, reason: str, cache: ServiceCache | None) -> SyncReport:
        start = time.perf_counter()
        writes = self.writer.writes
        self.cache = cache if cache is not None else ServiceCache.load(self.source)
        report = SyncReport()
        self.writer.repair_adopted()
        # In the cache's order, which is the source's (namespace, name): the order the
        # services' objects were made in. Walked in a set's hash order instead, the views,
        # the desired states and the writer's rows each miss the CPU's caches (measured
        # at 10,000 services: ~0.1 s of a 1.1 s start).
        services = self.cache.services
        keys = list(services) + [key for key in self._frontends if key not in services]
        wants = self._desired_for(keys)
        # Frontends in the maps that no service owns (left by an earlier agent) go too.
        owned = {fe for fes in self._frontends.values() for fe in fes}
        wanted = {s.frontend for want in wants.values() for s in want.states}
        unowned = set(self.writer.installed()) - owned - wanted
        unowned_states = [(old, None) for fe in unowned if (old := self.writer.installed_state(fe)) is not None]
        self.writer.delete_many(unowned)
        self._udp_left(unowned_states)
        report.removed += [f"(unowned) {fe}" for fe in unowned]
        self._apply(wants, report)
        report.writes = self.writer.writes - writes
        report.took_ms = (time.perf_counter() - start) * 1000
        self._report_health()
        self._log(reason, report, len(keys))
        return report

    def incremental_sync(self, upto: int | None = None) -> SyncReport:
        """Apply the change feed since the cache's resourceVersion (up to `upto` only,
        when given); a feed compacted past it (Gone) means a relist. Bulk work when a
        store transaction of thousands of objects arrives: the collector waits (its
        young collections would move every decoded event into the oldest generation)."""
        with paused_gc():
            try:
                return self._incremental_sync(upto)
            finally:
                self._settle_held()

    def _settle_held(self) -> None:
        """A restart's adopted records take the objects of the states a sync found the
        maps hold (MapWriter.settle): after the sync's report is timed, as nothing waits
        for it; then only the first sync after a restart has any."""
        try:
            self.writer.settle(self._held)
        finally:
            self._held.clear()

    def _incremental_sync(self, upto: int | None) -> SyncReport:
        start = time.perf_counter()
        writes = self.writer.writes
        current = self.source.current_resource_version() if upto is None else upto
        try:
            events = self.source.changes_since(self.cache.resource_version, WATCHED_KINDS, as_text=TEXT_KINDS)
        except Gone:
            log.info("change feed compacted past resourceVersion %d: full resync", self.cache.resource_version)
            return self.full_sync("relist")
        if upto is not None:
            events = [ev for ev in events if ev.resource_version <= upto]
        triggers: list[tuple[str, str, str]] = []
        touched = self.cache.apply(events, triggers)
        self.cache.resource_version = max(self.cache.resource_version, current)
        report = SyncReport()
        self._apply(self._desired_for(sorted(touched)), report)   # (see _full_sync)
        if touched:
            done = time.time()
            report.programming_s = [done - t for t in trigger_times(triggers)]
        report.writes = self.writer.writes - writes
        report.took_ms = (time.perf_counter() - start) * 1000
        if touched:   # lastUpdated moves when the maps did, not on every change of other kinds
            self._report_health()
            self._log("change", report, len(touched))
        return report

    def check_consistency(self) -> bool:
        """Retry services that did not fit the maps; then compare the maps, re-read, with
        a fresh read of the store (not the agent's cache, which a missed event would
        leave wrong too) and, if they differ, repair from that read. Returns True when
        drift was found."""
        if self._unprogrammed:
            keys = [k for k, fes in self._frontends.items() if fes & self._unprogrammed]
            report = SyncReport()
            self._apply(self._desired_for(keys), report)
            self._report_health()
            self._log("retry", report, len(keys))
        fresh = ServiceCache.load(self.source)
        # Bring the maps to exactly the fresh read's resourceVersion, so changes the
        # agent has simply not followed yet are not taken for drift.
        self.incremental_sync(upto=fresh.resource_version)
        if self.cache.resource_version != fresh.resource_version:
            return False   # it had to relist: the maps were just rebuilt from the store
        writer = MapWriter(self.dp)
        # lc-family connection counts drift upwards by design (bpf/lc.h): recounted
        # from conntrack on every check, not treated as drift
        recounted = writer.recount_connections()
        if recounted:
            log.info("recounted the connections of %d backends (lc family)", recounted)
        installed = writer.installed()
        want: dict[Frontend, ServiceState] = {}
        for s in desired_served(fresh.views(), self.node).states:
            if s.frontend not in self._unprogrammed:
                want[s.frontend] = s
            elif s.frontend in installed:   # its update did not fit: the old state stays
                want[s.frontend] = installed[s.frontend]
        if installed == want and not writer.adoption_drift:
            self._report_health()   # verified: the maps hold what the store wants
            return False
        what = "; ".join(writer.drift_report()) or "services differ"
        log.warning("dataplane drift: the maps differ from the store; repairing (%s)", what)
        self.writer = writer
        self.full_sync("repair", fresh)
        self.events.record(Involved("Node", self.node.name), WARNING, "DataplaneResynced",
                           f"the dataplane's maps differed from the store ({what[:300]}); repaired with a full sync")
        return True

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Sync at start, then follow the store until `stop`. Nothing the store does
        ends the loop: a failed sync or wait (a locked or unreachable store) turns
        /healthz to 503 and is retried with backoff, as a full resync, while the
        dataplane keeps serving what it holds."""
        retry = Backoff(first_s=min(0.1, self.retry_max_s), max_s=self.retry_max_s)
        resync: str | None = "start"   # a full sync is due (at start, after a failure)
        checks = CheckSchedule(self.check_every_s, self.check_max_share)
        # A dataplane that replaced one of another layout (Dataplane.load) starts empty: the
        # interfaces keep the old program, over its own maps, until the first sync has
        # filled the new ones (else every service would be gone for the sync's duration;
        # with a store out of reach, until it answers).
        filling = bool(self.dp.replaced)
        if filling:
            log.info("the interfaces keep the old dataplane's programs until the first sync has filled "
                     "the new maps")
        while not stop.is_set():
            self.health.beat()
            if self._zone != self.node.zone:   # (topology hints are followed by the new zone)
                log.info("node %s is in zone %r now (was %r): every service's endpoints are chosen again",
                         self.node.name, self._zone, self.node.zone)
                self.node = replace(self.node, zone=self._zone)
                resync = resync or "zone"
            if not filling:
                self._refresh_interfaces()
            filled = False
            try:
                if resync is not None:
                    if resync == "retry":   # the maps may be half updated: adopt them afresh
                        self.writer = MapWriter(self.dp)
                    started, cpu = time.monotonic(), time.process_time()
                    self.full_sync(resync)
                    resync = None
                    filled, filling = filling, False
                    ended = time.monotonic()
                    checks.synced(ended, checks.cost(ended - started, time.process_time() - cpu))
                    if self.metrics is not None:
                        self.metrics.scheduled(checks.next_at - time.monotonic())
                else:
                    rv = self.source.wait_for_change(self.resource_version, timeout=poll_s)
                    quiet = rv == self.resource_version
                    if not quiet:
                        # A pod's interface exists before its endpoint turns ready:
                        # serve it first, or the pod's replies to flows this sync sends
                        # it leave without reverse NAT (the client drops them).
                        self._refresh_interfaces()
                        self.incremental_sync()
                    else:
                        self.health.alive()
                        self._sweep()   # quiet for a poll: a full collection costs nothing now
                    if checks.due(time.monotonic(), quiet):
                        started, cpu = time.monotonic(), time.process_time()
                        self.check_consistency()
                        ended = time.monotonic()
                        checks.checked(started, ended, time.process_time() - cpu)
                        if self.metrics is not None:
                            self.metrics.checked(checks.took_s, checks.next_at - ended)
            except Exception as exc:
                self.health.out_of_sync()
                if self.metrics is not None:
                    self.metrics.sync_failed()
                delay = retry.next()
                if retry.failures == 1:
                    log.exception("sync failed; the dataplane keeps its state; retrying in %.1f s", delay)
                else:
                    log.warning("sync failed again (%s); retrying in %.1f s", exc, delay)
                # The maps may be half updated and the cache half applied: start over
                # from the maps as they are and a fresh read of the store.
                resync = "retry"
                stop.wait(delay)
                continue
            if filled:
                self._take_over()
            if retry.failures:
                log.info("sync recovered after %d failed attempts", retry.failures)
                retry.reset()

    def _take_over(self) -> None:
        """A replaced dataplane's maps are filled: its programs go where the old ones ran
        (the interfaces, then the socket hooks: when_filled, whose failure ends the agent
        as the hooks' attach at start does), and the old maps' pins go after them
        (Dataplane.finish_replacement: the old external program's tail calls lived on them)."""
        self._refresh_interfaces()
        if self.when_filled is not None:
            self.when_filled()
        self.dp.finish_replacement()
        log.info("the new dataplane serves every interface; the old one's maps are unpinned")

    def _sweep(self) -> None:
        """The collector's sweep of the long-lived heap, when due (gcpause.sweep_if_due;
        only in a process that holds it: `svcctl agent`)."""
        done = sweep_if_due()
        if done is not None:
            log.info("gc: swept the long-lived heap in %.1f ms (%d unreachable objects freed, %d kept frozen)",
                     done.seconds * 1000, done.collected, done.frozen)

    def _refresh_interfaces(self) -> None:
        """Attach to new interfaces whatever the store does (pods come and go)."""
        if not self.interfaces:
            return
        try:
            self.interfaces.refresh()
        except Exception:
            log.exception("attaching to interfaces failed; retrying")


def trigger_times(triggers: list[tuple[str, str, str]]) -> list[float]:
    """The distinct trigger times (Unix seconds) of the changed EndpointSlices, from their
    (namespace, name, endpoints.kubernetes.io/last-change-trigger-time) as ServiceCache.apply
    lists them (the endpoints controller sets the annotation); unparsable stamps are skipped."""
    out = []
    for stamp in {(ns, name, stamp): stamp for ns, name, stamp in triggers}.values():
        try:
            out.append(parse_timestamp(stamp).timestamp())
        except ValueError:
            continue
    return out


@dataclass
class CheckSchedule:
    """When the periodic consistency check runs. It re-reads the store and the maps whole
    (~1.6 s at 10,000 x 10 on a 2-vCPU machine), and a change that arrives meanwhile
    waits for it: every 30 s that would hold back ~5 % of changes by up to the check's
    time. So a check runs at least `interval` apart, and after one that took T the next
    waits T / max_share (at the default 0.5 %: 200 T, ~5 min at 10,000 x 10; kube-proxy
    resyncs everything hourly at scale); and it waits for a poll that brought no change
    (a burst of changes is not held up behind it), unless that has not come for a whole
    `interval` more.
    What a check or sync is charged (`cost`) is its time on the clock, unless most of that
    was waiting rather than work: then twice its CPU time. Charged by the clock alone, a
    6 s retry sync after an etcd hiccup (timeouts, not work) put the next check 20
    minutes out — the safety net off just when drift is likeliest."""
    interval: float
    max_share: float = 0.005
    next_at: float = 0.0
    took_s: float = 0.0     # the last check's time (the clock's)

    @staticmethod
    def cost(wall_s: float, cpu_s: float) -> float:
        return min(wall_s, 2 * cpu_s)

    def synced(self, ended: float, cost: float) -> None:
        """A full sync charged `cost` (cost()) just made the maps equal to the store: the
        next check as after a check of that cost (a full sync reads the store and writes
        the maps whole, of the order of a check's reads: the start sync at 10,000 x 10
        is ~1 s)."""
        self.next_at = ended + max(self.interval, cost / self.max_share)

    def due(self, now: float, quiet: bool) -> bool:
        return now >= self.next_at and (quiet or now >= self.next_at + self.interval)

    def checked(self, started: float, ended: float, cpu_s: float) -> None:
        self.took_s = ended - started
        self.synced(ended, self.cost(self.took_s, cpu_s))
