"""HTTP over a unix socket for `requests`: how a client reaches an etcd member's gateway
through its `unix://` client listener (the lab's members listen on one next to their data,
so commands in the root namespace reach a store whose addresses live in lab namespaces).

    session.mount("http://", UnixSocketAdapter("/path/client.sock:0"))
"""
from __future__ import annotations

import socket
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool


class _UnixConnection(HTTPConnection):
    def __init__(self, socket_path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, (int, float)):   # else urllib3's "default" sentinel
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, socket_path: str, maxsize: int) -> None:
        super().__init__("localhost", maxsize=maxsize)
        self.socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:   # type: ignore[override]
        self.num_connections += 1
        return _UnixConnection(self.socket_path, host=self.host, port=self.port,
                               timeout=self.timeout.connect_timeout)


class UnixSocketAdapter(HTTPAdapter):
    """Every request through this adapter goes to one unix socket (the URL's host is ignored)."""

    def __init__(self, socket_path: str, maxsize: int = 10) -> None:
        super().__init__()
        self.socket_path = socket_path
        self._pool = _UnixPool(socket_path, maxsize)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        return self._pool

    def get_connection(self, url: Any, proxies: Any = None) -> HTTPConnectionPool:
        return self._pool

    def request_url(self, request: Any, proxies: Any) -> str:
        return request.path_url

    def close(self) -> None:
        self._pool.close()
        super().close()
