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


def store_url(args: argparse.Namespace | None = None) -> str | None:
    """The etcd URL asked for by flag or environment, or None for SQLite."""
    return (getattr(args, "store", None) if args is not None else None) or os.environ.get(ENV_STORE) or None


def recorded_store_url(state_dir: str | os.PathLike | None = None) -> str | None:
    """The etcd URL recorded in the state directory's `store-url` file, if any."""
    try:
        return (resolve_state_dir(state_dir) / STORE_URL_FILE).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def open_store_from_args(args: argparse.Namespace) -> Any:
    return open_store(getattr(args, "state_dir", None), store_url(args),
                      {flag: getattr(args, flag, None) or os.environ.get(env) for flag, env in TLS_FLAGS.items()})


def open_store(state_dir: str | os.PathLike | None = None, url: str | None = None,
               tls: dict[str, str | None] | None = None) -> Any:
    """Open the etcd store at `url` (or $SVCXDP_STORE, or the one the state directory
    records), else (creating if needed) the SQLite store in the state directory."""
    url = url or os.environ.get(ENV_STORE) or recorded_store_url(state_dir)
    if url:
        return open_etcd_store(url, tls)
    directory = resolve_state_dir(state_dir)
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


def open_etcd_store(url: str, tls: dict[str, str | None] | None = None) -> Any:
    from .etcd import EtcdStore
    from .etcd_client import EtcdClient, TlsFiles, parse_endpoints
    tls = tls or {}
    for flag, path in tls.items():
        if path and not os.path.isfile(path):
            raise StoreUnavailable(f"--{flag.replace('_', '-')}: {path}: no such file")
    try:
        endpoints = parse_endpoints(url)
    except ValueError as exc:
        raise StoreUnavailable(str(exc)) from None
    files = TlsFiles(ca=tls.get("etcd_cacert"), cert=tls.get("etcd_cert"), key=tls.get("etcd_key"))
    return EtcdStore(EtcdClient(endpoints, files), url)
