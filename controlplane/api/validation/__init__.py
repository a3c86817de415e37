"""Validation entry points: `validate(obj, old=None)` returns field errors, `check(obj, old)`
raises api.errors.Invalid naming the object. Objects are validated after defaulting."""
from __future__ import annotations

from ..deployment import Deployment
from ..endpoints import Endpoints, EndpointSlice
from ..errors import Invalid
from ..event import Event
from ..field_errors import FieldError, invalid
from ..meta import ApiObject
from ..namespace import Namespace
from ..pod import Pod
from ..service import Service
from . import names
from .endpoints import validate_endpoints, validate_endpointslice
from .lb_annotations import validate_lb_annotations
from .meta import validate_object_meta
from .service import validate_service, validate_service_update
from .workloads import validate_deployment, validate_deployment_update, validate_pod


def validate(obj: ApiObject, old: ApiObject | None = None) -> list[FieldError]:
    if isinstance(obj, Service):
        return (validate_service_update(obj, old) if isinstance(old, Service) else validate_service(obj)) + validate_lb_annotations(obj.metadata.annotations)
    if isinstance(obj, Deployment):
        return validate_deployment_update(obj, old) if isinstance(old, Deployment) else validate_deployment(obj)
    if isinstance(obj, Pod):
        return validate_pod(obj)
    if isinstance(obj, Endpoints):
        return validate_endpoints(obj)
    if isinstance(obj, EndpointSlice):
        errs = validate_endpointslice(obj)
        if isinstance(old, EndpointSlice) and obj.address_type != old.address_type:   # as the apiserver
            errs.append(invalid("addressType", obj.address_type, "field is immutable"))
        return errs
    if isinstance(obj, Namespace):
        return validate_object_meta(obj.metadata, False, names.dns1123_label)
    if isinstance(obj, Event):
        return validate_object_meta(obj.metadata, True, names.dns1123_subdomain)
    raise TypeError(f"no validation for {type(obj).__name__}")


def check(obj: ApiObject, old: ApiObject | None = None) -> None:
    """Raise Invalid (`The Service "x" is invalid: ...`) if `obj` fails validation."""
    errs = validate(obj, old)
    if errs:
        raise Invalid(obj.KIND, obj.name or obj.metadata.generate_name or "", errs, obj.GROUP)


__all__ = ["validate", "check"]
