"""-o json, -o yaml and -o name."""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from controlplane.api.meta import ApiObject

from ..resources import for_object



@lru_cache(maxsize=1)
def _kubectl_dumper():
    """A yaml SafeDumper writing strings the way kubectl (go-yaml) does: multi-line ones as
    `|` blocks, ones that would read back as another type ("15", timestamps, "true") in
    double quotes. Built on first use: yaml's import costs `get` ~15 ms it rarely needs."""
    import yaml

    class KubectlDumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        if "\n" in data:
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
        if data and dumper.resolve(yaml.ScalarNode, data, (True, False)) != "tag:yaml.org,2002:str":
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return dumper.represent_scalar("tag:yaml.org,2002:str", data)

    KubectlDumper.add_representer(str, represent_str)
    return KubectlDumper


def as_document(objects: list[ApiObject], single: bool) -> dict[str, Any]:
    """One object as itself, several as a v1 List (what kubectl prints)."""
    if single and len(objects) == 1:
        return objects[0].to_dict()
    return {"apiVersion": "v1", "items": [o.to_dict() for o in objects], "kind": "List",
            "metadata": {"resourceVersion": ""}}


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=4, sort_keys=True, ensure_ascii=False)


def to_yaml(doc: dict[str, Any]) -> str:
    import yaml
    return yaml.dump(doc, Dumper=_kubectl_dumper(), default_flow_style=False, sort_keys=True,
                     allow_unicode=True, width=1 << 30).rstrip("\n")


def to_names(objects: list[ApiObject]) -> str:
    return "\n".join(for_object(o).ref(o.name) for o in objects)


def render(objects: list[ApiObject], output: str, single: bool) -> str:
    if output == "name":
        return to_names(objects)
    doc = as_document(objects, single)
    return to_json(doc) if output == "json" else to_yaml(doc)
