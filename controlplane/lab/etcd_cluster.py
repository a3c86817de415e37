"""The lab's etcd cluster (`svcctl lab up --store etcd --etcd-members N`): N members of
Debian's `etcd`, each in its own namespace `<prefix>-etcdM` on the lab's LAN at
192.168.1.(20+M), data under `<state dir>/lab/etcd/etcdM/data`.

Node processes (agents, kubelet, controllers) are given the members' LAN addresses only.
Each member also listens on a unix socket next to its data (`client.sock:0`; etcd names a
unix listener host:port), which is how commands in the root namespace reach the store
without any lab address or route there: the lab records those sockets in
`<state dir>/store-url`, and every command given that state directory uses them.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from controlplane.lab import plan
from controlplane.lab.state import EtcdMemberRecord

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
SOCKET_NAME = "client.sock:0"
UNIX_PATH_MAX = 107   # sun_path, less its terminating NUL
# Larger than etcd's defaults (128 ops, 1.5 MiB) so an apply of many objects is one txn.
MAX_TXN_OPS = 10_000
MAX_REQUEST_BYTES = 32 << 20


class EtcdClusterError(RuntimeError):
    pass


def member_record(prefix: str, index: int, root: Path) -> EtcdMemberRecord:
    name = plan.etcd_member_name(index)
    directory = root / name
    socket = directory / SOCKET_NAME
    if len(str(socket)) > UNIX_PATH_MAX:
        raise EtcdClusterError(f"etcd member {name}: socket path {socket} is longer than "
                               f"{UNIX_PATH_MAX} bytes; choose a shorter --state-dir")
    return EtcdMemberRecord(name=name, index=index, netns=plan.etcd_netns(prefix, index), ip=plan.etcd_ip(index),
                            ext_mac=plan.etcd_mac(index), ext_peer_ifname=plan.etcd_uplink_peer(index),
                            dir=str(directory))


def member_argv(member: EtcdMemberRecord, members: list[EtcdMemberRecord], token: str) -> list[str]:
    """The member's command line; run with its directory as working directory (the unix
    listener's file is created there). With data present, etcd ignores the initial-* flags,
    so the same command restarts a stopped member."""
    client = f"http://{member.ip}:{plan.ETCD_CLIENT_PORT}"
    peer = f"http://{member.ip}:{plan.ETCD_PEER_PORT}"
    cluster = ",".join(f"{m.name}=http://{m.ip}:{plan.ETCD_PEER_PORT}" for m in members)
    return [ETCD, "--name", member.name, "--data-dir", str(Path(member.dir) / "data"),
            "--listen-client-urls", f"{client},unix://{SOCKET_NAME}", "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--max-txn-ops", str(MAX_TXN_OPS), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--quota-backend-bytes", str(4 << 30),
            "--experimental-watch-progress-notify-interval", "1s", "--log-level", "warn"]


def node_url(members: list[EtcdMemberRecord]) -> str:
    """What node processes are given: every member's LAN address."""
    return "etcd://" + ",".join(f"{m.ip}:{plan.ETCD_CLIENT_PORT}" for m in sorted(members, key=lambda m: m.index))


def local_url(members: list[EtcdMemberRecord]) -> str:
    """What the root namespace uses: every member's unix socket."""
    return "etcd://" + ",".join(f"unix:{Path(m.dir) / SOCKET_NAME}" for m in sorted(members, key=lambda m: m.index))


def wait_ready(url: str, timeout: float = 60.0) -> None:
    """Until the cluster serves a linearizable read (it has a leader)."""
    from controlplane.store.etcd_client import EtcdClient, parse_endpoints
    client = EtcdClient(parse_endpoints(url), timeout=2.0, retry_for=1.0)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.range("/svcxdp/")
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
            time.sleep(0.2)
    raise EtcdClusterError(f"the lab's etcd ({url}) did not serve within {timeout:.0f} s: {last}")
