"""ObjectMeta checks shared by every kind: name, namespace, labels, annotations."""
from __future__ import annotations

from typing import Callable

from ..field_errors import FieldError, duplicate, invalid, required, too_long
from ..meta import ObjectMeta
from . import names

NameCheck = Callable[[str], list[str]]
_TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def validate_labels(labels: dict[str, str] | None, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for key, value in (labels or {}).items():
        errs.extend(invalid(path, key, m) for m in names.qualified_name(key))
        errs.extend(invalid(path, value, m) for m in names.label_value(value))
    return errs


def validate_port_entry_name(name: str | None, path: str, require_name: bool,
                             seen: set[str]) -> list[FieldError]:
    """The `name` of one entry of a ports list (Service or EndpointSlice): required when
    the list has several entries, a DNS-1123 label, unique within the list."""
    if not name:
        return [required(path)] if require_name else []
    errs = [invalid(path, name, m) for m in names.dns1123_label(name)]
    if name in seen:
        errs.append(duplicate(path, name))
    seen.add(name)
    return errs


def validate_annotations(annotations: dict[str, str] | None, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    total = 0
    for key, value in (annotations or {}).items():
        errs.extend(invalid(path, key, m) for m in names.qualified_name(key.lower()))
        total += len(key) + len(value)
    if total > _TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.append(too_long(path, _TOTAL_ANNOTATION_SIZE_LIMIT))
    return errs


def _mask_trailing_dash(prefix: str) -> str:
    """A generateName as the apiserver checks it (maskTrailingDash): a final dash stands
    for the generated characters. (Its slicing drops the character before the dash too;
    kept, so the same prefixes pass.)"""
    if len(prefix) > 1 and prefix.endswith("-"):
        return prefix[:-2] + "a"
    return prefix


def validate_object_meta(meta: ObjectMeta, namespaced: bool, name_check: NameCheck,
                         path: str = "metadata") -> list[FieldError]:
    errs: list[FieldError] = []
    if meta.generate_name:
        # A prefix: a trailing dash is fine, as random characters follow it.
        prefix = _mask_trailing_dash(meta.generate_name)
        errs.extend(invalid(f"{path}.generateName", meta.generate_name, m) for m in name_check(prefix))
    if not meta.name:
        if not meta.generate_name:
            errs.append(required(f"{path}.name", "name or generateName is required"))
    else:
        errs.extend(invalid(f"{path}.name", meta.name, m) for m in name_check(meta.name))
    if namespaced:
        if not meta.namespace:
            errs.append(required(f"{path}.namespace"))
        else:
            errs.extend(invalid(f"{path}.namespace", meta.namespace, m) for m in names.dns1123_label(meta.namespace))
    errs.extend(validate_labels(meta.labels, f"{path}.labels"))
    errs.extend(validate_annotations(meta.annotations, f"{path}.annotations"))
    return errs
