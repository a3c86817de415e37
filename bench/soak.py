#!/usr/bin/env python3
"""`make soak` (issue 14): endpoint churn and agent restarts under continuous traffic.

    .venv/bin/python bench/soak.py [--seconds 300] [--churn-every 0.2] [--restart-every 30]

A 2-node lab (namespaces `svcxdp-soak-*`, state in a fresh /tmp folder, both removed at
the end) runs a Deployment `soak` (ikubernetes/myapp: /hostname.html answers the pod's
name) behind a ClusterIP, and a Deployment `decoy` behind another ClusterIP. For the
whole run:
- churn: every --churn-every seconds `soak` is scaled 1 <-> 10 (pods created and
  deleted), and every 2 s one of its pods is deleted outright;
- restarts: every --restart-every seconds one node's agent (alternating) is killed with
  SIGKILL (its recorded pid) and started again as `svcctl lab up` does;
- traffic: a client pod on node1 sends HTTP requests to the `soak` ClusterIP
  back to back, one connection each;
- a follower records every change of the service's endpoint set (pod names).

Reported (printed, and bench/results/soak.json): requests sent, answered, failed (by
cause), and the answers from a pod that was not an endpoint of `soak` at that moment
(within GRACE_S of it, the time a change takes to reach the maps): `misrouted` (a pod of
another service or never an endpoint) must be 0; `stale` (a former endpoint, later than
GRACE_S after it left) is split by whether an agent was down then (the maps stay as they
were while it restarts, as iptables rules do while kube-proxy is down); `follower_late`
counts answers from a pod the follower saw join only just after (FOLLOWER_SLACK_S).

The agents run with -v: each change they program is logged with its endpoints' addresses.
When the soak fails (or with --keep-agent-logs), their logs are kept in bench/results/soak-agents/ and each wrong
answer is reported with its wall-clock time and the answering pod's addresses, so it can
be matched against what the agents programmed then.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controlplane.api import Deployment, EndpointSlice, Service  # noqa: E402
from controlplane.api.errors import Conflict, Gone, NotFound  # noqa: E402
from controlplane.api.pod import Pod  # noqa: E402
from controlplane.controllers.manager import reconcile  # noqa: E402
from controlplane.controllers.registry import Manifest, Registry  # noqa: E402
from controlplane.dataplane.config import PIN_ROOT, remove_pin_root_if_empty  # noqa: E402
from controlplane.lab import hooks, netns, procs  # noqa: E402
from controlplane.lab.topology import Lab  # noqa: E402
from controlplane.store.interface import DELETED  # noqa: E402
from controlplane.store.paths import open_store  # noqa: E402
from manifests import deployment, service  # noqa: E402

PREFIX = "svcxdp-soak"
GRACE_S = 1.0
# The follower stamps an endpoint set when it reads it, which can be after an agent (another
# process) programmed it and a request was answered by it: the soak's own process is busy
# with the churn's reconciles. An answer from a pod the follower saw join within this long
# after the answer is counted as `follower_late`, not stale: a pod never comes back once it
# left (each is deleted for good), so a pod seen joining only after the answer had not left.
FOLLOWER_SLACK_S = 0.5
IMAGE = "ikubernetes/myapp:v1"


@dataclass
class Result:
    start: float
    end: float
    pod: str | None = None       # who answered
    error: str | None = None     # why not


@dataclass
class Timeline:
    """The service's endpoint sets (pod names) over time, as the store had them."""
    times: list[float] = field(default_factory=list)
    sets: list[frozenset[str]] = field(default_factory=list)
    ever: set[str] = field(default_factory=set)

    def add(self, t: float, pods: frozenset[str]) -> None:
        if not self.sets or self.sets[-1] != pods:
            self.times.append(t)
            self.sets.append(pods)
            self.ever |= pods

    def during(self, start: float, end: float) -> list[frozenset[str]]:
        """Every set in effect at some moment of [start, end]."""
        first = max(0, bisect_right(self.times, start) - 1)
        last = bisect_right(self.times, end)
        return self.sets[first:last] or self.sets[-1:]

    def after(self, start: float, end: float) -> list[frozenset[str]]:
        """The sets recorded within (start, end]."""
        return self.sets[bisect_right(self.times, start):bisect_right(self.times, end)]


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
        self.lab = Lab(self.state_dir, prefix=PREFIX)
        self.results: list[Result] = []
        self.timeline = Timeline()         # serving endpoints (ready, or terminating and serving)
        self.ready = Timeline()            # ready endpoints: a pod leaves this one when deleted
        self.addresses: dict[str, set[str]] = {}   # pod name -> the addresses its endpoints listed
        self.outages: list[tuple[float, float]] = []   # agent killed -> its first sync after restart
        self.churn_writes = 0
        self.pods_deleted = 0
        self.restarts = 0
        self.errors: list[str] = []

    # ---- setup ------------------------------------------------------------------------
    def setup(self) -> None:
        store = open_store(self.state_dir)
        Registry(store).apply([Manifest(d) for d in (deployment("soak", 3, IMAGE), service("soak"),
                                                      deployment("decoy", 2, IMAGE), service("decoy"))])
        reconcile(store)
        self.lab.up(nodes=2, node_processes=_verbose_agents)
        self.vip = store.get(Service, "default", "soak").spec.cluster_ip
        self.client = self.lab.add_pod("client-soak", "node1", "busybox")
        self._wait_for_agents()
        deadline = time.monotonic() + 180
        while self._answer()[0] is None:   # the agents have programmed soak and a pod runs
            if time.monotonic() > deadline:
                raise RuntimeError("the soak service never answered")
            time.sleep(0.5)
        store.close()

    def _agent_logs(self) -> dict[str, Path]:
        return {p.node: Path(p.log) for p in self.lab.status().processes if p.name == "agent"}

    @staticmethod
    def _syncs(log: Path) -> int:
        return log.read_text(errors="replace").count("sync (start)")

    def _wait_for_agents(self, counts: dict[str, int] | None = None, timeout: float = 300) -> None:
        """Until each agent has logged one more first sync than `counts` says."""
        deadline = time.monotonic() + timeout
        counts = counts or {}
        while True:
            logs = self._agent_logs()
            if all(self._syncs(log) > counts.get(node, 0) for node, log in logs.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("an agent did not come up")
            time.sleep(0.2)

    # ---- the workers --------------------------------------------------------------------
    def _answer(self) -> tuple[str | None, str | None]:
        """One HTTP request to the soak ClusterIP from the client pod: (pod, error)."""
        def request() -> tuple[str | None, str | None]:
            try:
                with socket.create_connection((self.vip, 80), timeout=2) as s:
                    s.sendall(b"GET /hostname.html HTTP/1.0\r\nHost: soak\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
            except ConnectionRefusedError:
                return None, "refused"
            except ConnectionResetError:
                return None, "reset"
            except socket.timeout:
                return None, "timeout"
            except OSError as exc:
                return None, type(exc).__name__
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
                return None, "bad response"
            return body.decode(errors="replace").strip(), None
        return netns.call_in(self.client.netns, request)

    def traffic(self) -> None:
        while not self.stop.wait(self.args.interval):
            start = time.monotonic()
            pod, error = self._answer()
            self.results.append(Result(start, time.monotonic(), pod, error))

    def follow_endpoints(self) -> None:
        """Every endpoint set the store went through: the slices listed once, then each
        change replayed in order (a list at each wake-up would skip the sets of changes
        that came together, and a pod in only such a set would look never to have been
        an endpoint)."""
        store = open_store(self.state_dir)
        rv, slices = self._list(store)
        while not self.stop.is_set():
            if store.wait_for_change(rv, 0.5) == rv:
                continue
            try:
                events = store.changes_since(rv, [EndpointSlice])
            except Gone:   # compacted past us: list afresh
                rv, slices = self._list(store)
                continue
            for ev in events:
                rv = max(rv, ev.resource_version)
                es = ev.object
                if ev.type == DELETED or not self._ours(es):
                    slices.pop(es.name, None)
                else:
                    slices[es.name] = es
                self._record(slices)
        store.close()

    def _list(self, store) -> tuple[int, dict[str, EndpointSlice]]:
        """The store's version, then the service's slices by name, recorded."""
        rv = store.current_resource_version()
        slices = {es.name: es for es in store.list(EndpointSlice, "default") if self._ours(es)}
        self._record(slices)
        return rv, slices

    @staticmethod
    def _ours(es: EndpointSlice) -> bool:
        return es.namespace == "default" and es.labels.get("kubernetes.io/service-name") == "soak"

    def _record(self, slices: dict[str, EndpointSlice]) -> None:
        serving, ready = set(), set()
        for es in slices.values():
            for ep in es.endpoints or []:
                ref = ep.target_ref
                if ref is None or not ref.name:
                    continue
                self.addresses.setdefault(ref.name, set()).update(ep.addresses)
                if ep.ready or ep.serving:
                    serving.add(ref.name)
                if ep.ready and not ep.conditions.terminating:
                    ready.add(ref.name)
        now = time.monotonic()
        self.timeline.add(now, frozenset(serving))
        self.ready.add(now, frozenset(ready))

    def churn(self) -> None:
        store = open_store(self.state_dir)
        registry = Registry(store)
        replicas, next_delete = 1, time.monotonic() + 2
        while not self.stop.wait(self.args.churn_every):
            try:
                dep = store.get(Deployment, "default", "soak")
                dep.spec.replicas = replicas
                registry.update(dep)
                replicas = 11 - replicas                    # 1 <-> 10
                if time.monotonic() >= next_delete:
                    pods = [p for p in store.list(Pod, "default") if p.labels.get("app") == "soak"
                            and p.ip and not p.terminating]
                    if pods:   # the last one too: refusals while the service is empty are by design
                        registry.delete(Pod, "default", random.choice(pods).name)
                        self.pods_deleted += 1
                    next_delete = time.monotonic() + 2
                reconcile(store)
                self.churn_writes += 1
            except (Conflict, NotFound):
                continue
            except Exception as exc:   # the soak goes on; the report says what happened
                self.errors.append(f"churn: {exc!r}")
        store.close()

    def restart_agents(self) -> None:
        node = 1
        while not self.stop.wait(self.args.restart_every):
            name = f"node{node}"
            node = 3 - node
            rec = next((p for p in self.lab.status().processes if p.node == name and p.name == "agent"), None)
            if rec is None or not procs.alive(rec.pid, rec.netns):
                self.errors.append(f"restart: the agent of {name} was not running")
                continue
            counts = {n: self._syncs(log) for n, log in self._agent_logs().items()}
            killed_at = time.monotonic()
            os.kill(rec.pid, signal.SIGKILL)          # the recorded pid, checked alive in its netns
            while procs.alive(rec.pid, rec.netns):
                time.sleep(0.01)
            self.lab.up(nodes=2, node_processes=_verbose_agents)   # starts what is not running
            try:
                self._wait_for_agents({name: counts[name]})
            except RuntimeError as exc:
                self.errors.append(f"restart of {name}: {exc}")
            self.outages.append((killed_at, time.monotonic()))
            self.restarts += 1

    # ---- the run and the report --------------------------------------------------------
    def run(self) -> dict:
        workers = [threading.Thread(target=fn, name=fn.__name__, daemon=True)
                   for fn in (self.follow_endpoints, self.traffic, self.churn, self.restart_agents)]
        self.started = time.monotonic()
        self.started_wall = time.time()
        for w in workers:
            w.start()
        self.stop.wait(self.args.seconds)
        self.stop.set()
        for w in workers:
            w.join(120)
        return self.report()

    def _in_outage(self, start: float, end: float) -> bool:
        return any(a <= end and start <= b for a, b in self.outages)

    def _left_after(self, ready: frozenset[str], end: float) -> bool:
        """Some pod of `ready` was no longer ready within GRACE_S after `end`."""
        return any(not ready <= later for later in self.ready.during(end, end + GRACE_S))

    def report(self) -> dict:
        failed: dict[str, int] = {}
        explained = {"no endpoints": 0, "a pod left": 0, "the pod left just after": 0, "agent restarting": 0}
        unexplained: list[str] = []
        misrouted = stale_in_outage = stale_otherwise = follower_late = 0
        wrong: list[str] = []   # the answers that fail the soak, when
        for r in self.results:
            window = self.timeline.during(r.start - GRACE_S, r.end)
            if r.error is not None:
                failed[r.error] = failed.get(r.error, 0) + 1
                ready = self.ready.during(r.start - GRACE_S, r.end)
                if any(not s for s in ready):                                # refused by design
                    explained["no endpoints"] += 1
                elif any(a - b for a, b in zip(ready, ready[1:])):          # deleted under it
                    explained["a pod left"] += 1
                elif self._in_outage(r.start - GRACE_S, r.end):
                    explained["agent restarting"] += 1
                elif self._left_after(ready[-1], r.end):
                    # a deleted pod stops answering before the store says so: the lab
                    # kubelet kills it, then reports; the refusal is the pod's own
                    explained["the pod left just after"] += 1
                elif len(unexplained) < 10:
                    unexplained.append(f"+{r.start - self.started:.1f} s: {r.error} "
                                       f"({(r.end - r.start) * 1000:.0f} ms; endpoints {sorted(window[-1])})")
                continue
            if r.pod not in self.timeline.ever:
                misrouted += 1
                wrong.append(f"{self._when(r)}: misrouted to {r.pod!r} (endpoints {sorted(window[-1])})")
            elif not any(r.pod in s for s in window):
                if any(r.pod in s for s in self.timeline.after(r.end, r.end + FOLLOWER_SLACK_S)):
                    follower_late += 1
                elif self._in_outage(r.start - GRACE_S, r.end):
                    stale_in_outage += 1
                else:
                    stale_otherwise += 1
                    wrong.append(f"{self._when(r)}: stale {r.pod!r} {sorted(self.addresses.get(r.pod, ()))} "
                                 f"(endpoints {sorted(window[-1])})")
        total_failed = sum(failed.values())
        return {
            "seconds": self.args.seconds, "churn_every_s": self.args.churn_every,
            "restart_every_s": self.args.restart_every,
            "requests": len(self.results), "answered": len(self.results) - total_failed,
            "failed": total_failed, "failed_by_cause": failed, "failed_when": explained,
            "failed_unexplained": total_failed - sum(explained.values()), "unexplained_first": unexplained,
            "misrouted": misrouted, "stale_during_agent_restart": stale_in_outage,
            "stale_otherwise": stale_otherwise, "follower_late": follower_late, "wrong_first": wrong[:10],
            "endpoint_changes": len(self.timeline.times), "pods_ever_in_service": len(self.timeline.ever),
            "scale_writes": self.churn_writes, "pods_deleted": self.pods_deleted,
            "agent_restarts": self.restarts,
            "agent_outage_s": [round(b - a, 1) for a, b in self.outages],
            "errors": self.errors[:20],
        }

    def _when(self, r: Result) -> str:
        """A request's start, from the soak's and as the agents' logs stamp it (wall clock)."""
        wall = self.started_wall + (r.start - self.started)
        return (f"+{r.start - self.started:.1f} s ({time.strftime('%H:%M:%S', time.localtime(wall))}"
                f",{int(wall % 1 * 1000):03d})")

    def keep_agent_logs(self, into: Path) -> list[str]:
        """Copy the agents' logs (one per node, every restart appended) into `into`."""
        into.mkdir(parents=True, exist_ok=True)
        kept = []
        for node, log in self._agent_logs().items():
            shutil.copyfile(log, into / f"{node}.log")
            kept.append(str(into / f"{node}.log"))
        return kept

    def kubelet_problems(self) -> list[str]:
        """The lab kubelet's warnings and errors (a pod runtime that cannot keep up shows here)."""
        logs = [Path(p.log) for p in self.lab.status().processes if p.name == "kubelet"]
        lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()
                 if " WARNING " in line or " ERROR " in line or "Error" in line]
        return lines[-10:]

    def teardown(self) -> None:
        self.lab.down(on_down=hooks.on_lab_down)
        shutil.rmtree(self.state_dir, ignore_errors=True)


# The lab's node processes, the agents with -v (their logs list each change's endpoints).
_verbose_agents = hooks.with_args("agent", "-v")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="how long the churn runs (default 300)")
    ap.add_argument("--churn-every", type=float, default=0.2, help="seconds between scale changes")
    ap.add_argument("--restart-every", type=float, default=30.0, help="seconds between agent kills")
    ap.add_argument("--interval", type=float, default=0.005, help="seconds between the client's requests")
    ap.add_argument("--keep-agent-logs", action="store_true",
                    help="keep the agents' logs (bench/results/soak-agents/) even when the soak passes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, BPF)", file=sys.stderr)
        return 2
    Lab(tempfile.mkdtemp(prefix=f"{PREFIX}-sweep-"), prefix=PREFIX).down(on_down=hooks.on_lab_down, force=True)
    pin_root_existed = PIN_ROOT.is_dir()
    logs_dir = Path(args.out).parent / "soak-agents"
    shutil.rmtree(logs_dir, ignore_errors=True)   # an earlier failure's
    soak = Soak(args)
    try:
        soak.setup()
        print(f"soak: {args.seconds:.0f} s of churn (scale 1<->10 every {args.churn_every} s, a pod deleted "
              f"every 2 s, an agent killed every {args.restart_every:.0f} s) under traffic to {soak.vip}",
              flush=True)
        report = soak.run()
        report["kubelet_problems"] = soak.kubelet_problems()
        if report["misrouted"] or report["stale_otherwise"] or args.keep_agent_logs:
            report["agent_logs"] = soak.keep_agent_logs(logs_dir)
    finally:
        soak.teardown()
        if not pin_root_existed:   # the pin root the lab's agents made, if they left it empty
            remove_pin_root_if_empty()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        print(f"  {key}: {value}")
    ok = report["misrouted"] == 0 and report["stale_otherwise"] == 0
    print("soak:", "OK" if ok else "FAILED (answers from a pod outside the service)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
