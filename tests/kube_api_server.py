"""A protocol-faithful Kubernetes API server for tests (no real apiserver runs here).

It serves Services (`/api/v1/services`, `/api/v1/namespaces/NS/services`) and
EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`, and per namespace) the way
kube-apiserver does over HTTP/1.1, so the official `kubernetes` client talks to it
unchanged:

- list: a JSON `ServiceList` / `EndpointSliceList` whose `metadata.resourceVersion` is
  the store's revision at the read; items without kind/apiVersion, sorted by
  namespace/name. `limit=N` pages it: `metadata.continue` (and remainingItemCount) until
  the last page, every page from the first page's snapshot; a continue token whose
  snapshot has been compacted answers HTTP 410 Expired. `resourceVersion=N&resourceVersionMatch=Exact` older than the
  compacted revision answers HTTP 410 with a Status (reason Expired).
- watch (`?watch=true|1&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`):
  HTTP 200, `Transfer-Encoding: chunked`, one newline-terminated JSON event per chunk
  (`{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}`), every
  change after N in order; without N (or N=0) the current objects first as ADDED. A
  resourceVersion older than the compacted one gets one ERROR event carrying a Status
  with code 410, reason "Expired" ("too old resource version"), and the stream ends, as
  the apiserver's watch cache does. The stream ends cleanly (terminating chunk) after
  timeoutSeconds.
- one revision counter for both kinds (as etcd's), a bearer token checked on every
  request (401 otherwise).
- a Node by name (`/api/v1/nodes/NAME`, what an agent reads of its own node): the object
  given to `put_node`, with kind and apiVersion, or 404 with a Status (reason NotFound).

Faults the tests trigger: `compact_after_page = True` (a paged list's snapshot expires
between its pages), `bookmark()` (BOOKMARK events at the current revision to the
watchers that allowed them), `compact()` (older revisions expire), `expire_watches()`
(ERROR 410 sent into the open watches, as when the watch cache falls behind),
`fail_next_watch_with_http_410()` (the next watch is refused with HTTP 410 instead),
`drop_watches()` (every open watch connection is cut in the middle of a chunk, without
the terminating chunk) and `hold()` / `release()` (cut the watches and keep every new
request waiting until released: an API server out of reach for a while). Every request is recorded in `requests`.

Loopback only: it binds 127.0.0.1 on a free port, inside the test process.
"""
from __future__ import annotations

import copy
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
NODES = "nodes"   # read by name only
KINDS = {SERVICES: ("Service", "v1"), ENDPOINTSLICES: ("EndpointSlice", "discovery.k8s.io/v1")}
API_GROUPS = {SERVICES: "", ENDPOINTSLICES: "discovery.k8s.io", NODES: ""}
_PATHS = [
    (re.compile(r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/services$"), SERVICES),
    (re.compile(r"^/apis/discovery\.k8s\.io/v1(?:/namespaces/(?P<ns>[^/]+))?/endpointslices$"), ENDPOINTSLICES),
]
_NODE_PATH = re.compile(r"^/api/v1/nodes/(?P<name>[^/]+)$")
TOKEN = "svcxdp-test-token"


@dataclass
class Request:
    resource: str
    namespace: str | None
    watch: bool
    query: dict[str, str]
    name: str | None = None   # a read of one object by name

    @property
    def verb(self) -> str:
        """The RBAC verb the request needs."""
        return "get" if self.name is not None else "watch" if self.watch else "list"


@dataclass(eq=False)   # each watcher is itself (removed by identity)
class _Watcher:
    resource: str
    namespace: str | None
    bookmarks: bool
    pending: list[dict[str, Any]] = field(default_factory=list)   # events to send, in order
    drop: bool = False
    expire: bool = False


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a watch given up, a test's client closed) is
        routine, as it is for the API server; anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class KubeApiServer:
    def __init__(self) -> None:
        self.revision = 1
        self.compacted = 0            # a watch from a revision below this one has expired
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {SERVICES: {}, ENDPOINTSLICES: {}}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []   # (rev, resource, type, object)
        self.nodes: dict[str, dict[str, Any]] = {}   # by name
        self.requests: list[Request] = []
        self._cond = threading.Condition()
        self._watchers: list[_Watcher] = []
        self._http_410_next = 0   # how many more watches to refuse with HTTP 410
        self._stopping = False
        self._continues: dict[str, tuple[int, list[dict[str, Any]]]] = {}   # token -> (rev, rest)
        self.compact_after_page = False   # compact right after serving the next first page
        self._reachable = threading.Event()   # cleared by hold(): requests wait at the door
        self._reachable.set()
        self._httpd = _HttpServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kube-api", daemon=True)

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> "KubeApiServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._reachable.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self) -> str:
        """A kubeconfig (YAML is a superset of JSON) for this server and its token."""
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        })

    # ---- writes (what controllers would do through the API) -------------------------
    def put(self, resource: str, obj: dict[str, Any]) -> int:
        """Create or replace an object; returns its new resourceVersion."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        with self._cond:
            old = self.objects[resource].get(key)
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            meta["creationTimestamp"] = (old["metadata"]["creationTimestamp"] if old
                                         else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.revision += 1
            meta["resourceVersion"] = str(self.revision)
            self.objects[resource][key] = obj
            self._record(resource, "MODIFIED" if old else "ADDED", obj)
            return self.revision

    def delete(self, resource: str, namespace: str, name: str) -> int:
        with self._cond:
            obj = copy.deepcopy(self.objects[resource].pop((namespace, name)))
            self.revision += 1
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self._record(resource, "DELETED", obj)
            return self.revision

    def put_node(self, node: dict[str, Any]) -> None:
        """Create or replace a Node (served by name; not listed or watched here)."""
        node = copy.deepcopy(node)
        with self._cond:
            self.revision += 1
            node.setdefault("metadata", {})["resourceVersion"] = str(self.revision)
            self.nodes[node["metadata"]["name"]] = node

    def touch_other(self) -> int:
        """A change to a kind nobody watches here (a Pod, a ConfigMap): only the revision moves."""
        with self._cond:
            self.revision += 1
            return self.revision

    def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.revision, resource, kind, copy.deepcopy(obj)))
        for w in self._watchers:
            if w.resource == resource and _in(w.namespace, obj):
                w.pending.append(self._event(kind, obj))
        self._cond.notify_all()

    def _event(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {"type": kind, "object": copy.deepcopy(obj)}

    # ---- faults ---------------------------------------------------------------------
    def bookmark(self) -> int:
        """Send a BOOKMARK at the current revision to every watcher that allowed them."""
        with self._cond:
            for w in self._watchers:
                if w.bookmarks:
                    name, version = KINDS[w.resource]
                    w.pending.append({"type": "BOOKMARK", "object": {
                        "kind": name, "apiVersion": version,
                        "metadata": {"resourceVersion": str(self.revision)}}})
            self._cond.notify_all()
            return self.revision

    def send_raw(self, resource: str, event: Any) -> None:
        """Send `event` as it is into the open watches of `resource` (a broken server)."""
        with self._cond:
            for w in self._watchers:
                if w.resource == resource:
                    w.pending.append(event)
            self._cond.notify_all()

    def compact(self) -> int:
        """Forget the history: a watch from any revision before the current one expires."""
        with self._cond:
            self.compacted = self.revision
            self.history = []
            return self.compacted

    def expire_watches(self) -> None:
        """ERROR 410 Expired into every open watch (the watch cache fell too far behind)."""
        with self._cond:
            for w in self._watchers:
                w.expire = True
            self._cond.notify_all()

    def fail_next_watch_with_http_410(self, times: int = 1) -> None:
        with self._cond:
            self._http_410_next = times

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-chunk; returns how many were open once
        they are all cut (a change made after this reaches none of them)."""
        with self._cond:
            cut = list(self._watchers)
            for w in cut:
                w.drop = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not any(w in self._watchers for w in cut), 10)
            return len(cut)

    def hold(self) -> int:
        """The server becomes unreachable: open watches are cut mid-chunk and new requests
        wait (as behind a broken link) until release(). Returns how many watches were cut."""
        self._reachable.clear()
        return self.drop_watches()

    def release(self) -> None:
        self._reachable.set()

    def watchers(self, resource: str | None = None) -> int:
        with self._cond:
            return sum(1 for w in self._watchers if resource is None or w.resource == resource)

    def lists(self, resource: str) -> int:
        return sum(1 for r in list(self.requests) if r.resource == resource and not r.watch)

    def watches(self, resource: str) -> list[Request]:
        return [r for r in list(self.requests) if r.resource == resource and r.watch]

    # ---- serving --------------------------------------------------------------------
    def _list(self, resource: str, namespace: str | None, limit: int | None = None,
              token: str | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body). No copies: a stored object is replaced by a write, never
        changed in place. With `limit`, a page and a `continue` token for the rest of the
        same snapshot; a token whose snapshot was compacted since answers 410 Expired."""
        name, version = KINDS[resource]
        with self._cond:
            if token is not None:
                snapshot = self._continues.pop(token, None)
                if snapshot is None:
                    return 400, status(400, "BadRequest", f"continue token {token!r} is not valid")
                rev, items = snapshot
                if rev < self.compacted:
                    return 410, status(410, "Expired", "The provided continue parameter is too old to display a "
                                       "consistent list result. You can start a new list without the "
                                       "continue parameter.")
            else:
                items = [o for k, o in sorted(self.objects[resource].items()) if _in(namespace, o)]
                rev = self.revision
            meta: dict[str, Any] = {"resourceVersion": str(rev)}
            if limit and len(items) > limit:
                items, rest = items[:limit], items[limit:]
                next_token = str(uuid.uuid4())
                self._continues[next_token] = (rev, rest)
                meta["continue"] = next_token
                meta["remainingItemCount"] = len(rest)
                if self.compact_after_page:
                    self.compact_after_page = False
                    self.revision += 1
                    self.compacted = self.revision
                    self.history = []
        return 200, {"kind": f"{name}List", "apiVersion": version, "metadata": meta, "items": items}

    def _open_watch(self, resource: str, namespace: str | None, since: str | None,
                    bookmarks: bool) -> _Watcher | dict[str, Any]:
        """Register a watcher with the events after `since` queued, or the ERROR event
        to send when `since` has expired."""
        with self._cond:
            w = _Watcher(resource, namespace, bookmarks)
            if since in (None, "", "0"):    # "any": the current state first, as ADDED
                w.pending = [self._event("ADDED", o) for _, o in sorted(self.objects[resource].items())
                             if _in(namespace, o)]
            else:
                rv = int(since)
                if rv < self.compacted:
                    return {"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {rv} ({self.compacted})")}
                w.pending = [self._event(kind, o) for rev, res, kind, o in self.history
                             if rev > rv and res == resource and _in(namespace, o)]
            self._watchers.append(w)
            return w


def _in(namespace: str | None, obj: dict[str, Any]) -> bool:
    return namespace is None or obj["metadata"].get("namespace") == namespace


def _handler(server: KubeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:   # quiet
            pass

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def do_GET(self) -> None:
            server._reachable.wait()
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            node = _NODE_PATH.match(url.path)
            for pattern, resource in _PATHS:
                m = pattern.match(url.path)
                if m or node:
                    break
            else:
                self._json(404, status(404, "NotFound", f"the server could not find the requested resource ({url.path})"))
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._json(401, status(401, "Unauthorized", "Unauthorized"))
                return
            if node:
                server.requests.append(Request(NODES, None, False, query, node.group("name")))
                self._node(node.group("name"))
                return
            watch = query.get("watch") in ("true", "1")
            server.requests.append(Request(resource, m.group("ns"), watch, query))
            if not watch:
                since = query.get("resourceVersion")
                if (since not in (None, "", "0") and query.get("resourceVersionMatch") == "Exact"
                        and int(since) < server.compacted):
                    self._json(410, status(410, "Expired", f"too old resource version: {since} ({server.compacted})"))
                    return
                limit = int(query["limit"]) if query.get("limit") else None
                self._json(*server._list(resource, m.group("ns"), limit, query.get("continue")))
                return
            self._watch(resource, m.group("ns"), query)

        def _node(self, name: str) -> None:
            with server._cond:
                obj = copy.deepcopy(server.nodes.get(name))
            if obj is None:
                self._json(404, status(404, "NotFound", f'nodes "{name}" not found'))
                return
            self._json(200, {"kind": "Node", "apiVersion": "v1", **obj})

        def _client_gone(self) -> bool:
            """The client closed the connection (a watch client sends nothing after its request)."""
            ready, _, _ = select.select([self.connection], [], [], 0)
            if not ready:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _watch(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
            with server._cond:
                refuse = server._http_410_next > 0
                server._http_410_next = max(0, server._http_410_next - 1)
            if refuse:
                self._json(410, status(410, "Expired", f"too old resource version: {query.get('resourceVersion')}"))
                return
            opened = server._open_watch(resource, namespace, query.get("resourceVersion"),
                                        query.get("allowWatchBookmarks") == "true")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if isinstance(opened, dict):   # expired: one ERROR event, then the end
                self._chunk(json.dumps(opened).encode() + b"\n")
                self._chunk(b"")
                return
            w = opened
            deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
            try:
                while True:
                    with server._cond:
                        while not (w.pending or w.drop or w.expire or server._stopping
                                   or time.monotonic() >= deadline):
                            server._cond.wait(max(0.0, min(0.2, deadline - time.monotonic())))
                            if self._client_gone():
                                return
                        events, w.pending = w.pending, []
                        drop, expire = w.drop, w.expire
                    for ev in events:
                        self._chunk(json.dumps(ev).encode() + b"\n")
                    if drop:
                        # half of an event's chunk, then the connection goes away
                        line = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "cut"}}}).encode()
                        self.wfile.write(b"%x\r\n%s" % (len(line) + 1, line[: len(line) // 2]))
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if expire:
                        self._chunk(json.dumps({"type": "ERROR", "object": status(
                            410, "Expired", "too old resource version")}).encode() + b"\n")
                    if expire or server._stopping or time.monotonic() >= deadline:
                        self._chunk(b"")   # the terminating chunk: a clean end
                        return
            except OSError:
                self.close_connection = True
            finally:
                with server._cond:
                    if w in server._watchers:
                        server._watchers.remove(w)
                    server._cond.notify_all()

    return Handler
