"""The kinds this control plane serves, and turning a manifest dict into a typed object."""
from __future__ import annotations

from typing import Any

from .codec import DecodeError
from .deployment import Deployment
from .endpoints import Endpoints, EndpointSlice
from .errors import BadRequest
from .event import Event
from .meta import ApiObject
from .nulls import zero_nulls
from .namespace import Namespace
from .pod import Pod
from .service import Service

KINDS: tuple[type[ApiObject], ...] = (Service, Endpoints, EndpointSlice, Pod, Deployment, Namespace, Event)
_BY_KIND: dict[str, type[ApiObject]] = {cls.KIND: cls for cls in KINDS}


class UnknownKind(Exception):
    """No kind registered for this apiVersion/kind pair (kubectl: "no matches for kind")."""

    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(f'no matches for kind "{kind}" in version "{api_version}"')
        self.api_version = api_version
        self.kind = kind


def kind_class(kind: str) -> type[ApiObject]:
    """The class for a kind name, e.g. kind_class("Service") is Service."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise UnknownKind("", kind) from None


def resolve(api_version: str, kind: str) -> type[ApiObject]:
    cls = _BY_KIND.get(kind)
    if cls is None or api_version != cls.api_version_string():
        raise UnknownKind(api_version, kind)
    return cls


def object_from_dict(data: dict[str, Any]) -> ApiObject:
    """Decode one manifest document; UnknownKind or BadRequest (mistyped field) on failure.
    Nulls read as the apiserver reads them (api/nulls.py)."""
    cls = resolve(str(data.get("apiVersion", "")), str(data.get("kind", "")))
    try:
        return cls.from_dict(zero_nulls(cls, data))
    except DecodeError as exc:
        raise BadRequest(
            f'{cls.KIND} in version "{cls.VERSION}" cannot be handled as a {cls.KIND}: {exc}'
        ) from None
