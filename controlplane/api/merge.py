"""kubectl apply's client-side three-way merge, on JSON-shaped dicts.

`three_way_merge(original, modified, live)`: start from `live`; keys present in the last
applied configuration (`original`) but absent from the new one (`modified`) are deleted;
keys in `modified` overwrite. Maps merge recursively; lists are replaced whole (we do not
implement strategic-merge keys; the registry re-attaches allocated nodePorts by port name
as the apiserver does). A `null` in `modified` deletes the key.
"""
from __future__ import annotations

import copy
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def three_way_merge(original: dict[str, Any] | None, modified: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(live)
    _merge_into(result, original or {}, modified)
    return result


def _merge_into(result: dict[str, Any], original: dict[str, Any], modified: dict[str, Any]) -> None:
    for key in original:
        if key not in modified:
            result.pop(key, None)
    for key, new in modified.items():
        if new is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(new, dict) and isinstance(current, dict):
            old = original.get(key)
            _merge_into(current, old if isinstance(old, dict) else {}, new)
        else:
            result[key] = copy.deepcopy(new)
