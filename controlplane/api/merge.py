"""kubectl apply's client-side three-way merge, on JSON-shaped dicts.

`three_way_merge(original, modified, live, merge_keys)`: start from `live`; keys present in
the last applied configuration (`original`) but absent from the new one (`modified`) are
deleted; keys in `modified` overwrite. Maps merge recursively. A `null` in `modified`
deletes the key.

Lists are replaced whole, except the ones the Kubernetes types mark `patchStrategy: merge`
with a `patchMergeKey` (strategic merge patch), listed per kind in STRATEGIC_LISTS: those
merge item by item, matched on the key, as kubectl's three-way strategic patch does. For a
Service's `spec.ports` (merge key `port`) this is what keeps a port's allocated nodePort
when another port is renamed or dropped, and keeps ports the last applied configuration
never named (an object made with `create -f`, or a port someone else added).
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Path = tuple[str, ...]


@dataclass(frozen=True)
class MergeKey:
    """How the items of one list are matched: on `key` (the patchMergeKey). When a key
    value occurs twice in a list (a port number served over TCP and UDP, which the API
    allows), those items are told apart by `tie` (default `tie_default`), then by order."""

    key: str
    tie: str | None = None
    tie_default: Any = None


MergeKeys = dict[Path, MergeKey]

# Lists merged item by item, per kind (path of the list -> its merge key); every other
# list is replaced whole.
STRATEGIC_LISTS: dict[str, MergeKeys] = {
    "Service": {("spec", "ports"): MergeKey("port", tie="protocol", tie_default="TCP")},
}


def merge_keys_of(kind: str) -> MergeKeys:
    """The lists of `kind` that merge item by item."""
    return STRATEGIC_LISTS.get(kind, {})


def three_way_merge(original: dict[str, Any] | None, modified: dict[str, Any], live: dict[str, Any],
                    merge_keys: MergeKeys | None = None) -> dict[str, Any]:
    result = copy.deepcopy(live)
    _merge_into(result, original or {}, modified, merge_keys or {}, ())
    return result


def _merge_into(result: dict[str, Any], original: dict[str, Any], modified: dict[str, Any],
                merge_keys: MergeKeys, path: Path) -> None:
    for key in original:
        if key not in modified:
            result.pop(key, None)
    for key, new in modified.items():
        if new is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        old = original.get(key)
        here = path + (key,)
        if isinstance(new, dict) and isinstance(current, dict):
            _merge_into(current, old if isinstance(old, dict) else {}, new, merge_keys, here)
        elif here in merge_keys and isinstance(new, list) and isinstance(current, list):
            result[key] = _merge_list(old if isinstance(old, list) else [], new, current, merge_keys[here])
        else:
            result[key] = copy.deepcopy(new)


# ---------------------------------------------------------------------- keyed lists
def _merge_list(original: list[Any], modified: list[Any], live: list[Any], mk: MergeKey) -> list[Any]:
    """A strategic merge of one list. Items of `modified` come in its order, each merged
    into the live item it matches (so fields the server or others set survive); live items
    the last applied configuration named and `modified` no longer does are deleted; live
    items neither names are kept, placed among the others as they stood in `live`. A list
    whose items are not all maps carrying the key is replaced whole (validation then says
    what is wrong with it)."""
    if not _keyed(modified, mk) or not _keyed(live, mk):
        return copy.deepcopy(modified)
    original = [item for item in original if isinstance(item, dict) and mk.key in item]
    ambiguous = _repeated_keys(original, modified, live, mk)
    original_ids = _identities(original, mk, ambiguous)
    modified_ids = _identities(modified, mk, ambiguous)
    live_ids = _identities(live, mk, ambiguous)
    originals = dict(zip(original_ids, original))
    lives = dict(zip(live_ids, live))

    wanted: list[tuple[str, Any]] = []
    for ident, item in zip(modified_ids, modified):
        current = lives.get(ident)
        if current is None:
            wanted.append((ident, copy.deepcopy(item)))
        else:
            merged = copy.deepcopy(current)
            _merge_into(merged, originals.get(ident) or {}, item, {}, ())
            wanted.append((ident, merged))
    named = set(modified_ids) | set(original_ids)
    kept = [(ident, copy.deepcopy(item)) for ident, item in zip(live_ids, live) if ident not in named]
    return _interleave(wanted, kept, {ident: i for i, ident in enumerate(live_ids)})


def _keyed(items: list[Any], mk: MergeKey) -> bool:
    return all(isinstance(item, dict) and item.get(mk.key) is not None for item in items)


def _key_of(item: dict[str, Any], mk: MergeKey) -> str:
    # JSON text: a key value of any JSON type (a mistyped one too) can be compared and hashed
    return json.dumps(item.get(mk.key), sort_keys=True)


def _repeated_keys(original: list[Any], modified: list[Any], live: list[Any], mk: MergeKey) -> set[str]:
    """Key values that occur more than once in any of the three lists."""
    out: set[str] = set()
    for items in (original, modified, live):
        counts = Counter(_key_of(item, mk) for item in items)
        out.update(key for key, n in counts.items() if n > 1)
    return out


def _identities(items: list[dict[str, Any]], mk: MergeKey, ambiguous: set[str]) -> list[str]:
    """Each item's identity within its list: its key value, or for a value that repeats
    anywhere, the value, the tie field and the item's rank among those equal in both."""
    out = []
    seen: Counter[str] = Counter()
    for item in items:
        key = _key_of(item, mk)
        if key in ambiguous and mk.tie is not None:
            tie = item.get(mk.tie)
            key = json.dumps([key, tie if tie is not None else mk.tie_default], sort_keys=True)
            seen[key] += 1
            key = f"{key}#{seen[key]}"
        out.append(key)
    return out


def _interleave(wanted: list[tuple[str, Any]], kept: list[tuple[str, Any]],
                live_order: dict[str, int]) -> list[Any]:
    """The items `modified` names, in its order, with the live-only items slotted in: a
    kept item goes before the next wanted one when both are live and it stood before it
    there. Both lists keep their own order."""
    out: list[Any] = []
    w = k = 0
    while w < len(wanted) or k < len(kept):
        if k < len(kept) and w < len(wanted):
            kept_at = live_order.get(kept[k][0])
            wanted_at = live_order.get(wanted[w][0])
            take_kept = kept_at is not None and wanted_at is not None and kept_at < wanted_at
        else:
            take_kept = k < len(kept)
        if take_kept:
            out.append(kept[k][1])
            k += 1
        else:
            out.append(wanted[w][1])
            w += 1
    return out
