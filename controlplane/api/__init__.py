"""Kubernetes API objects as dataclasses, their defaulting, validation and YAML decoding.

The lowest layer: imports nothing else from controlplane. Start with `kinds.object_from_dict`,
`manifest.load_documents`, `defaults.apply_defaults` and `validation.check`.
"""
from .deployment import Deployment, LabelSelectorSpec, PodTemplateSpec
from .endpoints import (Endpoint, EndpointConditions, EndpointPort, Endpoints, EndpointSlice,
                        EndpointSubset, EndpointAddress, ObjectReference)
from .errors import AlreadyExists, ApiError, BadRequest, Conflict, Gone, Invalid, NotFound
from .kinds import KINDS, UnknownKind, kind_class, object_from_dict
from .meta import ApiObject, ObjectMeta, OwnerReference
from .namespace import Namespace
from .pod import Container, ContainerPort, Pod, PodSpec, PodStatus
from .selectors import Selector
from .service import Service, ServicePort, ServiceSpec

__all__ = [
    "ApiObject", "ObjectMeta", "OwnerReference", "Service", "ServicePort", "ServiceSpec",
    "Deployment", "LabelSelectorSpec", "PodTemplateSpec", "Pod", "PodSpec", "PodStatus",
    "Container", "ContainerPort", "Endpoints", "EndpointSubset", "EndpointAddress",
    "EndpointPort", "EndpointSlice", "Endpoint", "EndpointConditions", "ObjectReference",
    "Namespace", "Selector", "KINDS", "kind_class", "object_from_dict", "UnknownKind",
    "ApiError", "NotFound", "AlreadyExists", "Conflict", "Invalid", "BadRequest", "Gone",
]
