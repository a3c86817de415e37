"""Leader election on an etcd lease: one `svcctl controllers` process acts, the others wait.

    election = LeaderElection(store.client, "controllers", identity="host-a:1234", ttl=5)
    election.campaign(stop)            # blocks until this process leads (or stop())
    store.fence(election.key, election.revision)   # every commit now requires our leadership
    while election.is_leader(): ...    # the keep-alive thread clears it when the lease is lost
    election.resign()

The leader key `/svcxdp/leader/<name>` is created with "create_revision == 0" under a lease
the keep-alive thread renews every ttl/3. When the leader dies, the lease expires after at
most `ttl` seconds and etcd deletes the key; the waiting candidates watch that key and the
first to create it again leads. Fencing: the store adds "the leader key's create_revision is
still ours" to every commit, so a leader that stalled past its lease (GC pause, partition)
cannot write after a successor took over: its commit fails as a CommitConflict.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .etcd_client import EtcdClient, EtcdRequestError, EtcdUnavailable, WatchBroken, b64, unb64

LEADER_PREFIX = "/svcxdp/leader/"
# A campaign the store keeps failing says why: at once, then at most this often.
FAILURE_LOG_EVERY_S = 30.0

log = logging.getLogger("svcxdp.election")


class LeaderElection:
    def __init__(self, client: EtcdClient, name: str, identity: str, ttl: int = 5) -> None:
        self.client = client
        self.key = LEADER_PREFIX + name
        self.identity = identity
        self.ttl = ttl
        self.lease: int | None = None
        self.revision = 0            # create_revision of our leader key while we lead
        self._leading = threading.Event()
        self._stopped = threading.Event()
        self._keeper: threading.Thread | None = None

    def leader(self) -> str | None:
        """The identity of the current leader, if any."""
        kvs = self.client.range(self.key).get("kvs") or []
        return unb64(kvs[0].get("value", "")) if kvs else None

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def campaign(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until this process leads (True) or stop() returns True (False)."""
        logged_at: float | None = None   # when a failure was last logged (None: none since the last success)
        while not stop():
            try:
                if self._try_acquire():
                    return True
                self._wait_for_vacancy(stop)
                logged_at = None
            except (EtcdUnavailable, EtcdRequestError, WatchBroken) as exc:
                now = time.monotonic()
                if logged_at is None or now - logged_at >= FAILURE_LOG_EVERY_S:
                    log.warning("%s: cannot campaign for the lead, retrying: %s", self.key, exc)
                    logged_at = now
                time.sleep(min(1.0, self.ttl / 5))
        return False

    def _try_acquire(self) -> bool:
        # A fresh lease per attempt: one granted before a long wait would have expired.
        lease = self.client.lease_grant(self.ttl)
        resp = self.client.txn(
            [{"key": b64(self.key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            [{"request_put": {"key": b64(self.key), "value": b64(self.identity), "lease": lease}}])
        if not resp.get("succeeded"):
            self.client.lease_revoke(lease)
            return False
        self.lease = lease
        self.revision = int(resp["header"]["revision"])
        self._leading.set()
        self._stopped.clear()
        self._keeper = threading.Thread(target=self._keep_alive, name="leader-lease", daemon=True)
        self._keeper.start()
        return True

    def _wait_for_vacancy(self, stop: Callable[[], bool]) -> None:
        """Return when the leader key is deleted (or after a while, to re-check)."""
        resp = self.client.range(self.key)
        if not resp.get("kvs"):
            return
        start = int(resp["header"]["revision"]) + 1
        with self.client.watch(self.key, start_revision=start) as stream:
            deadline = time.monotonic() + self.ttl * 2
            while not stop() and time.monotonic() < deadline:
                result = stream.next(0.1)
                if result is None:
                    continue
                if result.get("canceled"):
                    return
                if any(ev.get("type") == "DELETE" for ev in result.get("events") or []):
                    return

    def _keep_alive(self) -> None:
        """Renew the lease every ttl/3; leadership ends when renewing fails for a whole TTL
        (etcd has expired the lease by then) or etcd says the lease is gone."""
        assert self.lease is not None
        last_ok = time.monotonic()
        while not self._stopped.wait(self.ttl / 3):
            try:
                if self.client.lease_keepalive(self.lease) <= 0:
                    break
                last_ok = time.monotonic()
            except Exception:  # noqa: BLE001 - etcd unreachable: keep trying until the TTL runs out
                if time.monotonic() - last_ok >= self.ttl:
                    break
        self._leading.clear()
        self.lease = None

    def resign(self) -> None:
        """Step down now (delete the key by revoking the lease) so a successor need not wait."""
        self._stopped.set()
        lease, self.lease = self.lease, None
        self._leading.clear()
        if lease is not None:
            try:
                self.client.lease_revoke(lease)
            except Exception:  # noqa: BLE001 - the lease expires on its own
                pass
