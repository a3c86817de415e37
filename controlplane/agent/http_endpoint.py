"""What the agent's small HTTP endpoints share (the health server, /metrics, the service
health servers): a GET handler that answers with one body of a content type and logs
nothing per request, and a server run from a daemon thread."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable


class EndpointHandler(BaseHTTPRequestHandler):
    """Subclasses write `do_GET` with `route` and `send_body`."""

    @property
    def route(self) -> str:
        """The request's path without its query."""
        return self.path.split("?")[0]

    def send_body(self, code: int, payload: bytes, content_type: str,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
        """The whole answer: status, Content-Type, `headers`, Content-Length, then `payload`."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt: str, *args) -> None:
        pass   # the agent logs what it does, not every scrape or probe


def start_server(handler: type[BaseHTTPRequestHandler], host: str, port: int, name: str) -> ThreadingHTTPServer:
    """Serve `handler` on host:port from a daemon thread (the agent's HTTP endpoints)."""
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
