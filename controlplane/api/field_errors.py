"""Field errors in the shape of k8s.io/apimachinery/pkg/util/validation/field.

`FieldError(ErrorType.INVALID, "spec.ports[0].port", 0, "must be between 1 and 65535, inclusive")`
prints as `spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive`.
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any


class ErrorType(enum.Enum):
    NOT_FOUND = "Not found"
    REQUIRED = "Required value"
    DUPLICATE = "Duplicate value"
    INVALID = "Invalid value"
    NOT_SUPPORTED = "Unsupported value"
    FORBIDDEN = "Forbidden"
    TOO_LONG = "Too long"
    TOO_MANY = "Too many"
    INTERNAL = "Internal error"


class GoValue(str):
    """A value already rendered the way Go's %#v would print it (struct dumps, maps)."""


def go_repr(value: Any) -> str:
    """Render a field value like field.Error does: strings quoted, numbers bare, nil as null."""
    if isinstance(value, GoValue):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[]string{" + ", ".join(go_repr(v) for v in value) + "}"
    if isinstance(value, dict):
        return "map[string]string{" + ", ".join(f"{go_repr(k)}:{go_repr(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class FieldError:
    type: ErrorType
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        """Everything after `field: ` (what a Status cause carries as its message)."""
        if self.type in (ErrorType.REQUIRED, ErrorType.FORBIDDEN, ErrorType.TOO_LONG, ErrorType.INTERNAL):
            text = self.type.value
        else:
            text = f"{self.type.value}: {go_repr(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(ErrorType.REQUIRED, path, None, detail)


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(ErrorType.INVALID, path, value, detail)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(ErrorType.FORBIDDEN, path, None, detail)


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(ErrorType.DUPLICATE, path, value)


def not_supported(path: str, value: Any, supported: list[str] | tuple[str, ...]) -> FieldError:
    detail = "supported values: " + ", ".join(json.dumps(s) for s in sorted(supported)) if supported else ""
    return FieldError(ErrorType.NOT_SUPPORTED, path, value, detail)


def too_long(path: str, max_len: int) -> FieldError:
    return FieldError(ErrorType.TOO_LONG, path, None, f"must have at most {max_len} bytes")
