"""Where the agent reads Services and EndpointSlices from: the `Source` seam.

The agent needs five reads, and nothing else, from whatever holds the cluster's state:

    current_resource_version()          where the feed is now (an int that only grows)
    list(Service)                       every Service, decoded
    iter_documents(EndpointSlice)       every EndpointSlice as its JSON document
    changes_since(rv, kinds, as_text)   the ADDED / MODIFIED / DELETED events after rv,
                                        oldest first; api.errors.Gone when the feed no
                                        longer reaches back to rv (the agent relists);
                                        those of the kinds in as_text may come as
                                        TextEvents (the stored JSON, not decoded)
    wait_for_change(rv, timeout)        block until the feed passes rv (or timeout)

Two implementations:
- svcxdp's own store (store.sqlite.SqliteStore, store.etcd.EtcdStore): the store's
  change feed is the source; a compacted feed raises Gone.
- the Kubernetes API (kubeapi.feed.KubeFeed): list+watch of services and
  discovery.k8s.io/v1 endpointslices with the official client, folded into a local feed
  with the same five reads (svcctl agent --source kubernetes).

Both feed the same ServiceCache, the same desired_state() and the same MapWriter. The
agent's Events (FailedProgramming, DataplaneResynced...) are written to svcxdp's store;
a source that says `takes_events = False` (the Kubernetes API, read-only here) gets none.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, TypeVar

from controlplane.api.meta import ApiObject
from controlplane.store.interface import TextEvent, WatchEvent

T = TypeVar("T", bound=ApiObject)


class Source(Protocol):
    def current_resource_version(self) -> int: ...

    def list(self, cls: type[T]) -> list[T]: ...

    def iter_documents(self, cls: type[ApiObject]) -> Iterator[dict[str, Any]]: ...

    def changes_since(self, resource_version: int, kinds: Iterable[type[ApiObject]] | None = None,
                      as_text: Iterable[type[ApiObject]] = ()) -> list[WatchEvent | TextEvent]: ...

    def wait_for_change(self, resource_version: int, timeout: float) -> int: ...


def source_takes_events(source: object) -> bool:
    """Whether the agent may write its Events into this source (svcxdp's store may)."""
    return bool(getattr(source, "takes_events", True))


class NoEvents:
    """The agent's event recorder when the source takes none."""

    def record(self, *args: Any) -> bool:
        return False
