"""Store fixtures shared by the unit tests: `etcd_server` (one real etcd for the session) and
`any_store`, parametrised over both Store implementations."""
from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.store import SqliteStore
from tests.etcd_server import EtcdServer

STORES = ["sqlite", "etcd"]


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> EtcdServer:
    server = EtcdServer.start(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A fresh, empty store of `kind`."""
    if kind == "sqlite":
        return SqliteStore(tmp_path / "s.db")
    server: EtcdServer = request.getfixturevalue("etcd_server")
    server.wipe()
    return server.store()


@pytest.fixture(params=STORES)
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    store = make_store(request.param, tmp_path, request)
    yield store
    store.close()
