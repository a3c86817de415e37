"""Reading manifests: YAML (or JSON) text, multi-document, comments, `kind: List` expanded.

`load_documents(text, source)` returns `Document`s (the raw dict plus where it came from);
decoding to typed objects is `kinds.object_from_dict`. Errors are ManifestError with
kubectl's wording.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

try:  # the C loader is ~10x faster on big manifests
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader


class ManifestError(ValueError):
    pass


@dataclass
class Document:
    data: dict[str, Any]
    source: str
    index: int


def _yaml_error(source: str, exc: yaml.YAMLError) -> ManifestError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ManifestError(f"error parsing {source}: error converting YAML to JSON: yaml: {where}{problem}")


def load_documents(text: str, source: str) -> list[Document]:
    try:
        raw = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    docs: list[Document] = []
    for item in raw:
        if item is None:
            continue  # empty document: only comments or `---`
        if not isinstance(item, dict):
            raise ManifestError(f"error validating \"{source}\": error validating data: "
                                f"invalid object: expected a map, got {type(item).__name__}")
        _check_type_fields(item, source)
        if item.get("kind") == "List" or (str(item.get("kind", "")).endswith("List") and "items" in item):
            for sub in item.get("items") or []:
                if not isinstance(sub, dict):
                    raise ManifestError(f"error validating \"{source}\": error validating data: list item is not a map")
                _check_type_fields(sub, source)
                docs.append(Document(_stringify_keys(sub), source, len(docs)))
            continue
        docs.append(Document(_stringify_keys(item), source, len(docs)))
    return docs


def _check_type_fields(item: dict, source: str) -> None:
    missing = [f"{f} not set" for f in ("apiVersion", "kind") if not item.get(f)]
    if missing:
        raise ManifestError(
            f'error validating "{source}": error validating data: [{", ".join(missing)}]'
        )


def _stringify_keys(value: Any) -> Any:
    """YAML allows non-string keys (`80: x`); JSON objects do not, so coerce them."""
    if isinstance(value, dict):
        return {str(k): _stringify_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_keys(v) for v in value]
    return value
