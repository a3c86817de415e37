"""-o json, -o yaml and -o name."""
from __future__ import annotations

import json
from typing import Any

import yaml

from controlplane.api.meta import ApiObject

from ..resources import for_object

try:
    _Dumper: Any = yaml.CSafeDumper
except AttributeError:  # pragma: no cover
    _Dumper = yaml.SafeDumper


def as_document(objects: list[ApiObject], single: bool) -> dict[str, Any]:
    """One object as itself, several as a v1 List (what kubectl prints)."""
    if single and len(objects) == 1:
        return objects[0].to_dict()
    return {"apiVersion": "v1", "items": [o.to_dict() for o in objects], "kind": "List",
            "metadata": {"resourceVersion": ""}}


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=4, sort_keys=True, ensure_ascii=False)


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, default_flow_style=False, sort_keys=True, allow_unicode=True).rstrip("\n")


def to_names(objects: list[ApiObject]) -> str:
    return "\n".join(for_object(o).ref(o.name) for o in objects)


def render(objects: list[ApiObject], output: str, single: bool) -> str:
    if output == "name":
        return to_names(objects)
    doc = as_document(objects, single)
    return to_json(doc) if output == "json" else to_yaml(doc)
