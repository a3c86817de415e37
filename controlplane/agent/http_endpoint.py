"""What the agent's small HTTP endpoints share (the health server, /metrics, the service
health servers): a GET handler that answers with one body of a content type and logs
nothing per request, and a server run from a daemon thread."""
from __future__ import annotations

import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Sequence


class EndpointHandler(BaseHTTPRequestHandler):
    """Subclasses write `do_GET` with `route` and `send_body`."""

    @property
    def route(self) -> str:
        """The request's path without its query."""
        return self.path.split("?")[0]

    def send_body(self, code: int, payload: bytes | Sequence[bytes | memoryview], content_type: str,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
        """The whole answer: status, Content-Type, `headers`, Content-Length, then `payload`
        (bytes, or pieces written one after the other: a large body is not joined first)."""
        pieces = (payload,) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(sum(memoryview(piece).nbytes for piece in pieces)))
        self.end_headers()
        for piece in pieces:
            self.wfile.write(piece)

    def log_message(self, fmt: str, *args) -> None:
        pass   # the agent logs what it does, not every scrape or probe


class EndpointServer(ThreadingHTTPServer):
    """A threading HTTP server that binds without asking DNS for its own name.
    HTTPServer.server_bind looks its address up (socket.getfqdn: a reverse lookup, or the
    host name's for 0.0.0.0) for a server_name nothing here uses. Where the resolver does
    not answer (the cluster DNS the agent has yet to program, a node namespace without
    one) each bind waited ~10 s, inside the sync that opened a service's health server:
    the sync, every other change with it, and the agent's start stalled."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port


def start_server(handler: type[BaseHTTPRequestHandler], host: str, port: int, name: str) -> ThreadingHTTPServer:
    """Serve `handler` on host:port from a daemon thread (the agent's HTTP endpoints)."""
    server = EndpointServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
