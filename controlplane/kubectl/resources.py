"""Resource type names as kubectl accepts and prints them."""
from __future__ import annotations

from dataclasses import dataclass

from controlplane.api.deployment import Deployment
from controlplane.api.endpoints import Endpoints, EndpointSlice
from controlplane.api.event import Event
from controlplane.api.meta import ApiObject
from controlplane.api.namespace import Namespace
from controlplane.api.pod import Pod
from controlplane.api.service import Service


@dataclass(frozen=True)
class Resource:
    cls: type[ApiObject]
    plural: str           # "services"
    singular: str         # "service"
    aliases: tuple[str, ...]

    @property
    def qualified(self) -> str:
        """`service`, `deployment.apps`, `endpointslice.discovery.k8s.io`: as in messages."""
        group = self.cls.GROUP
        return f"{self.singular}.{group}" if group else self.singular

    def ref(self, name: str) -> str:
        """`service/nginx`: the `-o name` form and the prefix of apply/create messages."""
        return f"{self.qualified}/{name}"


RESOURCES: tuple[Resource, ...] = (
    Resource(Pod, "pods", "pod", ("po",)),
    Resource(Service, "services", "service", ("svc",)),
    Resource(Endpoints, "endpoints", "endpoints", ("ep",)),
    Resource(EndpointSlice, "endpointslices", "endpointslice", ()),
    Resource(Deployment, "deployments", "deployment", ("deploy",)),
    Resource(Namespace, "namespaces", "namespace", ("ns",)),
    Resource(Event, "events", "event", ("ev",)),
)

_LOOKUP: dict[str, Resource] = {}
for _r in RESOURCES:
    for _n in (_r.plural, _r.singular, *_r.aliases, _r.cls.KIND.lower()):
        _LOOKUP[_n] = _r
        if _r.cls.GROUP:
            _LOOKUP[f"{_n}.{_r.cls.GROUP}"] = _r


class UnknownResource(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f'the server doesn\'t have a resource type "{name}"')


def lookup(name: str) -> Resource:
    try:
        return _LOOKUP[name.lower()]
    except KeyError:
        raise UnknownResource(name) from None


def for_class(cls: type[ApiObject]) -> Resource:
    return next(r for r in RESOURCES if r.cls is cls)


def for_object(obj: ApiObject) -> Resource:
    return for_class(type(obj))
