"""The store: the `Store` protocol (store.interface) and its SQLite implementation.

    from controlplane.store import open_store, WatchEvent
    store = open_store(state_dir)          # SqliteStore at <state dir>/store.db
    services = store.list(Service)         # typed objects
    for ev in store.watch(rv): ...         # ADDED / MODIFIED / DELETED after rv
"""
from .interface import (ADDED, DELETED, MODIFIED, ObjectList, Store, StoreReader, StoreUnavailable,
                        StoreWriter, WatchEvent)
from .paths import DEFAULT_STATE_DIR, ENV_STATE_DIR, open_store, resolve_state_dir
from .sqlite import SqliteStore

__all__ = [
    "Store", "StoreReader", "StoreWriter", "StoreUnavailable", "WatchEvent", "ObjectList",
    "ADDED", "MODIFIED", "DELETED", "SqliteStore", "open_store", "resolve_state_dir",
    "DEFAULT_STATE_DIR", "ENV_STATE_DIR",
]
