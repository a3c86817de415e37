"""--field-selector: `path=value`, `path==value`, `path!=value`, comma-separated (all must
hold), over an object's JSON fields by dotted path — e.g. `involvedObject.name=nginx`,
`type=Warning`, `metadata.name=x` — as the apiserver's field selectors read them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.api.meta import ApiObject
from controlplane.errors import CommandError


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    equal: bool

    def matches(self, doc: dict[str, Any]) -> bool:
        node: Any = doc
        for part in self.path:
            node = node.get(part) if isinstance(node, dict) else None
        text = "" if node is None else str(node).lower() if isinstance(node, bool) else str(node)
        return (text == self.value) == self.equal


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    if not text:
        return []
    out = []
    for term in text.split(","):
        for op, equal in (("!=", False), ("==", True), ("=", True)):
            path, sep, value = term.partition(op)
            if sep:
                break
        if not sep or not path.strip():
            raise CommandError(f'invalid field selector: "{term}": expected field=value, field==value or field!=value')
        out.append(FieldRequirement(tuple(path.strip().split(".")), value.strip(), equal))
    return out


def select_fields(objects: list[ApiObject], requirements: list[FieldRequirement]) -> list[ApiObject]:
    if not requirements:
        return objects
    return [o for o in objects if all(r.matches(d) for d in (o.to_dict(),) for r in requirements)]
