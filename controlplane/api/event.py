"""core/v1 Event: something that happened to an object, as `kubectl describe` and
`kubectl get events` show it.

Events are recorded by controlplane.controllers.events (aggregated, expiring); this module
is only the object. `involvedObject` names what the event is about, `source` who saw it;
`count`, `firstTimestamp` and `lastTimestamp` say how often and when (repeats of one event
update it instead of adding another, as Kubernetes' event correlator does)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import extra_field
from .endpoints import ObjectReference
from .meta import ApiObject

NORMAL = "Normal"
WARNING = "Warning"


@dataclass
class EventSource:
    component: str | None = None
    host: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class Event(ApiObject):
    KIND: ClassVar[str] = "Event"
    RESOURCE: ClassVar[str] = "events"

    involved_object: ObjectReference = field(default_factory=ObjectReference)
    reason: str | None = None
    message: str | None = None
    source: EventSource | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    count: int | None = None
    type: str | None = None
    reporting_component: str | None = None
    reporting_instance: str | None = None

    @property
    def last_seen(self) -> str | None:
        """When it last happened (lastTimestamp, else when it was first recorded)."""
        return self.last_timestamp or self.first_timestamp or self.metadata.creation_timestamp
