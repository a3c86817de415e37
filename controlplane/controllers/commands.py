"""svcctl controllers: run the controllers (deployments, endpoints, garbage collection, LB-IPAM)
in the foreground, following the store's change feed.

Only one process may act at a time. On etcd, the processes (on any machines) elect a leader
on an etcd lease (store.etcd_election); the others wait and take over within the lease TTL
when it dies, and the leader's commits are fenced with its lease key, so a deposed leader
cannot write. On SQLite (one machine) an exclusive lock on `<state dir>/controllers.lock`
plays the same part.
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable


def register(sub: argparse._SubParsersAction) -> None:
    from controlplane.store.paths import add_store_flags
    p = sub.add_parser("controllers", help="run the controllers (one active process; leader election on etcd)")
    p.add_argument("--state-dir", default=None, help="SQLite store folder (env SVCXDP_STATE_DIR)")
    add_store_flags(p)
    p.add_argument("--lease-ttl", type=int, default=5, metavar="S",
                   help="etcd: seconds a dead leader keeps the lead before another process takes over")
    p.add_argument("--identity", default=None, help="this process in the leader key (default HOST:PID)")
    p.add_argument("--resync", type=float, default=1.0, metavar="S",
                   help="longest wait between passes without a change (grace periods expire)")
    p.set_defaults(func=run)


class FileLock:
    """One machine's election: an exclusive flock, released when the process dies."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._held = False

    def campaign(self, stop: Callable[[], bool]) -> bool:
        while not stop():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = True
                return True
            except BlockingIOError:
                time.sleep(0.2)
        return False

    def is_leader(self) -> bool:
        return self._held

    def resign(self) -> None:
        if self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False


def run(args: argparse.Namespace) -> int:
    from controlplane.errors import CommandError
    from controlplane.store.etcd import EtcdStore, FencedOut
    from controlplane.store.etcd_election import LeaderElection
    from controlplane.store.interface import StoreUnavailable
    from controlplane.store.paths import open_store_from_args, resolve_state_dir

    from .manager import reconcile

    identity = args.identity or f"{socket.gethostname()}:{os.getpid()}"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s controllers[{identity}] %(levelname)s %(message)s")
    log = logging.getLogger("svcxdp.controllers")
    try:
        store = open_store_from_args(args)
    except StoreUnavailable as exc:
        raise CommandError(str(exc)) from None
    try:
        # Something other than etcd on the URL fails here, in one line naming it (cli.py);
        # a store out of reach is waited for, the campaign saying why.
        store.current_resource_version()
    except StoreUnavailable as exc:
        log.warning("store unavailable, waiting for it: %s", exc)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if isinstance(store, EtcdStore):
        election = LeaderElection(store.client, "controllers", identity, ttl=args.lease_ttl)
    else:
        election = FileLock(resolve_state_dir(args.state_dir) / "controllers.lock")
    try:
        while not stop.is_set():
            log.info("waiting to lead")
            if not election.campaign(stop.is_set):
                break
            log.info("leading")
            if isinstance(election, LeaderElection):
                store.fence(election.key, election.revision)
            try:
                while election.is_leader() and not stop.is_set():
                    rv = store.current_resource_version()
                    writes = reconcile(store)
                    if writes:
                        log.info("reconciled: %d writes", writes)
                    store.wait_for_change(rv if not writes else store.current_resource_version(), args.resync)
            except FencedOut as exc:
                log.warning("lost the lead: %s", exc)
            except StoreUnavailable as exc:
                log.warning("store unavailable: %s", exc)
                stop.wait(1.0)
            finally:
                if isinstance(store, EtcdStore):
                    store.unfence()
            if not election.is_leader():
                log.info("no longer leading")
    finally:
        election.resign()
        store.close()
    return 0
