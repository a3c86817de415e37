"""API status errors: what the store and the registry raise, shaped like apiserver Statuses.

Each error has a `reason` (NotFound, AlreadyExists, Conflict, Invalid, BadRequest, Gone) and
the server's `message`; the CLI layer decides how to print them (kubectl's
`Error from server (Reason): message`, or the multi-line form for Invalid).
"""
from __future__ import annotations

from .field_errors import FieldError


class ApiError(Exception):
    reason = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ApiError):
    reason = "NotFound"

    def __init__(self, resource: str, name: str) -> None:
        super().__init__(f'{resource} "{name}" not found')
        self.resource = resource
        self.name = name


class AlreadyExists(ApiError):
    reason = "AlreadyExists"

    def __init__(self, resource: str, name: str) -> None:
        super().__init__(f'{resource} "{name}" already exists')
        self.resource = resource
        self.name = name


class Conflict(ApiError):
    """A write based on a stale resourceVersion (optimistic concurrency)."""

    reason = "Conflict"

    OPTIMISTIC_LOCK = ("the object has been modified; "
                       "please apply your changes to the latest version and try again")

    def __init__(self, resource: str, name: str, why: str = OPTIMISTIC_LOCK) -> None:
        super().__init__(f'Operation cannot be fulfilled on {resource} "{name}": {why}')
        self.resource = resource
        self.name = name


class BadRequest(ApiError):
    reason = "BadRequest"


class Gone(ApiError):
    """A watch asked for history the store has compacted away: relist, then watch again."""

    reason = "Expired"

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Invalid(ApiError):
    """Validation failed; `errors` are the field errors (the Status causes)."""

    reason = "Invalid"

    def __init__(self, kind: str, name: str, errors: list[FieldError], group: str = "") -> None:
        qualified = f"{kind}.{group}" if group else kind
        if len(errors) == 1:
            message = f'{qualified} "{name}" is invalid: {errors[0]}'
        else:
            message = f'{qualified} "{name}" is invalid: [' + ", ".join(str(e) for e in errors) + "]"
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.errors = list(errors)
