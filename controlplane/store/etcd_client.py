"""A small etcd v3 client over etcd's JSON gateway (/v3/...), on top of `etcd3gw`.

etcd3gw gives the HTTP session (TLS client certificates, CA) and the unary calls; the watch
stream is read here, because etcd3gw's watcher drops the responses a store needs: a
cancellation carrying `compact_revision` (history compacted: the caller must relist) and
progress notifications (a response with no events whose header revision says how far the
stream has caught up).

Several endpoints may be given: a request that cannot reach one member goes to the next,
with backoff, until `retry_for` seconds have passed and every member has been tried; then
EtcdUnavailable. (Every member, whatever the clock says: a process that was paused — stopped,
or starved on a loaded node — mid-request comes back past its deadline, and must still fail
over from a member that died meanwhile rather than give up on the first refusal.)
"""
from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as gw_exceptions
from etcd3gw.client import Etcd3Client

from .interface import StoreUnavailable


class EtcdUnavailable(StoreUnavailable):
    """No etcd member answered in time."""


class EtcdRequestError(Exception):
    """etcd refused a request (e.g. a transaction over --max-txn-ops or --max-request-bytes)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def too_large(self) -> bool:
        return "too many operations" in self.message or "too large" in self.message


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None     # CA bundle to verify the members' certificates
    cert: str | None = None   # client certificate
    key: str | None = None    # client key


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The range end that makes [prefix, end) cover every key starting with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def parse_endpoints(url: str) -> list[tuple[str, str, int]]:
    """`etcd://h1:2379,h2:2379` (or etcds:// for TLS) -> [(protocol, host, port), ...].
    An endpoint `unix:PATH` is a member's unix-socket client listener -> ("unix", PATH, 0)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("etcd", "etcds") or not rest:
        raise ValueError(f"store URL {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    protocol = "https" if scheme == "etcds" else "http"
    out = []
    for part in rest.rstrip("/").split(","):
        if part.startswith("unix:"):
            if not part[len("unix:"):].startswith("/"):
                raise ValueError(f"store URL {url!r}: endpoint {part!r} needs an absolute socket path")
            out.append(("unix", part[len("unix:"):], 0))
            continue
        split = urlsplit("//" + part)
        try:
            port = split.port
        except ValueError:   # not a number, or beyond 65535: urllib's message names no URL
            port = None
        if not split.hostname or not port:
            raise ValueError(f"store URL {url!r}: endpoint {part!r} needs HOST:PORT, a port from 1 to 65535")
        out.append((protocol, split.hostname, port))
    return out


# etcd answers these while a member has no leader (an election after a member died): the
# request was not applied, so it is retried like an unreachable member.
_TRANSIENT = ("no leader", "leader changed", "not capable", "raft proposal dropped")
# Watches require a leader (gRPC metadata `hasleader`, through the gateway's header; what
# clientv3.WithRequireLeader sends, as kube-apiserver's watches do). A member cut off from
# the others, or left without a quorum, otherwise keeps a watch open and sends it progress
# notifications at a revision that no longer moves: the cluster looks idle while changes
# land elsewhere. With it, the member refuses the watch ("no leader", 503) and ends an
# open one once it has been without a leader a while; the client moves to the next member.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}


class EtcdClient:
    def __init__(self, endpoints: list[tuple[str, str, int]], tls: TlsFiles | None = None,
                 timeout: float = 5.0, retry_for: float = 10.0) -> None:
        tls = tls or TlsFiles()
        if tls.cert or tls.key or tls.ca:
            endpoints = [(p if p == "unix" else "https", host, port) for p, host, port in endpoints]
        self.timeout = timeout
        self.retry_for = retry_for
        self._members = [self._make_member(protocol, host, port, tls) for protocol, host, port in endpoints]
        self._current = 0
        self._lock = threading.Lock()

    def _make_member(self, protocol: str, host: str, port: int, tls: TlsFiles) -> Etcd3Client:
        if protocol == "unix":
            from .unix_http import UnixSocketAdapter
            member = Etcd3Client("localhost", 2379, "http", timeout=self.timeout, api_path="/v3/")
            member.session.mount("http://", UnixSocketAdapter(host))
            member.unix_path = host   # type: ignore[attr-defined]
            return member
        return Etcd3Client(host, port, protocol, ca_cert=tls.ca, cert_key=tls.key, cert_cert=tls.cert,
                           timeout=self.timeout, api_path="/v3/")

    @property
    def endpoints(self) -> list[str]:
        return [f"unix:{m.unix_path}" if hasattr(m, "unix_path") else m.base_url for m in self._members]

    def _member(self) -> Etcd3Client:
        with self._lock:
            return self._members[self._current]

    def _next_member(self, failed: Etcd3Client) -> None:
        with self._lock:
            if self._members[self._current] is failed:
                self._current = (self._current + 1) % len(self._members)

    # ---------------------------------------------------------------- unary calls
    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one gateway request, failing over between members with backoff."""
        retry = _Retry(self.retry_for, len(self._members))
        last: str | None = None
        while True:
            member = self._member()
            try:
                return member.post(member.get_url(path), json=body)
            except (gw_exceptions.ConnectionFailedError, gw_exceptions.ConnectionTimeoutError) as exc:
                last = exc.detail_text or type(exc).__name__
                self._next_member(member)
            except requests.exceptions.RequestException as exc:   # cut off mid-answer (a body
                last = f"{type(exc).__name__}: {exc}"              # truncated by a dying member)
                self._next_member(member)
            except gw_exceptions.Etcd3Exception as exc:
                message = _error_message(exc)
                if not any(t in message for t in _TRANSIENT):
                    raise EtcdRequestError(message) from None
                last = message
                self._next_member(member)
            if not retry.again():
                raise EtcdUnavailable(f"etcd at {', '.join(self.endpoints)} is unavailable ({last})")

    def range(self, key: str, end: str | None = None, revision: int | None = None,
              keys_only: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if revision:
            body["revision"] = revision
        if keys_only:
            body["keys_only"] = True
        return self.call("/kv/range", body)

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> dict[str, Any]:
        return self.call("/kv/txn", {"compare": compare, "success": success})

    def compact(self, revision: int) -> None:
        self.call("/kv/compaction", {"revision": revision, "physical": True})

    def lease_grant(self, ttl: int) -> int:
        return int(self.call("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew a lease once; returns the remaining TTL (0 or less: the lease is gone)."""
        result = self.call("/lease/keepalive", {"ID": lease_id}).get("result", {})
        return int(result.get("TTL", 0))

    def lease_revoke(self, lease_id: int) -> None:
        self.call("/lease/revoke", {"ID": lease_id})

    # ---------------------------------------------------------------- watch
    def watch_after(self, key: str, end: str | None, seen: int, prev_kv: bool = False,
                    progress_notify: bool = False) -> "WatchStream":
        """A watch resuming after revision `seen`. It starts at `seen` itself, not seen + 1:
        its reader skips the events of revisions up to `seen`. Why: etcd
        refuses (cancels, with compact_revision) a start below its compacted revision but
        takes the compacted revision itself, whose events it may no longer have (the
        tombstone of a key deleted there goes with the compaction, and any event there
        comes without its prev_kv). Started at seen + 1, a compaction up to seen + 1 would
        lose a deletion silently; started at seen, it is a refusal (Gone: relist)."""
        return self.watch(key, end, start_revision=max(seen, 1), prev_kv=prev_kv,
                          progress_notify=progress_notify)

    def watch(self, key: str, end: str | None = None, start_revision: int = 0,
              prev_kv: bool = False, progress_notify: bool = False) -> "WatchStream":
        request: dict[str, Any] = {"key": b64(key), "start_revision": start_revision}
        if end is not None:
            request["range_end"] = b64(end)
        if prev_kv:
            request["prev_kv"] = True
        if progress_notify:
            request["progress_notify"] = True
        retry = _Retry(self.retry_for, len(self._members))
        while True:
            member = self._member()
            try:
                # The read timeout bounds the wait for the answer's headers: etcd's gateway
                # sends them with the watch's first response ("created"), at once on a
                # healthy member. A member that never answers would otherwise hold this
                # call forever. WatchStream lifts the timeout for the stream itself, which
                # is quiet for as long as nothing changes.
                response = member.session.post(member.get_url("/watch"), json={"create_request": request},
                                               headers=_REQUIRE_LEADER, stream=True, timeout=self.timeout)
            except requests.exceptions.RequestException as exc:
                last = str(exc)
            else:
                if response.status_code == 200:
                    return WatchStream(response)
                last = _error_message_text(response.text)
                response.close()
                if not any(t in last for t in _TRANSIENT):
                    raise EtcdRequestError(last)
            self._next_member(member)
            if not retry.again():
                raise EtcdUnavailable(f"etcd at {', '.join(self.endpoints)} is unavailable: {last}")


class _Retry:
    """One request's retries after a failed attempt: backoff (50 ms doubling to 1 s) until
    `retry_for` seconds have passed and `members` attempts have failed (each failure moves
    to the next member, so every member has then been tried)."""

    def __init__(self, retry_for: float, members: int) -> None:
        self.deadline = time.monotonic() + retry_for
        self.untried = members
        self.delay = 0.05

    def again(self) -> bool:
        """Called after a failed attempt: False to give up, else sleep the backoff first."""
        self.untried -= 1
        if self.untried <= 0 and time.monotonic() + self.delay > self.deadline:
            return False
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 1.0)
        return True


class WatchBroken(Exception):
    """The watch stream ended (member gone, connection dropped): reconnect from the last revision."""


class WatchStream:
    """One gateway watch: newline-delimited JSON responses, read by a thread into a queue so
    the consumer can wait with a timeout and close the stream from its own thread."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        connection = getattr(response.raw, "connection", None)
        self._socket = getattr(connection, "sock", None)   # shut down to wake the reader on close
        if self._socket is not None:   # (always, with requests' adapters and ours; without
            self._socket.settimeout(None)   # it a quiet stream would time out and be reopened)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._response.iter_lines(chunk_size=None):
                if line.strip():
                    doc = json.loads(line)
                    if "error" in doc:
                        raise WatchBroken(str(doc["error"]))
                    self._queue.put(("result", doc.get("result", {})))
            self._queue.put(("error", WatchBroken("watch stream ended")))
        except Exception as exc:  # noqa: BLE001 - any failure of the stream ends it
            self._queue.put(("error", exc if isinstance(exc, WatchBroken) else WatchBroken(str(exc))))

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next watch response, or None if none arrived in `timeout` seconds."""
        try:
            kind, value = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                if self._socket is not None:
                    self._socket.shutdown(socket.SHUT_RDWR)
                self._response.close()
            except Exception:  # noqa: BLE001 - closing a broken stream may fail; it is gone either way
                pass

    def __enter__(self) -> "WatchStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            result = self.next(None)
            assert result is not None
            yield result


def _error_message_text(text: str) -> str:
    try:
        doc = json.loads(text)
        return str(doc.get("message") or doc.get("error") or text)
    except ValueError:
        return text


def _error_message(exc: gw_exceptions.Etcd3Exception) -> str:
    detail = getattr(exc, "detail_text", None) or (exc.args[0] if exc.args else str(exc))
    return _error_message_text(str(detail))
