"""A store wrapper shared by the unit tests of the readers."""
from __future__ import annotations

from controlplane.store import SqliteStore


class DocumentsOnly:
    """A store that hands out parsed documents only (as EtcdStore and the Kubernetes feed
    do), so the readers take the document path, not SqliteStore's stored-text one."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def list(self, cls, namespace=None, selector=None):
        return self._store.list(cls, namespace, selector)

    def iter_documents(self, cls, namespace=None):
        return self._store.iter_documents(cls, namespace)

    def current_resource_version(self):
        return self._store.current_resource_version()

    def changes_since(self, resource_version, kinds=None, as_text=()):
        return self._store.changes_since(resource_version, kinds)   # decoded, whatever as_text asks
