"""What runs in a pod: one small process serving all of the pod's ports.

    python -m controlplane.lab.podserver --pod NAME --flavour nginx --tcp 80 [--udp 53] [--version v1]

TCP ports speak HTTP/1.1 (keep-alive, HEAD) with the page set of the image it stands in for;
every flavour answers /hostname.html with the pod name, the generic one (agnhost-like images)
/clientip with the address the connection came from. UDP ports echo each datagram back.
One thread and a selector, so dozens of pods stay cheap. Imports only the standard library.
"""
from __future__ import annotations

import argparse
import selectors
import socket
import sys
from email.utils import formatdate

NGINX_WELCOME = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""
HTTPD_WORKS = "<html><body><h1>It works!</h1></body></html>\n"
MYAPP_INDEX = 'Hello MyApp | Version: {version} | <a href="hostname.html">Pod Name</a>\n'
GENERIC_INDEX = "Hello from {pod} on port {port}\n"

SERVER_HEADER = {"nginx": "nginx/1.25.3", "myapp": "nginx/1.12.2", "httpd": "Apache/2.4.58 (Unix)"}
MAX_HEADER = 64 * 1024


class Site:
    """The pages of one flavour: path -> (status, body)."""

    def __init__(self, flavour: str, pod: str, version: str) -> None:
        self.flavour, self.pod, self.version = flavour, pod, version
        self.server = SERVER_HEADER.get(flavour, "svcxdp-podserver")

    def page(self, path: str, port: int, peer: str = "") -> tuple[int, str]:
        path = path.split("?", 1)[0]
        if path == "/hostname.html":
            return 200, self.pod + "\n"
        if path == "/clientip" and self.flavour == "generic":
            # agnhost netexec's page: the address the connection came from, as the pod
            # sees it (source NAT or not)
            return 200, peer + "\n"
        if path in ("/", "/index.html"):
            if self.flavour == "nginx":
                return 200, NGINX_WELCOME
            if self.flavour == "httpd":
                return 200, HTTPD_WORKS
            if self.flavour == "myapp":
                return 200, MYAPP_INDEX.format(version=self.version)
            return 200, GENERIC_INDEX.format(pod=self.pod, port=port)
        return 404, self.not_found()

    def not_found(self) -> str:
        if self.flavour == "httpd":
            return (
                '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
                "<title>404 Not Found</title>\n</head><body>\n<h1>Not Found</h1>\n"
                "<p>The requested URL was not found on this server.</p>\n</body></html>\n"
            )
        return (
            "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
            f"<center><h1>404 Not Found</h1></center>\r\n<hr><center>{self.server}</center>\r\n"
            "</body>\r\n</html>\r\n"
        )


class HttpConnection:
    """Buffers for one client; requests are answered in order (pipelining works)."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock, self.port = sock, port
        try:
            self.peer = "%s:%d" % sock.getpeername()[:2]
        except OSError:
            self.peer = ""
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is flushed

    def feed(self, site: Site) -> None:
        while not self.closing:
            end = self.inbuf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end, sep = self.inbuf.find(b"\n\n"), 2
            if end < 0:
                if len(self.inbuf) > MAX_HEADER:
                    self.respond(site, "HTTP/1.1", "GET", None, close=True)
                return
            head = bytes(self.inbuf[:end]).decode("latin-1")
            lines = head.replace("\r\n", "\n").split("\n")
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.inbuf) < end + sep + length:
                return  # wait for the body, which we then ignore
            del self.inbuf[: end + sep + length]
            parts = lines[0].split()
            if len(parts) != 3:
                self.respond(site, "HTTP/1.1", "GET", None, close=True)
                return
            method, target, version = parts
            conn = headers.get("connection", "").lower()
            close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
            self.respond(site, version, method, target, close)

    def respond(self, site: Site, version: str, method: str, target: str | None, close: bool) -> None:
        if target is None:
            status, body = 400, "Bad Request\n"
        elif method not in ("GET", "HEAD", "POST"):
            status, body = 405, "Method Not Allowed\n"
        else:
            status, body = site.page(target, self.port, self.peer)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Not Allowed"}[status]
        payload = body.encode()
        head = [
            f"{'HTTP/1.0' if version == 'HTTP/1.0' else 'HTTP/1.1'} {status} {reason}",
            f"Server: {site.server}",
            f"Date: {formatdate(usegmt=True)}",
            "Content-Type: text/html",
            f"Content-Length: {len(payload)}",
            "Connection: " + ("close" if close else "keep-alive"),
        ]
        self.outbuf += ("\r\n".join(head) + "\r\n\r\n").encode()
        if method != "HEAD":
            self.outbuf += payload
        self.closing = close


def _listen(port: int, kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        s.listen(512)
    s.setblocking(False)
    return s


def serve(site: Site, tcp_ports: list[int], udp_ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in tcp_ports:
        sel.register(_listen(port, socket.SOCK_STREAM), selectors.EVENT_READ, ("listen", port))
    for port in udp_ports:
        sel.register(_listen(port, socket.SOCK_DGRAM), selectors.EVENT_READ, ("udp", port))
    print(f"podserver {site.pod}: {site.flavour} tcp={tcp_ports} udp={udp_ports}", flush=True)

    def close(conn: HttpConnection) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()

    def flush(conn: HttpConnection) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            close(conn)
            return
        if not conn.outbuf and conn.closing:
            close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        sel.modify(conn.sock, events, ("conn", conn))

    while True:
        for key, events in sel.select():
            role, data = key.data
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if role == "listen":
                while True:
                    try:
                        client, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    client.setblocking(False)
                    sel.register(client, selectors.EVENT_READ, ("conn", HttpConnection(client, data)))
            elif role == "udp":
                while True:
                    try:
                        payload, peer = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    try:
                        sock.sendto(payload, peer)
                    except OSError:
                        pass
            else:
                conn: HttpConnection = data
                if events & selectors.EVENT_READ:
                    try:
                        chunk = conn.sock.recv(65536)
                    except BlockingIOError:
                        chunk = None
                    except OSError:
                        close(conn)
                        continue
                    if chunk == b"":
                        close(conn)
                        continue
                    if chunk:
                        conn.inbuf += chunk
                        conn.feed(site)
                flush(conn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podserver")
    p.add_argument("--pod", required=True, help="pod name, answered at /hostname.html")
    p.add_argument("--flavour", default="generic", choices=["nginx", "httpd", "myapp", "generic"])
    p.add_argument("--version", default="v1", help="myapp version shown on /")
    p.add_argument("--tcp", type=int, action="append", default=[], help="HTTP port (repeatable)")
    p.add_argument("--udp", type=int, action="append", default=[], help="UDP echo port (repeatable)")
    args = p.parse_args(argv)
    try:
        serve(Site(args.flavour, args.pod, args.version), args.tcp, args.udp)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
