"""JSON nulls where Go's decoder leaves a zero value.

The apiserver decodes `null` into a Go value type (a struct, a string, an element of a
list of structs or strings, a value of a map of strings) as that type's zero value, and
only a pointer, slice or map field becomes nil. The codec maps every null to None, which
for those value types is a hole the defaulting and validation code does not expect
(`spec: null`, `ports: [null]`, `selector: {a: null}`). `zero_nulls(cls, data)` rewrites
them as the apiserver would read them -- `{}`, `""` -- so a manifest that carries them is
accepted or refused with a field error, as Kubernetes does, never a traceback.

A value type is recognised by the model's own shape: a dataclass field declared with a
default factory (`spec: ServiceSpec = field(default_factory=ServiceSpec)`) is a Go struct
value; an optional one (`session_affinity_config: ... | None = None`) is a pointer.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .codec import camel, field_type


def zero_nulls(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a JSON object decoding to `cls`) with nulls in value-type positions
    replaced by zero values; the same dict when it holds none (nothing is copied)."""
    fixed = _object(cls, data)
    return data if fixed is None else fixed


# Each helper returns None when its input needs no change, else the changed copy.

def _object(cls: type, data: dict[str, Any]) -> dict[str, Any] | None:
    changes: dict[str, Any] = {}
    for key, (tp, is_value) in _fields(cls).items():
        if key not in data:
            continue
        value = data[key]
        if value is None:
            if is_value:
                changes[key] = _object(tp, {}) or {}   # a struct value: its zero
            continue
        fixed = _value(tp, value)
        if fixed is not None:
            changes[key] = fixed
    return {**data, **changes} if changes else None


def _value(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return _object(tp, value) if isinstance(value, dict) else None
    origin = typing.get_origin(tp)
    if origin is list and isinstance(value, list):
        item_tp = field_type(typing.get_args(tp)[0])
        return _list(item_tp, value)
    if origin is dict and isinstance(value, dict):
        val_tp = field_type(typing.get_args(tp)[1])
        if val_tp is str and any(v is None for v in value.values()):
            return {k: "" if v is None else v for k, v in value.items()}
    return None


def _list(item_tp: Any, items: list[Any]) -> list[Any] | None:
    if item_tp is str:
        return ["" if x is None else x for x in items] if any(x is None for x in items) else None
    if not dataclasses.is_dataclass(item_tp):
        return None
    out, changed = [], False
    for x in items:
        if x is None:
            x, changed = _object(item_tp, {}) or {}, True   # an element of []Struct: its zero
        elif isinstance(x, dict):
            fixed = _object(item_tp, x)
            if fixed is not None:
                x, changed = fixed, True
        out.append(x)
    return out if changed else None


_FIELDS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """JSON key -> (the field's type without None, whether it is a struct value)."""
    table = _FIELDS.get(cls)
    if table is None:
        hints = typing.get_type_hints(cls)
        table = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            tp = field_type(hints[f.name])
            is_value = dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING
            table[f.metadata.get("json", camel(f.name))] = (tp, is_value)
        _FIELDS[cls] = table
    return table
