"""Start a pod's server inside its namespace and wait until its ports answer."""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from controlplane.lab import netns, procs
from controlplane.lab.images import ServerSpec

REDIS_SERVER = "/usr/bin/redis-server"
READY_PROBE = b"svcxdp-ready"


class ServerError(RuntimeError):
    pass


def argv_for(spec: ServerSpec, pod: str, data_dir: Path, state_dir: Path | None = None) -> list[str] | None:
    if spec.kind == "dns":
        # The cluster DNS reads the lab's store; its upstream is the pod's resolv.conf.
        argv = [sys.executable, "-m", "controlplane.cli", "dns", "--listen", "0.0.0.0"]
        return argv + (["--state-dir", str(state_dir)] if state_dir else [])
    if spec.kind == "podserver":
        argv = [sys.executable, "-m", "controlplane.lab.podserver", "--pod", pod, "--flavour", spec.flavour]
        if spec.version:
            argv += ["--version", spec.version]
        for port in spec.tcp:
            argv += ["--tcp", str(port)]
        for port in spec.udp:
            argv += ["--udp", str(port)]
        return argv
    if spec.kind == "redis":
        data_dir.mkdir(parents=True, exist_ok=True)
        # The real server, configured like the image: all addresses, no auth, nothing on disk.
        return [
            REDIS_SERVER, "--port", str(spec.tcp[0]), "--bind", "0.0.0.0",
            "--protected-mode", "no", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(data_dir), "--logfile", "",
        ]
    return None


def start(spec: ServerSpec, pod: str, ns: str, log: Path, data_dir: Path, state_dir: Path | None = None,
          cgroup: Path | None = None) -> int | None:
    argv = argv_for(spec, pod, data_dir, state_dir)
    if argv is None:
        return None
    return procs.start(ns, argv, log, cgroup=cgroup)


def wait_ready(spec: ServerSpec, ns: str, ip: str, pid: int | None, log: Path, timeout: float = 10.0) -> None:
    """Ready = every TCP port accepts a connection and every UDP port echoes, from inside the pod."""
    if pid is None:
        return
    pending = [("tcp", p) for p in spec.tcp] + [("dns" if spec.kind == "dns" else "udp", p) for p in spec.udp]
    deadline = time.monotonic() + timeout
    while pending:
        pending = [(proto, port) for proto, port in pending if not netns.call_in(ns, _probe, proto, ip, port)]
        if not pending:
            return
        if not procs.alive(pid, ns):
            raise ServerError(f"server in {ns} exited: {_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"server in {ns} not ready on {pending} after {timeout:.0f}s: {_tail(log)}")
        time.sleep(0.02)


# A DNS query for `.` NS in class CHAOS, id 0x5358: answered at once (REFUSED) without
# asking any upstream; any answer with that id means the server is up.
DNS_PROBE = bytes.fromhex("535801000001000000000000" "0000020003")


def _probe(proto: str, ip: str, port: int) -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(0.2)
        try:
            if proto == "tcp":
                s.connect((ip, port))
                return True
            if proto == "dns":
                s.sendto(DNS_PROBE, (ip, port))
                return s.recv(4096)[:2] == DNS_PROBE[:2]
            s.sendto(READY_PROBE, (ip, port))
            return s.recv(64) == READY_PROBE
        except OSError:
            return False


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
