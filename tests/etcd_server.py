"""A real etcd for tests: `etcd` (Debian's etcd-server) in a temporary directory on
127.0.0.1 with free ports, no root needed; stopped by the pid recorded at start.

    server = EtcdServer.start(tmp_dir)     # one member
    store = server.store()                 # an EtcdStore on it
    server.wipe()                          # delete every key (revisions keep counting)
    server.stop()
    members = EtcdServer.start_cluster(tmp_dir, 2)   # a cluster of members, each its own process
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EtcdServer:
    data_dir: Path
    client_port: int
    peer_port: int
    proc: subprocess.Popen | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    name: str = "test"
    cluster: str = ""     # --initial-cluster (default: this member alone)

    @classmethod
    def start(cls, directory: Path, extra: list[str] | None = None) -> "EtcdServer":
        server = cls(Path(directory) / "etcd", free_port(), free_port(), extra=list(extra or []))
        server.launch()
        return server

    @classmethod
    def start_cluster(cls, directory: Path, members: int) -> list["EtcdServer"]:
        """`members` members of one cluster, each in directory/mN (all started before any
        is waited for: a member answers only once a quorum is up)."""
        servers = [cls(Path(directory) / f"m{i}" / "etcd", free_port(), free_port(), name=f"m{i}")
                   for i in range(members)]
        cluster = ",".join(f"{s.name}=http://127.0.0.1:{s.peer_port}" for s in servers)
        for s in servers:
            s.cluster = cluster
            s.launch(wait=False)
        for s in servers:
            s.wait_up()
        return servers

    def launch(self, wait: bool = True) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir.parent / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self.cluster or f"{self.name}={peer}", "--log-level", "error",
             "--experimental-watch-progress-notify-interval", "500ms", *self.extra],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        (self.data_dir.parent / "etcd.pid").write_text(str(self.proc.pid))
        if wait:
            self.wait_up()

    def wait_up(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: see {self.data_dir.parent / 'etcd.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    pass
                self.client().range("/")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError("etcd did not come up in 20 s")

    def client(self):
        from controlplane.store.etcd_client import EtcdClient, parse_endpoints
        return EtcdClient(parse_endpoints(self.url), retry_for=2.0)

    def store(self):
        from controlplane.store.paths import open_etcd_store
        return open_etcd_store(self.url)

    def wipe(self) -> None:
        """Delete every key, then mark the store's revision as now, so that a store opened
        next sees no earlier history as its own (revisions keep counting)."""
        from controlplane.store.etcd import REVISION_KEY
        from controlplane.store.etcd_client import b64
        client = self.client()
        client.call("/kv/deleterange", {"key": b64("\0"), "range_end": b64("\0")})
        client.call("/kv/put", {"key": b64(REVISION_KEY), "value": ""})

    def stop(self) -> None:
        """Stop by the recorded pid (never by name)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
