"""The lab's pod runtime: it follows the store and makes the pods that the
deployment controller wants real — a namespace, an address, a server for the
image — then reports their status so endpoints follow. One loop serves every
lab node (it also does the scheduling: the node with the fewest pods)."""
from __future__ import annotations

import logging
import threading

from controlplane.api.errors import NotFound
from controlplane.api.pod import RUNNING, Pod
from controlplane.backoff import Backoff
from controlplane.controllers.manager import reconcile
from controlplane.controllers.runtime import finish_pod, pods_to_start, pods_to_stop, set_pod_status
from controlplane.store.interface import Store

from . import plan
from .resolvconf import ResolvConf, pod_resolv_conf
from .state import PortSpec
from .topology import Lab, LabError

log = logging.getLogger("svcxdp.kubelet")


def lab_pod_name(pod: Pod) -> str:
    """Pods are named per namespace; lab pods need one flat name."""
    return pod.name if pod.namespace == "default" else f"{pod.name}.{pod.namespace}"


def _ports(pod: Pod) -> list[PortSpec]:
    out = []
    for c in pod.containers:
        for p in c.ports or []:
            if p.container_port:
                out.append(PortSpec(p.container_port, (p.protocol or "TCP").upper()))
    return out


def _resolv_conf(pod: Pod) -> str:
    node = ResolvConf.parse(plan.NODE_RESOLV_CONF)
    return pod_resolv_conf(pod, plan.CLUSTER_DNS, plan.CLUSTER_DOMAIN, node).render()


def _image(pod: Pod) -> str:
    return next((c.image for c in pod.containers if c.image), "busybox")


class Kubelet:
    def __init__(self, store: Store, lab: Lab) -> None:
        self.store = store
        self.lab = lab
        self._started: set[str] = set()  # lab pods this kubelet made (not `run --rm` clients)
        self.retry = False  # a pod failed to start: try again without waiting for a change

    def sync_once(self) -> int:
        """Start what should run, stop what should not; returns how many changed."""
        changed = 0
        self.retry = False
        nodes = {n.name: n for n in self.lab.nodes()}
        for pod in pods_to_stop(self.store):
            self.lab.remove_pod(lab_pod_name(pod))
            self._started.discard(lab_pod_name(pod))
            finish_pod(self.store, pod.namespace, pod.name, reconcile_after=False)
            log.info("pod %s/%s stopped", pod.namespace, pod.name)
            changed += 1
        for pod in pods_to_start(self.store):
            node = pod.node_name if pod.node_name in nodes else None
            try:
                handle = self.lab.add_pod(lab_pod_name(pod), node, _image(pod), _ports(pod),
                                          resolv_conf=_resolv_conf(pod),
                                          host_network=bool(pod.spec.host_network))
            except LabError as exc:
                log.warning("pod %s/%s could not start (will retry): %s", pod.namespace, pod.name, exc)
                self.retry = True
                continue
            self._started.add(handle.name)
            try:
                set_pod_status(self.store, pod.namespace, pod.name, phase=RUNNING, pod_ip=handle.ip,
                               node_name=handle.node, host_ip=nodes[handle.node].ip, ready=True,
                               reconcile_after=False)
            except NotFound:   # deleted while it started (a scale-down): stop it, go on with the rest
                self.lab.remove_pod(handle.name)
                self._started.discard(handle.name)
                log.info("pod %s/%s was deleted while it started; stopped", pod.namespace, pod.name)
                changed += 1
                continue
            log.info("pod %s/%s running on %s at %s", pod.namespace, pod.name, handle.node, handle.ip)
            changed += 1
        # Pods of ours whose object is gone (deleted outright) are stopped too.
        wanted = {lab_pod_name(p) for p in self.store.list(Pod)}
        for name in sorted(self._started - wanted):
            self.lab.remove_pod(name)
            self._started.discard(name)
            changed += 1
        if changed:
            reconcile(self.store)
        return changed

    def run(self, stop: threading.Event, poll_s: float = 0.3) -> None:
        """Follow the store until `stop`. Nothing the store does ends the loop: a failed
        wait or sync (etcd unreachable, every member down) is logged once, then retried
        with backoff until the store answers, as the agent does — a kubelet that died
        would leave pods neither started nor stopped until someone ran `lab up`."""
        rv = -1
        retry = Backoff()   # the agent's delays: 0.1 s doubling to 5 s
        while not stop.is_set():
            try:
                rv = self._follow(rv, poll_s)
            except Exception as exc:
                delay = retry.next()
                if retry.failures == 1:
                    log.exception("kubelet sync failed; retrying in %.1f s", delay)
                else:
                    log.warning("kubelet sync failed again (%s); retrying in %.1f s", exc, delay)
                stop.wait(delay)
                continue
            if retry.failures:
                log.info("kubelet recovered after %d failed attempts", retry.failures)
                retry.reset()

    def _follow(self, rv: int, poll_s: float) -> int:
        """One wait for a change after `rv` and, if there was one (or a pod to retry), a
        sync; returns the resourceVersion handled."""
        current = self.store.wait_for_change(rv, timeout=poll_s)
        if current == rv and not self.retry:
            return rv
        self.sync_once()
        # Everything up to `current` is handled; a change committed during the sync (or
        # the sync's own writes) wakes the next round. Reading the resourceVersion after
        # the sync would skip such a change for good.
        return current


def run_kubelet(state_dir: str | None, store_url: str | None = None) -> int:
    """Entry of the `svcctl lab kubelet` process that `lab up` starts."""
    import logging as _logging
    import signal
    import sys

    from controlplane.store.paths import open_store

    _logging.basicConfig(level=_logging.INFO, stream=sys.stderr,
                         format="%(asctime)s kubelet %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Kubelet(open_store(state_dir, store_url), Lab(state_dir)).run(stop)
    return 0
