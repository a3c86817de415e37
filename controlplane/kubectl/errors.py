"""kubectl's wording for failures (k8s.io/kubectl/pkg/cmd/util/helpers.go)."""
from __future__ import annotations

from controlplane.api.errors import ApiError, Invalid
from controlplane.api.kinds import UnknownKind
from controlplane.controllers.batch import BatchError, Failure, Refused


def invalid_message(err: Invalid) -> str:
    prefix = f'The {err.kind} "{err.name}" is invalid: '
    if len(err.errors) == 1:
        return prefix + str(err.errors[0])
    return prefix + "\n" + "\n".join(f"* {e}" for e in err.errors)


def api_error_message(err: ApiError, source: str | None = None, verb: str = "creating") -> str:
    if isinstance(err, Invalid):
        return invalid_message(err)
    where = f'error when {verb} "{source}": ' if source else ""
    return f"Error from server ({err.reason}): {where}{err.message}"


def failure_message(failure: Failure) -> str:
    err = failure.error
    source = failure.manifest.source if failure.manifest else None
    if isinstance(err, UnknownKind):
        return (f'error: resource mapping not found for name: "{failure.name}" namespace: '
                f'"{failure.namespace}" from "{source}": {err}\n'
                "ensure CRDs are installed first")
    if isinstance(err, Refused):
        return f"error: {err}"
    if isinstance(err, ApiError):
        return api_error_message(err, source, failure.verb)
    return f"error: {err}"


def batch_messages(err: BatchError) -> list[str]:
    return [failure_message(f) for f in err.failures]
