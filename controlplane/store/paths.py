"""Which store a command opens.

`--store etcd://HOST:PORT[,HOST:PORT...]` (or $SVCXDP_STORE) selects the etcd store, with
TLS client certificates from --etcd-cacert/--etcd-cert/--etcd-key ($SVCXDP_ETCD_CACERT,
$SVCXDP_ETCD_CERT, $SVCXDP_ETCD_KEY). Without it, the embedded SQLite store:
`--state-dir`, else $SVCXDP_STATE_DIR, else /var/lib/svcxdp; the database is
`<state dir>/store.db` (the lab keeps its own files under `<state dir>/lab`) — unless the
state directory holds a `store-url` file naming an etcd store (`svcctl lab up --store etcd`
writes one), which commands given that state directory then use.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from .interface import StoreUnavailable
from .sqlite import SqliteStore

DEFAULT_STATE_DIR = "/var/lib/svcxdp"
ENV_STATE_DIR = "SVCXDP_STATE_DIR"
ENV_STORE = "SVCXDP_STORE"
DB_NAME = "store.db"
STORE_URL_FILE = "store-url"   # <state dir>/store-url: the etcd store this state dir uses
TLS_FLAGS = {"etcd_cacert": "SVCXDP_ETCD_CACERT", "etcd_cert": "SVCXDP_ETCD_CERT", "etcd_key": "SVCXDP_ETCD_KEY"}


def resolve_state_dir(arg: str | os.PathLike | None = None) -> Path:
    return Path(arg or os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """--store and the etcd TLS flags (every command that opens the store takes them)."""
    parser.add_argument("--store", default=None, metavar="URL",
                        help=f"etcd://HOST:PORT[,HOST:PORT...] for an etcd store (env {ENV_STORE}); "
                             "default: SQLite in the state directory")
    for flag, env in TLS_FLAGS.items():
        what = {"etcd_cacert": "CA bundle verifying", "etcd_cert": "client certificate for",
                "etcd_key": "client key for"}[flag]
        parser.add_argument("--" + flag.replace("_", "-"), default=None, metavar="FILE",
                            help=f"{what} etcd (env {env})")


def recorded_store_url(state_dir: str | os.PathLike | None = None) -> str | None:
    """The etcd URL recorded in the state directory's `store-url` file, if any."""
    try:
        return (resolve_state_dir(state_dir) / STORE_URL_FILE).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def chosen_store_url(state_dir: str | os.PathLike | None = None, url: str | None = None) -> tuple[str, str] | None:
    """(the etcd URL a command opens, what gave it: `--store`, `$SVCXDP_STORE` or the state
    directory's store-url file), or None for SQLite. The second names the culprit in errors:
    a bad URL is fixed where it was given."""
    if url:
        return url, "--store"
    if os.environ.get(ENV_STORE):
        return os.environ[ENV_STORE], f"${ENV_STORE}"
    recorded = recorded_store_url(state_dir)
    if recorded:
        return recorded, str(resolve_state_dir(state_dir) / STORE_URL_FILE)
    return None


def open_store_from_args(args: argparse.Namespace, missing: str = "create") -> Any:
    # --store only: open_store reads $SVCXDP_STORE itself, and names it as such in errors
    return open_store(getattr(args, "state_dir", None), getattr(args, "store", None),
                      {flag: getattr(args, flag, None) or os.environ.get(env) for flag, env in TLS_FLAGS.items()},
                      missing=missing)


def open_store(state_dir: str | os.PathLike | None = None, url: str | None = None,
               tls: dict[str, str | None] | None = None, missing: str = "create") -> Any:
    """Open the etcd store at `url` (or $SVCXDP_STORE, or the one the state directory
    records), else the SQLite store in the state directory. A state directory without one:
    `missing` "create" (writing commands) makes it; "error" (read-only commands) raises
    StoreUnavailable, creating nothing; "empty" (commands that read the dataplane and only
    name what they find from the store: trace, get flows) gives an empty store, creating
    nothing, if the directory exists, else raises."""
    chosen = chosen_store_url(state_dir, url)
    if chosen:
        url, given_by = chosen
        return open_etcd_store(url, tls, given_by)
    directory = resolve_state_dir(state_dir)
    if missing != "create" and not (directory / DB_NAME).is_file():
        if missing == "empty" and directory.is_dir():
            return _empty_store()
        raise StoreUnavailable(no_store_message(directory))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create state directory {directory}: {exc.strerror} "
            f"(choose another with --state-dir or ${ENV_STATE_DIR})"
        ) from exc
    if not os.access(directory, os.W_OK):
        raise StoreUnavailable(
            f"state directory {directory} is not writable (choose another with --state-dir or ${ENV_STATE_DIR})"
        )
    return SqliteStore(directory / DB_NAME)


def no_store_message(directory: Path) -> str:
    """What a read-only command says of a state directory that holds no store (as kubectl
    with no cluster asks whether the server is the right one)."""
    where = "no such directory" if not directory.exists() else f"no {DB_NAME} there"
    return (f"no store in state directory {directory} ({where}) - did you specify the right "
            f"--state-dir or ${ENV_STATE_DIR}? (apply, create or run make a store there)")


def _empty_store() -> SqliteStore:
    """An empty store of no state directory's: a file in a temporary folder, removed on close."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="svcxdp-nostore-")
    store = SqliteStore(Path(folder) / DB_NAME)
    close = store.close

    def close_and_remove() -> None:
        close()
        shutil.rmtree(folder, ignore_errors=True)

    store.close = close_and_remove   # type: ignore[method-assign]
    store.temporary = True           # type: ignore[attr-defined]
    return store


def store_is_temporary(store: Any) -> bool:
    """Whether `store` is the empty one open_store(missing="empty") gave for no store."""
    return getattr(store, "temporary", False) is True


def open_etcd_store(url: str, tls: dict[str, str | None] | None = None, given_by: str = "--store") -> Any:
    from .etcd import EtcdStore
    from .etcd_client import EtcdClient, TlsFiles, parse_endpoints
    tls = tls or {}
    for flag, path in tls.items():
        if path and not os.path.isfile(path):
            raise StoreUnavailable(f"--{flag.replace('_', '-')}: {path}: no such file")
    try:
        endpoints = parse_endpoints(url)
    except ValueError as exc:
        raise StoreUnavailable(f"{given_by}: {exc}") from None
    files = TlsFiles(ca=tls.get("etcd_cacert"), cert=tls.get("etcd_cert"), key=tls.get("etcd_key"))
    return EtcdStore(EtcdClient(endpoints, files), url)


def store_failure(exc: BaseException, state_dir: str | os.PathLike | None = None,
                  url: str | None = None) -> str | None:
    """The one-line error for a command the store failed (`url`: --store, if given), or
    None when `exc` is no store's failure. A store that cannot be reached already says so
    naming its members; a server on the URL that answers, but not as etcd does (another
    web server on the port), fails every request with its own error page: named here by
    the URL and a line of that page, rather than a traceback ending in HTML."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    from .etcd_client import EtcdRequestError
    if not isinstance(exc, EtcdRequestError):
        return None
    chosen = chosen_store_url(state_dir, url)
    where = f"{chosen[1]} {chosen[0]}" if chosen else "the etcd store"
    answer = _one_line(exc.message)
    if exc.message.lstrip().startswith("<"):   # etcd's gateway answers JSON, never a web page
        return f"{where}: not an etcd server (it answered: {answer})"
    return f"{where}: etcd refused the request: {answer}"


def _one_line(answer: str, limit: int = 160) -> str:
    """A server's answer as one short line: markup and the page's head dropped."""
    text = re.sub(r"(?is)<head\b.*?</head>", " ", answer)
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
