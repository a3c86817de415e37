"""kube-proxy-style health endpoints: GET /healthz (200 while in sync, 503 when
not), GET /livez (200 while the agent's loop goes round, in sync or not: what a liveness
probe should ask) and GET /proxyMode, served from a thread of the agent."""
from __future__ import annotations

import errno
import json
import threading
import time
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer

from .http_endpoint import EndpointHandler, start_server

HEALTHZ_PORT = 10256
PROXY_MODE = "xdp"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Health:
    """What the agent tells the health server. As kube-proxy's: `lastUpdated` is the last
    time a sync (or a consistency check) left the maps equal to the store, not the last
    time the loop went round; healthy means in sync and the loop alive (it went round
    within `stale_after_s`), so an idle agent stays healthy without moving lastUpdated."""

    def __init__(self, node: str, stale_after_s: float = 10.0, stuck_after_s: float = 60.0) -> None:
        self.node = node
        self.stale_after_s = stale_after_s
        # /livez: the loop has not gone round for this long (a failing store only slows it
        # to its retry backoff, a few seconds): stuck, restart it
        self.stuck_after_s = stuck_after_s
        self.last_updated = 0.0     # last time the maps were made or found equal to the store
        self.last_alive = 0.0       # last time the agent's loop went round with nothing to do
        self.last_beat = time.time()   # last time the loop went round at all
        self.in_sync = False
        self._lock = threading.Lock()

    def beat(self) -> None:
        """The loop went round (whatever came of it)."""
        self.last_beat = time.time()

    def synced(self) -> None:
        with self._lock:
            self.last_updated = self.last_alive = time.time()
            self.in_sync = True

    def alive(self) -> None:
        """The loop went round and found nothing to do (the maps stay as they were)."""
        with self._lock:
            self.last_alive = time.time()

    def out_of_sync(self) -> None:
        with self._lock:
            self.in_sync = False

    def report(self) -> tuple[int, dict]:
        with self._lock:
            now = time.time()
            healthy = self.in_sync and now - self.last_alive <= self.stale_after_s
            body = {"lastUpdated": _iso(self.last_updated) if self.last_updated else "",
                    "currentTime": _iso(now), "nodeName": self.node, "nodeHealthy": healthy}
            return (200 if healthy else 503), body


    def liveness(self) -> tuple[int, dict]:
        """/livez: 200 while the loop goes round. A store or API server out of reach makes
        the agent unhealthy (/healthz 503: it cannot follow changes) but not dead —
        restarting it would change nothing, and the dataplane keeps serving meanwhile."""
        now = time.time()
        alive = now - self.last_beat <= self.stuck_after_s
        return (200 if alive else 503), {"lastUpdated": _iso(self.last_updated) if self.last_updated else "",
                                         "currentTime": _iso(now), "nodeName": self.node, "alive": alive}


def serve(health: Health, host: str = "0.0.0.0", port: int = HEALTHZ_PORT) -> ThreadingHTTPServer:
    """Serve /healthz, /livez and /proxyMode from a daemon thread. OSError if the port
    cannot be bound (the agent calls it before building anything)."""
    class Handler(EndpointHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.route in ("/healthz", "/livez"):
                code, body = health.report() if self.route == "/healthz" else health.liveness()
                self.send_body(code, json.dumps(body).encode(), "application/json")
            elif self.route == "/proxyMode":
                self.send_body(200, PROXY_MODE.encode(), "text/plain")
            else:
                self.send_body(404, b"404 page not found\n", "text/plain")

    return start_server(Handler, host, port, "healthz")


def busy_port_message(port: int, exc: OSError) -> str:
    """The agent's one line for a health port it cannot bind."""
    why = exc.strerror or str(exc)
    hint = (" (kube-proxy serves its health checks on 10256 by default: stop it, or give --healthz-port "
            "another port; 0 disables the health server)" if exc.errno == errno.EADDRINUSE
            else " (give --healthz-port another port; 0 disables the health server)")
    return f"--healthz-port {port}: cannot serve the health checks on port {port}: {why}{hint}"
