"""Where the embedded store lives: `--state-dir`, else $SVCXDP_STATE_DIR, else /var/lib/svcxdp.
The database is `<state dir>/store.db` (the lab keeps its own files under `<state dir>/lab`)."""
from __future__ import annotations

import os
from pathlib import Path

from .interface import StoreUnavailable
from .sqlite import SqliteStore

DEFAULT_STATE_DIR = "/var/lib/svcxdp"
ENV_STATE_DIR = "SVCXDP_STATE_DIR"
DB_NAME = "store.db"


def resolve_state_dir(arg: str | os.PathLike | None = None) -> Path:
    return Path(arg or os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR)


def open_store(state_dir: str | os.PathLike | None = None) -> SqliteStore:
    """Open (creating if needed) the SQLite store in the state directory."""
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
